"""replay-log: a data directory's committed log, re-applied into a fresh store, gives the same state."""

import hashlib
import os
import shutil
import struct
import tempfile
import zlib

import lmdb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import core
import core.operations
from core import replay_log
from core.store import LOG_HEADER

R = core.Result
F = core.TransferFlags
CNY = core.Currency.CNY
T0_NS = 1_700_000_000_000_000_000
S_NS = 1_000_000_000
FUNDING, WALLETS, MERCHANT = 1, (2, 3, 4, 5), 6
CAPACITY = {"accounts_max": 100, "transfers_hot_max": 20_000}


def _accounts():
    limited = core.AccountFlags.debits_must_not_exceed_credits
    rows = [{"id": FUNDING, "ledger": CNY, "code": core.AccountCode.funding_card}]
    rows += [{"id": i, "ledger": CNY, "code": core.AccountCode.user_wallet, "flags": limited} for i in WALLETS]
    rows += [{"id": MERCHANT, "ledger": CNY, "code": core.AccountCode.merchant},
             # A linked chain of accounts that fails (ledger 0): both are rolled back.
             {"id": 7, "ledger": CNY, "code": core.AccountCode.escrow, "flags": core.AccountFlags.linked},
             {"id": 8, "ledger": 0, "code": core.AccountCode.escrow}]
    return core.accounts_from_dicts(rows)


def _pay(id_, debit, credit, amount, flags=0, **fields):
    return {"id": id_, "debit_account_id": debit, "credit_account_id": credit, "amount": amount,
            "ledger": CNY, "code": core.TransferCode.payment, "flags": flags, **fields}


def _random_transfers(rng, first_id, size, pending_ids):
    """Payments, pending holds (some with a 1-2 s timeout), posts and voids of earlier holds,
    linked pairs: many succeed, many fail (limits, expired or resolved holds, open chains)."""
    rows = []
    for k in range(size):
        id_ = first_id + k
        kind = rng.random()
        linked = F.linked if rng.random() < 0.1 else 0
        if kind < 0.3 and pending_ids:
            post = rng.random() < 0.6
            pending_id = pending_ids[rng.integers(len(pending_ids))]
            amount = int(rng.integers(0, 300)) if post else 0  # 0: post the whole hold
            rows.append({"id": id_, "pending_id": pending_id, "amount": amount,
                         "flags": (F.post_pending if post else F.void_pending) | linked})
            continue
        debit, credit = (int(x) for x in rng.choice([FUNDING, *WALLETS, MERCHANT], 2, replace=False))
        row = _pay(id_, debit, credit, int(rng.integers(1, 3_000)), flags=linked)
        if kind < 0.5:
            row["flags"] |= F.pending
            row["timeout"] = int(rng.integers(0, 3))
            pending_ids.append(id_)
        rows.append(row)
    return core.transfers_from_dicts(rows)


def _build_mixed_source(path, *, bulk_batches=20, checkpoint_after=None, **options):
    """A store holding a realistic mix; returns its live state hash and every batch's results."""
    assert checkpoint_after is None or checkpoint_after < bulk_batches
    results = []
    with core.open(path, **CAPACITY, **options) as store:
        results.append(store.create_accounts(_accounts(), T0_NS))
        fixed = [
            (T0_NS + S_NS, [
                _pay(100, FUNDING, 2, 10_000), _pay(101, FUNDING, 3, 5_000),
                _pay(102, 2, MERCHANT, 50_000),                                      # exceeds_credits
                _pay(103, 2, MERCHANT, 1_000),
                _pay(104, 3, 4, 2_000, F.linked), _pay(105, 4, 5, 1_500),             # chain: ok
                _pay(106, 3, MERCHANT, 1_000, F.linked), _pay(107, 5, MERCHANT, 99_999),  # chain: fails
            ]),
            (T0_NS + 2 * S_NS, [
                _pay(200, 2, MERCHANT, 2_000, F.pending, timeout=1),                  # expires at +3 s
                _pay(201, 3, MERCHANT, 1_000, F.pending),
                _pay(202, 2, MERCHANT, 500, F.pending, timeout=100),
            ]),
            (T0_NS + 2 * S_NS + S_NS // 2, [
                {"id": 300, "pending_id": 201, "amount": 600, "flags": F.post_pending},  # partial post
                {"id": 301, "pending_id": 202, "flags": F.void_pending},
                _pay(302, 2, 5, 7_001),                                               # 200 still holds 2,000
            ]),
            (T0_NS + 4 * S_NS, [                                                      # 200 has expired
                {"id": 400, "pending_id": 200, "flags": F.post_pending},
                _pay(401, 2, 5, 7_001),
            ]),
        ]
        for now_ns, rows in fixed:
            results.append(store.create_transfers(core.transfers_from_dicts(rows), now_ns))
        rng = np.random.default_rng(7)
        pending_ids = [200, 201, 202]
        for b in range(bulk_batches):
            if checkpoint_after == b:
                store.checkpoint()
            batch = _random_transfers(rng, 10_000 * (b + 1), 300, pending_ids)
            # 0.7 s apart: holds with a 1-2 s timeout expire a batch or two later.
            results.append(store.create_transfers(batch, T0_NS + 5 * S_NS + b * 700_000_000))
        return store.state_hash(), results


