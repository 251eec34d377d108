"""Properties of orders: the compiled core (``core.machine.Machine``, ``core.orders``) behaves exactly
like the reference model (tests/model.py, written from docs/products.md "Orders: the reference").

Random mixes of batches — accounts (wallets that may not go negative, merchants, a closed one),
funding transfers, ``create_orders`` (valid; wrong id, bad ``out_trade_no``, bad expiry, unknown
merchant, wrong currency; duplicates and retries with the same or different fields),
``pay_orders`` (right and wrong token, wrong amount, payers without the funds, retries, another
payer, unknown orders), ``close_orders`` (right and wrong merchant), empty batches, and an engine
clock that jumps so that orders expire, sometimes to the very nanoseconds around an expiry — run
through both; after every batch the results, the tokens, every account, every order, every
transfer (the pay legs included), the account histories and the activity features must be
identical. Separately, on the core alone: money is conserved per ledger, wallets never go
negative, an order is paid at most once and exactly when it is ``SUCCESS``, the clock closes
every unpaid order in the end, and a retried batch changes nothing.

The model's own order rules are pinned first by a few plain tests that need no compiled core.
"""

import hashlib
import hmac

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import core
from tests.model import (CLOSE_BY_MERCHANT, CLOSE_EXPIRED, CLOSED, LEGS_MAX, NOTPAY, SUCCESS, U64, U128,
                         ModelLedger, R, leg_id, order_id, out_trade_no_valid, token_of)

import core.machine
import core.orders

NS = 1_000_000_000
START_NS = 1_700_000_000 * NS
SECRET = b"tally property tests: secret 32!"
assert len(SECRET) == 32

# Operation numbers (docs/products.md; core/operations.py).
CREATE_ACCOUNTS, CREATE_TRANSFERS, CREATE_ORDERS, PAY_ORDERS, CLOSE_ORDERS = 1, 2, 100, 101, 102
OPERATION_NAMES = {CREATE_ACCOUNTS: "create_accounts", CREATE_TRANSFERS: "create_transfers",
                   CREATE_ORDERS: "create_orders", PAY_ORDERS: "pay_orders", CLOSE_ORDERS: "close_orders"}
ORDER_PAYMENT = 0xF001

CNY, USD = 156, 840
FUNDING_CNY, FUNDING_USD, WALLET, POOR_WALLET, EMPTY_WALLET, USD_WALLET = 1, 2, 3, 4, 5, 6
MERCHANT, USD_MERCHANT, CLOSED_MERCHANT, LATE_MERCHANT, CREDIT_WALLET, UNKNOWN = 7, 8, 9, 10, 11, 99
LEDGER_OF = {FUNDING_CNY: CNY, FUNDING_USD: USD, WALLET: CNY, POOR_WALLET: CNY, EMPTY_WALLET: CNY, USD_WALLET: USD,
             MERCHANT: CNY, USD_MERCHANT: USD, CLOSED_MERCHANT: CNY, LATE_MERCHANT: CNY, CREDIT_WALLET: CNY,
             UNKNOWN: CNY}
ACCOUNT_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]

SETUP_ACCOUNTS = [
    {"id": FUNDING_CNY, "ledger": CNY, "code": 3},                # funding cards: may go negative
    {"id": FUNDING_USD, "ledger": USD, "code": 3},
    {"id": WALLET, "ledger": CNY, "code": 1, "flags": 2},         # wallets: debits_must_not_exceed_credits
    {"id": POOR_WALLET, "ledger": CNY, "code": 1, "flags": 2},
    {"id": EMPTY_WALLET, "ledger": CNY, "code": 1, "flags": 2},
    {"id": USD_WALLET, "ledger": USD, "code": 1, "flags": 2},
    {"id": MERCHANT, "ledger": CNY, "code": 2},
    {"id": USD_MERCHANT, "ledger": USD, "code": 2},
    {"id": CLOSED_MERCHANT, "ledger": CNY, "code": 2, "flags": 8},  # orders can be made, never paid
    {"id": CREDIT_WALLET, "ledger": CNY, "code": 1},              # no balance limit: pays anything
]
LATER_ACCOUNTS = [  # created by the mixes: orders for merchant 10 go from merchant_not_found to ok
    {"id": LATE_MERCHANT, "ledger": CNY, "code": 2},
    {"id": 12, "ledger": CNY, "code": 1},                         # one too many: accounts_limit_reached
    {"id": CLOSED_MERCHANT, "ledger": CNY, "code": 2},            # exists_with_different_flags
]
ACCOUNTS_MAX = 11
SETUP_TRANSFERS = [
    {"id": 1001, "debit_account_id": FUNDING_CNY, "credit_account_id": WALLET, "amount": 5_000, "ledger": CNY,
     "code": 4},
    {"id": 1002, "debit_account_id": FUNDING_CNY, "credit_account_id": POOR_WALLET, "amount": 300, "ledger": CNY,
     "code": 4},
    {"id": 1003, "debit_account_id": FUNDING_USD, "credit_account_id": USD_WALLET, "amount": 5_000, "ledger": USD,
     "code": 4},
]
TOP_UP_IDS = list(range(2001, 2007))
TRANSFERS_MAX = 12        # the setup, a few top-ups and some legs: transfers_limit_reached happens
ORDERS_MAX = 8            # fewer than the key pool: orders_limit_reached happens

OUT_TRADE_NOS = [b"20261207-0001", b"A", b"x" * 32, b"order_2|*@.", b"B-2"]
KEYS = [(m, n) for m in (MERCHANT, USD_MERCHANT, CLOSED_MERCHANT, LATE_MERCHANT) for n in OUT_TRADE_NOS]
UNKNOWN_KEYS = [(UNKNOWN, b"A"), (MERCHANT, b"never-created")]
HOT_KEYS = [(MERCHANT, b"20261207-0001"), (MERCHANT, b"A"), (MERCHANT, b"x" * 32), (USD_MERCHANT, b"A"),
            (CLOSED_MERCHANT, b"A")]
