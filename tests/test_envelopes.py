"""Red envelopes (docs/products.md "Red envelopes"): send into escrow, claims drawn by the
double-mean rule (each ≥ 1, summing exactly to the total, the last takes the rest), once per
claimer, a hot packet claimed by many in one batch, the refund of the rest at expiry by the
engine clock (at a batch's start, bounded per batch), every documented result code with the
ledger untouched, and packets and claims through the store's eviction to the cold tier,
recovery after a restart and replay of the log."""

import numpy as np

import core
from core import EnvelopeState, Result
from core import replay_log
from core.envelopes import claim_transfer_id, share_bounds
from core.machine import Machine
from core.operations import Operation
from core.order_keys import claim_id, claim_transfer_ids, envelope_claims, envelope_id, envelope_sends
from core.orders import leg_id

SECRET = bytes(range(32))
T0 = 1_700_000_000 * 10**9
S = 10**9
DAY = 86_400 * S
CNY, USD = 156, 840
FUNDING, ESCROW, SENDER, POOR, DOLLARS, USD_ESCROW, NOT_ESCROW, CLOSED = 1, 2, 3, 4, 5, 6, 7, 8
CLAIMERS = list(range(100, 140))
ACCOUNTS = [
    {"id": FUNDING, "ledger": CNY, "code": 3},
    {"id": ESCROW, "ledger": CNY, "code": 4, "flags": 2},
    {"id": SENDER, "ledger": CNY, "code": 1, "flags": 2},
    {"id": POOR, "ledger": CNY, "code": 1, "flags": 2},
    {"id": DOLLARS, "ledger": USD, "code": 1},
    {"id": USD_ESCROW, "ledger": USD, "code": 4},
    {"id": NOT_ESCROW, "ledger": CNY, "code": 2},
    {"id": CLOSED, "ledger": CNY, "code": 1, "flags": 8},
] + [{"id": c, "ledger": CNY, "code": 1} for c in CLAIMERS]
FUNDS = 10**7


def machine(**capacities):
    m = Machine(accounts_max=64, transfers_hot_max=1 << 14, secret=SECRET, **capacities)
    assert not m.apply(Operation.create_accounts, core.accounts_from_dicts(ACCOUNTS), T0).any()
    fund = core.transfers_from_dicts([{"id": 500, "debit_account_id": FUNDING, "credit_account_id": SENDER,
                                       "amount": FUNDS, "ledger": CNY, "code": 4}])
    assert not m.apply(Operation.create_transfers, fund, T0).any()
    return m


def send(m, now, number=b"E-1", total=10_000, count=10, **fields):
    row = dict({"sender_id": SENDER, "escrow_id": ESCROW, "total": total, "count": count,
                "out_envelope_no": number, "ledger": CNY}, **fields)
    return Result(int(m.apply(Operation.send_envelopes, envelope_sends([row]), now)[0]))


def claim(m, now, claimers, number=b"E-1", sender=SENDER):
    eid = envelope_id(sender, number)
    reply = m.apply(Operation.claim_envelopes,
                    envelope_claims([{"envelope_id": eid, "claimer_id": c} for c in claimers]), now)
    return [(Result(int(r)), int(p), int(a)) for r, p, a in zip(reply["result"], reply["position"], reply["amount"])]


def packet(m, number=b"E-1", sender=SENDER):
    return core.to_dicts(m.lookup_envelopes([envelope_id(sender, number)]))[0]


def balances(m, *accounts):
    return [(int(r["debits_posted"]), int(r["credits_posted"])) for r in m.ledger.lookup_accounts(list(accounts))]


def pulse(m, now):
    """A batch with no events at engine time ``now``: its start refunds what is due."""
    return m.apply(Operation.create_transfers, np.empty(0, dtype=core.TRANSFER_DTYPE), now)


