"""The load generator: requests from a workload, HDR recording, open and closed loop against a real
server process, recording and replay (exact result counts), workers, and the `tally load` commands."""

import json
import os
import secrets
import subprocess
import sys

import numpy as np
import pytest
from hdrh.histogram import HdrHistogram
from hypothesis import given, settings, strategies as st

import core
from core.operations import CREATE_REPLY_DTYPES, Operation
from loadgen import envelope_side, merchant_side, replay, report as report_module, runner, trace
from loadgen.generator import KIND_OPERATIONS, LOAD_ID_BASE, Kind, Population, RequestGenerator
from loadgen.histogram import LATENCY_US_HIGHEST, LatencyHistogram
from loadgen.workload import (Codes, Envelopes, Mix, Orders, Payments, Population as PopulationSpec, Rate,
                              Workload)
from tally import local_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NS_PER_S = 1_000_000_000


def small_workload(seconds=2.0, per_s=2_000.0, users=500, hold_s=0.2, refund_after_s=0.2, **mix):
    mix = mix or {"payment": 70, "p2p": 10, "hold": 10, "refund": 10}
    return Workload(seconds=seconds, population=PopulationSpec(users=users, merchants=20, wallet_balance_minor=200_000),
                    mix=Mix(**mix), payments=Payments(hold_s=hold_s, refund_after_s=refund_after_s),
                    rate=Rate(per_s=per_s))


# ----------------------------------------------------------------------------- histogram


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=LATENCY_US_HIGHEST * 2), min_size=1, max_size=300))
def test_array_recording_equals_hdrh_value_by_value(values):
    ours = LatencyHistogram()
    ours.record(np.array(values, dtype=np.int64))
    theirs = HdrHistogram(1, LATENCY_US_HIGHEST, 3)
    for value in values:
        theirs.record_value(min(max(value, 1), LATENCY_US_HIGHEST))
    assert list(ours.hdr.counts) == list(theirs.counts)
    assert (ours.count, ours.hdr.get_min_value(), ours.hdr.get_max_value()) == \
        (theirs.get_total_count(), theirs.get_min_value(), theirs.get_max_value())
    for percentile in (50, 99, 99.99):
        assert ours.value_at(percentile) == theirs.get_value_at_percentile(percentile)


def test_histograms_merge_exactly_through_their_encoding():
    rng = np.random.default_rng(3)
    parts = [rng.integers(1, 10 ** 6, 5_000) for _ in range(3)]
    merged, whole = LatencyHistogram(), LatencyHistogram()
    for part in parts:
        one = LatencyHistogram()
        one.record(part)
        merged.add(LatencyHistogram.decode(one.encode()))
    whole.record(np.concatenate(parts))
    assert merged.summary() == whole.summary() and merged.spectrum() == whole.spectrum()


# ----------------------------------------------------------------------------- generator


def apply_setup(ledger, population):
    for batch in population.account_batches():
        assert not ledger.create_accounts(batch, now_ns=1).any()
    for batch in population.top_up_batches():
        assert not ledger.create_transfers(batch, now_ns=2).any()


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2 ** 32), weights=st.lists(st.integers(0, 10), min_size=4, max_size=4).filter(any),
       chunk=st.integers(1, 3_000))
def test_generated_requests_are_valid_and_follow_their_dependencies(seed, weights, chunk):
    workload = small_workload(hold_s=0.0, refund_after_s=0.0,
                              **dict(zip(("payment", "p2p", "hold", "refund"), weights)))
    population = Population(workload, run_id=77)
    ledger = core.Ledger(accounts_max=1_000, transfers_hot_max=100_000)
    apply_setup(ledger, population)
    generator = RequestGenerator(workload, population, seed=seed)
    seen_ids, holds, refunded = set(), {}, set()
    payments = {}
    for step in range(6):
        indexes, _, kinds = block = generator.next(chunk, now_ns=step * NS_PER_S)
        batch = block.records(Operation.create_transfers)
        results = ledger.create_transfers(batch, now_ns=10 * NS_PER_S + step)
        ids = batch["id_lo"].tolist()
        assert ids == (LOAD_ID_BASE + indexes).tolist() and not seen_ids & set(ids)
        seen_ids.update(ids)
        assert (batch["id_hi"] == 77).all()
        for row, kind, result in zip(batch, kinds.tolist(), results.tolist()):
            kind = Kind(kind)
            if kind is Kind.hold:
                holds[int(row["id_lo"])] = result
            elif kind in (Kind.capture, Kind.void):
                pending = int(row["pending_id_lo"])
                assert pending in holds, "a resolution follows a hold made earlier, and only once"
                hold_result = holds.pop(pending)
                # A hold a dry wallet refused leaves nothing to resolve; every other resolution works.
                expected = core.Result.ok if hold_result == core.Result.ok else core.Result.pending_transfer_not_found
                assert result == expected, (kind, core.Result(result))
                continue
            elif kind is Kind.payment:
                payments[int(row["id_lo"])] = (int(row["debit_account_id_lo"]), int(row["credit_account_id_lo"]),
                                               int(row["amount"]))
            elif kind is Kind.refund:
                key = (int(row["credit_account_id_lo"]), int(row["debit_account_id_lo"]), int(row["amount"]))
                assert key in set(payments.values()), "a refund returns an earlier payment to its payer"
                assert key not in refunded or list(payments.values()).count(key) > 1
                refunded.add(key)
            # Wallets are funded well; only a dry wallet may refuse a payment, P2P or hold.
            allowed = (core.Result.ok,) if kind is Kind.refund else (core.Result.ok, core.Result.exceeds_credits)
            assert result in allowed, (kind, core.Result(result))
    # Money is neither created nor destroyed: debits equal credits over all accounts.
    accounts = ledger.accounts()
    assert int(accounts["debits_posted"].sum()) == int(accounts["credits_posted"].sum())
    assert int(accounts["debits_pending"].sum()) == int(accounts["credits_pending"].sum())


def test_the_mix_is_followed_and_a_seed_repeats_itself():
    workload = small_workload(hold_s=0.0, refund_after_s=0.0)
    population = Population(workload, run_id=5)
    one, two = RequestGenerator(workload, population, seed=9), RequestGenerator(workload, population, seed=9)
    kinds = []
    for step in range(20):
        a, b = one.next(5_000, step), two.next(5_000, step)
        assert a[1].tobytes() == b[1].tobytes() and (a[2] == b[2]).all()
        kinds.append(a[2])
    counts = np.bincount(np.concatenate(kinds), minlength=len(Kind)) / 100_000
    assert abs(counts[Kind.payment] + counts[Kind.refund] - 0.8) < 0.01   # refunds replace payments early on
    assert abs(counts[Kind.p2p] - 0.1) < 0.01
    assert abs(counts[Kind.hold] + counts[Kind.capture] + counts[Kind.void] - 0.1) < 0.01
    assert counts[Kind.capture] > 4 * counts[Kind.void] > 0       # capture_ratio 0.9