AMOUNT = {key: 60 + 47 * k for k, key in enumerate(KEYS + UNKNOWN_KEYS)}   # 60 .. ~1100
# Two orders of the late merchant are huge: paid by the wallet without a limit, they overflow.
AMOUNT[(LATE_MERCHANT, b"x" * 32)], AMOUNT[(LATE_MERCHANT, b"B-2")] = U64 - 5, (1 << 63) + 1
ORDER_IDS = [order_id(*key) for key in KEYS + UNKNOWN_KEYS]
LOOKUP_ORDER_IDS = ORDER_IDS + [0, U128, 12345]
LEG_IDS = [leg_id(oid, PAY_ORDERS, 0) for oid in ORDER_IDS]
LOOKUP_TRANSFER_IDS = [t["id"] for t in SETUP_TRANSFERS] + TOP_UP_IDS + LEG_IDS + [0, U128]
BAD_OUT_TRADE_NOS = [b"", b"a b", b"a\0b", b"caf\xc3\xa9", b"\xff", b"#1", b"a/b", b"\0A"]
EXPIRES = [0, 0, 0, 60, 60, 61, 120, 7_776_000]
BAD_EXPIRES = [1, 59, 7_776_001, 2**32 - 1]
EXPIRE_OF = {key: EXPIRES[k % len(EXPIRES)] for k, key in enumerate(KEYS + UNKNOWN_KEYS)}
BYTES_FIELDS = ("out_trade_no", "token")


# ---------------------------------------------------------------- records <-> dicts

def _records(rows, dtype):
    """Event dicts (whole 128-bit ids, bytes for byte arrays, ints for reserved bytes) as records,
    written byte by byte at the dtype's offsets (little-endian, as the records are)."""
    out = np.zeros(len(rows), dtype=dtype)
    raw = out.view(np.uint8).reshape(len(rows), dtype.itemsize)
    for i, row in enumerate(rows):
        for key, value in row.items():
            if key + "_lo" in dtype.names and key + "_hi" in dtype.names:
                parts = [(key + "_lo", int(value) & U64), (key + "_hi", int(value) >> 64)]
                if int(value) >> 128 or int(value) < 0:
                    raise OverflowError(key)
            else:
                parts = [(key, value)]
            for name, part in parts:
                sub, offset = dtype.fields[name][:2]
                data = bytes(part).ljust(sub.itemsize, b"\0") if isinstance(part, bytes) \
                    else int(part).to_bytes(sub.itemsize, "little")
                if len(data) != sub.itemsize:
                    raise OverflowError(name)
                raw[i, offset:offset + sub.itemsize] = np.frombuffer(data, np.uint8)
    return out


def _dicts(records):
    """Records as dicts: 128-bit ids whole, byte arrays (out_trade_no, token) as bytes, the rest as ints."""
    records = np.ascontiguousarray(records)
    dtype = records.dtype
    raw = records.view(np.uint8).reshape(len(records), dtype.itemsize)
    rows = []
    for r in raw:
        row = {}
        for name in dtype.names:
            sub, offset = dtype.fields[name][:2]
            data = bytes(r[offset:offset + sub.itemsize])
            wide = name[:-3] if name[-3:] in ("_lo", "_hi") else None
            if wide and wide + "_lo" in dtype.names and wide + "_hi" in dtype.names:
                if name.endswith("_lo"):
                    hi_offset = dtype.fields[wide + "_hi"][1]
                    row[wide] = int.from_bytes(data, "little") | int.from_bytes(
                        bytes(r[hi_offset:hi_offset + 8]), "little") << 64
            elif name in BYTES_FIELDS:
                row[name] = data
            else:
                row[name] = int.from_bytes(data, "little")
        rows.append(row)
    return rows


def _names(codes, enum):
    return [enum(int(c)).name for c in codes]


# ---------------------------------------------------------------- strategies

def _mostly(usual, unusual, percent_unusual=5):
    """``usual`` values, and ``unusual`` ones in about ``percent_unusual``% of draws."""
    return st.integers(0, 99).flatmap(lambda roll: unusual if roll < percent_unusual else usual)


rare = st.integers(0, 99).map(lambda x: x < 4)   # a fault injected in about 4% of events
# Mostly a few keys, so that pays and closes find the orders made before; now and then any.
keys = _mostly(st.sampled_from(HOT_KEYS), _mostly(st.sampled_from(KEYS), st.sampled_from(UNKNOWN_KEYS), 15), 40)


@st.composite
def create_events(draw):
    merchant, number = key = draw(keys)
    event = {"id": order_id(merchant, number), "merchant_id": merchant, "amount": AMOUNT[key],
             "out_trade_no": number, "expire_after_s": draw(_mostly(st.just(EXPIRE_OF[key]), _mostly(
                 st.sampled_from(EXPIRES), st.sampled_from(BAD_EXPIRES), 30), 15)),
             "ledger": LEDGER_OF[merchant], "description_code": draw(_mostly(st.just(7), st.just(8), 10))}
    if draw(rare):   # a retry with different fields
        event["amount"] = draw(st.sampled_from([AMOUNT[key] + 1, U64]))
    if draw(rare):   # an out_trade_no outside the rule: the id is the client's, made from it
        event["out_trade_no"] = draw(st.sampled_from(BAD_OUT_TRADE_NOS))
        event["id"] = order_id(merchant, event["out_trade_no"])
    if draw(rare):   # an id that is not the key's
        event["id"] = draw(st.sampled_from([event["id"] ^ 1, 0, U128, order_id(merchant, b"other")]))
    if draw(rare):   # a merchant id no account can have
        event["merchant_id"] = draw(st.sampled_from([0, U128]))
        event["id"] = order_id(event["merchant_id"], event["out_trade_no"])
    if draw(rare):   # the other currency, or none
        event["ledger"] = draw(st.sampled_from([0, USD if event["ledger"] == CNY else CNY]))
    if draw(rare):
        event["amount"] = 0
    if draw(rare):
        event[draw(st.sampled_from(["timestamp", "reserved", "flags"]))] = draw(st.sampled_from([1, 1 << 15]))
    return event


def _wrong(token):
    return bytes([token[0] ^ 0x80]) + token[1:]


