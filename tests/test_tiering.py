"""The tiered store agrees with the reference model exactly, with most of the history cold.

The same random batches as ``tests/test_properties.py`` (valid and invalid events, retries,
two-phase posts and voids, expiries, linked chains, balancing transfers) run through a
``core.Store`` whose hot window holds 11 transfers, written to the cold tier one at a time, with
an id filter whose every bit is set (it answers "maybe" for every id): so most lookups,
retries, posts, voids and history pages go to LMDB through the prefetch. The store is closed and
reopened at a random point (recovery from a checkpoint plus the log, the ring's tail restored,
the rest cold), and after every batch the results, accounts, features, lookups and every
account's history pages must equal the model's (the tiered wallets' windows too: the batches
set tiers and tier limits). The state hash must survive the reopen and equal ``tally replay-log``'s.
"""

import os
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import core
from core import replay_log
from tests.model import ModelLedger
from tests.test_properties import ACCOUNTS_MAX, ACCOUNT_IDS, LOOKUP_ACCOUNTS, LOOKUP_IDS, TRANSFER_IDS, U128, _timed, batches

TINY = dict(transfers_hot_max=11, cold_epoch_transfers=1, id_filter_bytes=64, pending_max=256,
            checkpoint_interval_batches=3)


def _saturate_filter(store):
    """Every bit set: every id the hot window does not hold is looked up in LMDB."""
    store.filter.words()[:] = np.iinfo(np.uint64).max


class _Tiered:
    """A store seen through the ledger's interface, for the shared assertions."""

    def __init__(self, path):
        self.path = path
        self.store = core.open(path, accounts_max=ACCOUNTS_MAX, **TINY)
        _saturate_filter(self.store)

    def reopen(self):
        self.store.close()
        self.store = core.open(self.path)
        _saturate_filter(self.store)

    def apply(self, kind, events, now_ns):
        if kind == "accounts":
            return self.store.create_accounts(core.accounts_from_dicts(events), now_ns).tolist()
        if kind == "tiers":
            return self.store.set_wallet_tiers(core.records_from_dicts(events, core.WALLET_TIER_DTYPE), now_ns).tolist()
        if kind == "tier_limits":
            return self.store.set_tier_limits(core.records_from_dicts(events, core.TIER_LIMITS_DTYPE), now_ns).tolist()
        return self.store.create_transfers(core.transfers_from_dicts(events), now_ns).tolist()


def _assert_same_state(tiered: _Tiered, model: ModelLedger):
    store = tiered.store
    assert core.to_dicts(store.ledger.accounts()) == model.accounts()
    assert core.to_dicts(store.lookup_wallet_limits(LOOKUP_ACCOUNTS)) == model.lookup_wallet_limits(LOOKUP_ACCOUNTS)
    assert core.to_dicts(store.lookup_transfers(LOOKUP_IDS)) == model.lookup_transfers(LOOKUP_IDS)
    features = store.ledger.features()
    for key, expected in model.features_by_index().items():
        assert features[key].tolist() == expected, key
    for account_id in ACCOUNT_IDS + [0, U128]:
        whole = model.get_account_transfers(account_id)
        for reverse in (False, True):
            got = core.to_dicts(store.get_account_transfers(account_id, reverse=reverse))
            assert got == model.get_account_transfers(account_id, reverse=reverse)
        for limit, debits, credits in ((2, False, True), (3, True, False), (1, True, True)):
            for reverse in (False, True):
                got = core.to_dicts(store.get_account_transfers(account_id, limit=limit, debits=debits,
                                                                credits=credits, reverse=reverse))
                assert got == model.get_account_transfers(account_id, limit=limit, debits=debits,
                                                          credits=credits, reverse=reverse)
        if len(whole) > 2:  # a page bounded by timestamps on both sides
            low, high = whole[1]["timestamp"], whole[-2]["timestamp"]
            got = core.to_dicts(store.get_account_transfers(account_id, timestamp_min=low, timestamp_max=high))
            assert got == model.get_account_transfers(account_id, timestamp_min=low, timestamp_max=high)