def test_follow_ups_wait_for_their_delay():
    workload = small_workload(hold_s=1.0, refund_after_s=1.0, payment=1, hold=1, refund=1)
    generator = RequestGenerator(workload, Population(workload, run_id=1), seed=1)
    _, _, early = generator.next(3_000, now_ns=0)
    _, _, still_early = generator.next(3_000, now_ns=NS_PER_S - 1)
    _, _, later = generator.next(3_000, now_ns=NS_PER_S)
    for kinds in (early, still_early):
        assert not np.isin(kinds, [Kind.capture, Kind.void, Kind.refund]).any()
    assert np.isin(later, [Kind.capture, Kind.void]).sum() > 0 and (later == Kind.refund).sum() > 0


# ----------------------------------------------------------------------------- merchant orders


def orders_workload(seconds=2.0, per_s=2_000.0, users=500, refund_after_s=0.2, **orders):
    return Workload(seconds=seconds, population=PopulationSpec(users=users, merchants=20, wallet_balance_minor=200_000),
                    mix=Mix(payment=40, p2p=10, hold=10, refund=10, qr_order=40, order_refund=10),
                    payments=Payments(hold_s=0.2, refund_after_s=0.2), orders=Orders(refund_after_s=refund_after_s,
                                                                                     **orders),
                    rate=Rate(per_s=per_s))


def machine_for(population):
    """An in-process core (no log, no wire) with the population set up."""
    from core.machine import Machine

    machine = Machine(accounts_max=4_096, transfers_hot_max=1 << 17, pending_max=1 << 12, orders_max=1 << 16,
                      refunds_max=1 << 16, codes_max=1 << 14, envelopes_max=1 << 13, claims_max=1 << 16,
                      secret=secrets.token_bytes(32))
    for operation, batches in ((Operation.create_accounts, population.account_batches()),
                               (Operation.create_transfers, population.top_up_batches()),
                               (Operation.set_merchants, population.merchant_terms_batches())):
        for batch in batches:
            assert not runner.result_codes(machine.apply(operation, batch, 1_000)).any()
    return machine


def test_the_setup_gives_every_merchant_terms_when_the_mix_has_orders():
    workload = orders_workload(fee_bps=125)
    population = Population(workload, run_id=9)
    accounts = np.concatenate(list(population.account_batches(batch_events=100)))
    assert len(accounts) == population.accounts == 500 + 20 + 1 + 1 + 20
    codes = dict(zip(accounts["id_lo"].tolist(), accounts["code"].tolist()))
    assert codes[population.fee_account] == core.AccountCode.fee
    assert {codes[population.first_settlement + k] for k in range(20)} == {core.AccountCode.settlement}
    terms = np.concatenate(list(population.merchant_terms_batches(batch_events=7)))
    assert terms["merchant_id_lo"].tolist() == list(range(501, 521)) and (terms["fee_bps"] == 125).all()
    assert (terms["fee_account_id_lo"] == population.fee_account).all()
    assert terms["settlement_account_id_lo"].tolist() == list(range(population.first_settlement,
                                                                     population.first_settlement + 20))
    assert (terms["merchant_id_hi"] == 9).all() and (terms["settlement_account_id_hi"] == 9).all()
    assert population.fee_account_id == 9 << 64 | population.fee_account
    # Without orders the population is what it was: no fee or settlement accounts, no terms.
    plain = Population(small_workload(), run_id=9)
    assert plain.accounts == 500 + 20 + 1 and not list(plain.merchant_terms_batches())


def test_order_requests_are_well_formed_and_follow_their_answers():
    """Against the core in process: every create, payment, close and refund the generator makes
    is what docs/products.md asks for, and each follows the answer it needs."""
    from core.order_keys import order_id, refund_id

    workload = orders_workload(refund_after_s=0.5, close_ratio=0.2, expire_ratio=0.1, partial_refund_ratio=0.5)
    population = Population(workload, run_id=77)
    machine = machine_for(population)
    generator = RequestGenerator(workload, population, seed=5)
    tag = b"%016x" % 77
    created, paid, ended, refunded, numbers = {}, {}, set(), set(), set()
    counts = {kind: 0 for kind in Kind}
    step_ns = NS_PER_S // 10
    for step in range(30):
        now_ns = step * step_ns
        block = generator.next(400, now_ns)
        assert len(block.frames()) == len(set(KIND_OPERATIONS[block.kinds].tolist()))   # a frame per operation
        for frame in block.frames():
            replies = machine.apply(frame.operation, frame.records, 10 * NS_PER_S + now_ns)
            results = runner.result_codes(replies)
            for kind in frame.kinds.tolist():
                counts[Kind(kind)] += 1
            records = core.to_dicts(frame.records) if frame.operation != Operation.create_transfers else None
            if frame.operation == Operation.create_orders:
                for record, result, reply in zip(records, results.tolist(), replies):
                    number = bytes(record["out_trade_no"]).rstrip(b"\0")
                    assert number.startswith(tag) and len(number) == 32 and number not in numbers
                    numbers.add(number)
                    assert record["id"] == order_id(record["merchant_id"], number)
                    assert record["merchant_id"] >> 64 == 77
                    assert population.first_merchant <= record["merchant_id"] & (2**64 - 1) < population.first_card
                    assert record["expire_after_s"] == 60 and record["ledger"] == core.Currency.CNY
                    assert result == core.Result.ok
                    created[record["id"]] = (record["merchant_id"], record["amount"], bytes(reply["token"]), now_ns)
            elif frame.operation == Operation.pay_orders:
                for record, result in zip(records, results.tolist()):
                    merchant, amount, token, created_ns = created[record["order_id"]]
                    assert created_ns < now_ns, "a payment follows its create's answer"
                    assert record["order_id"] not in ended and bytes(record["token"]) == token
                    assert record["amount"] == amount and 1 <= record["payer_id"] & (2**64 - 1) <= 500
                    assert result in (core.Result.ok, core.Result.exceeds_credits), core.Result(result)
                    ended.add(record["order_id"])
                    if result == core.Result.ok:
                        paid[record["order_id"]] = (amount, now_ns)
            elif frame.operation == Operation.close_orders:
                for record, result in zip(records, results.tolist()):
                    merchant, _, _, created_ns = created[record["order_id"]]
                    assert created_ns < now_ns and record["order_id"] not in ended
                    assert record["merchant_id"] == merchant and result == core.Result.ok
                    ended.add(record["order_id"])
            elif frame.operation == Operation.refund_orders:
                for record, result in zip(records, results.tolist()):
                    amount, paid_ns = paid[record["order_id"]]
                    assert now_ns >= paid_ns + NS_PER_S // 2, "refunded at least refund_after_s after its payment"
                    assert record["order_id"] not in refunded and 1 <= record["amount"] <= amount
                    number = bytes(record["out_refund_no"]).rstrip(b"\0")
                    assert number.startswith(tag) and number not in numbers
                    numbers.add(number)
                    assert record["id"] == refund_id(record["order_id"], number)
                    assert result == core.Result.ok, core.Result(result)
                    refunded.add(record["order_id"])
            generator.answered(frame.indexes, frame.kinds, replies, now_ns)
    creates = counts[Kind.qr_create]
    # Each order's end as drawn (expire 10 %, close 20 %, the rest paid), less those still in flight.
    assert 0.6 * creates < counts[Kind.qr_pay] < 0.75 * creates
    assert 0.14 * creates < counts[Kind.qr_close] < 0.26 * creates
    # qr_order is 40 of 130 of the weight, its two requests together; order_refund 10.
    assert abs((creates + counts[Kind.qr_pay] + counts[Kind.qr_close]) / 12_000 - 40 / 130) < 0.03
    assert counts[Kind.order_refund] > 0.5 * 10 / 130 * 12_000 * 25 / 30      # refunds start after 0.5 s
    full = sum(1 for order in refunded if machine.lookup_orders([order])[0]["state"] == core.OrderState.REFUND)
    assert 0.3 < full / len(refunded) < 0.7                                 # partial_refund_ratio 0.5