def test_a_packet_is_claimed_in_shares_that_sum_to_its_total():
    m = machine()
    assert send(m, T0 + S) is Result.ok
    assert balances(m, SENDER, ESCROW) == [(10_000, FUNDS), (0, 10_000)]
    replies = claim(m, T0 + 2 * S, CLAIMERS[:10])
    assert [r for r, _, _ in replies] == [Result.ok] * 10
    assert [p for _, p, _ in replies] == list(range(10))
    shares = [a for _, _, a in replies]
    assert sum(shares) == 10_000 and min(shares) >= 1
    p = packet(m)
    assert (p["state"], p["claimed"], p["remaining"], p["ended_at"] > 0) == (EnvelopeState.EMPTY, 10, 0, True)
    assert balances(m, ESCROW) == [(10_000, 10_000)]
    assert [b[1] for b in balances(m, *CLAIMERS[:10])] == shares
    # Who claimed what, when: the claim transfers by position.
    rows = m.ledger.lookup_transfers(claim_transfer_ids(envelope_id(SENDER, b"E-1"), 10))
    assert [int(r["credit_account_id_lo"]) for r in rows] == CLAIMERS[:10]
    assert [int(r["amount"]) for r in rows] == shares
    assert all(int(r["code"]) == core.TransferCode.red_envelope_claim for r in rows)
    # The claim record, by claim id.
    record = core.to_dicts(m.lookup_envelope_claims([claim_id(envelope_id(SENDER, b"E-1"), CLAIMERS[3])]))[0]
    assert (record["claimer_id"], record["position"], record["amount"]) == (CLAIMERS[3], 3, shares[3])
    assert record["transfer_id"] == claim_transfer_id(envelope_id(SENDER, b"E-1"), 3)
    # The 11th: empty, nothing moves.
    assert claim(m, T0 + 3 * S, [CLAIMERS[10]]) == [(Result.envelope_empty, 0, 0)]


def test_many_packets_and_claims_ids_at_once_are_the_scalar_ones():
    from core.order_keys import claim_ids, envelope_ids

    senders = np.array([[SENDER, 0], [7, 1 << 63], [2**64 - 1, 5]], dtype=np.uint64)
    numbers = np.zeros((3, 32), dtype=np.uint8)
    for row, number in enumerate((b"E-1", b"x" * 32, b"20261231-2359")):
        numbers[row, :len(number)] = np.frombuffer(number, dtype=np.uint8)
    packets = envelope_ids(senders, numbers)
    as_int = [int(lo) | int(hi) << 64 for lo, hi in packets]
    assert as_int == [envelope_id(int(lo) | int(hi) << 64, bytes(n).rstrip(b"\0"))
                      for (lo, hi), n in zip(senders, numbers)]
    claimers = np.array([[CLAIMERS[0], 0], [1, 2], [3, 4]], dtype=np.uint64)
    assert [int(lo) | int(hi) << 64 for lo, hi in claim_ids(packets, claimers)] == [
        claim_id(packet_id, int(lo) | int(hi) << 64) for packet_id, (lo, hi) in zip(as_int, claimers)]


def test_each_share_is_drawn_within_the_double_mean_bounds():
    m = machine()
    assert send(m, T0 + S, total=1000, count=7) is Result.ok
    remaining, left = 1000, 7
    for k, claimer in enumerate(CLAIMERS[:7]):
        ((result, position, amount),) = claim(m, T0 + 2 * S + k, [claimer])
        low, high = share_bounds(remaining, left)
        assert result is Result.ok and position == k and low <= amount <= high
        remaining, left = remaining - amount, left - 1
    assert remaining == 0


def test_a_count_equal_to_the_total_gives_every_claimer_one_unit():
    m = machine()
    assert send(m, T0 + S, total=5, count=5) is Result.ok
    assert [a for _, _, a in claim(m, T0 + 2 * S, CLAIMERS[:5])] == [1] * 5


def test_a_retried_claim_answers_its_place_and_share_and_changes_nothing():
    m = machine()
    assert send(m, T0 + S) is Result.ok
    first = claim(m, T0 + 2 * S, CLAIMERS[:2])
    before = balances(m, ESCROW, *CLAIMERS[:2])
    again = claim(m, T0 + 3 * S, CLAIMERS[:2])
    assert [(Result.exists, p, a) for _, p, a in first] == again
    assert balances(m, ESCROW, *CLAIMERS[:2]) == before
    assert packet(m)["claimed"] == 2
    # The same claimer twice in one batch: the second is the retry.
    m2 = machine()
    assert send(m2, T0 + S) is Result.ok
    ((r1, p1, a1), (r2, p2, a2)) = claim(m2, T0 + 2 * S, [CLAIMERS[0], CLAIMERS[0]])
    assert (r1, r2, p1, p2, a1) == (Result.ok, Result.exists, 0, 0, a2)