@st.composite
def pay_events(draw, key_strategy=keys):
    key = draw(key_strategy)
    oid = order_id(*key)
    usual = st.just(USD_WALLET) if LEDGER_OF[key[0]] == USD else st.sampled_from(
        [WALLET, WALLET, WALLET, POOR_WALLET, EMPTY_WALLET, CREDIT_WALLET])
    payer = draw(_mostly(usual, st.sampled_from([key[0], UNKNOWN, 0, FUNDING_CNY, LATE_MERCHANT, WALLET, USD_WALLET]),
                         10))
    event = {"order_id": oid, "payer_id": payer, "amount": AMOUNT[key], "token": token_of(SECRET, oid),
             "ledger": LEDGER_OF[key[0]]}
    if draw(rare):
        event["token"] = draw(st.sampled_from([_wrong(event["token"]), bytes(10), token_of(b"x" * 32, oid)]))
    if draw(rare):
        event["amount"] = draw(st.sampled_from([AMOUNT[key] - 1, AMOUNT[key] + 1, 0]))
    if draw(rare):
        event["ledger"] = draw(st.sampled_from([0, USD if event["ledger"] == CNY else CNY]))
    if draw(rare):
        event["order_id"] = draw(st.sampled_from([0, U128]))
    if draw(rare):
        event[draw(st.sampled_from(["timestamp", "reserved", "reserved_a", "flags"]))] = 1
    return event


@st.composite
def close_events(draw, key_strategy=keys):
    merchant, number = draw(key_strategy)
    event = {"order_id": order_id(merchant, number),
             "merchant_id": draw(_mostly(st.just(merchant), st.sampled_from([MERCHANT, USD_MERCHANT, 0]), 10))}
    if draw(rare):
        event["order_id"] = draw(st.sampled_from([0, U128]))
    if draw(rare):
        event.update(draw(st.sampled_from([{"timestamp": 1}, {"reserved": 1}, {"reserved": 1 << 80}])))
    return event


@st.composite
def transfer_events(draw):
    """Top-ups from the funding card; rarely a client transfer that takes a pay leg's id first."""
    if draw(rare):
        return {"id": draw(st.sampled_from(LEG_IDS[:10])), "debit_account_id": FUNDING_CNY,
                "credit_account_id": MERCHANT, "amount": 1, "ledger": CNY, "code": 4}
    return {"id": draw(st.sampled_from(TOP_UP_IDS)), "debit_account_id": FUNDING_CNY,
            "credit_account_id": draw(st.sampled_from([WALLET, POOR_WALLET, EMPTY_WALLET, CREDIT_WALLET])),
            "amount": draw(st.sampled_from([50, 200, 1_000])), "ledger": CNY, "code": 4}


def _every_hot_key(events):
    """One event for each usual key, in any order: whatever order is due to expire is in the batch,
    at any place (so at any of its timestamps)."""
    return st.permutations(HOT_KEYS).flatmap(lambda order: st.tuples(*[events(st.just(k)) for k in order])).map(list)


batch_kinds = st.one_of(
    st.tuples(st.just(CREATE_ORDERS), st.lists(create_events(), min_size=1, max_size=6)),
    st.tuples(st.just(CREATE_ORDERS), st.lists(create_events(), min_size=1, max_size=6)),
    st.tuples(st.just(PAY_ORDERS), st.lists(pay_events(), min_size=1, max_size=6)),
    st.tuples(st.just(PAY_ORDERS), st.lists(pay_events(), min_size=1, max_size=6)),
    st.tuples(st.just(PAY_ORDERS), st.lists(pay_events(), min_size=1, max_size=6)),
    st.tuples(st.just(CLOSE_ORDERS), st.lists(close_events(), min_size=1, max_size=4)),
    st.tuples(st.just(PAY_ORDERS), _every_hot_key(pay_events)),
    st.tuples(st.just(PAY_ORDERS), _every_hot_key(pay_events)),
    st.tuples(st.just(CREATE_TRANSFERS), st.lists(transfer_events(), min_size=1, max_size=3)),
    st.tuples(st.just(CREATE_ACCOUNTS), st.lists(st.sampled_from(LATER_ACCOUNTS), min_size=1, max_size=2)),
    st.tuples(st.sampled_from([CREATE_ORDERS, PAY_ORDERS, CLOSE_ORDERS, CREATE_TRANSFERS]), st.just([])),
    st.tuples(st.just("again"), st.none()),   # the previous batch again: a client's retry
)
# Engine time per batch: still, a nanosecond, seconds, across the 60 s expiry, the 2 h default,
# back in time (the clock then runs from the last timestamp), or to within nanoseconds of the
# earliest unpaid order's expiry ("near": known only when the batch runs).
coarse_steps = st.sampled_from([0, 0, 0, 0, 1, NS, NS, NS, 30 * NS, 59 * NS, 61 * NS, 3_600 * NS, 7_201 * NS, -NS])
time_steps = st.one_of(coarse_steps, coarse_steps, coarse_steps,
                       st.tuples(st.just("near"), st.integers(0, 3), st.sampled_from([-2, 0, 1, 2, 3, 4, 5, 8, 20])))
SETUP = [(CREATE_ACCOUNTS, 0, SETUP_ACCOUNTS), (CREATE_TRANSFERS, 0, SETUP_TRANSFERS)]
# Most mixes start with an order for each of the usual keys, so that their pays and closes find one.
SETUP_ORDERS = [(CREATE_ORDERS, 0, [{"id": order_id(*key), "merchant_id": key[0], "amount": AMOUNT[key],
                                     "out_trade_no": key[1], "expire_after_s": EXPIRE_OF[key],
                                     "ledger": LEDGER_OF[key[0]], "description_code": 7} for key in HOT_KEYS])]


def _mixes(steps):
    """(limits, steps): the orders' and transfers' capacities (small ones are reached), and the batches."""
    limits = st.tuples(st.sampled_from([4, ORDERS_MAX, 64]), st.sampled_from([6, TRANSFERS_MAX, 64]))
    return st.tuples(limits, st.tuples(
        st.sampled_from([SETUP + SETUP_ORDERS, SETUP + SETUP_ORDERS, SETUP + SETUP_ORDERS, SETUP]),
        st.lists(st.tuples(batch_kinds, steps).map(lambda t: (t[0][0], t[1], t[0][1])), min_size=2, max_size=14),
    ).map(lambda t: t[0] + t[1]))