def test_an_orders_follow_ups_wait_for_its_answers():
    workload = orders_workload(refund_after_s=1.0)
    generator = RequestGenerator(workload, Population(workload, run_id=1), seed=3)
    follow_ups = [Kind.qr_pay, Kind.qr_close, Kind.order_refund]

    def answer(block, result, now_ns):
        for frame in block.frames():
            replies = np.zeros(len(frame.kinds), CREATE_REPLY_DTYPES[frame.operation])
            runner.result_codes(replies)[...] = result
            generator.answered(frame.indexes, frame.kinds, replies, now_ns)

    unanswered = generator.next(3_000, now_ns=0)
    assert not np.isin(generator.next(3_000, now_ns=NS_PER_S).kinds, follow_ups).any()   # no answer yet
    answer(unanswered, core.Result.orders_limit_reached, NS_PER_S)                     # all refused
    refused = generator.next(3_000, now_ns=2 * NS_PER_S)
    assert not np.isin(refused.kinds, follow_ups).any()
    answer(refused, core.Result.ok, 2 * NS_PER_S)
    later = generator.next(3_000, now_ns=3 * NS_PER_S)
    assert np.isin(later.kinds, [Kind.qr_pay, Kind.qr_close]).sum() > 0 and not (later.kinds == Kind.order_refund).any()
    answer(later, core.Result.ok, 3 * NS_PER_S)
    # Refunds only refund_after_s (1 s) after their payment's answer.
    assert not (generator.next(3_000, now_ns=4 * NS_PER_S - 1).kinds == Kind.order_refund).any()
    assert (generator.next(3_000, now_ns=4 * NS_PER_S).kinds == Kind.order_refund).sum() > 0


# ----------------------------------------------------------------------------- payment codes


def codes_workload(seconds=2.0, per_s=2_000.0, users=500, **codes):
    codes = dict({"step_up_ratio": 0.3, "confirm_ratio": 0.5, "decline_ratio": 0.2, "revoke_ratio": 0.2,
                  "confirm_after_s": 0.3}, **codes)
    return Workload(seconds=seconds, population=PopulationSpec(users=users, merchants=20, wallet_balance_minor=500_000),
                    mix=Mix(payment=40, hold=10, qr_order=20, payment_code=40),
                    payments=Payments(hold_s=0.2), codes=Codes(**codes), rate=Rate(per_s=per_s))


def test_code_requests_are_well_formed_and_follow_their_answers():
    """Against the core in process: each code is issued to a wallet with no other live code,
    charged once its answer is in with that code, held for step_up_ratio of them, and the held
    ones confirmed, declined or revoked confirm_after_s after the charge's answer, as drawn."""
    from core.order_keys import order_id

    workload = codes_workload()
    population = Population(workload, run_id=78)
    machine = machine_for(population)
    generator = RequestGenerator(workload, population, seed=6)
    tag = b"%016x" % 78
    issued, charged, held, ended = {}, {}, {}, set()
    counts = {}
    step_ns = NS_PER_S // 10
    for step in range(30):
        now_ns = step * step_ns
        block = generator.next(400, now_ns)
        for frame in block.frames():
            replies = machine.apply(frame.operation, frame.records, 10 * NS_PER_S + now_ns)
            results = runner.result_codes(replies)
            for kind, result in zip(frame.kinds.tolist(), results.tolist()):
                counts[Kind(kind), core.Result(result)] = counts.get((Kind(kind), core.Result(result)), 0) + 1
            if frame.operation == Operation.issue_codes:
                wallets = frame.records["wallet_id_lo"]
                assert len(set(wallets.tolist())) == len(wallets), "distinct wallets in a frame"
                assert (frame.records["wallet_id_hi"] == 78).all() and (frame.records["request_id_hi"] == 78).all()
                assert ((1 <= wallets) & (wallets <= 500)).all() and (frame.records["request_id_lo"] > 0).all()
                for record, reply in zip(frame.records, replies):
                    assert core.Result(int(reply["result"])) == core.Result.ok
                    issued[int(reply["code"])] = (int(record["wallet_id_lo"]), int(record["no_password_limit"]), now_ns)
            elif frame.operation == Operation.charge_codes:
                for record, result in zip(frame.records, results.tolist()):
                    wallet, limit, issued_ns = issued.pop(int(record["code_lo"]))   # each code charged once
                    assert issued_ns < now_ns, "a charge follows its issue's answer"
                    number = bytes(record["out_trade_no"]).rstrip(b"\0")
                    assert number.startswith(tag) and len(number) == 32
                    merchant = int(record["merchant_id_lo"]) | 78 << 64
                    assert int(record["order_id_lo"]) | int(record["order_id_hi"]) << 64 == order_id(merchant, number)
                    stepped = limit != 0 and record["amount"] > limit
                    assert result == (core.Result.user_paying if stepped else core.Result.ok), core.Result(result)
                    key = int(record["order_id_lo"])
                    charged[key] = (wallet, merchant)
                    if stepped:
                        held[key] = now_ns
            else:
                for kind, record, result in zip(frame.kinds.tolist(), frame.records, results.tolist()):
                    if kind not in (Kind.code_confirm, Kind.code_decline, Kind.code_revoke):
                        continue
                    key = int(record["order_id_lo"])
                    assert key not in ended and now_ns >= held[key] + 3 * step_ns, "confirm_after_s after its hold"
                    ended.add(key)
                    if kind == Kind.code_revoke:
                        assert int(record["merchant_id_lo"]) | 78 << 64 == charged[key][1]
                    else:
                        assert int(record["wallet_id_lo"]) == charged[key][0]
                        assert record["flags"] == (core.ConfirmFlags.decline if kind == Kind.code_decline else 0)
                    assert result == core.Result.ok, core.Result(result)
            generator.answered(frame.indexes, frame.kinds, replies, now_ns)
    charges = counts[Kind.code_charge, core.Result.ok] + counts[Kind.code_charge, core.Result.user_paying]
    assert 0.22 < counts[Kind.code_charge, core.Result.user_paying] / charges < 0.38        # step_up_ratio 0.3
    followed = {kind: counts.get((kind, core.Result.ok), 0) for kind in (Kind.code_confirm, Kind.code_decline,
                                                                          Kind.code_revoke)}
    assert followed[Kind.code_confirm] > followed[Kind.code_decline] > 0 and followed[Kind.code_revoke] > 0
    assert sum(followed.values()) < 0.95 * len(held)          # a tenth are left to time out, some not yet due
    summary = generator.codes_summary(3 * NS_PER_S)
    assert summary["held"] == len(held) and summary["charged_at_once"] == charges - len(held)
    assert summary["still_held_at_end"] == len(held) - sum(followed.values()) and summary["timed_out"] == 0
    assert generator.codes_summary(60 * NS_PER_S)["timed_out"] == summary["left_to_time_out"] > 0


