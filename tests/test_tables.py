"""The generic parts of the tiered store (docs/tables.md): a cold table of records that are not
transfers, and the registry of checkpointed arrays."""

import lmdb
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import core
from core import checkpoint, cold, state_hash
from core.records import ID_DTYPE

#: A product-like record: 128 bytes, an id, a commit timestamp, fields of its own (an order).
ORDER_DTYPE = np.dtype([("id_lo", "<u8"), ("id_hi", "<u8"), ("merchant", "<u8"), ("amount", "<u8"),
                        ("timestamp", "<u8"), ("expires_at", "<u8"), ("state", "u1"), ("_pad", "V79")])
#: Its final state once it stops changing: more than a byte (paid amount, refunded amount, state).
FINAL_DTYPE = np.dtype([("paid", "<u8"), ("refunded", "<u8"), ("state", "u1"), ("_pad", "u1", (7,))])
#: What a lookup gives for a record whose final state is not written yet (not zero: told apart).
MISSING = np.array((0, 0, 0xEE, 0), dtype=FINAL_DTYPE)[()]
STATUS_DTYPE = np.dtype([("timestamp", "<u8"), ("state", FINAL_DTYPE)])
EPOCH = 64


def _orders(first: int, count: int, ids: np.ndarray) -> np.ndarray:
    rows = np.zeros(count, dtype=ORDER_DTYPE)
    rows["id_lo"], rows["id_hi"] = ids[first:first + count] & 0xFFFFFFFFFFFFFFFF, ids[first:first + count] >> 64
    rows["timestamp"] = 1_000 + np.arange(first, first + count, dtype=np.uint64) * 7
    rows["merchant"] = np.arange(first, first + count) % 5
    rows["amount"] = 100 + np.arange(first, first + count)
    rows["state"] = np.arange(first, first + count) % 3  # 0: final at once, 1 or 2: changes later
    return rows


def _ids_as(values) -> np.ndarray:
    return core.ids_array(values)