def _run(steps, reopen_at, tmp_path_factory):
    tiered = _Tiered(str(tmp_path_factory.mktemp("tiered")))
    model = ModelLedger(ACCOUNTS_MAX, 1 << 40)  # no transfer limit: the history is unbounded
    try:
        for number, (kind, now, events) in enumerate(_timed(steps)):
            if number == reopen_at:
                before = tiered.store.state_hash()
                tiered.reopen()
                assert tiered.store.state_hash() == before
            want = {"accounts": model.create_accounts, "transfers": model.create_transfers,
                    "tiers": model.set_wallet_tiers, "tier_limits": model.set_tier_limits}[kind](events, now)
            assert tiered.apply(kind, events, now) == want, (kind, events)
            assert tiered.store.ledger.last_timestamp == model.last
            _assert_same_state(tiered, model)
        stats = tiered.store.stats()
        assert stats["transfers_hot"] <= TINY["transfers_hot_max"]
        return tiered
    finally:
        tiered.store.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(steps=batches, reopen_at=st.integers(0, 15))
def test_tiered_store_matches_the_model(steps, reopen_at, tmp_path_factory):
    _run(steps, reopen_at, tmp_path_factory)


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(steps=batches, reopen_at=st.integers(0, 15))
def test_tiered_store_matches_the_model_long(steps, reopen_at, tmp_path_factory):
    _run(steps, reopen_at, tmp_path_factory)


def _payments(count, first_id, accounts=6, ledger=156):
    return core.transfers_from_dicts([
        {"id": first_id + k, "debit_account_id": 1 + k % accounts, "credit_account_id": 1 + (k + 1) % accounts,
         "amount": 1 + k % 7, "ledger": ledger, "code": 1} for k in range(count)])


def _open_small(path, **extra):
    return core.open(path, accounts_max=16, transfers_hot_max=64, cold_epoch_transfers=16, id_filter_bytes=4096,
                     pending_max=64, **extra)


def test_memory_stays_bounded_while_history_grows(tmp_path):
    with _open_small(str(tmp_path)) as store:
        store.create_accounts(core.accounts_from_dicts([{"id": i, "ledger": 156, "code": 1} for i in range(1, 7)]))
        for batch in range(100):
            assert (store.create_transfers(_payments(40, 1_000 + 40 * batch)) == 0).all()
            assert store.ledger.transfer_count - store.ledger.hot_first <= 64
        stats = store.stats()
        assert stats["transfers"] == 4_000 and stats["transfers_cold"] >= 4_000 - 64 - 16
        # Every id ever accepted is still known: a retry of the first batch answers exists.
        retry = store.create_transfers(_payments(40, 1_000))
        assert (retry == core.Result.exists).all()
        assert store.stats()["transfers"] == 4_000
        assert len(store.lookup_transfers(list(range(1_000, 5_000, 97)))) == len(range(1_000, 5_000, 97))
        # An account's whole history pages back to its first transfer.
        pages, timestamp_max = [], 0
        while True:
            page = store.get_account_transfers(1, timestamp_max=timestamp_max, limit=100, reverse=True)
            if page.shape[0] == 0:
                break
            pages.append(page)
            timestamp_max = int(page["timestamp"][-1]) - 1
        history = np.concatenate(pages)
        assert history.shape[0] == 100 * 13  # per batch: 7 debits (k = 0, 6, ... 36) and 6 credits
        assert (np.diff(history["timestamp"].astype(np.int64)) < 0).all()
        involved = (history["debit_account_id_lo"] == 1) | (history["credit_account_id_lo"] == 1)
        assert involved.all()