mixes = _mixes(time_steps)
coarse_mixes = _mixes(coarse_steps)


def _timed(steps, orders_now):
    """The steps as (operation, now_ns, events); ``orders_now()`` lists the orders as they are when a
    "near" step is resolved, and "again" repeats the previous batch."""
    now, previous = START_NS, None
    for operation, step, events in steps:
        if operation == "again":
            if previous is None:
                continue
            operation, events = previous
        if isinstance(step, tuple):
            unpaid = sorted(o["expires_at"] for o in orders_now() if o["state"] == NOTPAY)
            if unpaid:
                now = unpaid[step[1] % len(unpaid)] - 4 * step[2]
        else:
            now += step
        previous = operation, events
        yield operation, now, events


# ---------------------------------------------------------------- running a batch on the core

def _machine(limits=(ORDERS_MAX, TRANSFERS_MAX)):
    orders_max, transfers_max = limits
    return core.machine.Machine(accounts_max=ACCOUNTS_MAX, transfers_hot_max=transfers_max, pending_max=64,
                                orders_max=orders_max, secret=SECRET)


def _event_dtype(operation):
    return {CREATE_ACCOUNTS: core.ACCOUNT_DTYPE, CREATE_TRANSFERS: core.TRANSFER_DTYPE,
            CREATE_ORDERS: core.records.ORDER_CREATE_DTYPE, PAY_ORDERS: core.records.ORDER_PAY_DTYPE,
            CLOSE_ORDERS: core.records.ORDER_CLOSE_DTYPE}[operation]


def _apply(machine, operation, events, now_ns, dtype_of):
    """One batch of event dicts on the core, its raw reply: accounts and transfers by the core's
    own builders, a product's events as ``dtype_of(operation)`` records (``_records``)."""
    if operation == CREATE_ACCOUNTS:
        batch = core.accounts_from_dicts(events)
    elif operation == CREATE_TRANSFERS:
        batch = core.transfers_from_dicts(events)
    else:
        batch = _records(events, dtype_of(operation))
    return machine.apply(operation, batch, now_ns)


def _submit(machine, operation, events, now_ns):
    """One batch on the core: result names (and, for create_orders, the tokens answered)."""
    reply = _apply(machine, operation, events, now_ns, _event_dtype)
    if operation == CREATE_ORDERS:
        rows = _dicts(reply)
        for row in rows:
            assert set(row) >= {"result", "token"}
            assert all(v == 0 for k, v in row.items() if k not in ("result", "token")), row
        return [(core.Result(row["result"]).name, row["token"]) for row in rows]
    return _names(np.asarray(reply).tolist(), core.Result)


def _expect(model, operation, events, now_ns):
    reply = model.apply(operation, events, now_ns)
    if operation == CREATE_ORDERS:
        return [(R(row["result"]).name, row["token"]) for row in reply]
    return _names(reply, R)


def _core_orders(machine, ids=LOOKUP_ORDER_IDS):
    return _dicts(machine.lookup_orders(core.ids_array(ids)))


def _core_transfers(machine):
    """Every transfer the core holds (each touches two of the accounts)."""
    found = {}
    for account_id in ACCOUNT_IDS:
        for t in core.to_dicts(machine.ledger.get_account_transfers(account_id)):
            found[t["id"]] = t
    return sorted(found.values(), key=lambda t: t["timestamp"])


def _assert_same_state(machine, model):
    ledger = machine.ledger
    assert core.to_dicts(ledger.accounts()) == model.accounts()
    order_ids = list(dict.fromkeys(list(model.orders_by_id) + LOOKUP_ORDER_IDS))
    order_ids += order_ids[:2][::-1]   # asked twice, and out of order: answered so
    assert machine.orders.order_count == len(model.orders_by_id)
    assert _core_orders(machine, order_ids) == model.lookup_orders(order_ids)
    assert machine.orders.next_expiry_ns == model.next_order_expiry_ns()
    transfer_ids = list(dict.fromkeys(list(model.transfers_by_id) + LOOKUP_TRANSFER_IDS))
    assert ledger.transfer_count == len(model.transfers_by_id)
    assert core.to_dicts(ledger.lookup_transfers(transfer_ids)) == model.lookup_transfers(transfer_ids)
    for account_id in ACCOUNT_IDS:
        assert core.to_dicts(ledger.get_account_transfers(account_id)) == model.get_account_transfers(account_id)
    features, expected = ledger.features(), model.features_by_index()
    for key in expected:
        assert features[key].tolist() == expected[key], key


def _run_against_model(mix):
    limits, steps = mix
    machine = _machine(limits)
    model = ModelLedger(ACCOUNTS_MAX, limits[1], limits[0], SECRET)
    for operation, now, events in _timed(steps, model.orders):
        want = _expect(model, operation, events, now)
        got = _submit(machine, operation, events, now)
        assert got == want, (OPERATION_NAMES[operation], now, events)
        assert machine.ledger.last_timestamp == model.last   # 4 timestamps per product event
        _assert_same_state(machine, model)


@settings(max_examples=250, deadline=None)
@given(mixes)
def test_core_orders_match_the_reference_model(mix):
    _run_against_model(mix)


@pytest.mark.slow
@settings(max_examples=3000, deadline=None)
@given(mixes)
def test_core_orders_match_the_reference_model_long(mix):
    _run_against_model(mix)