# ----------------------------------------------------------------------------- red envelopes


def envelopes_workload(seconds=2.0, per_s=2_000.0, users=500, rate=None, mix=None, **envelopes):
    envelopes = dict({"count": 5, "claimers": 7, "total_min_minor": 5, "total_max_minor": 500,
                      "claim_after_s": 0.3}, **envelopes)
    return Workload(seconds=seconds, population=PopulationSpec(users=users, merchants=20, wallet_balance_minor=500_000),
                    mix=Mix(**(mix or {"payment": 40, "p2p": 10, "red_envelope": 50})),
                    envelopes=Envelopes(**envelopes), rate=rate or Rate(per_s=per_s))


def test_the_setup_makes_an_escrow_account_when_the_mix_has_red_envelopes():
    population = Population(envelopes_workload(), run_id=3)
    accounts = np.concatenate(list(population.account_batches(batch_events=100)))
    assert len(accounts) == population.accounts == 500 + 20 + 1 + 1
    escrow = accounts[accounts["id_lo"] == population.escrow_account]
    assert escrow["code"].tolist() == [core.AccountCode.escrow] and population.escrow_account == 522
    assert escrow["flags"].tolist() == [core.AccountFlags.debits_must_not_exceed_credits]
    assert population.escrow_account_id == 3 << 64 | 522
    # With orders too, after the fee and settlement accounts.
    both = Population(envelopes_workload(mix={"payment": 1, "qr_order": 1, "red_envelope": 1}), run_id=3)
    accounts = np.concatenate(list(both.account_batches()))
    assert both.escrow_account == both.accounts == 500 + 20 + 1 + 1 + 20 + 1
    codes = dict(zip(accounts["id_lo"].tolist(), accounts["code"].tolist()))
    assert (codes[both.fee_account], codes[both.first_settlement], codes[both.escrow_account]) == (
        core.AccountCode.fee, core.AccountCode.settlement, core.AccountCode.escrow)


def test_red_envelope_requests_are_well_formed_and_follow_their_answers():
    """Against the core in process: each packet is a uniform wallet's send into the run's escrow,
    with the id its out_envelope_no gives; once it is answered, claim_after_s later, the claimers
    wallets after its sender claim it, each once: the first count get shares that add up to its
    total, the others are late (envelope_empty); the summary counts what the core answered."""
    from core.order_keys import envelope_id

    workload = envelopes_workload()
    population = Population(workload, run_id=78)
    machine = machine_for(population)
    generator = RequestGenerator(workload, population, seed=6)
    tag = b"%016x" % 78
    packets, claims, counts = {}, {}, {}
    step_ns = NS_PER_S // 10
    for step in range(30):
        now_ns = step * step_ns
        for frame in generator.next(400, now_ns).frames():
            replies = machine.apply(frame.operation, frame.records, 10 * NS_PER_S + now_ns)
            results = runner.result_codes(replies)
            for kind, result in zip(frame.kinds.tolist(), results.tolist()):
                counts[Kind(kind), core.Result(result)] = counts.get((Kind(kind), core.Result(result)), 0) + 1
            if frame.operation == Operation.send_envelopes:
                records = frame.records
                assert (records["escrow_id_lo"] == population.escrow_account).all() and (records["count"] == 5).all()
                assert ((5 <= records["total"]) & (records["total"] <= 500)).all()
                for record, result in zip(records, results.tolist()):
                    number = bytes(record["out_envelope_no"]).rstrip(b"\0")
                    assert number.startswith(tag) and len(number) == 32
                    sender = int(record["sender_id_lo"])
                    packet = int(record["id_lo"]) | int(record["id_hi"]) << 64
                    assert packet == envelope_id(sender | 78 << 64, number) and 1 <= sender <= 500
                    assert result == core.Result.ok
                    packets[packet] = (sender, int(record["total"]), now_ns)
                    claims[packet] = []
            elif frame.operation == Operation.claim_envelopes:
                for record, reply in zip(frame.records, replies):
                    packet = int(record["envelope_id_lo"]) | int(record["envelope_id_hi"]) << 64
                    sender, _, sent_ns = packets[packet]
                    assert now_ns >= sent_ns + 3 * step_ns, "claim_after_s after the send's answer"
                    claimer = int(record["claimer_id_lo"])
                    assert record["claimer_id_hi"] == 78 and claimer != sender
                    assert claimer == 1 + (sender - 1 + len(claims[packet]) + 1) % 500, "the wallets after the sender"
                    claims[packet].append((core.Result(int(reply["result"])), int(reply["position"]),
                                           int(reply["amount"])))
            else:
                assert frame.operation == Operation.create_transfers
            generator.answered(frame.indexes, frame.kinds, replies, now_ns)
    claimed = [packet for packet, made in claims.items() if len(made) == 7]
    assert len(claimed) > 100 and all(len(made) in (0, 7) or packet not in claimed for packet, made in claims.items())
    for packet in claimed:
        made = claims[packet]
        assert [r for r, _, _ in made] == [core.Result.ok] * 5 + [core.Result.envelope_empty] * 2
        assert [p for _, p, _ in made[:5]] == list(range(5))
        assert sum(a for _, _, a in made) == packets[packet][1] and min(a for _, _, a in made[:5]) >= 1
    # A slot is a due claim if any, else a packet: every packet's 7 claims are made or waiting.
    sends, claim_count = sum(v for (k, _), v in counts.items() if k == Kind.envelope_send), \
        sum(v for (k, _), v in counts.items() if k == Kind.envelope_claim)
    summary = generator.envelopes_summary()
    assert summary["packets_sent"] == sends == len(packets) and summary["sends_refused"] == 0
    assert summary["claims_ok"] == counts[Kind.envelope_claim, core.Result.ok]
    assert summary["claims_late"] == counts[Kind.envelope_claim, core.Result.envelope_empty] > 0
    assert summary["claims_refused"] == 0 and summary["packets_emptied"] >= len(claimed)
    assert summary["sent_minor"] == sum(total for _, total, _ in packets.values())
    assert summary["claimed_minor"] == sum(a for made in claims.values() for _, _, a in made)
    assert summary["claims_waiting_at_end"] == 7 * len(packets) - claim_count > 0