def test_a_hot_packet_claimed_by_thousands_in_one_batch_comes_out_exact():
    count, claimers = 1000, 8000
    m = Machine(accounts_max=claimers + 16, transfers_hot_max=1 << 15, claims_max=1 << 14, secret=SECRET)
    accounts = ACCOUNTS[:4] + [{"id": 10_000 + i, "ledger": CNY, "code": 1} for i in range(claimers)]
    assert not m.apply(Operation.create_accounts, core.accounts_from_dicts(accounts), T0).any()
    fund = core.transfers_from_dicts([{"id": 500, "debit_account_id": FUNDING, "credit_account_id": SENDER,
                                       "amount": FUNDS, "ledger": CNY, "code": 4}])
    assert not m.apply(Operation.create_transfers, fund, T0).any()
    assert send(m, T0 + S, total=20_000, count=count) is Result.ok
    reply = m.apply(Operation.claim_envelopes, envelope_claims(
        [{"envelope_id": envelope_id(SENDER, b"E-1"), "claimer_id": 10_000 + i} for i in range(claimers)]), T0 + 2 * S)
    ok = reply["result"] == Result.ok
    assert ok.sum() == count and (reply["result"][~ok] == Result.envelope_empty).all()
    assert np.flatnonzero(ok).tolist() == list(range(count))  # the first thousand, in batch order
    assert sorted(reply["position"][ok].tolist()) == list(range(count))
    assert int(reply["amount"][ok].sum()) == 20_000 and int(reply["amount"][ok].min()) >= 1
    assert balances(m, ESCROW) == [(20_000, 20_000)]


def test_the_rest_returns_to_the_sender_at_expiry_by_the_clock():
    m = machine()
    assert send(m, T0, total=10_000, count=10, expire_after_s=60) is Result.ok
    expires_at = packet(m)["expires_at"]
    assert expires_at == packet(m)["timestamp"] + 60 * S and m.next_expiry_ns == expires_at
    claim(m, T0 + S, CLAIMERS[:3])
    assert m.ledger.start_legs(expires_at - 1) == 0 and m.ledger.start_legs(expires_at) == 1
    # Up to the last nanosecond a claim is taken; at expires_at it is not.
    assert claim(m, expires_at - 1, [CLAIMERS[3]])[0][0] is Result.ok
    claimed = packet(m)["total"] - packet(m)["remaining"]
    # A claim in the batch whose start refunds: refused, and the refund came first.
    assert claim(m, expires_at, [CLAIMERS[4]])[0][0] is Result.envelope_expired
    p = packet(m)
    assert (p["state"], p["refunded"], p["remaining"]) == (EnvelopeState.REFUNDED, 10_000 - claimed, 0)
    assert balances(m, ESCROW) == [(10_000, 10_000)]
    assert balances(m, SENDER) == [(10_000, FUNDS + 10_000 - claimed)]
    refund = m.ledger.lookup_transfers([leg_id(envelope_id(SENDER, b"E-1"), Operation.send_envelopes, 1)])
    assert int(refund["amount"][0]) == 10_000 - claimed
    assert int(refund["code"][0]) == core.TransferCode.red_envelope_refund
    assert int(refund["timestamp"][0]) == p["ended_at"] < m.ledger.last_timestamp  # before the batch's events
    assert m.next_expiry_ns == 0
    assert claim(m, expires_at + S, [CLAIMERS[5]])[0][0] is Result.envelope_expired


def test_an_emptied_packet_is_not_refunded_and_leaves_the_heap():
    m = machine()
    assert send(m, T0, total=100, count=2, expire_after_s=60) is Result.ok
    claim(m, T0 + S, CLAIMERS[:2])
    assert m.next_expiry_ns == 0 and m.ledger.start_legs(T0 + DAY) == 0
    pulse(m, T0 + DAY)
    assert packet(m)["state"] == EnvelopeState.EMPTY and packet(m)["refunded"] == 0