def test_a_pending_transfer_posts_long_after_it_went_cold(tmp_path):
    with _open_small(str(tmp_path)) as store:
        store.create_accounts(core.accounts_from_dicts([{"id": i, "ledger": 156, "code": 1} for i in range(1, 7)]))
        hold = core.transfers_from_dicts([{"id": 7, "debit_account_id": 1, "credit_account_id": 2, "amount": 50,
                                           "ledger": 156, "code": 1, "flags": core.TransferFlags.pending}])
        assert store.create_transfers(hold).tolist() == [0]
        for batch in range(20):
            store.create_transfers(_payments(40, 1_000 + 40 * batch))
        assert store.ledger.hot_first > 1  # the hold's row left the hot window
        post = core.transfers_from_dicts([{"id": 8, "pending_id": 7, "flags": core.TransferFlags.post_pending}])
        assert store.create_transfers(post).tolist() == [0]
        store.checkpoint()
        for batch in range(20, 40):
            store.create_transfers(_payments(40, 1_000 + 40 * batch))
        # The post went cold too and the pending was pruned from memory: its status answers.
        assert store.ledger.pending_count == 0
        again = core.transfers_from_dicts([{"id": 9, "pending_id": 7, "flags": core.TransferFlags.void_pending}])
        assert store.create_transfers(again).tolist() == [core.Result.pending_transfer_already_posted]
        assert store.create_transfers(post).tolist() == [core.Result.exists]
        balances = store.lookup_accounts([1, 2])
        assert balances["debits_pending"].tolist() == [0, 0]


def test_replay_log_over_a_tiered_store_gives_the_same_hash(tmp_path):
    source = str(tmp_path / "source")
    with _open_small(source, checkpoint_interval_batches=7) as store:
        store.create_accounts(core.accounts_from_dicts([{"id": i, "ledger": 156, "code": 1} for i in range(1, 7)]))
        for batch in range(30):
            store.create_transfers(_payments(40, 1_000 + 40 * batch))
        live = store.state_hash()
    result = replay_log.run(source, str(tmp_path / "into"))
    assert result["equal"] and result["source_hash"] == live == result["replayed_hash"]


def test_a_batch_larger_than_the_window_can_take_is_refused_untouched(tmp_path):
    with _open_small(str(tmp_path)) as store:
        store.create_accounts(core.accounts_from_dicts([{"id": i, "ledger": 156, "code": 1} for i in range(1, 7)]))
        before = store.state_hash()
        with pytest.raises(ValueError, match="hot window"):
            store.create_transfers(_payments(64 - 16 + 1, 1_000))
        assert store.state_hash() == before


def test_time_ordered_ids_are_proven_new_without_the_filter(tmp_path):
    # With every filter bit set, a new id would cost an LMDB lookup, unless it is above every
    # cold id (core.new_id's ids are): then no lookup at all.
    with _open_small(str(tmp_path)) as store:
        _saturate_filter(store)
        store.create_accounts(core.accounts_from_dicts([{"id": i, "ledger": 156, "code": 1} for i in range(1, 7)]))
        for batch in range(20):
            ids = core.new_ids(40)
            payments = _payments(40, 0)
            payments["id_lo"], payments["id_hi"] = ids["lo"], ids["hi"]
            assert (store.create_transfers(payments) == 0).all()
        assert store.stats()["cold_epochs"] > 0 and store.stats()["filter_positives"] == 0
        # Ids below the cold maximum (not time-ordered) do go to LMDB, and are new all the same.
        assert (store.create_transfers(_payments(40, 1_000)) == 0).all()
        assert store.stats()["filter_positives"] == 40 and store.stats()["filter_false_positives"] == 40