def _log_digest(path):
    """Digest of every log entry (sequence, operation, now_ns, last_timestamp, events)."""
    digest = hashlib.blake2b()
    with core.open(path) as store:
        for sequence, operation, now_ns, last_timestamp, body, _, _ in store.log_entries():
            digest.update(struct.pack("<QQQQ", sequence, operation, now_ns, last_timestamp))
            digest.update(body)
        return digest.hexdigest(), store.sequence


def test_replay_reproduces_a_mixed_log(tmp_path):
    source, into = str(tmp_path / "source"), str(tmp_path / "replayed")
    live_hash, results = _build_mixed_source(source)
    # The mix did happen: the replay has failures, rollbacks, posts, voids and expiry to reproduce.
    assert results[0].tolist() == [R.ok] * 6 + [R.linked_event_failed, R.ledger_must_not_be_zero]
    assert results[1].tolist() == [R.ok, R.ok, R.exceeds_credits, R.ok, R.ok, R.ok,
                                   R.linked_event_failed, R.exceeds_credits]
    assert results[3].tolist() == [R.ok, R.ok, R.exceeds_credits]
    assert results[4].tolist() == [R.pending_transfer_expired, R.ok]
    bulk = np.concatenate(results[5:])
    for code in (R.ok, R.exceeds_credits, R.linked_event_failed, R.pending_transfer_expired,
                 R.pending_transfer_already_posted):
        assert (bulk == code).any(), code.name
    log_before = _log_digest(source)
    progress_calls = []

    result = replay_log.run(source, into, progress=lambda done, total: progress_calls.append((done, total)))

    batches = len(results)
    assert result["equal"] and result["source_hash"] == result["replayed_hash"] == live_hash
    assert result["batches"] == batches and result["events"] == sum(r.shape[0] for r in results)
    assert result["seconds"] > 0 and result["events_per_s"] == pytest.approx(result["events"] / result["seconds"])
    assert progress_calls[-1] == (batches, batches)
    with core.open(source) as store:
        assert (result["accounts"], result["transfers"]) == (store.ledger.account_count, store.ledger.transfer_count)
    with core.open(into) as store:  # the target is a store of its own: same capacities, same state
        assert (store.ledger.accounts_max, store.ledger.transfers_hot_max) == (CAPACITY["accounts_max"], CAPACITY["transfers_hot_max"])
        assert store.sequence == batches and store.state_hash() == live_hash
    assert _log_digest(source) == log_before  # the source's log is read, never written
    assert "equal" in replay_log.summary(result) and live_hash in replay_log.summary(result)


def test_the_hash_detects_one_more_or_one_different_transfer(tmp_path):
    source, extended = str(tmp_path / "source"), str(tmp_path / "extended")
    source_hash, _ = _build_mixed_source(source, bulk_batches=2)
    shutil.copytree(source, extended)
    with core.open(extended) as store:
        assert store.state_hash() == source_hash  # a copy is the same state
        assert store.create_transfers(core.transfers_from_dicts([_pay(90_000, FUNDING, 2, 1)]), T0_NS + 60 * S_NS).tolist() == [R.ok]
        extended_hash = store.state_hash()
    assert extended_hash != source_hash
    result = replay_log.run(extended, str(tmp_path / "replayed"))
    assert result["equal"] and result["replayed_hash"] == extended_hash != source_hash

    # One field of one transfer differs, balances included or not.
    def ledger_with(**fields):
        ledger = core.Ledger(**CAPACITY)
        ledger.create_accounts(_accounts(), T0_NS)
        ledger.create_transfers(core.transfers_from_dicts([_pay(100, FUNDING, 2, 500), _pay(101, FUNDING, 3, 7)]), T0_NS + S_NS)
        ledger.create_transfers(core.transfers_from_dicts([{**_pay(102, 2, 3, 5), **fields}]), T0_NS + 2 * S_NS)
        return replay_log.state_hash(ledger)

    base = ledger_with()
    assert ledger_with() == base  # deterministic
    assert ledger_with(user_data_32=1) != base     # a row differs, no balance does
    assert ledger_with(amount=6) != base           # a row and balances
    assert ledger_with(timeout=5, flags=F.pending) != base  # a hold instead: state and expiry heap