def new_years_eve(share):
    """Requests by kind before, in and after a 4x burst at 1 s (0.5 s long), each send answered
    ok at once, with ``share`` of the mix red envelopes."""
    rate = Rate(shape="burst", per_s=2_000.0, burst_at_s=1.0, burst_factor=4.0, burst_s=0.5)
    workload = envelopes_workload(rate=rate, mix={"payment": 100 - share, "red_envelope": share},
                                  claims_at_burst=True, claim_after_s=0.0)
    generator = RequestGenerator(workload, Population(workload, run_id=4), seed=2)
    by_step = []
    for step in range(20):
        now_ns = step * NS_PER_S // 10
        block = generator.next(500, now_ns)
        for frame in block.frames():
            replies = np.zeros(len(frame.kinds), CREATE_REPLY_DTYPES[frame.operation])
            generator.answered(frame.indexes, frame.kinds, replies, now_ns)
        by_step.append(np.bincount(block.kinds, minlength=len(Kind)))
    return [np.sum(by_step[a:b], axis=0) for a, b in ((0, 10), (10, 15), (15, 20))]


def test_on_new_years_eve_packets_wait_for_the_burst_whose_extra_requests_are_their_claims():
    before, burst, after = new_years_eve(share=10)
    assert before[Kind.envelope_claim] == 0 and abs(before[Kind.envelope_send] / 5_000 - 0.1) < 0.02
    # In the burst three quarters of the requests are above the base rate: the packets' claims
    # (7 a packet: more than the burst takes), and the base rate's envelope slots claim too.
    assert burst[Kind.envelope_send] == 0 and abs(burst[Kind.envelope_claim] / 2_500 - (0.75 + 0.25 * 0.1)) < 0.03
    assert after[Kind.envelope_claim] + after[Kind.envelope_send] < 0.15 * 2_500    # back to the base share
    # Fewer packets than the burst's claims: the claims are all taken, the rest of the burst is payments.
    before, burst, _ = new_years_eve(share=2)
    assert burst[Kind.envelope_claim] >= 7 * before[Kind.envelope_send] > 0   # and of those sent in it
    assert burst[Kind.envelope_send] < 0.05 * 2_500 and burst[Kind.payment] > 0.5 * 2_500


# ----------------------------------------------------------------------------- against a server


@pytest.fixture
def server(tmp_path):
    secret = secrets.token_bytes(32)
    process, port = local_server.start(str(tmp_path / "srv"), secret=secret, accounts_max=50_000,
                                       transfers_hot_max=2_000_000)
    yield runner.Target("127.0.0.1", port, 1, secret), str(tmp_path / "srv")
    assert local_server.stop(process) == 0


def fresh_server(tmp_path, name):
    secret = secrets.token_bytes(32)
    process, port = local_server.start(str(tmp_path / name), secret=secret, accounts_max=50_000,
                                       transfers_hot_max=2_000_000)
    return process, runner.Target("127.0.0.1", port, 1, secret)


def replayed_exactly(tmp_path, path):
    """The replay of the trace at ``path`` on a fresh server (another secret), at twice the speed,
    on one connection: its report, every result code as recorded."""
    process, fresh = fresh_server(tmp_path, "fresh")
    try:
        replayed = replay.run(fresh, path, speed=2.0)
    finally:
        assert local_server.stop(process) == 0
    assert replayed["comparison"]["equal"], replayed["comparison"]["differences"]
    return replayed


def test_open_loop_sends_on_schedule_records_and_replays_exactly(server, tmp_path):
    target, _ = server
    path = str(tmp_path / "run.tly")
    workload = small_workload(seconds=2.0, per_s=3_000.0)
    report = runner.run(target, workload, runner.Options(connections=1, record=path, seed=4))
    scheduled = workload.rate.schedule(2.0).total
    assert report["requests"] == {"scheduled": scheduled, "sent": scheduled, "answered": scheduled,
                                  "failed_to_send": 0}
    assert abs(report["achieved_per_s"] - 3_000) / 3_000 < 0.01
    assert sum(report["result_codes"].values()) == scheduled and report["result_codes"]["ok"] > 0.9 * scheduled
    assert set(report["kinds"]) >= {"payment", "p2p", "hold", "refund"}
    assert report["latency_us"]["count"] == scheduled and report["latency_us"]["p50"] > 0
    assert len(report["timeline"]["t_s"]) >= 2 and sum(report["timeline"]["offered_per_s"]) == scheduled
    assert report["distribution"][-1][0] == 100.0

    data = trace.read(path)
    setup_requests = report["config"]["setup_requests"]
    assert len(data) == setup_requests + scheduled and data.complete
    assert (np.diff(data.request_index.astype(np.int64)) == 1).all()
    timed = ~np.isin(data.kind, [Kind.account, Kind.top_up])
    assert timed.sum() == scheduled
    assert data.result_counts(timed)[0] == report["result_codes"]["ok"]
    # Due times are the schedule's: request k at k / rate.
    due_s = data.scheduled_ns[setup_requests:].astype(np.float64) / NS_PER_S
    assert np.allclose(due_s, np.arange(scheduled) / 3_000.0, atol=2e-3)

    # Replayed on a fresh server, in one connection, at twice the speed: the same counts.
    process, fresh = fresh_server(tmp_path, "fresh")
    try:
        replayed = replay.run(fresh, path, speed=2.0)
        again = replay.run(fresh, path, speed=4.0)   # now everything exists already
    finally:
        assert local_server.stop(process) == 0
    assert replayed["comparison"]["equal"], replayed["comparison"]["differences"]
    assert replayed["comparison"]["exact_expected"]
    assert replayed["requests"]["answered"] == scheduled
    assert replayed["duration_s"] == pytest.approx(max(due_s) / 2, rel=0.01)
    # The comparison can fail: a second replay on the same server finds every id taken.
    assert not again["comparison"]["equal"]
    assert again["comparison"]["replayed"]["payment"].get("exists", 0) > 0


def test_a_run_with_merchant_payments_agrees_with_the_server_and_replays_exactly(server, tmp_path):
    target, _ = server
    path = str(tmp_path / "orders.tly")
    workload = orders_workload(seconds=2.0, per_s=2_000.0)
    report = runner.run(target, workload, runner.Options(connections=1, record=path, seed=8))
    kinds, operations = report["kinds"], report["operations"]
    assert report["requests"]["answered"] == workload.rate.schedule(2.0).total
    for operation in ("create_transfers", "create_orders", "pay_orders", "close_orders", "refund_orders"):
        assert operations[operation]["result_codes"].get("ok", 0) > 0, operation
        assert operations[operation]["latency_us"]["count"] == operations[operation]["requests"], operation
    assert sum(entry["requests"] for entry in operations.values()) == report["requests"]["answered"]
    assert operations["pay_orders"]["requests"] == sum(kinds["qr_pay"].values())

    # The server's orders, refunds and fee account, read back, agree with every answer of the run.
    data = trace.read(path)
    fee_account_id = Population(workload, report["config"]["run_id"]).fee_account_id
    side = merchant_side.read_back_from(target, data, fee_account_id)
    assert merchant_side.disagreements(data, side, workload.orders.fee_bps) == []
    figures = merchant_side.figures(side)
    assert figures["orders"] == kinds["qr_create"]["ok"] and figures["paid"] == kinds["qr_pay"]["ok"]
    assert figures["closed_by_merchant"] == kinds["qr_close"]["ok"]
    assert figures["refunds"] == kinds["order_refund"]["ok"] > 0
    assert figures["fee_account_minor"] == figures["fees_taken_minor"] - figures["fees_returned_minor"] > 0
    # The check can fail: an answer the server did not give, or a fee rate it did not apply, shows.
    pays = np.flatnonzero((data.operation == Operation.pay_orders) & (data.result == core.Result.ok))
    data.result[pays[0]] = core.Result.exceeds_credits
    assert any("payments answered ok" in problem for problem in merchant_side.disagreements(data, side, 60))
    data.result[pays[0]] = core.Result.ok
    assert any("fee is not floor" in problem for problem in merchant_side.disagreements(data, side, 61))

    # Replay: a payment waits for its order's create to be answered and carries that answer's token.
    timed = np.flatnonzero(data.scheduled_ns > 0)
    source = replay.TraceSource(data, timed, 1.0)
    first_pay = int(np.argmax(data.operation[timed] == Operation.pay_orders))
    assert source.ready(0, len(timed)) == first_pay
    for frame in source.take(0, first_pay, 0):
        replies = np.zeros(len(frame.kinds), CREATE_REPLY_DTYPES[frame.operation])
        if frame.operation == Operation.create_orders:
            replies["token"] = 7
        source.answered(frame, replies, 0)
    assert source.ready(first_pay, first_pay + 1) == first_pay + 1
    (pay,) = source.take(first_pay, first_pay + 1, 0)
    assert pay.operation == Operation.pay_orders and (pay.records["token"] == 7).all()
    # On a fresh server (another secret: other tokens), one connection: every result code as recorded.
    replayed = replayed_exactly(tmp_path, path)
    assert replayed["comparison"]["replayed"]["qr_pay"] == kinds["qr_pay"]