def test_a_full_cold_tier_refuses_new_batches_and_loses_nothing(tmp_path):
    path = str(tmp_path / "store")
    memory = core.Ledger(accounts_max=16, transfers_hot_max=1 << 16)
    accounts = core.accounts_from_dicts([{"id": i, "ledger": 156, "code": 1} for i in range(1, 7)])
    memory.create_accounts(accounts, 1)
    acknowledged = 0
    with pytest.raises(core.StoreFailedError, match="cold tier.*MDB_MAP_FULL"):
        with _open_small(path, map_size_bytes=1 << 20) as store:
            store.create_accounts(accounts, 1)
            for batch in range(10_000):  # far more than 1 MiB of cold tier holds
                payments = _payments(40, 1_000 + 40 * batch)
                store.create_transfers(payments, 2 + batch)
                memory.create_transfers(payments, 2 + batch)
                acknowledged += 1
    assert 0 < acknowledged < 10_000
    # Reopened with room, the store has every acknowledged batch and what they lead to.
    with _open_small(path, map_size_bytes=64 << 20) as store:
        assert store.sequence in (acknowledged + 1, acknowledged + 2)  # + accounts, + one unacknowledged
        if store.sequence == acknowledged + 2:
            memory.create_transfers(_payments(40, 1_000 + 40 * acknowledged), 2 + acknowledged)
        assert store.state_hash() == replay_log.state_hash(memory, epoch_transfers=16)
        assert (store.create_transfers(_payments(40, 1_000)) == core.Result.exists).all()


def test_the_server_answers_from_the_cold_tier(tmp_path):
    import asyncio

    from engine.client import Client
    from engine.server import Server

    async def scenario():
        store = _open_small(str(tmp_path / "store"))
        server = Server(store, {1: b"service-one"})
        try:
            port = await server.start()
            client = await Client.connect("127.0.0.1", port, client_id=1, secret=b"service-one")
            await client.create_accounts(core.accounts_from_dicts(
                [{"id": i, "ledger": 156, "code": 1} for i in range(1, 7)]))
            for batch in range(20):
                assert (await client.create_transfers(_payments(40, 1_000 + 40 * batch))).tolist() == [0] * 40
            assert store.ledger.hot_first > 40  # the first batch is cold
            found = await client.lookup_transfers(list(range(1_000, 1_040)))
            assert found["id_lo"].tolist() == list(range(1_000, 1_040))
            history = await client.get_account_transfers(1, limit=8190)
            assert history.shape[0] == 20 * 13 and (np.diff(history["timestamp"].astype(np.int64)) > 0).all()
            client.close()
        finally:
            await server.close()
            store.close()

    asyncio.run(scenario())


def _two_phase_batches(count):
    """Holds (some with a 1 s timeout), posts and voids of earlier holds, payments: many epochs."""
    batches = []
    for number in range(count):
        events = []
        for k in range(8):
            hold = 10_000 + 8 * number + k
            events.append({"id": hold, "debit_account_id": 1 + k % 3, "credit_account_id": 4 + k % 3, "amount": 3,
                           "ledger": 156, "code": 1, "flags": core.TransferFlags.pending, "timeout": k % 2})
            if number >= 2:
                earlier = 10_000 + 8 * (number - 2) + k
                events.append({"id": 50_000 + 8 * number + k, "pending_id": earlier,
                               "flags": core.TransferFlags.post_pending if k % 3 else core.TransferFlags.void_pending})
        batches.append(core.transfers_from_dicts(events))
    return batches