def test_the_hash_covers_content_not_capacity(tmp_path):
    def hash_with(accounts_max, transfers_hot_max):
        ledger = core.Ledger(accounts_max=accounts_max, transfers_hot_max=transfers_hot_max)
        ledger.create_accounts(_accounts(), T0_NS)
        ledger.create_transfers(_random_transfers(np.random.default_rng(1), 1_000, 200, []), T0_NS + S_NS)
        return replay_log.state_hash(ledger)

    assert hash_with(50, 1_000) == hash_with(1_000, 50_000)
    path = str(tmp_path / "store")
    source_hash, _ = _build_mixed_source(path, bulk_batches=2)
    with core.open(path, transfers_hot_max=2 * CAPACITY["transfers_hot_max"]) as store:  # capacities may grow on reopen
        assert store.ledger.transfers_hot_max == 2 * CAPACITY["transfers_hot_max"]
        assert store.state_hash() == source_hash


def test_a_checkpointed_source_still_replays_the_whole_log(tmp_path):
    source = str(tmp_path / "source")
    live_hash, results = _build_mixed_source(source, bulk_batches=12, checkpoint_after=6,
                                             checkpoint_interval_batches=4)
    with core.open(source) as store:
        # The source recovers from a checkpoint: its hash comes from checkpoint + log tail.
        assert store.recovery.checkpoint_sequence >= 4 and store.recovery.replayed_batches < len(results)
    result = replay_log.run(source, str(tmp_path / "replayed"))
    assert result["batches"] == len(results)  # from entry 1, not from the checkpoint
    assert result["equal"] and result["replayed_hash"] == live_hash


def test_a_divergence_is_reported_naming_the_entry(tmp_path):
    # Entry 2's logged timestamp is altered (checksum recomputed): the source still opens, since
    # its checkpoint covers entry 2, but replaying from entry 1 must notice.
    source = str(tmp_path / "source")
    _build_mixed_source(source, bulk_batches=2, checkpoint_after=1)
    env = lmdb.open(source, max_dbs=4)
    log = env.open_db(b"log")
    with env.begin(write=True, db=log) as txn:
        key = (2).to_bytes(8, "big")
        entry = bytearray(txn.get(key))
        fields = list(LOG_HEADER.unpack_from(entry))
        fields[6] += 1  # last_timestamp
        LOG_HEADER.pack_into(entry, 0, *fields)
        checksum = zlib.crc32(entry[LOG_HEADER.size:], zlib.crc32(entry[:32]))
        struct.pack_into("<I", entry, 32, checksum)
        txn.put(key, bytes(entry))
    env.close()
    with core.open(source) as store:
        assert store.recovery.checkpoint_sequence >= 2
    with pytest.raises(replay_log.ReplayDivergedError, match="log entry 2: replay diverged") as raised:
        replay_log.run(source, str(tmp_path / "replayed"))
    assert raised.value.sequence == 2


def test_refusals(tmp_path):
    source = str(tmp_path / "source")
    _build_mixed_source(source, bulk_batches=1)
    missing = str(tmp_path / "missing")
    with pytest.raises(replay_log.ReplayLogError, match="no such directory"):
        replay_log.run(missing, str(tmp_path / "a"))
    assert not os.path.exists(missing)  # no store was created where none was
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(replay_log.ReplayLogError, match="not a Tally data directory"):
        replay_log.run(str(empty), str(tmp_path / "a"))
    assert os.listdir(empty) == []

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(replay_log.ReplayLogError, match="not empty"):
        replay_log.run(source, str(occupied))
    assert os.listdir(occupied) == ["notes.txt"]
    other_store = str(tmp_path / "other")
    core.open(other_store, **CAPACITY).close()
    with pytest.raises(replay_log.ReplayLogError, match="already holds a store"):
        replay_log.run(source, other_store)
    for inside in (source, os.path.join(source, "replayed")):
        with pytest.raises(replay_log.ReplayLogError, match="the source directory or inside it"):
            replay_log.run(source, inside)
    # An existing empty directory is fine.
    (tmp_path / "fresh").mkdir()
    assert replay_log.run(source, str(tmp_path / "fresh"))["equal"]