def test_a_run_with_payment_codes_agrees_with_the_server_and_replays_exactly(server, tmp_path):
    target, _ = server
    path = str(tmp_path / "codes.tly")
    # Wallets enough that none takes its turn again while its code waits to be charged; held
    # charges followed up at once (a loaded machine may answer in half a second).
    workload = codes_workload(seconds=2.0, per_s=2_000.0, users=2_000, confirm_after_s=0.0)
    report = runner.run(target, workload, runner.Options(connections=1, record=path, seed=9))
    kinds, operations = report["kinds"], report["operations"]
    assert report["requests"]["answered"] == workload.rate.schedule(2.0).total
    charges = operations["charge_codes"]["result_codes"]
    assert charges["ok"] > 0 and charges["user_paying"] > 0 and set(charges) == {"ok", "user_paying"}
    assert set(operations["issue_codes"]["result_codes"]) == {"ok"}
    assert operations["confirm_charges"]["result_codes"] == {"ok": sum(kinds["code_confirm"].values())
                                                             + sum(kinds["code_decline"].values())}
    assert kinds["code_confirm"]["ok"] > 0 and kinds["code_revoke"] == {"ok": kinds["code_revoke"]["ok"]}
    codes = report["codes"]
    assert codes["held"] == charges["user_paying"] and codes["charged_at_once"] == charges["ok"]
    assert codes["still_held_at_end"] >= codes["left_to_time_out"] > 0 and codes["timed_out"] == 0
    assert any("still held at the run's end" in note for note in report["notes"])
    # user_paying is an outcome, not a refusal.
    summary = report_module.summary(report)
    assert "not ok" not in summary.split("charge_codes")[1].splitlines()[0] and "codes     " in summary

    # Read back: every charge's order, held ones ended as the run answered, the run's accounts balanced.
    data = trace.read(path)
    population = Population(workload, report["config"]["run_id"])
    side = merchant_side.read_back_from(target, data, population.fee_account_id,
                                        merchant_side.run_accounts(population))
    assert merchant_side.disagreements(data, side, workload.orders.fee_bps) == []
    figures = merchant_side.figures(side)
    assert figures["code_charges"] == charges["ok"] + charges["user_paying"]
    assert figures["code_paid"] == charges["ok"] + kinds["code_confirm"]["ok"]
    assert figures["code_declined"] == kinds["code_decline"]["ok"] and figures["code_revoked"] == kinds["code_revoke"]["ok"]
    assert figures["code_held"] == codes["still_held_at_end"] > 0 and figures["accounts_checked"] == population.accounts
    assert int(side["accounts"]["debits_pending"].astype(object).sum()) > 0    # the holds still held
    # The check can fail: a confirm the server did not apply, a hold it did not release.
    confirms = np.flatnonzero(data.kind == Kind.code_confirm)
    data.result[confirms[0]] = core.Result.order_closed
    assert any("confirmed ok" in problem for problem in merchant_side.disagreements(data, side, 60))
    data.result[confirms[0]] = core.Result.ok
    side["accounts"]["debits_pending"][0] += 1
    assert any("pending debits" in problem for problem in merchant_side.disagreements(data, side, 60))

    # Replay on a fresh server (another secret: other code numbers): each charge carries the
    # code its replayed issue was answered, and every result code is as recorded.
    timed = np.flatnonzero(data.scheduled_ns > 0)
    source = replay.TraceSource(data, timed, 1.0)
    first_charge = int(np.argmax(data.operation[timed] == Operation.charge_codes))
    assert source.ready(0, len(timed)) <= first_charge
    for frame in source.take(0, first_charge, 0):
        replies = np.zeros(len(frame.kinds), CREATE_REPLY_DTYPES[frame.operation])
        if frame.operation == Operation.issue_codes:
            replies["code"] = 11 * 10**16 + frame.indexes
        source.answered(frame, replies, 0)
    (charge,) = source.take(first_charge, first_charge + 1, 0)
    assert source.ready(first_charge, first_charge + 1) == first_charge + 1
    assert charge.operation == Operation.charge_codes and charge.records["code_lo"][0] > 11 * 10**16
    replayed = replayed_exactly(tmp_path, path)
    assert replayed["comparison"]["replayed"]["code_charge"] == kinds["code_charge"]