@settings(max_examples=25, deadline=None)
@given(time_ordered=st.booleans(), epochs=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_a_cold_table_of_other_records_round_trips(tmp_path_factory, time_ordered, epochs, seed):
    rng = np.random.default_rng(seed)
    total = epochs * EPOCH
    if time_ordered:
        ids = np.array([(1 << 80) + i for i in range(total)], dtype=object)
    else:
        ids = np.array([int(x) << 64 | int(y) for x, y in rng.integers(1, 2**63, size=(total, 2))], dtype=object)
    env = lmdb.open(str(tmp_path_factory.mktemp("cold")), map_size=1 << 26, max_dbs=16)
    table = cold.ColdTable(env, dtype=ORDER_DTYPE, db_prefix=b"orders.",
                           has_status=lambda rows: rows["state"] != 0, state_dtype=FINAL_DTYPE,
                           missing=MISSING)
    transfers = cold.ColdTier(env, EPOCH)  # a second table in the same environment
    chain = cold.CHAIN_EMPTY
    every = np.concatenate([_orders(e * EPOCH, EPOCH, ids) for e in range(epochs)])
    # Orders with state 1 reach a final state (an epoch later, as a real table's would); state 2
    # are still open: their lookups give ``missing``.
    finals = every[every["state"] == 1]
    for epoch in range(epochs):
        rows = every[epoch * EPOCH:(epoch + 1) * EPOCH]
        done = finals[(finals["timestamp"] >= (rows["timestamp"][0] - EPOCH * 7)) & (finals["timestamp"] < rows["timestamp"][0])]
        statuses = np.zeros(done.shape[0], dtype=STATUS_DTYPE)
        statuses["timestamp"] = done["timestamp"]
        statuses["state"]["paid"] = done["amount"]
        statuses["state"]["refunded"] = done["amount"] // 3
        statuses["state"]["state"] = 7
        with env.begin(write=True) as txn:
            chain, written = table.write_epoch(txn, epoch, rows, statuses, chain)
            assert written > 0
        assert table.chain_at(epoch + 1) == chain
        with env.begin(write=True) as txn:  # a replay rewrites an epoch: same keys, same values
            assert table.write_epoch(txn, epoch, rows, statuses, table.chain_at(epoch))[0] == chain
    written_finals = finals[finals["timestamp"] < every["timestamp"][(epochs - 1) * EPOCH]]
    pick = rng.permutation(total)[:50]
    wanted = _ids_as([int(ids[i]) for i in pick] + [(1 << 100) + 5])  # and one never written
    boundary = int(every["timestamp"][-1]) + 1
    rows, states, found = table.lookup(wanted, boundary)
    assert found.tolist() == [True] * pick.shape[0] + [False]
    assert rows[:-1].tobytes() == every[pick].tobytes()
    for k, i in enumerate(pick.tolist()):
        row = every[i]
        if row["state"] == 0:
            assert states[k].tobytes() == bytes(FINAL_DTYPE.itemsize)  # never changes: no state
        elif row["timestamp"] in written_finals["timestamp"]:
            assert int(states[k]["paid"]) == int(row["amount"]) and int(states[k]["state"]) == 7
            assert int(states[k]["refunded"]) == int(row["amount"]) // 3
        else:
            assert states[k].tobytes() == MISSING.tobytes()  # may change, not final yet
    # Anything at or after the boundary (memory holds it) is not the cold table's to answer.
    last_epoch_first = int(every["timestamp"][(epochs - 1) * EPOCH])
    _, _, found = table.lookup(_ids_as([int(ids[total - 1])]), last_epoch_first)
    assert not found[0]
    # The transfer table beside it saw none of it: the tables' databases are apart.
    assert not transfers.lookup(_ids_as([int(ids[0])]), boundary)[2][0]
    assert table.disk_bytes()["ids"] > 0 and transfers.disk_bytes()["ids"] == 0
    env.close()


def test_a_cold_table_takes_only_its_own_records_and_states(tmp_path):
    env = lmdb.open(str(tmp_path), map_size=1 << 24, max_dbs=16)
    with pytest.raises(ValueError, match="128 bytes"):
        cold.ColdTable(env, dtype=np.dtype([("id_lo", "<u8"), ("id_hi", "<u8"), ("timestamp", "<u8")]))
    table = cold.ColdTable(env, dtype=ORDER_DTYPE, db_prefix=b"orders.", state_dtype=FINAL_DTYPE)
    wrong = np.zeros(1, dtype=[("timestamp", "<u8"), ("state", "u1")])
    with env.begin(write=True) as txn, pytest.raises(ValueError, match="statuses hold"):
        table.write_epoch(txn, 0, _orders(0, EPOCH, np.arange(1, EPOCH + 1, dtype=object)), wrong, cold.CHAIN_EMPTY)
    env.close()


def test_the_epoch_chain_is_the_state_hash_chain_of_rows_and_final_states(tmp_path):
    from core import codec
    rows = _orders(0, EPOCH, np.arange(1, EPOCH + 1, dtype=object))
    statuses = np.zeros(2, dtype=STATUS_DTYPE)
    statuses["timestamp"] = rows["timestamp"][:2]
    statuses["state"]["paid"] = 5
    expected = state_hash.chain_next(state_hash.CHAIN_EMPTY, state_hash.epoch_digest(codec.pack(rows), statuses))
    env = lmdb.open(str(tmp_path), map_size=1 << 24, max_dbs=16)
    table = cold.ColdTable(env, dtype=ORDER_DTYPE, state_dtype=FINAL_DTYPE, has_status=lambda r: r["state"] != 0)
    with env.begin(write=True) as txn:
        assert table.write_epoch(txn, 0, rows, statuses, state_hash.CHAIN_EMPTY)[0] == expected
    changed = statuses.copy()
    changed["state"]["paid"][1] = 6  # another final state, another chain
    assert state_hash.chain_next(state_hash.CHAIN_EMPTY,
                                 state_hash.epoch_digest(codec.pack(rows), changed)) != expected
    assert table.states_of(rows[:0]).shape == (0,)  # nothing asked, nothing read
    env.close()


def test_a_cold_table_refuses_states_it_could_not_store_or_hash_exactly(tmp_path):
    env = lmdb.open(str(tmp_path), map_size=1 << 24, max_dbs=16)
    for bad in (np.dtype(("u1", (4,))), np.dtype({"names": ["a"], "formats": ["<u8"], "itemsize": 16})):
        with pytest.raises(ValueError, match="padding"):
            cold.ColdTable(env, dtype=ORDER_DTYPE, state_dtype=bad)
    # A stored state of another width (another version's table) is an error, not a misread.
    narrow = cold.ColdTable(env, dtype=ORDER_DTYPE, db_prefix=b"t.", state_dtype=np.uint8,
                            has_status=lambda r: np.ones(r.shape[0], bool))
    rows = _orders(0, 4, np.arange(1, 5, dtype=object))
    statuses = np.zeros(1, dtype=[("timestamp", "<u8"), ("state", "u1")])
    statuses["timestamp"], statuses["state"] = rows["timestamp"][0], 5
    with env.begin(write=True) as txn:
        narrow.write_epoch(txn, 0, rows, statuses, cold.CHAIN_EMPTY)
    assert narrow.states_of(rows[:1]).tolist() == [5]
    wide = cold.ColdTable(env, dtype=ORDER_DTYPE, db_prefix=b"t.", state_dtype="<u4",
                          has_status=lambda r: np.ones(r.shape[0], bool))
    with pytest.raises(LookupError, match="1 bytes, not 4"):
        wide.states_of(rows[:1])
    env.close()


def test_the_registry_refuses_a_name_declared_twice_or_an_unknown_kind():
    assert checkpoint.registry({"a": checkpoint.RAW}, {"b": checkpoint.REGIONS}) == {"a": "raw", "b": "regions"}
    with pytest.raises(ValueError, match="declared twice"):
        checkpoint.registry({"a": checkpoint.RAW}, {"a": checkpoint.RECORDS})
    with pytest.raises(ValueError, match="unknown kind"):
        checkpoint.registry({"a": "sometimes"})
    with pytest.raises(ValueError, match="separates"):
        checkpoint.registry({"a/b": checkpoint.RAW})


def test_every_array_a_checkpoint_writes_is_declared_by_its_owner(tmp_path):
    # The store names no array itself: a checkpoint holds exactly the declared arrays, each
    # written by its declared kind, and a checkpoint whose arrays differ is not used (the log is).
    from core.store import CHECKPOINT_ARRAYS
    declared = {"accounts": checkpoint.APPEND_RECORDS, "hot": checkpoint.COPY_ON_WRITE, "pendings": checkpoint.RAW,
                "expiries": checkpoint.RAW, "tail_rows": checkpoint.RECORDS, "tail_links": checkpoint.RAW,
                "last_epoch": checkpoint.RAW, "filter": checkpoint.REGIONS, "orders_rows": checkpoint.RAW,
                "orders_slots": checkpoint.RAW, "orders_outbox": checkpoint.RAW, "order_expiries": checkpoint.RAW,
                "merchants": checkpoint.RAW, "merchant_books": checkpoint.RAW, "settlements": checkpoint.RAW,
                "refunds_rows": checkpoint.RAW, "refunds_slots": checkpoint.RAW,
                "refunds_outbox": checkpoint.RAW, "product_filter": checkpoint.REGIONS, "codes_rows": checkpoint.RAW,
                "codes_slots": checkpoint.RAW, "codes_outbox": checkpoint.RAW, "code_expiries": checkpoint.RAW,
                "code_wallets": checkpoint.RAW, "envelopes_rows": checkpoint.RAW, "envelopes_slots": checkpoint.RAW,
                "envelopes_outbox": checkpoint.RAW, "claims_rows": checkpoint.RAW, "claims_slots": checkpoint.RAW,
                "claims_outbox": checkpoint.RAW, "envelope_expiries": checkpoint.RAW,
                **{f"{table}_{part}": checkpoint.RAW for table in ("stocks", "coupons", "holdings", "members", "coupon_payments")
                   for part in ("rows", "slots", "outbox")}, "stock_expiries": checkpoint.RAW,
                **{f"{table}_{part}": checkpoint.RAW for table in ("fx_payments", "fx_refunds")
                   for part in ("rows", "slots", "outbox")}, "fx_rates": checkpoint.RAW,
                "wallet_windows": checkpoint.RAW, "tier_rules": checkpoint.RAW}
    assert CHECKPOINT_ARRAYS == declared
    path = str(tmp_path / "store")
    with core.open(path, accounts_max=64, transfers_hot_max=1024, cold_epoch_transfers=16, id_filter_bytes=4096) as store:
        store.create_accounts(core.accounts_from_dicts([{"id": i, "ledger": 156, "code": 1} for i in range(1, 5)]))
        store.create_transfers(core.transfers_from_dicts(
            [{"id": 100 + i, "debit_account_id": 1 + i % 4, "credit_account_id": 1 + (i + 1) % 4, "amount": 3,
              "ledger": 156, "code": 1} for i in range(40)]))
        store.checkpoint()
        assert {name: meta.kind for name, meta in store._checkpoint_meta.arrays.items()} == declared
        expected = store.state_hash()
    with core.open(path) as store:
        assert store.recovery.checkpoint_sequence == 2 and store.recovery.replayed_batches == 0
        assert store.state_hash() == expected


@pytest.mark.parametrize("declared, error", [
    # A later version that declares one more array: the old checkpoint lacks it.
    ({"coupons": checkpoint.RAW}, "coupons"),
    # One that reads an array another way than it was written.
    ({"pendings": checkpoint.RECORDS}, "pendings was written as raw"),
])
def test_a_checkpoint_other_than_the_declarations_is_not_used(tmp_path, monkeypatch, declared, error):
    # Nothing is guessed: the whole log is replayed instead, to the same state.
    import core.store
    path = str(tmp_path / "store")
    with core.open(path, accounts_max=64, transfers_hot_max=1024, cold_epoch_transfers=16, id_filter_bytes=4096) as store:
        store.create_accounts(core.accounts_from_dicts([{"id": i, "ledger": 156, "code": 1} for i in range(1, 5)]))
        store.checkpoint()
        expected = store.state_hash()
    monkeypatch.setattr(core.store, "CHECKPOINT_ARRAYS", {**core.store.CHECKPOINT_ARRAYS, **declared})
    with core.open(path) as store:
        assert error in (store.recovery.checkpoint_error or "")
        assert store.recovery.replayed_batches == 1
        assert store.state_hash() == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), max_size=300), st.integers(1, 70_000))
def test_stable_order_u32_is_numpys_stable_argsort(values, spread):
    from core.cold import stable_order_u32

    # Many equal keys (stability matters) and keys across both 16-bit halves.
    keys = np.array([value % spread if value % 3 else value for value in values], dtype=np.uint32)
    assert np.array_equal(stable_order_u32(keys), np.argsort(keys, kind="stable"))