def test_refunds_at_a_batch_start_are_bounded_and_the_rest_follow():
    per_batch = core.constants.ENVELOPE_REFUNDS_PER_BATCH_MAX
    packets = per_batch + 44
    m = Machine(accounts_max=64, transfers_hot_max=1 << 14, secret=SECRET)
    assert not m.apply(Operation.create_accounts, core.accounts_from_dicts(ACCOUNTS), T0).any()
    fund = core.transfers_from_dicts([{"id": 500, "debit_account_id": FUNDING, "credit_account_id": SENDER,
                                       "amount": FUNDS, "ledger": CNY, "code": 4}])
    assert not m.apply(Operation.create_transfers, fund, T0).any()
    rows = [{"sender_id": SENDER, "escrow_id": ESCROW, "total": 10, "count": 2, "ledger": CNY,
             "out_envelope_no": f"B-{i}".encode(), "expire_after_s": 60 + i % 3} for i in range(packets)]
    assert not m.apply(Operation.send_envelopes, envelope_sends(rows), T0).any()
    assert m.ledger.start_legs(T0 + DAY) == per_batch
    transfers_before = m.ledger.transfer_count
    pulse(m, T0 + DAY)
    assert m.ledger.transfer_count - transfers_before == per_batch
    assert m.ledger.start_legs(T0 + DAY + 1) == 44
    pulse(m, T0 + DAY + 1)
    states = [r["state"] for r in m.lookup_envelopes([envelope_id(SENDER, r["out_envelope_no"]) for r in rows])]
    assert states == [EnvelopeState.REFUNDED] * packets
    assert balances(m, ESCROW) == [(10 * packets, 10 * packets)]
    assert balances(m, SENDER)[0][1] == FUNDS + 10 * packets


def test_a_refund_the_ledger_refuses_leaves_the_money_in_escrow_with_its_result():
    m = machine()
    # The sender's account may hold no more credits than debits: a refund would break it once
    # its credits grew (the funding below), so the refund leg is refused.
    accounts = core.accounts_from_dicts([{"id": 60, "ledger": CNY, "code": 1, "flags": 4}])
    assert not m.apply(Operation.create_accounts, accounts, T0).any()
    fund = core.transfers_from_dicts([
        {"id": 501, "debit_account_id": 60, "credit_account_id": FUNDING, "amount": 1000, "ledger": CNY, "code": 4}])
    assert not m.apply(Operation.create_transfers, fund, T0).any()
    assert send(m, T0, total=500, count=2, sender_id=60, expire_after_s=60) is Result.ok
    back = core.transfers_from_dicts([
        {"id": 502, "debit_account_id": FUNDING, "credit_account_id": 60, "amount": 1200, "ledger": CNY, "code": 4}])
    assert not m.apply(Operation.create_transfers, back, T0 + S).any()
    pulse(m, packet(m, sender=60)["expires_at"])
    p = packet(m, sender=60)
    assert (p["state"], p["refund_result"], p["refunded"], p["remaining"]) == (
        EnvelopeState.REFUND_FAILED, Result.exceeds_debits, 0, 500)
    assert balances(m, ESCROW) == [(0, 500)]
    assert m.next_expiry_ns == 0