def _scenarios():
    """Hand-made mixes for the edges a random mix rarely hits (each run like a random one)."""
    a, b = (_create(number=n, amount=100, expire_after_s=60) for n in (b"S1", b"S2"))
    close = [{"order_id": e["id"], "merchant_id": MERCHANT} for e in (a, b)]
    unknown = _pay(_create(number=b"nothing"))
    big, bigger = (_create(merchant=LATE_MERCHANT, number=n, amount=U64 - 5) for n in (b"B1", b"B2"))
    many = [_create(number=b"M%d" % k, amount=10) for k in range(ORDERS_MAX + 2)]
    taken = {"id": leg_id(a["id"], PAY_ORDERS, 0), "debit_account_id": FUNDING_CNY, "credit_account_id": MERCHANT,
             "amount": 100, "ledger": CNY, "code": 4}
    later = LATER_ACCOUNTS[:1]
    return {
        # Closing an order whose expiry falls inside the close batch (after the batch's base).
        "close_inside_the_expiry": [(CREATE_ORDERS, NS, [a, b]), (CLOSE_ORDERS, ("near", 0, 0), close),
                                    (PAY_ORDERS, 0, [_pay(a), _pay(b)])],
        # Paying one: order_expired, and the clock closes it at the next base.
        "pay_inside_the_expiry": [(CREATE_ORDERS, NS, [a, b]), (PAY_ORDERS, ("near", 0, 0), [_pay(a), _pay(b)]),
                                  (CLOSE_ORDERS, -NS, []), (CLOSE_ORDERS, 0, close)],
        # The clock behind the last timestamp: a ledger batch (and an empty one) expires at its base.
        "ledger_batch_expires_at_base": [(CREATE_ORDERS, NS, [a, b]), (PAY_ORDERS, ("near", 0, 1), [unknown] * 2),
                                         (CREATE_TRANSFERS, -5 * NS, []), (PAY_ORDERS, -5 * NS, [_pay(b)]),
                                         (CREATE_ACCOUNTS, -5 * NS, later), (PAY_ORDERS, 0, [_pay(b)])],
        "empty_batches_expire_at_base": [(CREATE_ORDERS, NS, [a]), (CLOSE_ORDERS, ("near", 0, 1), [close[1]]),
                                         (CREATE_ORDERS, -NS, []), (PAY_ORDERS, 0, [_pay(a)])],
        # Retries inside a batch and across batches; exists answers the token.
        "retries": [(CREATE_ORDERS, NS, [a, b, a, dict(b, amount=1), dict(a, expire_after_s=61)]),
                    (CREATE_ORDERS, NS, [b, a]), (PAY_ORDERS, NS, [_pay(a), _pay(a), _pay(a, payer=POOR_WALLET)]),
                    (PAY_ORDERS, 7_200 * NS, [_pay(a), _pay(b)]), (CLOSE_ORDERS, 0, close + close)],
        # The pay leg is a client transfer: its id taken first, the limits and the overflows.
        "leg_id_taken": [(CREATE_TRANSFERS, NS, [taken]), (CREATE_ORDERS, NS, [a]), (PAY_ORDERS, NS, [_pay(a)])],
        "overflows": [(CREATE_ACCOUNTS, NS, later), (CREATE_ORDERS, NS, [big, bigger]),
                      (PAY_ORDERS, NS, [_pay(big, payer=CREDIT_WALLET), _pay(bigger, payer=CREDIT_WALLET)]),
                      (CREATE_TRANSFERS, NS, [dict(SETUP_TRANSFERS[0], id=2001, credit_account_id=LATE_MERCHANT)])],
        "orders_limit": [(CREATE_ORDERS, NS, many), (CREATE_ORDERS, NS, many[::-1])],
        "transfers_limit": [(CREATE_TRANSFERS, NS, [dict(SETUP_TRANSFERS[0], id=i, amount=1) for i in TOP_UP_IDS[:3]]),
                            (CREATE_ORDERS, NS, many[:ORDERS_MAX]),
                            (PAY_ORDERS, NS, [_pay(e) for e in many[:ORDERS_MAX]])],
    }


@pytest.mark.parametrize("name", ["close_inside_the_expiry", "pay_inside_the_expiry", "ledger_batch_expires_at_base",
                                  "empty_batches_expire_at_base", "retries", "leg_id_taken", "overflows",
                                  "orders_limit", "transfers_limit"])
def test_core_orders_match_the_reference_model_on_the_edges(name):
    _run_against_model(((ORDERS_MAX, TRANSFERS_MAX), SETUP + _scenarios()[name]))


# ---------------------------------------------------------------- invariants of the core alone

def _check_invariants(machine):
    accounts = machine.ledger.accounts()
    for ledger_number in np.unique(accounts["ledger"]):
        same = accounts[accounts["ledger"] == ledger_number]
        assert sum(map(int, same["debits_posted"])) == sum(map(int, same["credits_posted"]))
        assert sum(map(int, same["debits_pending"])) == sum(map(int, same["credits_pending"]))
    for a in core.to_dicts(accounts):
        if a["flags"] & 2:   # debits_must_not_exceed_credits
            assert a["debits_pending"] + a["debits_posted"] <= a["credits_posted"], a
    payments = {}
    for t in _core_transfers(machine):
        if t["code"] == ORDER_PAYMENT:
            payments.setdefault(t["user_data_128"], []).append(t)
    orders = _core_orders(machine)
    assert len(orders) == machine.orders.order_count   # the key pool names every order made
    for o in orders:
        legs = payments.pop(o["id"], [])
        assert len(legs) <= 1, ("paid more than once", o, legs)
        paid = bool(legs) and (legs[0]["amount"], legs[0]["debit_account_id"], legs[0]["credit_account_id"]) == (
            o["amount"], o["payer_id"], o["merchant_id"])
        assert paid == (o["state"] == SUCCESS), (o, legs)
        if o["state"] == SUCCESS:
            assert legs[0]["timestamp"] == o["paid_at"] and legs[0]["id"] == leg_id(o["id"], PAY_ORDERS, 0)
        assert o["state"] in (NOTPAY, SUCCESS, CLOSED)
    assert not payments, ("an order payment without its order", payments)
    return orders


@settings(max_examples=150, deadline=None)
@given(mixes)
def test_money_is_conserved_and_orders_are_paid_once(mix):
    limits, steps = mix
    machine = _machine(limits)
    now = START_NS
    for operation, now, events in _timed(steps, lambda: _core_orders(machine)):
        _submit(machine, operation, events, now)
        _check_invariants(machine)
    # Past every expiry (90 days at most), one empty batch closes every unpaid order by the clock.
    before = {o["id"]: o for o in _core_orders(machine)}
    _submit(machine, CREATE_TRANSFERS, [], now + 91 * 24 * 3600 * NS)
    after = _check_invariants(machine)
    assert [o["id"] for o in after] == list(before)
    for o in after:
        was = before[o["id"]]
        assert o["state"] != NOTPAY
        if was["state"] == NOTPAY:
            assert (o["state"], o["close_reason"], o["closed_at"]) == (CLOSED, CLOSE_EXPIRED, was["expires_at"])
        else:
            assert o == was