def test_a_full_pending_table_refuses_the_same_events_whatever_the_background_thread_does(tmp_path, monkeypatch):
    # pending_max counts the pendings resolved in the last epochs too; when the table is full a
    # new pending is refused. Which ones are refused must depend on the log alone, not on when
    # the cold tier happened to be written: a slow background thread gives the same results.
    from core import cold

    accounts = core.accounts_from_dicts([{"id": i, "ledger": 156, "code": 1} for i in range(1, 7)])
    batches = _two_phase_batches(30)

    def run(path):
        results = []
        with core.open(path, accounts_max=16, transfers_hot_max=64, cold_epoch_transfers=8, id_filter_bytes=4096,
                       pending_max=40) as store:
            store.create_accounts(accounts, 1)
            for number, batch in enumerate(batches):
                results.append(store.create_transfers(batch, 1_000_000_000 * (number + 2)).tolist())
            return results, store.state_hash()

    fast, fast_hash = run(str(tmp_path / "fast"))
    assert any(core.Result.transfers_limit_reached in codes for codes in fast)  # the limit is reached
    write_epoch = cold.ColdTier.write_transfer_epoch

    def slow_write_epoch(self, *args, **kwargs):
        time.sleep(0.02)
        return write_epoch(self, *args, **kwargs)

    monkeypatch.setattr(cold.ColdTier, "write_transfer_epoch", slow_write_epoch)
    slow, slow_hash = run(str(tmp_path / "slow"))
    assert slow == fast and slow_hash == fast_hash
    result = replay_log.run(str(tmp_path / "slow"), str(tmp_path / "replayed"))
    assert result["equal"]


def test_a_cold_tier_behind_its_checkpoint_is_rebuilt_from_the_log(tmp_path):
    # As after a power loss that undid the last epochs: the checkpoint relies on epochs the cold
    # tier no longer has. Opening sees it (the stored hash chain), sets the environment aside
    # and replays the whole log: same state, every old id still known.
    import shutil

    path = str(tmp_path / "store")
    with _open_small(path) as store:
        store.create_accounts(core.accounts_from_dicts([{"id": i, "ledger": 156, "code": 1} for i in range(1, 7)]))
        for batch in range(20):
            store.create_transfers(_payments(40, 1_000 + 40 * batch))
        store.checkpoint()
        before = store.state_hash()
    shutil.copytree(path + "/cold", str(tmp_path / "early"), dirs_exist_ok=True)
    with _open_small(path) as store:
        for batch in range(20, 30):
            store.create_transfers(_payments(40, 1_000 + 40 * batch))
        store.checkpoint()
        after = store.state_hash()
    shutil.rmtree(path + "/cold")
    shutil.copytree(str(tmp_path / "early"), path + "/cold")  # the cold tier as it was 10 batches ago
    with _open_small(path) as store:
        assert "cold tier does not hold" in store.recovery.checkpoint_error
        assert store.recovery.checkpoint_sequence == 0  # the whole log was replayed
        assert store.state_hash() == after != before
        assert (store.create_transfers(_payments(40, 1_000)) == core.Result.exists).all()
    assert any(name.startswith("cold.damaged-") for name in os.listdir(path))


def test_a_pending_pruned_at_the_start_of_a_batch_is_still_known_in_it(tmp_path):
    # A resolved pending leaves the pending table at the start of some batch (3 epochs after its
    # resolution). The prefetch of that batch must see the table as the batch will, or a void of
    # it in that very batch would find nothing: every batch here voids it, and each must answer
    # that it expired.
    with _open_small(str(tmp_path)) as store:
        store.create_accounts(core.accounts_from_dicts([{"id": i, "ledger": 156, "code": 1} for i in range(1, 7)]), 1)
        hold = core.transfers_from_dicts([{"id": 7, "debit_account_id": 1, "credit_account_id": 2, "amount": 50,
                                           "ledger": 156, "code": 1, "flags": core.TransferFlags.pending,
                                           "timeout": 1}])
        assert store.create_transfers(hold, 2).tolist() == [0]
        for batch in range(12):  # 16 payments a batch: an epoch each; the hold expires in the first
            void = core.transfers_from_dicts([{"id": 90_000 + batch, "pending_id": 7,
                                               "flags": core.TransferFlags.void_pending}])
            results = store.create_transfers(np.concatenate((_payments(16, 1_000 + 16 * batch), void)),
                                             2_000_000_000 * (batch + 2))
            assert results[-1] == core.Result.pending_transfer_expired, batch
        assert store.ledger.pending_count == 0  # it did leave the table


