"""Workload files (loadgen/workload.py): parsing, refusals, and the open-loop schedules."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from loadgen.workload import Rate, Workload, WorkloadError, load

EXAMPLE = """
seconds = 30
[population]
users = 1_000_000
merchants = 10_000
merchant_zipf_s = 1.1
[mix]
payment = 71
p2p = 10
hold = 5
refund = 5
qr_order = 6
order_refund = 1
payment_code = 2
red_envelope = 5
[orders]
fee_bps = 60
close_ratio = 0.1
expire_ratio = 0.05
partial_refund_ratio = 0.3
[codes]
step_up_ratio = 0.2
confirm_ratio = 0.7
decline_ratio = 0.1
revoke_ratio = 0.1
confirm_after_s = 3
[envelopes]
count = 10
total_min_minor = 600
total_max_minor = 8_888
claimers = 12
claim_after_s = 0.2
claims_at_burst = true
expire_after_s = 3_600
[rate]
shape = "burst"
per_s = 50_000
burst_at_s = 10
burst_factor = 10
burst_s = 1
"""


def test_the_documented_example_loads(tmp_path):
    path = tmp_path / "payments.toml"
    path.write_text(EXAMPLE)
    workload = load(str(path))
    assert workload.population.users == 1_000_000 and workload.rate.shape == "burst"
    assert workload.mix.probabilities() == pytest.approx({
        "payment": 71 / 105, "p2p": 10 / 105, "hold": 5 / 105, "refund": 5 / 105, "qr_order": 6 / 105,
        "order_refund": 1 / 105, "payment_code": 2 / 105, "red_envelope": 5 / 105})
    assert workload.orders.fee_bps == 60 and workload.orders.paid_ratio == pytest.approx(0.85)
    codes = workload.codes
    assert (codes.step_up_ratio, codes.confirm_ratio, codes.decline_ratio, codes.revoke_ratio,
            codes.confirm_after_s) == (0.2, 0.7, 0.1, 0.1, 3.0)
    assert codes.resolved_ratio == pytest.approx(0.9) and workload.mix.has_codes and workload.mix.has_orders
    envelopes = workload.envelopes
    assert (envelopes.count, envelopes.total_min_minor, envelopes.total_max_minor, envelopes.claimers,
            envelopes.claim_after_s, envelopes.claims_at_burst, envelopes.expire_after_s) == (
        10, 600, 8_888, 12, 0.2, True, 3_600)
    assert workload.mix.has_envelopes
    # The same workload as JSON.
    json_path = tmp_path / "payments.json"
    json_path.write_text(json.dumps({"seconds": 30, "rate": {"shape": "ramp", "per_s": 1000}}))
    assert load(str(json_path)).rate.shape == "ramp"


@pytest.mark.parametrize("text,message", [
    ("seconds = 0", "seconds must be"),
    ("[population]\nusers = 0", "population.users"),
    ("[population]\nmerchant_zipf_s = 9.0", "merchant_zipf_s"),
    ("[mix]\npayment = 0", "at least one weight"),
    ("[mix]\nrefund = -1", "finite and >= 0"),
    ("[mix]\nbribe = 1", "bribe"),
    ("[rate]\nshape = \"sine\"", "shape"),
    ("[rate]\nper_s = 0", "rate.per_s"),
    ("[rate]\nper_s = 1e9", "rate.per_s"),
    ("[rate]\nshape = \"burst\"\nburst_factor = 0.5", "burst_factor"),
    ("[orders]\nfee_bps = 10001", "orders.fee_bps must be in 0..10000"),
    ("[orders]\nfee_bps = 0.5", r"orders\.fee_bps"),            # msgspec's type check names the path
    ("[orders]\nclose_ratio = 1.5", "orders.close_ratio must be in 0..1"),
    ("[orders]\npartial_refund_ratio = -0.1", "orders.partial_refund_ratio must be in 0..1"),
    ("[orders]\nclose_ratio = 0.6\nexpire_ratio = 0.5", r"orders.close_ratio \+ orders.expire_ratio"),
    ("[orders]\nexpire_after_s = 59", "orders.expire_after_s must be 0 or in 60..7776000"),
    ("[orders]\nrefund_after_s = -1", "orders.refund_after_s must be in 0..86400"),
    ("[orders]\nrefund_delay_s = 1", "refund_delay_s"),       # an unknown key
    ("[mix]\nqr_order = -1", "finite and >= 0"),
    ("[mix]\norder_refund = 1", "mix.order_refund needs paid orders"),
    ("[mix]\npayment_code = -1", "finite and >= 0"),
    ("[codes]\nstep_up_ratio = 1.5", "codes.step_up_ratio must be in 0..1"),
    ("[codes]\nrevoke_ratio = -0.1", "codes.revoke_ratio must be in 0..1"),
    ("[codes]\nconfirm_ratio = 0.5\ndecline_ratio = 0.3\nrevoke_ratio = 0.3",
     r"codes.confirm_ratio \+ codes.decline_ratio \+ codes.revoke_ratio must be <= 1"),
    ("[codes]\nconfirm_after_s = 31", r"codes.confirm_after_s must be in 0..30 \(a hold ends after 45 s\)"),
    ("[codes]\nconfirm_after_s = -1", "codes.confirm_after_s must be in 0..30"),
    ("[codes]\ntimeout_ratio = 0.1", "timeout_ratio"),       # an unknown key: the rest time out
    ("[mix]\nred_envelope = -1", "finite and >= 0"),
    ("[envelopes]\ncount = 0", "envelopes.count must be in 1..10,000"),
    ("[envelopes]\ncount = 10001", "envelopes.count must be in 1..10,000"),
    ("[envelopes]\ncount = 200\ntotal_min_minor = 100", "count <= total_min_minor <= total_max_minor"),
    ("[envelopes]\ntotal_min_minor = 500\ntotal_max_minor = 400", "count <= total_min_minor <= total_max_minor"),
    ("[envelopes]\nclaimers = 0", "envelopes.claimers must be in 1..100,000"),
    ("[envelopes]\nclaim_after_s = -1", "envelopes.claim_after_s must be in 0..86400"),
    ("[envelopes]\nexpire_after_s = 86401", r"envelopes.expire_after_s must be in 0..86,400 \(0: 24 hours\)"),
    ("[envelopes]\nlate_ratio = 0.1", "late_ratio"),          # an unknown key: claimers says it
    ("[population]\nusers = 12\n[mix]\nred_envelope = 1", "envelopes.claimers \\(12\\) must be below population.users"),
    ("[mix]\nred_envelope = 1\n[envelopes]\nclaims_at_burst = true", 'claims_at_burst needs rate.shape = "burst"'),
    ("[mix]\nqr_order = 1\norder_refund = 1\n[orders]\nclose_ratio = 0.5\nexpire_ratio = 0.5",
     "mix.order_refund needs paid orders"),
    ("seconds = \"ten\"", "seconds"),
    ("not toml at all [", "bad.toml: "),  # a TOML syntax error, named with the file
])
def test_bad_files_are_refused_with_the_key_named(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(WorkloadError, match=message):
        load(str(path))


def test_a_constant_rate_schedules_evenly():
    times = Rate(shape="constant", per_s=1000).send_times_s(2.0)
    assert len(times) == 2000
    assert np.allclose(np.diff(times), 0.001)


def test_a_burst_jumps_tenfold_for_its_second():
    rate = Rate(shape="burst", per_s=1000, burst_at_s=1.0, burst_factor=10, burst_s=1.0)
    times = rate.send_times_s(3.0)
    per_second = np.histogram(times, bins=[0, 1, 2, 3])[0]
    assert per_second.tolist() == [1000, 10_000, 1000]


def test_a_ramp_rises_linearly():
    times = Rate(shape="ramp", start_per_s=0, per_s=2000).send_times_s(2.0)
    assert len(times) == 2000  # the integral: (0 + 2000) / 2 * 2 s
    assert np.histogram(times, bins=[0, 1, 2])[0].tolist() == [500, 1500]


@settings(max_examples=60, deadline=None)
@given(shape=st.sampled_from(["constant", "ramp", "burst"]), per_s=st.floats(1, 5000),
       seconds=st.floats(0.01, 3.0), burst_at=st.floats(0, 3), factor=st.floats(1, 20))
def test_schedules_are_sorted_within_the_run_and_match_the_rates_integral(shape, per_s, seconds, burst_at, factor):
    rate = Rate(shape=shape, per_s=per_s, start_per_s=per_s / 3, burst_at_s=burst_at, burst_factor=factor,
                burst_s=0.5)
    assert rate.check() is None
    times = rate.send_times_s(seconds)
    assert np.all(np.diff(times) >= 0) and (len(times) == 0 or (times[0] >= 0 and times[-1] <= seconds))
    # The number of requests is the rate's integral over the run, computed here analytically
    # (the schedule's 1 ms grid may cut a burst's edge by up to one step's worth).
    if shape == "constant":
        expected, slack = per_s * seconds, 1
    elif shape == "ramp":
        expected, slack = (per_s / 3 + per_s) / 2 * seconds, 1
    else:
        overlap = max(0.0, min(seconds, burst_at + 0.5) - min(seconds, burst_at))
        expected, slack = per_s * seconds + per_s * (factor - 1) * overlap, 1 + 2 * per_s * factor / 1000
    assert abs(len(times) - expected) <= slack


def test_defaults_are_a_valid_workload():
    assert Workload().check() is None