def _state(machine):
    ledger = machine.ledger
    return (core.to_dicts(ledger.accounts()), _core_orders(machine), _core_transfers(machine),
            {k: v.tolist() for k, v in ledger.features().items()})


@settings(max_examples=150, deadline=None)
@given(coarse_mixes)
def test_a_retried_batch_changes_nothing(mix):
    limits, steps = mix
    machine = _machine(limits)
    for operation, now, events in _timed(steps, lambda: _core_orders(machine)):
        first = _submit(machine, operation, events, now)
        # Let the engine's clock expire what is due first, so that only the retry is measured.
        _submit(machine, CREATE_TRANSFERS, [], now)
        before = _state(machine)
        retry = _submit(machine, operation, events, now)
        assert _state(machine) == before, (OPERATION_NAMES[operation], events, first, retry)
        if operation == CREATE_ORDERS:   # the token is answered again on exists, zeros on a failure
            assert [t for _, t in retry] == [t for _, t in first]
            first, retry = [r for r, _ in first], [r for r, _ in retry]
        for event, was, now_is in zip(events, first, retry):
            if was in ("ok", "exists"):
                assert now_is == "exists", (OPERATION_NAMES[operation], event, was, now_is)
            elif operation == PAY_ORDERS:
                # An order paid by a later event of the batch, or expired since, answers differently.
                assert now_is in (was, "exists", "order_paid", "order_expired"), (event, was, now_is)
            else:
                assert now_is == was, (OPERATION_NAMES[operation], event, was, now_is)


# ---------------------------------------------------------------- the core's ids, tokens and records

u128s = st.integers(0, U128)
out_trade_nos = st.one_of(st.sampled_from(OUT_TRADE_NOS + BAD_OUT_TRADE_NOS), st.binary(max_size=32))


@settings(max_examples=200, deadline=None)
@given(u128s, out_trade_nos, st.binary(min_size=32, max_size=32), st.integers(0, 0xFFFF), st.integers(0, 3))
def test_ids_tokens_and_legs_are_the_documented_functions(merchant, number, secret, operation, leg):
    oid = order_id(merchant, number)
    try:
        assert core.orders.order_id(merchant, number) == oid
    except ValueError:   # the client's helper may refuse an out_trade_no the core would refuse
        assert not out_trade_no_valid(number), number
    assert bytes(core.orders.token_of(secret, oid)) == token_of(secret, oid)
    assert core.orders.leg_id(oid, operation, leg) == leg_id(oid, operation, leg)
    assert core.orders.leg_id(merchant, operation, leg) == leg_id(merchant, operation, leg)


ORDER_LAYOUTS = {  # docs/products.md, "Records": field -> (offset, size)
    "ORDER_CREATE_DTYPE": {"id": (0, 16), "merchant_id": (16, 16), "amount": (32, 8), "out_trade_no": (40, 32),
                           "expire_after_s": (72, 4), "ledger": (76, 4), "description_code": (80, 4),
                           "flags": (84, 2), "reserved": (86, 34), "timestamp": (120, 8)},
    "ORDER_PAY_DTYPE": {"order_id": (0, 16), "payer_id": (16, 16), "amount": (32, 8), "token": (40, 10),
                        "reserved_a": (50, 2), "ledger": (52, 4), "flags": (56, 2), "reserved": (58, 62),
                        "timestamp": (120, 8)},
    "ORDER_CLOSE_DTYPE": {"order_id": (0, 16), "merchant_id": (16, 16), "flags": (32, 2), "reserved": (34, 86),
                          "timestamp": (120, 8)},
    "ORDER_DTYPE": {"id": (0, 16), "merchant_id": (16, 16), "payer_id": (32, 16), "amount": (48, 8),
                    "refunded": (56, 8), "expires_at": (64, 8), "paid_at": (72, 8), "closed_at": (80, 8),
                    "token": (88, 10), "state": (98, 1), "close_reason": (99, 1), "refund_count": (100, 2),
                    "kind": (102, 1), "reserved_a": (103, 1), "ledger": (104, 4), "description_code": (108, 4),
                    "fee": (112, 8),
                    "timestamp": (120, 8)},
    "ORDER_CREATED_DTYPE": {"result": (0, 4), "token": (4, 10)},
}


@pytest.mark.parametrize("name", sorted(ORDER_LAYOUTS))
def test_order_records_have_the_documented_layout(name):
    dtype = getattr(core.records, name)
    assert getattr(core, name) == dtype
    assert dtype.itemsize == (16 if name == "ORDER_CREATED_DTYPE" else 128)
    fields = {}
    for field in dtype.names:
        sub, offset = dtype.fields[field][:2]
        base = field[:-3] if field[-3:] in ("_lo", "_hi") and field[:-3] + "_lo" in dtype.names else field
        start, size = fields.get(base, (offset, 0))
        fields[base] = (min(start, offset), size + sub.itemsize)
    for field, spot in ORDER_LAYOUTS[name].items():
        assert fields.pop(field) == spot, field
    assert all(f.startswith("reserved") for f in fields), fields   # only reserved bytes undocumented


def test_operation_numbers_and_result_names():
    from core.operations import Operation
    for number, name in OPERATION_NAMES.items():
        assert Operation[name] == number
    for name in ("out_trade_no_invalid", "expire_after_out_of_range", "merchant_not_found", "currency_mismatch",
                 "id_mismatch", "exists_with_different_fields", "orders_limit_reached", "order_not_found",
                 "order_token_invalid", "order_paid", "order_closed", "order_expired", "amount_mismatch",
                 "payer_not_found", "merchant_mismatch"):
        assert name in core.Result.__members__, name


# ---------------------------------------------------------------- the model's own order rules (no core needed)

def _model(orders_max=6):  # unpaid orders: at most 3 (half is kept for a batch's loads, docs/tables.md)
    m = ModelLedger(accounts_max=20, transfers_max=20, orders_max=orders_max, secret=SECRET)
    assert m.create_accounts(SETUP_ACCOUNTS, START_NS) == [0] * len(SETUP_ACCOUNTS)
    assert m.create_transfers(SETUP_TRANSFERS, START_NS) == [0] * len(SETUP_TRANSFERS)
    return m