def test_bad_sends_get_their_codes_and_leave_the_ledger_untouched():
    m = machine()
    before = balances(m, SENDER, ESCROW, POOR)
    good = {"sender_id": SENDER, "escrow_id": ESCROW, "total": 100, "count": 2, "out_envelope_no": b"X", "ledger": CNY}
    cases = [
        ({"flags": 1}, Result.reserved_flag),
        ({"timestamp": 5}, Result.timestamp_must_be_zero),
        ({"total": 0}, Result.amount_must_not_be_zero),
        ({"ledger": 0}, Result.ledger_must_not_be_zero),
        ({"out_envelope_no": b"bad no"}, Result.out_trade_no_invalid),
        ({"id": 12345}, Result.id_mismatch),
        ({"total": 20_001, "count": 2}, Result.envelope_total_out_of_range),
        ({"count": 0}, Result.envelope_count_out_of_range),
        ({"count": 101}, Result.envelope_count_out_of_range),
        ({"total": 20_000, "count": 10_001}, Result.envelope_count_out_of_range),
        ({"expire_after_s": 86_401}, Result.expire_after_out_of_range),
        ({"sender_id": 999}, Result.payer_not_found),
        ({"ledger": USD}, Result.currency_mismatch),
        ({"escrow_id": 999}, Result.escrow_invalid),
        ({"escrow_id": NOT_ESCROW}, Result.escrow_invalid),
        ({"escrow_id": USD_ESCROW}, Result.escrow_invalid),
        ({"sender_id": POOR}, Result.exceeds_credits),
    ]
    for change, expected in cases:
        row = dict(good, **change)
        if "id" not in change and "out_envelope_no" not in change:
            row["out_envelope_no"] = f"X{expected.value}".encode()
        if change.get("out_envelope_no") == b"bad no":
            row["id"] = 1
        batch = envelope_sends([row])
        if "reserved" in change:
            continue
        assert Result(int(m.apply(Operation.send_envelopes, batch, T0 + S)[0])) is expected, (change, expected)
    reserved = envelope_sends([dict(good)])
    reserved.view(np.uint8).reshape(-1, 128)[0, 110] = 1
    assert Result(int(m.apply(Operation.send_envelopes, reserved, T0 + S)[0])) is Result.reserved_field
    forbidden = envelope_sends([dict(good)])
    forbidden["flags"] = core.records.EVENT_FLAG_FORBIDDEN_BIT
    assert Result(int(m.apply(Operation.send_envelopes, forbidden, T0 + S)[0])) is Result.forbidden
    assert balances(m, SENDER, ESCROW, POOR) == before and m.envelopes.envelope_count == 0


def test_a_retried_send_exists_and_a_changed_one_is_refused():
    m = machine()
    assert send(m, T0 + S) is Result.ok
    assert send(m, T0 + 2 * S) is Result.exists
    assert send(m, T0 + 2 * S, total=9_999) is Result.exists_with_different_fields
    assert send(m, T0 + 2 * S, expire_after_s=60) is Result.exists_with_different_fields
    assert balances(m, SENDER) == [(10_000, FUNDS)]


def test_bad_claims_get_their_codes_and_leave_the_ledger_untouched():
    m = machine()
    assert send(m, T0 + S) is Result.ok
    eid = envelope_id(SENDER, b"E-1")
    before = balances(m, ESCROW, CLOSED, DOLLARS)
    cases = [
        ({"envelope_id": 0}, Result.id_must_not_be_zero),
        ({"envelope_id": 77}, Result.envelope_not_found),
        ({"claimer_id": 999}, Result.claimer_not_found),
        ({"claimer_id": DOLLARS}, Result.currency_mismatch),
        ({"claimer_id": CLOSED}, Result.credit_account_closed),
        ({"claimer_id": ESCROW}, Result.product_account),
        ({"flags": 2}, Result.reserved_flag),
        ({"timestamp": 1}, Result.timestamp_must_be_zero),
    ]
    for change, expected in cases:
        batch = envelope_claims([dict({"envelope_id": eid, "claimer_id": CLAIMERS[0]}, **change)])
        reply = m.apply(Operation.claim_envelopes, batch, T0 + 2 * S)
        assert (Result(int(reply["result"][0])), int(reply["amount"][0])) == (expected, 0), change
    assert balances(m, ESCROW, CLOSED, DOLLARS) == before and packet(m)["claimed"] == 0