def test_a_run_with_red_envelopes_agrees_with_the_server_and_replays_exactly(server, tmp_path):
    import time

    target, _ = server
    path = str(tmp_path / "envelopes.tly")
    # Packets live 2 s: those whose claims were not due by the run's end are refunded 2 s after their send.
    workload = envelopes_workload(seconds=2.0, per_s=2_000.0, users=2_000, claim_after_s=0.1, expire_after_s=2)
    report = runner.run(target, workload, runner.Options(connections=1, record=path, seed=10))
    kinds, operations = report["kinds"], report["operations"]
    assert report["requests"]["answered"] == workload.rate.schedule(2.0).total
    assert operations["send_envelopes"]["result_codes"] == {"ok": sum(kinds["envelope_send"].values())}
    claims = operations["claim_envelopes"]["result_codes"]
    assert set(claims) == {"ok", "envelope_empty"} and 2 * claims["ok"] >= 5 * claims["envelope_empty"] > 0   # 5 of 7 get one
    envelopes = report["envelopes"]
    assert envelopes["packets_sent"] == kinds["envelope_send"]["ok"] and envelopes["claims_ok"] == claims["ok"]
    assert envelopes["claims_late"] == claims["envelope_empty"] and envelopes["claims_refused"] == 0
    assert 0 < envelopes["claimed_minor"] < envelopes["sent_minor"] and envelopes["packets_emptied"] > 0
    # envelope_empty is an outcome (the late claimers), not a refusal.
    summary = report_module.summary(report)
    assert "not ok" not in summary.split("claim_envelopes")[1].splitlines()[0] and "envelopes " in summary

    # Read back once the engine has refunded the packets left open: every packet, claim, share and
    # claim transfer as answered, emptied packets' shares summing to their totals, the escrow empty.
    time.sleep(2.5)
    data = trace.read(path)
    assert data.minor_version == trace.TRACE_MINOR_VERSION and (data.claimed_amount[data.operation == Operation.claim_envelopes] > 0).any()
    population = Population(workload, report["config"]["run_id"])
    side = envelope_side.read_back_from(target, data, population.escrow_account_id)
    assert envelope_side.disagreements(data, side) == []
    figures = envelope_side.figures(data, side)
    assert figures["packets"] == envelopes["packets_sent"] and figures["claims"] == claims["ok"]
    assert figures["emptied"] == envelopes["packets_emptied"] and figures["refunded"] > 0 and figures["open"] == 0
    assert figures["escrow_minor"] == 0 and figures["claimed_minor"] + figures["refunded_minor"] == envelopes["sent_minor"]
    merchant = merchant_side.read_back_from(target, data, population.fee_account_id,
                                            merchant_side.run_accounts(population))
    assert merchant_side._ledger_disagreements(data, merchant) == []    # the escrow among the run's accounts
    # The check can fail: a share the server did not answer, a claim it did not take.
    claimed = np.flatnonzero((data.operation == Operation.claim_envelopes) & (data.result == core.Result.ok))
    data.claimed_amount[claimed[0]] += 1
    assert any("remaining + refunded" in problem for problem in envelope_side.disagreements(data, side))
    data.claimed_amount[claimed[0]] -= 1
    data.result[claimed[0]] = core.Result.envelope_empty
    assert any("claimed count" in problem for problem in envelope_side.disagreements(data, side))
    data.result[claimed[0]] = core.Result.ok

    # Replay: a claim waits for its packet's send to be answered; on a fresh server (another
    # secret: other shares) every result code is as recorded. (The run's first request is due at
    # 0, as the setup's: told apart by kind.)
    timed = np.flatnonzero(~np.isin(data.kind, [Kind.account, Kind.top_up]))
    source = replay.TraceSource(data, timed, 1.0)
    first_claim = int(np.argmax(data.operation[timed] == Operation.claim_envelopes))
    assert source.ready(0, len(timed)) <= first_claim
    for frame in source.take(0, first_claim, 0):
        source.answered(frame, np.zeros(len(frame.kinds), CREATE_REPLY_DTYPES[frame.operation]), 0)
    assert source.ready(first_claim, first_claim + 1) == first_claim + 1
    replayed = replayed_exactly(tmp_path, path)
    assert replayed["comparison"]["replayed"]["envelope_claim"] == kinds["envelope_claim"]


def test_an_unexpected_result_code_of_an_order_shows_in_the_report(tmp_path):
    secret = secrets.token_bytes(32)
    # 100 orders in memory keep 50 for unpaid ones (docs/tables.md): orders left to expire (an
    # hour) fill them within the second, and the next creates are refused.
    process, port = local_server.start(str(tmp_path / "small"), secret=secret, accounts_max=10_000,
                                       transfers_hot_max=100_000, orders_max=100)
    try:
        report = runner.run(runner.Target("127.0.0.1", port, 1, secret),
                            orders_workload(seconds=1.0, per_s=1_000.0, expire_ratio=0.9, expire_after_s=3_600),
                            runner.Options(connections=2))
    finally:
        assert local_server.stop(process) == 0
    refused = report["operations"]["create_orders"]["result_codes"].get("orders_limit_reached", 0)
    assert refused > 0 and report["kinds"]["qr_create"]["orders_limit_reached"] == refused
    assert report["result_codes"]["orders_limit_reached"] == refused
    assert f"not ok: orders_limit_reached {refused:,}" in report_module.summary(report)


def test_closed_loop_keeps_frames_in_flight_and_has_no_target(server):
    target, _ = server
    report = runner.run(target, small_workload(seconds=1.0),
                        runner.Options(mode="closed", connections=2, depth=2, frame_events=500))
    assert report["target_per_s"] is None and report["mode"] == "closed"
    answered = report["requests"]["answered"]
    assert answered >= 4 * 500 and answered % 500 == 0 and report["requests"]["failed_to_send"] == 0
    assert report["config"]["depth"] == 2
    # With orders, a lane's 500 requests go as a frame per operation, and follow-ups follow answers.
    report = runner.run(target, orders_workload(seconds=1.0),
                        runner.Options(mode="closed", connections=1, depth=2, frame_events=500))
    assert report["requests"]["answered"] % 500 == 0 and report["requests"]["failed_to_send"] == 0
    assert report["kinds"]["qr_pay"]["ok"] > 0
    assert set(report["result_codes"]) <= {"ok", "exceeds_credits"}   # wallets run dry at the peak


def test_two_workers_merge_their_counts_and_histograms(server):
    target, _ = server
    workload = small_workload(seconds=2.0, per_s=2_000.0)
    report = runner.run(target, workload, runner.Options(connections=2, workers=2))
    scheduled = workload.rate.schedule(2.0).total
    # Each worker has half the rate; together the schedule, within a request per worker.
    assert abs(report["requests"]["answered"] - scheduled) <= 2
    assert report["latency_us"]["count"] == report["requests"]["answered"]
    assert sum(report["timeline"]["answered_per_s"]) == report["requests"]["answered"]


