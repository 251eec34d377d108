"""What the products' property tests share (tests/test_envelope_properties.py,
test_coupon_properties.py, test_fx_properties.py): strategies' helpers, one batch through the core
and through the reference model (tests/model.py), the ledger's part of "the core and the model
hold the same state", the money invariants any product keeps, and the retry test's loop.

A product's test names its own events, state and invariants; these are the parts that are the
same for every product.
"""

import numpy as np
from hypothesis import strategies as st

import core
from core.operations import Operation
from tests.model import LEGS_MAX, U128, R
from tests.test_order_properties import _apply

CREATE_ACCOUNTS, CREATE_TRANSFERS = 1, 2
FORBIDDEN = 1 << 15   # the server's mark on an event its client's role may not make


def mostly(usual, unusual, percent_unusual=5):
    """``usual``, but ``unusual`` ``percent_unusual`` times in a hundred."""
    return st.integers(0, 99).flatmap(lambda roll: unusual if roll < percent_unusual else usual)


#: True 4 times in a hundred: a fault drawn into an event now and then.
rare = st.integers(0, 99).map(lambda x: x < 4)


def keyed_faults(draw, event, ledgers):
    """Now and then one of the faults every keyed event may carry: an id that is 0, all ones or
    not its key's; no ledger or the other of ``ledgers``; a timestamp, reserved bytes, a flag or
    the server's forbidden mark. Returns the event."""
    if draw(rare):
        event["id"] = draw(st.sampled_from([0, U128, event["id"] ^ 1]))
    if draw(rare):
        event["ledger"] = draw(st.sampled_from([0, ledgers[1] if event["ledger"] == ledgers[0] else ledgers[0]]))
    if draw(rare):
        event[draw(st.sampled_from(["timestamp", "reserved", "flags"]))] = draw(st.sampled_from([1, FORBIDDEN]))
    return event


def timed(steps, start_ns, resolve, edge_time=None, named=None):
    """The steps ``(operation, step, events)`` as ``(operation, now_ns, events)``, each batch
    resolved as it comes (against the model's state then): ``step`` is nanoseconds to add, or a
    tuple ``("edge", ...)`` for which ``edge_time(...)`` gives the engine time to move to (None:
    stay); an event is ``resolve(event, now_ns)``; the operation ``"again"`` is the previous batch
    again (a client's retry), and another named one ``named(name)``'s (operation, events)."""
    now, previous = start_ns, None
    for operation, step, events in steps:
        if isinstance(step, tuple):
            at = edge_time(*step[1:])
            if at is not None:
                now = max(now, at)
        else:
            now += step
        if operation == "again":
            if previous is None:
                continue
            operation, events = previous
        elif isinstance(operation, str):
            operation, events = named(operation)
        else:
            events = [resolve(e, now) for e in events]
        previous = operation, events
        yield operation, now, events


def applied(machine, timed, submit):
    """The core after batches whose every event takes (a test's setup)."""
    for operation, now, events in timed:
        assert set(submit(machine, operation, events, now)) == {"ok"}, (operation, events)
    return machine


def submit(machine, operation, events, now_ns, dtypes):
    """One batch of event dicts on the core (a product's events as ``dtypes[operation]``
    records): its u32 results' names."""
    reply = _apply(machine, operation, events, now_ns, dtypes.get)
    return [core.Result(int(r)).name for r in np.asarray(reply).tolist()]


def expect(model, operation, events, now_ns):
    """The same batch on the model: its results' names."""
    return [R(r).name for r in model.apply(operation, events, now_ns)]


def run_both(machine, model, timed, submit, expect, check):
    """Each batch of ``timed`` ((operation, now_ns, events), resolved against the model as it
    goes) through the model and the core: the same replies, then ``check(index)``. Returns the
    last batch's engine time."""
    now = None
    for index, (operation, now, events) in enumerate(timed):
        want = expect(model, operation, events, now)
        got = submit(machine, operation, events, now)
        assert got == want, (Operation(operation).name, now, events)
        check(index)
    return now