def test_refused_while_the_source_is_open(tmp_path):
    source, into = str(tmp_path / "source"), str(tmp_path / "replayed")
    _build_mixed_source(source, bulk_batches=1)
    with core.open(source), pytest.raises(core.StoreError, match="cannot open the source: .*in use by another process"):
        replay_log.run(source, into)
    assert not os.path.exists(into)  # refused before anything was created
    assert replay_log.run(source, into)["equal"]  # released on close


@st.composite
def _batch_plans(draw):
    """Batches of transfers: (engine time step in ms, possibly backwards; size; seed)."""
    return draw(st.lists(st.tuples(st.integers(-500, 2_500), st.integers(0, 40), st.integers(0, 2**32 - 1)),
                         min_size=1, max_size=6))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=_batch_plans(), checkpoint_interval_batches=st.sampled_from([None, 1, 3]))
def test_replay_always_reproduces_the_hash(plan, checkpoint_interval_batches):
    with tempfile.TemporaryDirectory() as directory:
        source, into = os.path.join(directory, "source"), os.path.join(directory, "replayed")
        # The same batches through a plain in-memory machine: the store adds nothing of its own.
        memory = core.Machine(**CAPACITY, secret=bytes(32))
        options = {"checkpoint_interval_batches": checkpoint_interval_batches} if checkpoint_interval_batches else {}
        with core.open(source, **CAPACITY, **options) as store:
            now_ns, pending_ids = T0_NS, []
            store.create_accounts(_accounts(), now_ns)
            memory.apply(core.operations.Operation.create_accounts, _accounts(), now_ns)
            for number, (step_ms, size, seed) in enumerate(plan, start=1):
                now_ns = max(T0_NS, now_ns + step_ms * 1_000_000)
                batch = _random_transfers(np.random.default_rng(seed), number * 1_000, size, pending_ids)
                store.create_transfers(batch, now_ns)
                memory.apply(core.operations.Operation.create_transfers, batch, now_ns)
            live_hash = store.state_hash()
            epoch_transfers = store.stats()["cold_epoch_transfers"]
        result = replay_log.run(source, into)
        # The hash groups the history by the directory's epoch size: the bare ledger uses it too.
        assert result["equal"] and result["replayed_hash"] == live_hash == replay_log.state_hash(
            memory.ledger, epoch_transfers=epoch_transfers, parts=memory.hash_parts())
        assert result["batches"] == len(plan) + 1


@pytest.mark.slow
def test_replay_of_a_large_log_is_fast_and_equal(tmp_path):
    # 200 full batches (1.6 M events) of payments between 100,000 accounts.
    source = str(tmp_path / "source")
    accounts = 100_000
    with core.open(source, accounts_max=accounts, transfers_hot_max=2_000_000) as store:
        for first in range(0, accounts, core.BATCH_EVENTS_MAX):
            batch = np.zeros(min(core.BATCH_EVENTS_MAX, accounts - first), dtype=core.ACCOUNT_DTYPE)
            batch["id_lo"] = np.arange(first + 1, first + 1 + batch.shape[0])
            batch["ledger"], batch["code"] = CNY, core.AccountCode.user_wallet
            store.submit(1, batch, T0_NS)
        rng = np.random.default_rng(3)
        for b in range(200):
            batch = np.zeros(core.BATCH_EVENTS_MAX, dtype=core.TRANSFER_DTYPE)
            batch["id_lo"] = np.arange(1, core.BATCH_EVENTS_MAX + 1) + b * core.BATCH_EVENTS_MAX
            debit = rng.integers(1, accounts + 1, core.BATCH_EVENTS_MAX)
            batch["debit_account_id_lo"] = debit
            batch["credit_account_id_lo"] = debit % accounts + 1
            batch["amount"], batch["ledger"], batch["code"] = rng.integers(1, 1_000, core.BATCH_EVENTS_MAX), CNY, 1
            store.submit(2, batch, T0_NS + b * 1_000_000)
        live_hash = store.state_hash()
    result = replay_log.run(source, str(tmp_path / "replayed"))
    assert result["equal"] and result["replayed_hash"] == live_hash
    assert result["transfers"] == 200 * core.BATCH_EVENTS_MAX
    assert result["events_per_s"] > 200_000  # an order of magnitude under the measured rate