def _create(merchant=MERCHANT, number=b"20261207-0001", amount=2500, **fields):
    event = {"id": order_id(merchant, number), "merchant_id": merchant, "amount": amount, "out_trade_no": number,
             "ledger": LEDGER_OF.get(merchant, CNY)}
    event.update(fields)
    return event


def _pay(event, payer=WALLET, secret=SECRET, **fields):
    pay = {"order_id": event["id"], "payer_id": payer, "amount": event["amount"],
           "token": token_of(secret, event["id"]), "ledger": event["ledger"]}
    pay.update(fields)
    return pay


def _results(replies):
    return [R(r["result"] if isinstance(r, dict) else r).name for r in replies]


def test_model_ids_and_tokens_follow_the_document():
    oid = order_id(7, b"20261207-0001")
    digest = hashlib.sha256(b"ordr" + (7).to_bytes(16, "little") + b"20261207-0001".ljust(32, b"\0")).digest()
    assert oid == int.from_bytes(digest[:16], "little")
    assert token_of(SECRET, oid) == hmac.new(SECRET, oid.to_bytes(16, "little"), hashlib.sha256).digest()[:10]
    assert out_trade_no_valid(b"x" * 32) and out_trade_no_valid(b"a-Z_9|*@.")
    for bad in BAD_OUT_TRADE_NOS:
        assert not out_trade_no_valid(bad), bad
    # The leg id: the splitmix64 mix, its top 16 bits the legs' tag 0xFFFE (a change of it is seen).
    assert leg_id(0, 0, 0) == 0xFFFE << 112
    assert all(leg_id(oid, 101, j) >> 112 == 0xFFFE for j in range(4))
    assert leg_id(1, 101, 0) != leg_id(1, 101, 1) != leg_id(1, 102, 1)
    assert len({leg_id(oid, 101, j) for j in range(4)}) == 4


def test_model_worked_example():
    m = _model()
    create = _create()
    (created,) = m.create_orders([create], START_NS + NS)
    assert created == {"result": 0, "token": token_of(SECRET, create["id"])}
    assert m.last == START_NS + NS + LEGS_MAX - 1
    pay = _pay(create)
    assert _results(m.pay_orders([pay, pay, _pay(create, payer=CREDIT_WALLET)], START_NS + 2 * NS)) == [
        "ok", "exists", "order_paid"]
    assert _results(m.close_orders([{"order_id": create["id"], "merchant_id": MERCHANT}], START_NS + 3 * NS)) == [
        "order_paid"]
    (o,) = m.lookup_orders([create["id"]])
    assert (o["state"], o["payer_id"], o["paid_at"], o["expires_at"]) == (
        SUCCESS, WALLET, START_NS + 2 * NS, START_NS + NS + 7_200 * NS)
    (leg,) = m.lookup_transfers([leg_id(create["id"], PAY_ORDERS, 0)])
    assert (leg["debit_account_id"], leg["credit_account_id"], leg["amount"], leg["code"], leg["user_data_128"],
            leg["timestamp"]) == (WALLET, MERCHANT, 2500, ORDER_PAYMENT, create["id"], START_NS + 2 * NS)
    assert m.lookup_accounts([WALLET])[0]["debits_posted"] == 2500
    assert m.lookup_accounts([MERCHANT])[0]["credits_posted"] == 2500
    # The retry answers exists and the same token; different fields are refused.
    assert m.create_orders([create], START_NS + 4 * NS)[0] == created | {"result": int(R.exists)}
    assert _results(m.create_orders([dict(create, amount=1), dict(create, expire_after_s=7_200),
                                     dict(create, expire_after_s=60)], START_NS + 5 * NS)) == [
        "exists_with_different_fields", "exists", "exists_with_different_fields"]


def test_model_create_checks_in_order():
    m = _model()
    good = _create(number=b"C1")
    cases = [
        (dict(good, timestamp=1, reserved=1), "timestamp_must_be_zero"),
        (dict(good, reserved=1, flags=1), "reserved_field"),
        (dict(good, flags=1, id=0), "reserved_flag"),
        (dict(good, id=0, amount=0), "id_must_not_be_zero"),
        (dict(good, id=U128, amount=0), "id_must_not_be_int_max"),
        (dict(good, amount=0, ledger=0), "amount_must_not_be_zero"),
        (dict(good, ledger=0, out_trade_no=b""), "ledger_must_not_be_zero"),
        (dict(good, out_trade_no=b"a\0b", expire_after_s=1), "out_trade_no_invalid"),
        (dict(good, expire_after_s=59, merchant_id=UNKNOWN), "expire_after_out_of_range"),
        (dict(good, expire_after_s=7_776_001), "expire_after_out_of_range"),
        (dict(good, merchant_id=UNKNOWN, ledger=USD), "merchant_not_found"),
        (dict(good, ledger=USD), "currency_mismatch"),
        (dict(good, id=good["id"] + 1), "id_mismatch"),
        (dict(good, merchant_id=CLOSED_MERCHANT), "id_mismatch"),
        (dict(good, expire_after_s=7_776_000), "ok"),
    ]
    for event, expected in cases:
        assert _results(m.create_orders([event], START_NS + NS)) == [expected], (event, expected)
    more = [_create(number=n) for n in (b"C2", b"C3", b"C4")]
    assert _results(m.create_orders(more, START_NS + 2 * NS)) == ["ok", "ok", "orders_limit_reached"]
    assert _results(m.create_orders([more[0]], START_NS + 3 * NS)) == ["exists"]   # at the limit still


