"""The product layer's primitive: legs and typed undo (core/ledger.pyx ``chain_begin``, ``leg``,
``save_field``, ``chain_abort``; docs/products.md).

A chain of legs either applies whole or leaves the ledger, and the product field saved before
it, exactly as they were: checked as a property over random chains, many of which fail at a
random leg (insufficient funds, a closed account, an unknown account, an existing id, a
currency mismatch, an overflow).
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import core

T0 = 1_700_000_000 * 10**9
U64 = (1 << 64) - 1
ACCOUNTS = [
    {"id": 1, "ledger": 156, "code": 3},                 # a funding card: may go negative
    {"id": 2, "ledger": 156, "code": 1, "flags": 2},     # wallets: debits_must_not_exceed_credits
    {"id": 3, "ledger": 156, "code": 1, "flags": 2},
    {"id": 4, "ledger": 156, "code": 2},                 # a merchant
    {"id": 5, "ledger": 156, "code": 2, "flags": 8},     # a closed merchant
    {"id": 6, "ledger": 840, "code": 2},                 # another currency
]


def _ledger():
    ledger = core.Ledger(accounts_max=16, transfers_hot_max=4096, pending_max=64)
    assert not ledger.create_accounts(core.accounts_from_dicts(ACCOUNTS), T0).any()
    funding = core.transfers_from_dicts([
        {"id": 900, "debit_account_id": 1, "credit_account_id": 2, "amount": 1_000, "ledger": 156, "code": 4},
        {"id": 901, "debit_account_id": 1, "credit_account_id": 3, "amount": 300, "ledger": 156, "code": 4}])
    assert not ledger.create_transfers(funding, T0 + 1).any()
    return ledger


legs = st.lists(st.fixed_dictionaries({
    "id": st.sampled_from([900, 1000, 1001, 1002, 1003, 1004]),   # 900 exists already
    "debit_account_id": st.sampled_from([1, 2, 3, 2, 3, 7]),      # 7: unknown
    "credit_account_id": st.sampled_from([2, 3, 4, 4, 5, 6]),
    "amount": st.one_of(st.integers(1, 600), st.just(U64)),
    "ledger": st.just(156), "code": st.sampled_from([1, 0xF001]),
    "flags": st.sampled_from([0, 0, 0, 2]),                        # some pending legs
}), min_size=1, max_size=4, unique_by=lambda leg: leg["id"])


@settings(max_examples=300, deadline=None)
@given(chain=legs, field=st.binary(min_size=0, max_size=16))
def test_a_chain_of_legs_is_all_or_nothing(chain, field):
    ledger = _ledger()
    before_parts, before_accounts = ledger.hash_parts(), ledger.accounts()
    before_count = ledger.transfer_count
    product_field = np.frombuffer(field, dtype=np.uint8).copy()
    results = ledger.run_legs_for_testing(core.transfers_from_dicts(chain), T0 + 10, product_field)
    failed = [core.Result(code) for code in results if code != core.Result.ok]
    if failed:
        # Exactly one leg names the failure, the others linked_event_failed; nothing changed.
        assert sum(code != core.Result.linked_event_failed for code in failed) == 1
        # Everything the state hash covers but the engine clock (a batch uses its timestamps).
        after_parts = ledger.hash_parts()
        assert after_parts.keys() == before_parts.keys()
        assert all(np.array_equal(after_parts[name], before_parts[name]) for name in before_parts)
        assert np.array_equal(ledger.accounts(), before_accounts)
        assert ledger.transfer_count == before_count
        assert product_field.tobytes() == field
        assert len(ledger.lookup_transfers([leg["id"] for leg in chain if leg["id"] != 900])) == 0
    else:
        assert ledger.transfer_count == before_count + len(chain)
        assert product_field.tobytes() == b"\xab" * len(field)
        found = ledger.lookup_transfers([leg["id"] for leg in chain])
        assert [int(row["amount"]) for row in found] == [leg["amount"] for leg in chain]
    # Money is conserved either way, per currency.
    accounts = ledger.accounts()
    for currency in (156, 840):
        mine = accounts[accounts["ledger"] == currency]
        assert int(mine["debits_posted"].sum()) == int(mine["credits_posted"].sum())
        assert int(mine["debits_pending"].sum()) == int(mine["credits_pending"].sum())


def test_a_failing_last_leg_undoes_the_earlier_ones():
    ledger = _ledger()
    before = ledger.accounts()
    chain = core.transfers_from_dicts([
        {"id": 1000, "debit_account_id": 2, "credit_account_id": 4, "amount": 500, "ledger": 156, "code": 1},
        {"id": 1001, "debit_account_id": 3, "credit_account_id": 4, "amount": 301, "ledger": 156, "code": 1}])
    field = np.zeros(8, dtype=np.uint8)
    results = ledger.run_legs_for_testing(chain, T0 + 10, field)
    assert [core.Result(code) for code in results] == [core.Result.linked_event_failed, core.Result.exceeds_credits]
    assert np.array_equal(ledger.accounts(), before) and not field.any()


def test_the_test_hook_refuses_what_the_primitive_does_not_take():
    ledger = _ledger()
    too_many = core.transfers_from_dicts([{"id": 1000 + k, "debit_account_id": 1, "credit_account_id": 4,
                                           "amount": 1, "ledger": 156, "code": 1} for k in range(5)])
    with pytest.raises(ValueError):
        ledger.run_legs_for_testing(too_many, T0, np.zeros(0, dtype=np.uint8))
    with pytest.raises(ValueError):
        ledger.run_legs_for_testing(too_many[:1], T0, np.zeros(17, dtype=np.uint8))