def assert_same_ledger(machine, model, account_ids, more_transfer_ids=()):
    """The ledger's part of the same state: the clock (the last timestamp given), every account,
    every transfer (and ids never made), the histories of ``account_ids``, the activity features."""
    ledger = machine.ledger
    assert ledger.last_timestamp == model.last
    assert core.to_dicts(ledger.accounts()) == model.accounts()
    assert ledger.transfer_count == len(model.transfers_by_id)
    transfer_ids = list(dict.fromkeys(list(model.transfers_by_id) + list(more_transfer_ids) + [0, U128]))
    assert core.to_dicts(ledger.lookup_transfers(transfer_ids)) == model.lookup_transfers(transfer_ids)
    for account_id in account_ids:
        assert core.to_dicts(ledger.get_account_transfers(account_id)) == model.get_account_transfers(account_id)
    features, expected = ledger.features(), model.features_by_index()
    for key in expected:
        assert features[key].tolist() == expected[key], key


def ledger_state(machine, transfer_ids):
    """The ledger's part of a state to compare before and after: every account, the transfers'
    count and these transfers, the activity features."""
    ledger = machine.ledger
    return (core.to_dicts(ledger.accounts()), ledger.transfer_count, core.to_dicts(ledger.lookup_transfers(transfer_ids)),
            {k: v.tolist() for k, v in ledger.features().items()})


def pulse_both(machine, model, submit, at, times=3):
    """Empty batches (the server's pulses) at ``at``, ``at + 1``, ... on the core and the model:
    what the clock ends by then is ended (a batch's start makes at most 256 of a table's)."""
    for k in range(times):
        submit(machine, CREATE_TRANSFERS, [], at + k)
        model.apply(CREATE_TRANSFERS, [], at + k)


def balances(ledger):
    """What holds of any ledger a product moves money in: per currency, debits equal credits
    (posted, and pending); no account past its flags' limits. Returns each account's balance
    (credits less debits posted) by id."""
    accounts = ledger.accounts()
    for ledger_number in np.unique(accounts["ledger"]):
        same = accounts[accounts["ledger"] == ledger_number]
        assert sum(map(int, same["debits_posted"])) == sum(map(int, same["credits_posted"]))
        assert sum(map(int, same["debits_pending"])) == sum(map(int, same["credits_pending"]))
    balance = {}
    for a in core.to_dicts(accounts):
        if a["flags"] & 2:   # debits_must_not_exceed_credits
            assert a["debits_pending"] + a["debits_posted"] <= a["credits_posted"], a
        if a["flags"] & 4:   # credits_must_not_exceed_debits
            assert a["credits_pending"] + a["credits_posted"] <= a["debits_posted"], a
        balance[a["id"]] = a["credits_posted"] - a["debits_posted"]
    return balance


def exists_again(*operations):
    """What an event of ``operations`` (those found again by their ids) answers when its batch is
    retried: ``exists`` if it took (or had); None (anything) for the others."""
    return lambda operation, was: "exists" if operation in operations and was in ("ok", "exists") else None


def assert_retries_change_nothing(machine, model, timed, submit, state, again):
    """Each batch of ``timed`` again (its events that took), once the clock's own changes by then
    are made (pulses past the retry's timestamps: a pulse that ends something moves the clock on):
    ``state(machine, model)`` does not change, and an event answers ``again(operation, its first
    answer)`` (None: anything)."""
    for operation, now, events in timed:
        model.apply(operation, events, now)
        first = submit(machine, operation, events, now)
        if operation == CREATE_ACCOUNTS:
            continue
        for _ in range(3):
            after = machine.ledger.last_timestamp + LEGS_MAX * len(events) + 2
            submit(machine, CREATE_TRANSFERS, [], after)
            model.apply(CREATE_TRANSFERS, [], after)
        # The requests that took are retried (a refused one is no request made: it may take now,
        # say a transfer refused for funds a later event of its batch brought).
        kept = [(event, was) for event, was in zip(events, first) if was in ("ok", "exists")]
        if not kept:
            continue
        events, first = [event for event, _ in kept], [was for _, was in kept]
        before = state(machine, model)
        retry = submit(machine, operation, events, after)
        model.apply(operation, events, after)
        assert state(machine, model) == before, (Operation(operation).name, events, first, retry)
        for event, was, now_is in zip(events, first, retry):
            wanted = again(operation, was)
            assert wanted is None or now_is == wanted, (event, was, now_is)


def model_run(model, timed, expect):
    """The model alone through ``timed``: (the batch's first timestamp, its results) for each."""
    out = []
    for operation, now, events in timed:
        out.append((max(now, model.last + 1), expect(model, operation, events, now)))
    return out