def test_limits_open_packets_and_the_total_cap_by_set_limits():
    m = machine(envelopes_max=8)
    open_max = m.envelopes.open_max
    for i in range(open_max):
        assert send(m, T0 + S, number=f"L-{i}".encode(), total=10, count=1) is Result.ok
    assert send(m, T0 + S, number=b"L-x", total=10, count=1) is Result.envelopes_limit_reached
    limits = np.zeros(1, dtype=core.records.LIMITS_DTYPE)
    limits["envelope_total"] = 50_000
    assert not m.apply(Operation.set_limits, limits, T0 + S).any()
    claim(m, T0 + 2 * S, [CLAIMERS[0]], number=b"L-0")  # emptied: its place is free
    assert send(m, T0 + 3 * S, number=b"L-y", total=50_000, count=1) is Result.ok
    assert m.limits.current()["envelope_total"] == 50_000
    limits["envelope_total"] = core.constants.ENVELOPE_TOTAL_LIMIT_MAX + 1
    assert Result(int(m.apply(Operation.set_limits, limits, T0 + 4 * S)[0])) is Result.limit_out_of_range


def test_shares_are_the_same_in_replay_and_differ_with_the_secret():
    def shares(secret):
        m = Machine(accounts_max=64, transfers_hot_max=1 << 14, secret=secret)
        assert not m.apply(Operation.create_accounts, core.accounts_from_dicts(ACCOUNTS), T0).any()
        fund = core.transfers_from_dicts([{"id": 500, "debit_account_id": FUNDING, "credit_account_id": SENDER,
                                           "amount": FUNDS, "ledger": CNY, "code": 4}])
        assert not m.apply(Operation.create_transfers, fund, T0).any()
        assert send(m, T0 + S, total=20_000, count=20) is Result.ok
        return [a for _, _, a in claim(m, T0 + 2 * S, CLAIMERS[:20])]
    assert shares(SECRET) == shares(SECRET)
    assert shares(SECRET) != shares(bytes(32))


def _store(path, **options):
    return core.open(str(path), accounts_max=64, transfers_hot_max=4096, cold_epoch_transfers=256, envelopes_max=32,
                     claims_max=32, secret=SECRET, clock_ns=lambda: T0, **options)


def test_packets_and_claims_survive_eviction_recovery_and_replay(tmp_path):
    store = _store(tmp_path / "a")
    assert not store.submit(Operation.create_accounts, core.accounts_from_dicts(ACCOUNTS), T0).result().any()
    fund = core.transfers_from_dicts([{"id": 500, "debit_account_id": FUNDING, "credit_account_id": SENDER,
                                       "amount": FUNDS, "ledger": CNY, "code": 4}])
    assert not store.create_transfers(fund, T0).any()
    # 60 packets of one share (more than the tables hold), each claimed at once (so evictable),
    # and 5 of three shares claimed once: refunded a day later.
    now = T0 + S
    for i in range(65):
        sent = store.send_envelopes(envelope_sends([{"sender_id": SENDER, "escrow_id": ESCROW, "total": 100,
                                                     "count": 1 if i < 60 else 3, "out_envelope_no": f"S-{i}".encode(),
                                                     "ledger": CNY}]), now)
        assert sent.tolist() == [0]
        reply = store.claim_envelopes(envelope_claims([{"envelope_id": envelope_id(SENDER, f"S-{i}".encode()),
                                                        "claimer_id": CLAIMERS[i % 40]}]), now + 1)
        assert reply["result"].tolist() == [0]
        now += S
    # An old claim retried after its records left memory: exists, with its share.
    first = envelope_id(SENDER, b"S-0")
    old = store.claim_envelopes(envelope_claims([{"envelope_id": first, "claimer_id": CLAIMERS[0]}]), now)
    assert old["result"].tolist() == [Result.exists]
    kept = core.to_dicts(store.lookup_envelope_claims([claim_id(first, CLAIMERS[0])]))[0]
    assert int(old["amount"][0]) == kept["amount"] and int(old["position"][0]) == 0
    stats = store.stats()
    assert stats["envelopes_resident"] <= 32 and stats["claims_resident"] <= 32 and stats["envelopes"] == 65
    assert stats["envelopes_open"] == 5
    # A day later the five open ones are refunded (the server's pulse when idle).
    assert store.pulse(now + DAY) is not None
    packets = store.lookup_envelopes([envelope_id(SENDER, f"S-{i}".encode()) for i in range(65)])
    assert (packets["state"][:60] == EnvelopeState.EMPTY).all()
    assert (packets["state"][60:] == EnvelopeState.REFUNDED).all() and (packets["refunded"][60:] > 0).all()
    escrow = store.lookup_accounts([ESCROW])[0]
    assert int(escrow["debits_posted"]) == int(escrow["credits_posted"]) == 6500
    assert store.pulse(now + DAY + S) is None  # nothing due any more
    state_hash = store.state_hash()
    store.close()
    reopened = _store(tmp_path / "a")
    assert reopened.state_hash() == state_hash
    again = reopened.claim_envelopes(envelope_claims([{"envelope_id": first, "claimer_id": CLAIMERS[0]}]), now + DAY)
    assert again["result"].tolist() == [Result.exists] and int(again["amount"][0]) == kept["amount"]
    reopened.close()
    assert replay_log.run(str(tmp_path / "a"), str(tmp_path / "b"))["equal"]