def test_model_pay_checks_in_order():
    m = _model()
    order, other = _create(number=b"P1", amount=400), _create(number=b"P2", amount=6_000)
    usd = _create(merchant=USD_MERCHANT, number=b"P3", amount=10)
    assert _results(m.create_orders([order, other, usd], START_NS + NS)) == ["ok"] * 3
    cases = [
        (_pay(order, timestamp=1, reserved=1), "timestamp_must_be_zero"),
        (_pay(order, reserved_a=1, flags=1), "reserved_field"),
        (_pay(order, reserved=1), "reserved_field"),
        (_pay(order, flags=1, order_id=0), "reserved_flag"),
        (_pay(order, order_id=0), "id_must_not_be_zero"),
        (_pay(order, order_id=12345, amount=0), "order_not_found"),
        (_pay(order, secret=b"y" * 32, amount=0), "order_token_invalid"),
        (_pay(order, amount=399, ledger=USD), "amount_mismatch"),
        (_pay(order, ledger=USD, payer_id=UNKNOWN), "currency_mismatch"),
        (_pay(order, payer=UNKNOWN), "payer_not_found"),
        (_pay(order, payer=MERCHANT), "accounts_must_be_different"),
        (_pay(order, payer=USD_WALLET), "currency_mismatch"),
        (_pay(order, payer=POOR_WALLET), "exceeds_credits"),
        (_pay(other, payer=WALLET), "exceeds_credits"),
        (_pay(usd, payer=USD_WALLET), "ok"),
    ]
    for event, expected in cases:
        assert _results(m.pay_orders([event], START_NS + 2 * NS)) == [expected], (event, expected)
    assert m.lookup_orders([order["id"]])[0]["state"] == NOTPAY
    assert _results(m.pay_orders([_pay(order), _pay(order, amount=1), _pay(order, payer=CREDIT_WALLET)],
                                 START_NS + 3 * NS)) == ["ok", "order_paid", "order_paid"]


def test_model_close_and_expiry():
    m = _model(orders_max=10)
    a, b, c = (_create(number=n, expire_after_s=60) for n in (b"E1", b"E2", b"E3"))
    t0 = START_NS + NS
    assert _results(m.create_orders([a, b, c], t0)) == ["ok"] * 3
    expires = [o["expires_at"] for o in m.lookup_orders([a["id"], b["id"], c["id"]])]
    assert expires == [t0 + 60 * NS, t0 + 4 + 60 * NS, t0 + 8 + 60 * NS]
    assert _results(m.close_orders([{"order_id": a["id"], "merchant_id": USD_MERCHANT},
                                    {"order_id": a["id"], "merchant_id": MERCHANT, "reserved": 1},
                                    {"order_id": a["id"], "merchant_id": MERCHANT},
                                    {"order_id": a["id"], "merchant_id": MERCHANT}], t0 + NS)) == [
        "merchant_mismatch", "reserved_field", "ok", "exists"]
    (closed,) = m.lookup_orders([a["id"]])
    assert (closed["state"], closed["close_reason"], closed["closed_at"]) == (CLOSED, CLOSE_BY_MERCHANT, t0 + NS + 8)
    assert _results(m.pay_orders([_pay(a)], t0 + 2 * NS)) == ["order_closed"]
    # A batch based at b's expiry: b is closed by the clock before the events; c expires inside the
    # batch (event 1 is at base + 4 = c's expires_at), so paying it is order_expired but it stays NOTPAY.
    assert _results(m.pay_orders([_pay(b), _pay(c)], expires[1])) == ["order_expired", "order_expired"]
    ob, oc = m.lookup_orders([b["id"], c["id"]])
    assert (ob["state"], ob["close_reason"], ob["closed_at"]) == (CLOSED, CLOSE_EXPIRED, expires[1])
    assert oc["state"] == NOTPAY
    # An empty batch does not move the clock's last timestamp but does expire at its base.
    last = m.last
    assert m.close_orders([], 0) == []
    assert m.last == last
    oc = m.lookup_orders([c["id"]])[0]
    assert (oc["state"], oc["close_reason"], oc["closed_at"]) == (CLOSED, CLOSE_EXPIRED, expires[2])
    # A ledger batch expires orders too, at its base.
    d = _create(number=b"E4", expire_after_s=60)
    assert _results(m.create_orders([d], t0 + 10 * NS)) == ["ok"]
    m.create_transfers([], t0 + 70 * NS)
    assert m.lookup_orders([d["id"]])[0]["state"] == NOTPAY            # not due yet
    m.create_transfers([], m.lookup_orders([d["id"]])[0]["expires_at"])
    assert m.lookup_orders([d["id"]])[0]["close_reason"] == CLOSE_EXPIRED


def test_model_leg_limits_are_the_ledgers():
    m = ModelLedger(accounts_max=20, transfers_max=4, orders_max=10, secret=SECRET)
    m.create_accounts(SETUP_ACCOUNTS, START_NS)
    m.create_transfers(SETUP_TRANSFERS, START_NS)
    orders = [_create(number=n, amount=10) for n in (b"L1", b"L2")]
    closed = _create(merchant=CLOSED_MERCHANT, number=b"L3", amount=10)
    assert _results(m.create_orders(orders + [closed], START_NS + NS)) == ["ok"] * 3
    assert _results(m.pay_orders([_pay(closed), _pay(orders[0]), _pay(orders[1])], START_NS + 2 * NS)) == [
        "credit_account_closed", "ok", "transfers_limit_reached"]
    # A client transfer cannot take a leg's id (the legs' range is reserved): the payment goes through.
    m2 = _model()
    m2.create_orders([orders[0]], START_NS + NS)
    taken = {"id": leg_id(orders[0]["id"], PAY_ORDERS, 0), "debit_account_id": FUNDING_CNY,
             "credit_account_id": MERCHANT, "amount": 1, "ledger": CNY, "code": 4}
    assert m2.create_transfers([taken], START_NS + NS) == [int(R.id_reserved)]
    assert _results(m2.pay_orders([_pay(orders[0])], START_NS + 2 * NS)) == ["ok"]
    assert m2.lookup_orders([orders[0]["id"]])[0]["state"] == SUCCESS


def test_model_timestamps_reserve_four_per_event():
    m = _model()
    last = m.last
    events = [_create(number=n) for n in (b"T1", b"T2")]
    m.create_orders(events, 0)   # the clock is behind: the batch starts after the last timestamp
    assert [o["timestamp"] for o in m.lookup_orders([e["id"] for e in events])] == [last + 1, last + 5]
    assert m.last == last + 8
    m.create_transfers([dict(SETUP_TRANSFERS[0], id=77)], 0)
    assert m.lookup_transfers([77])[0]["timestamp"] == last + 9 and m.last == last + 9