def test_epochs_are_flushed_while_a_checkpoint_is_written(tmp_path, monkeypatch):
    # Checkpoints and flushes run on two threads: a slow checkpoint must not hold up the flushes
    # (the next batches need their epochs written within a few epochs), and it must still hold
    # the state of its own moment: the cold tier's progress at most up to its snapshot (a flush
    # past that waits until the checkpoint has read it), the filter and per-account epochs with it.
    from core.store import Store

    release = __import__("threading").Event()
    write_array = Store._write_array

    def slow_write_array(self, name, *args):
        if name == "hot":  # after the checkpoint has read the cold tier's progress
            release.wait(10)
        return write_array(self, name, *args)

    monkeypatch.setattr(Store, "_write_array", slow_write_array)
    path = str(tmp_path / "store")
    roomy = dict(accounts_max=16, transfers_hot_max=4096, cold_epoch_transfers=16, id_filter_bytes=4096)
    with core.open(path, **roomy) as store:  # room in the ring for the batches behind the pin
        store.create_accounts(core.accounts_from_dicts([{"id": i, "ledger": 156, "code": 1} for i in range(1, 7)]))
        for batch in range(5):
            store.create_transfers(_payments(40, 1_000 + 40 * batch))
        store._start_checkpoint()  # held in its write of the balances
        captured = store.ledger.transfer_count // store._epoch_transfers
        for batch in range(5, 40):
            store.create_transfers(_payments(40, 1_000 + 40 * batch))
        deadline = time.monotonic() + 10
        while store._cold_epochs <= captured + 2 and time.monotonic() < deadline:
            store._reap()
            time.sleep(0.01)
        assert store._checkpoint_job is not None and not store._checkpoint_job.future.done()
        assert store._cold_epochs > captured + 2  # flushed past the checkpoint's moment meanwhile
        release.set()
        store._reap(wait_all=True)
        assert store._checkpoint_meta.cold_epochs <= captured
        expected = store.state_hash()
        sequence = store._checkpoint_meta.sequence
    with core.open(path, **roomy) as store:  # a clean close writes no checkpoint: this one is loaded
        assert store.recovery.checkpoint_error is None
        assert store.recovery.checkpoint_sequence == sequence
        assert store.state_hash() == expected
        assert (store.create_transfers(_payments(40, 1_000)) == core.Result.exists).all()