def test_a_retried_transfer_is_found_when_refunds_take_room_at_the_batch_start(tmp_path):
    # The prefetch scan must evict the room the batch's start takes too: a transfer evicted after
    # the scan was neither hot nor prefetched, and its retry was applied a second time.
    store = core.open(str(tmp_path / "a"), accounts_max=64, transfers_hot_max=1024, cold_epoch_transfers=128,
                      secret=SECRET, clock_ns=lambda: T0)
    assert not store.submit(Operation.create_accounts, core.accounts_from_dicts(ACCOUNTS), T0).result().any()
    fund = core.transfers_from_dicts([{"id": 500, "debit_account_id": FUNDING, "credit_account_id": SENDER,
                                       "amount": FUNDS, "ledger": CNY, "code": 4}])
    assert not store.create_transfers(fund, T0).any()
    sends = envelope_sends([{"sender_id": SENDER, "escrow_id": ESCROW, "total": 100, "count": 2, "ledger": CNY,
                             "out_envelope_no": f"R{i}".encode(), "expire_after_s": 60} for i in range(50)])
    assert not store.send_envelopes(sends, T0 + S).any()
    first = store.ledger.transfer_count

    def row(i):
        return {"id": 10**6 + i, "debit_account_id": CLAIMERS[i % 40], "credit_account_id": CLAIMERS[(i + 1) % 40],
                "amount": 1, "ledger": CNY, "code": 4}
    topups = core.transfers_from_dicts([{"id": 600 + i, "debit_account_id": FUNDING, "credit_account_id": c,
                                         "amount": 1000, "ledger": CNY, "code": 4} for i, c in enumerate(CLAIMERS)])
    assert not store.create_transfers(topups, T0 + S).any()
    first = store.ledger.transfer_count
    for b in range(0, 1500, 100):
        assert not store.create_transfers(core.transfers_from_dicts([row(i) for i in range(b, b + 100)]), T0 + 2 * S).any()
    assert store.ledger.start_legs(T0 + 120 * S) == 50
    target = store.ledger.hot_first + 1 - first  # hot during the scan, evicted by the refunds' room
    before = store.lookup_accounts([CLAIMERS[target % 40]])[0]
    assert store.create_transfers(core.transfers_from_dicts([row(target)]), T0 + 120 * S).tolist() == [Result.exists]
    after = store.lookup_accounts([CLAIMERS[target % 40]])[0]
    assert int(after["debits_posted"]) == int(before["debits_posted"])
    store.close()


def test_a_product_account_may_not_send_or_claim():
    m = machine()
    accounts = core.accounts_from_dicts([{"id": 70, "ledger": CNY, "code": 7}, {"id": 71, "ledger": CNY, "code": 6}])
    assert not m.apply(Operation.create_accounts, accounts, T0).any()
    assert send(m, T0 + S) is Result.ok
    before = balances(m, ESCROW, 70, 71)
    assert send(m, T0 + S, number=b"E-2", sender_id=ESCROW, escrow_id=ESCROW) is Result.product_account
    assert send(m, T0 + S, number=b"E-3", sender_id=70) is Result.product_account
    assert claim(m, T0 + 2 * S, [70, 71]) == [(Result.product_account, 0, 0)] * 2
    assert balances(m, ESCROW, 70, 71) == before