def test_the_load_commands_end_to_end(server, tmp_path):
    target, data_dir = server
    config = tmp_path / "srv" / "config.toml"
    report_dir = tmp_path / "report"
    workload_file = tmp_path / "w.toml"
    workload_file.write_text("seconds = 1\n[population]\nusers = 300\nmerchants = 10\n[rate]\nper_s = 1000\n")
    out = subprocess.run([sys.executable, "-m", "tally", "load", "run", str(workload_file), "--config", str(config),
                          "--port", str(target.port), "--report", str(report_dir), "--json", "--connections", "2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert printed["requests"]["answered"] == 1_000
    with open(report_dir / "report.json") as file:
        assert json.load(file)["requests"] == printed["requests"]
    assert (report_dir / "report.html").read_text().count("<svg") == 3

    bad = subprocess.run([sys.executable, "-m", "tally", "load", "run", str(workload_file), "--config", str(config),
                          "--port", str(target.port), "--rate", "0"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "rate.per_s" in bad.stderr
    missing = subprocess.run([sys.executable, "-m", "tally", "load", "replay", str(tmp_path / "nope.tly"),
                              "--config", str(config), "--port", str(target.port)], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 2 and "nope.tly" in missing.stderr


def test_setup_refusals_name_the_result(tmp_path):
    secret = secrets.token_bytes(32)
    process, port = local_server.start(str(tmp_path / "tiny"), secret=secret, accounts_max=100, transfers_hot_max=10_000)
    try:
        with pytest.raises(runner.LoadError, match="accounts_limit_reached"):
            runner.run(runner.Target("127.0.0.1", port, 1, secret), small_workload(seconds=1.0),
                       runner.Options(connections=1))
    finally:
        assert local_server.stop(process) == 0
    with pytest.raises(runner.LoadError, match="cannot connect"):
        runner.run(runner.Target("127.0.0.1", port, 1, secret), small_workload(seconds=1.0), runner.Options())
    with pytest.raises(runner.LoadError, match="single worker"):
        runner.run(runner.Target("127.0.0.1", port, 1, secret), small_workload(), runner.Options(workers=2,
                                                                                                  record="x.tly"))


# ----------------------------------------------------------------------------- measurement, without a server


class InstantClient:
    """Answers every frame ``ok`` at once, or at ``per_s`` requests a second (one frame at a time)."""

    def __init__(self, per_s=None):
        self.per_s = per_s
        self.lock = None

    async def create_transfers(self, batch):
        import asyncio

        if self.per_s:
            self.lock = self.lock or asyncio.Lock()
            async with self.lock:
                await asyncio.sleep(len(batch) / self.per_s)
        return np.zeros(len(batch), dtype=np.uint32)

    create_accounts = create_transfers

    def close(self):
        pass


def fake_server(monkeypatch, per_s=None):
    async def connect(target, count):
        client = InstantClient(per_s)   # one server: its capacity is shared by the connections
        return [client] * count
    monkeypatch.setattr(runner, "connect", connect)
    return runner.Target("127.0.0.1", 1, 1, b"x" * 32)


def test_latency_is_measured_from_each_requests_due_time_not_one_gap_later(monkeypatch):
    """Request 0 is due at 0 and request k at k / rate: at 10/s a request sent a gap late would
    show 100 ms of latency that no server caused."""
    target = fake_server(monkeypatch)
    report = runner.run(target, small_workload(seconds=1.0, per_s=10.0, users=10), runner.Options(connections=1))
    assert report["requests"]["answered"] == 10
    assert report["latency_us"]["p50"] < 20_000 and report["send_lag_us"]["p50"] < 20_000


def test_a_backlog_past_the_limit_waits_and_its_latency_is_counted(monkeypatch):
    """A server at half the offered rate: requests past the backlog limit wait to be sent, every one
    is sent in the end, and each is timed from its due time (the backlog shows in the latency)."""
    target = fake_server(monkeypatch, per_s=1_000.0)
    monkeypatch.setattr(runner, "BACKLOG_REQUESTS_MAX", 200)
    report = runner.run(target, small_workload(seconds=2.0, per_s=2_000.0, users=50),
                        runner.Options(connections=1))
    assert report["requests"]["sent"] == report["requests"]["answered"] == 4_000
    # The last request was due at 2 s and answered at about 4 s: the backlog is in the latency.
    assert report["latency_us"]["max"] > 1_500_000 and report["latency_us"]["p50"] > 500_000
    assert report["achieved_per_s"] < 1_200          # only what the server answered within the 2 s


def test_achieved_counts_only_answers_within_a_fractional_window(monkeypatch):
    target = fake_server(monkeypatch, per_s=1_000.0)
    report = runner.run(target, small_workload(seconds=0.6, per_s=2_000.0, users=50), runner.Options(connections=1))
    assert report["achieved_per_s"] <= 1_100         # the server's rate, not answers over ceil(0.6)


def test_a_failed_run_leaves_its_trace_unfinished(monkeypatch, tmp_path):
    class Refusing(InstantClient):
        async def create_accounts(self, batch):
            return np.full(len(batch), core.Result.accounts_limit_reached, dtype=np.uint32)

    async def connect(target, count):
        return [Refusing() for _ in range(count)]
    monkeypatch.setattr(runner, "connect", connect)
    path = tmp_path / "failed.tly"
    with pytest.raises(runner.LoadError, match="accounts_limit_reached"):
        runner.run(runner.Target("h", 1, 1, b"x"), small_workload(), runner.Options(connections=1, record=str(path)))
    assert not path.exists()
    with pytest.raises(trace.TraceError):
        trace.read(str(path) + ".partial")
    assert len(trace.read(str(path) + ".partial", allow_truncated=True)) > 0


def test_follow_ups_skip_what_the_server_refused():
    workload = small_workload(hold_s=0.0, refund_after_s=0.0, payment=1, hold=1, refund=1)
    generator = RequestGenerator(workload, Population(workload, run_id=1), seed=2)
    indexes, batch, kinds = generator.next(3_000, now_ns=0)
    refused = np.isin(kinds, [Kind.payment, Kind.hold])
    generator.answered(indexes, kinds, np.where(refused, core.Result.exceeds_credits, 0).astype(np.uint32))
    _, later, later_kinds = generator.next(3_000, now_ns=NS_PER_S)
    # Every earlier payment and hold was refused: nothing to refund or resolve.
    assert not np.isin(later_kinds, [Kind.capture, Kind.void, Kind.refund]).any()


def test_the_demo_runs_merchant_payments_and_reads_them_back(tmp_path, capsys):
    from tally import demo

    assert demo.run(str(tmp_path / "demo"), seconds=2.0, rate_per_s=1_500.0, users=2_000) == 0
    out = capsys.readouterr().out
    assert "create_orders" in out and "pay_orders" in out and "refund_orders" in out and "charge_codes" in out
    assert "payment codes:" in out and "the run's accounts balance" in out
    assert "merchant side (read back from the server)" in out
    assert "every order's state, every refund and the fee account agree" in out and "DISAGREES" not in out
    assert "state hash of the live server" in out and "equal" in out
    # Red envelopes: sent before the burst, claimed in it, read back; then a table per product.
    assert "send_envelopes" in out and "claim_envelopes" in out and "red envelopes (read back from the server)" in out
    assert "every packet, claim, share and claim transfer agrees" in out
    table = out.split("per product:")[1].splitlines()
    rows = {line[:15].strip(): line[15:].split() for line in table[3:7]}
    assert list(rows) == ["QR orders", "payment codes", "refunds", "red envelopes"]
    for product, cells in rows.items():
        requests, ok, outcomes, refused = (int(cell.replace(",", "")) for cell in cells[:4])
        assert requests == ok + outcomes + refused and ok > 0, product
    assert int(rows["red envelopes"][2].replace(",", "")) > 0     # the late claimers (envelope_empty)


def test_the_demo_refuses_a_directory_that_is_not_its_own(tmp_path):
    from tally import demo

    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "data.mdb").write_bytes(b"x")
    assert "not a tally demo directory" in demo._prepare(str(tmp_path / "precious"))
    assert (tmp_path / "precious" / "data.mdb").exists()
    (tmp_path / "file").write_text("x")
    assert "not a directory" in demo._prepare(str(tmp_path / "file"))
    mine = tmp_path / "mine"
    assert demo._prepare(str(mine)) is None and (mine / demo.MARKER).exists()
    (mine / "server").mkdir()
    (mine / "server" / "data.mdb").write_bytes(b"old")
    assert demo._prepare(str(mine)) is None and not (mine / "server").exists()