def test_the_filter_loses_no_change_to_a_checkpoint_reading_it_while_ids_are_added():
    # The checkpoint thread takes the dirty regions and copies them while the flush thread adds
    # ids: whatever the interleaving, a copy kept up to date by taken regions alone ends equal
    # to the filter.
    import threading

    from core.filter import IdFilter
    from core.records import ID_DTYPE

    size = 8 << 20
    live = IdFilter(size)
    mirror = np.zeros(size // 8, dtype=np.uint64)
    region_words = live.region_bytes // 8
    stop = threading.Event()

    def add():
        generator = np.random.default_rng(7)
        while not stop.is_set():
            live.add_ids(generator.integers(1, 1 << 63, 2 * 20_000, dtype=np.uint64).view(ID_DTYPE))

    adder = threading.Thread(target=add)
    adder.start()
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and live.added < 2_000_000:
            for region in live.take_dirty():
                part = slice(region * region_words, (region + 1) * region_words)
                mirror[part] = live.words()[part]
    finally:
        stop.set()
        adder.join()
    for region in live.take_dirty():
        part = slice(region * region_words, (region + 1) * region_words)
        mirror[part] = live.words()[part]
    assert live.added > 0 and np.array_equal(mirror, live.words())


@pytest.mark.parametrize("copier", ["held", "racing"])
def test_a_checkpoint_holds_the_balances_of_its_moment_while_batches_change_them(tmp_path, monkeypatch, copier):
    # The balances are copied on write (core/cow.pxd): the checkpoint thread is held before it
    # copies anything ("held": the batches copy what they change) or copies while the batches
    # run ("racing": both sides claim regions), while batches change accounts in every way
    # there is (payments, holds, posts, voids, expiries, a linked chain rolled back, new
    # accounts). What the checkpoint stores must be the balances at its snapshot, byte for
    # byte, and reopening from it must give the state before close exactly.
    import threading

    from core.store import Store

    go = threading.Event()
    if copier == "racing":
        go.set()
    at_snapshot = []
    start, copy = Store._start_checkpoint, Store._copy_hot_snapshot

    def recording_start(self):
        at_snapshot.append(self.ledger.snapshot()[0]["hot"].copy())
        return start(self)

    def held_copy(self):
        go.wait(10)
        return copy(self)

    monkeypatch.setattr(Store, "_start_checkpoint", recording_start)
    monkeypatch.setattr(Store, "_copy_hot_snapshot", held_copy)
    path = str(tmp_path / "store")
    options = dict(accounts_max=4096, transfers_hot_max=4096, cold_epoch_transfers=64, id_filter_bytes=4096,
                   pending_max=512)
    accounts = [{"id": i, "ledger": 156, "code": 1} for i in range(1, 3001)]
    with core.open(path, **options) as store:
        store.create_accounts(core.accounts_from_dicts(accounts))
        batches = _two_phase_batches(6)
        for number, batch in enumerate(batches[:3]):
            store.create_transfers(batch, 1_000_000_000 * (number + 1))
        store._start_checkpoint()
        for number, batch in enumerate(batches[3:]):
            store.create_transfers(batch, 1_000_000_000 * (number + 5))  # posts, voids, expiries
        spread = [{"id": 90_000 + k, "debit_account_id": 1 + (k * 37) % 3000, "credit_account_id": 1 + (k * 11) % 3000,
                   "amount": 1, "ledger": 156, "code": 2} for k in range(2000)]
        store.create_transfers(core.transfers_from_dicts(spread), 10_000_000_000)
        chain = [{"id": 95_000, "debit_account_id": 7, "credit_account_id": 8, "amount": 5, "ledger": 156, "code": 1,
                  "flags": core.TransferFlags.linked},
                 {"id": 95_001, "debit_account_id": 9, "credit_account_id": 99_999, "amount": 5, "ledger": 156,
                  "code": 1}]
        assert store.create_transfers(core.transfers_from_dicts(chain), 11_000_000_000).tolist() == [
            core.Result.linked_event_failed, core.Result.credit_account_not_found]
        store.create_accounts(core.accounts_from_dicts([{"id": 5000 + i, "ledger": 156, "code": 1}
                                                        for i in range(10)]))
        go.set()
        store._reap(wait_all=True)
        meta = store._checkpoint_meta
        with store._checkpoint_env.begin(buffers=True) as txn:
            stored = np.frombuffer(store._load_array(txn, "hot", meta.arrays["hot"]), dtype=at_snapshot[0].dtype)
        assert len(at_snapshot) == 1 and np.array_equal(stored, at_snapshot[0])
        assert not np.array_equal(stored, store.ledger.snapshot()[0]["hot"][:stored.shape[0]])  # it did change
        expected = store.state_hash()
    monkeypatch.undo()
    with core.open(path) as store:
        assert store.recovery.checkpoint_sequence == meta.sequence and store.recovery.replayed_batches == 6
        assert store.state_hash() == expected


def test_a_write_failing_on_a_full_disk_says_so(tmp_path, monkeypatch):
    # LMDB reports a full disk as an I/O error on commit: the store's error names the cause.
    import collections

    from core import store as store_module

    error = store_module._with_disk_hint(OSError(5, "Input/output error"), str(tmp_path))
    assert isinstance(error, OSError)  # plenty of space here: left as it was
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(store_module.shutil, "disk_usage", lambda path: usage(1 << 40, 1 << 40, 4096))
    error = store_module._with_disk_hint(OSError(5, "Input/output error"), str(tmp_path))
    assert "4,096 bytes free: full?" in str(error) and "Input/output error" in str(error)
