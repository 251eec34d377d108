"""Hand-written scenarios, one per rule: each asserts the documented result code, and that the
core and the reference model agree on results and balances afterwards."""

import numpy as np
import pytest

import core
from core import Result as R
from tests.model import ModelLedger, U64

CNY, USD = 156, 840
T0 = 1_700_000_000 * 10**9
S = 10**9

ACCOUNTS = [
    {"id": 1, "ledger": CNY, "code": 3},                          # funding card (may go negative)
    {"id": 2, "ledger": CNY, "code": 1, "flags": 2},              # wallet: debits <= credits
    {"id": 3, "ledger": CNY, "code": 2},                          # merchant
    {"id": 4, "ledger": USD, "code": 2},                          # merchant in another currency
    {"id": 5, "ledger": CNY, "code": 8, "flags": 4},              # credit line: credits <= debits
    {"id": 6, "ledger": CNY, "code": 2, "flags": 8},              # closed merchant
]


class Both:
    """Applies every batch to the core and the model and checks they agree."""

    def __init__(self, accounts_max=100, transfers_hot_max=100):
        self.core = core.Ledger(accounts_max=accounts_max, transfers_hot_max=transfers_hot_max)
        self.model = ModelLedger(accounts_max, transfers_hot_max)
        self.now = T0
        assert self.accounts(ACCOUNTS) == [R.ok] * len(ACCOUNTS)

    def accounts(self, events, now=None):
        self.now = now or self.now
        got = self.core.create_accounts(core.accounts_from_dicts(events), self.now).tolist()
        assert got == self.model.create_accounts(events, self.now)
        self._same()
        return got

    def transfers(self, events, now=None):
        self.now = now or self.now
        got = self.core.create_transfers(core.transfers_from_dicts(events), self.now).tolist()
        assert got == self.model.create_transfers(events, self.now)
        self._same()
        return got

    def balance(self, account_id):
        (a,) = core.to_dicts(self.core.lookup_accounts([account_id]))
        return a["debits_pending"], a["debits_posted"], a["credits_pending"], a["credits_posted"]

    def _same(self):
        assert core.to_dicts(self.core.accounts()) == self.model.accounts()


def pay(id_, debit, credit, amount, **more):
    return {"id": id_, "debit_account_id": debit, "credit_account_id": credit, "amount": amount,
            "ledger": more.pop("ledger", CNY), "code": more.pop("code", 1), **more}


@pytest.fixture
def both():
    return Both()


def test_top_up_and_pay(both):
    assert both.transfers([pay(10, 1, 2, 500, code=4), pay(11, 2, 3, 200)]) == [R.ok, R.ok]
    assert both.balance(2) == (0, 200, 0, 500)
    assert both.transfers([pay(12, 2, 3, 301)]) == [R.exceeds_credits]
    assert both.balance(2) == (0, 200, 0, 500)


def test_retry_is_idempotent_and_differences_are_named(both):
    both.transfers([pay(10, 1, 2, 500)])
    assert both.transfers([pay(10, 1, 2, 500)]) == [R.exists]
    assert both.transfers([pay(10, 1, 2, 501)]) == [R.exists_with_different_amount]
    assert both.transfers([pay(10, 1, 3, 500)]) == [R.exists_with_different_credit_account_id]
    assert both.transfers([pay(10, 1, 2, 500, user_data_64=9)]) == [R.exists_with_different_user_data_64]
    assert both.transfers([pay(10, 1, 2, 500, code=2)]) == [R.exists_with_different_code]
    assert both.balance(2) == (0, 0, 0, 500)
    assert both.accounts([dict(ACCOUNTS[1])]) == [R.exists]
    assert both.accounts([dict(ACCOUNTS[1], code=9)]) == [R.exists_with_different_code]


def test_two_phase_post_partial_and_void(both):
    both.transfers([pay(10, 1, 2, 1000)])
    assert both.transfers([pay(20, 2, 3, 300, flags=2)]) == [R.ok]
    assert both.balance(2) == (300, 0, 0, 1000)
    assert both.transfers([{"id": 21, "pending_id": 20, "flags": 4, "amount": 301}]) == [R.exceeds_pending_transfer_amount]
    assert both.transfers([{"id": 21, "pending_id": 20, "flags": 4, "amount": 120}]) == [R.ok]
    assert both.balance(2) == (0, 120, 0, 1000)
    assert both.balance(3) == (0, 0, 0, 120)
    assert both.transfers([{"id": 22, "pending_id": 20, "flags": 8}]) == [R.pending_transfer_already_posted]
    assert both.transfers([{"id": 21, "pending_id": 20, "flags": 4, "amount": 120}]) == [R.exists]
    assert both.transfers([pay(30, 2, 3, 50, flags=2), {"id": 31, "pending_id": 30, "flags": 8}]) == [R.ok, R.ok]
    assert both.transfers([{"id": 32, "pending_id": 30, "flags": 4}]) == [R.pending_transfer_already_voided]
    assert both.transfers([{"id": 33, "pending_id": 10, "flags": 4}]) == [R.pending_transfer_not_pending]
    assert both.transfers([{"id": 34, "pending_id": 99, "flags": 4}]) == [R.pending_transfer_not_found]
    assert both.balance(2) == (0, 120, 0, 1000)


def test_pending_transfers_expire_by_the_engine_clock(both):
    both.transfers([pay(10, 1, 2, 1000)])
    both.transfers([pay(20, 2, 3, 300, flags=2, timeout=2)], now=T0 + S)
    assert both.balance(2) == (300, 0, 0, 1000)
    both.transfers([], now=T0 + 2 * S)            # not yet: expires at T0 + 3 s
    assert both.balance(2) == (300, 0, 0, 1000)
    both.transfers([], now=T0 + 3 * S + 5)
    assert both.balance(2) == (0, 0, 0, 1000)
    assert both.transfers([{"id": 21, "pending_id": 20, "flags": 4}]) == [R.pending_transfer_expired]


def test_linked_chain_is_all_or_nothing(both):
    both.transfers([pay(10, 1, 2, 100)])
    chain = [pay(11, 1, 2, 100, flags=1), pay(12, 2, 3, 150, flags=1), pay(13, 2, 3, 100)]
    assert both.transfers(chain) == [R.linked_event_failed, R.linked_event_failed, R.exceeds_credits]
    assert both.balance(2) == (0, 0, 0, 100)
    assert both.transfers([pay(14, 1, 2, 1, flags=1)]) == [R.linked_event_chain_open]
    chain = [pay(15, 1, 2, 100, flags=1), pay(16, 2, 3, 150)]
    assert both.transfers(chain) == [R.ok, R.ok]
    assert both.balance(2) == (0, 150, 0, 200)


def test_balancing_transfers_clamp_to_what_is_available(both):
    both.transfers([pay(10, 1, 2, 70)])
    assert both.transfers([pay(11, 2, 3, 1000, flags=16)]) == [R.ok]
    (t,) = core.to_dicts(both.core.lookup_transfers([11]))
    assert t["amount"] == 70
    assert both.transfers([pay(12, 2, 3, 1000, flags=16)]) == [R.exceeds_credits]
    assert both.transfers([pay(13, 3, 5, 10, flags=32)]) == [R.exceeds_debits]


def test_overflows_and_limits(both):
    both.transfers([pay(10, 1, 3, U64)])
    assert both.transfers([pay(11, 1, 3, 1)]) == [R.overflows_debits_posted]
    assert both.transfers([pay(12, 1, 3, 1, flags=2)]) == [R.overflows_debits]
    assert both.transfers([pay(13, 3, 1, 1)]) == [R.ok]
    small = Both(accounts_max=len(ACCOUNTS), transfers_hot_max=2)
    assert small.accounts([{"id": 50, "ledger": CNY, "code": 1}]) == [R.accounts_limit_reached]
    assert small.transfers([pay(1, 1, 3, 1), pay(2, 1, 3, 1), pay(3, 1, 3, 1)]) == [R.ok, R.ok, R.transfers_limit_reached]


def test_input_validation_codes(both):
    assert both.transfers([pay(0, 1, 2, 1)]) == [R.id_must_not_be_zero]
    assert both.transfers([pay(10, 1, 1, 1)]) == [R.accounts_must_be_different]
    assert both.transfers([pay(10, 1, 4, 1)]) == [R.accounts_must_have_the_same_ledger]
    assert both.transfers([pay(10, 1, 3, 1, ledger=USD)]) == [R.transfer_must_have_the_same_ledger_as_accounts]
    assert both.transfers([pay(10, 1, 77, 1)]) == [R.credit_account_not_found]
    assert both.transfers([pay(10, 1, 6, 1)]) == [R.credit_account_closed]
    assert both.transfers([pay(10, 1, 3, 0)]) == [R.amount_must_not_be_zero]
    assert both.transfers([pay(10, 1, 3, 1, flags=1 << 9)]) == [R.reserved_flag]
    assert both.transfers([pay(10, 1, 3, 1, flags=2 | 4)]) == [R.flags_are_mutually_exclusive]
    assert both.transfers([pay(10, 1, 3, 1, timeout=5)]) == [R.timeout_reserved_for_pending_transfer]
    assert both.transfers([pay(10, 1, 3, 1, reserved=1)]) == [R.reserved_field]
    assert both.accounts([{"id": 60, "ledger": CNY, "code": 1, "flags": 6}]) == [R.flags_are_mutually_exclusive]
    assert both.accounts([{"id": 61, "ledger": CNY, "code": 1, "credits_posted": 5}]) == [R.credits_posted_must_be_zero]


def test_timestamps_strictly_increase_even_when_the_clock_goes_back(both):
    both.transfers([pay(10, 1, 3, 1), pay(11, 1, 3, 1)], now=T0 + 10 * S)
    both.transfers([pay(12, 1, 3, 1)], now=T0)
    stamps = [t["timestamp"] for t in core.to_dicts(both.core.lookup_transfers([10, 11, 12]))]
    assert stamps == [T0 + 10 * S, T0 + 10 * S + 1, T0 + 10 * S + 2]


def test_account_history_is_paged_by_timestamp(both):
    both.transfers([pay(100 + i, 1, 3, i + 1) for i in range(10)])
    page = core.to_dicts(both.core.get_account_transfers(3, limit=4))
    assert [t["id"] for t in page] == [100, 101, 102, 103]
    page = core.to_dicts(both.core.get_account_transfers(3, timestamp_min=page[-1]["timestamp"] + 1, limit=4))
    assert [t["id"] for t in page] == [104, 105, 106, 107]
    newest = core.to_dicts(both.core.get_account_transfers(3, limit=3, reverse=True))
    assert [t["id"] for t in newest] == [109, 108, 107]
    assert len(both.core.get_account_transfers(3, credits=False)) == 0
    assert both.model.get_account_transfers(3, limit=3, reverse=True) == newest


def test_features_follow_settled_transfers(both):
    both.transfers([pay(10, 1, 2, 500, code=4), pay(11, 2, 3, 200, code=1), pay(12, 2, 3, 100, code=1, flags=2)])
    features = both.core.features()
    wallet = 1  # dense index of account 2
    assert features["spend_minor"][wallet] == 200
    assert features["receive_minor"][wallet] == 500
    assert features["code_counts"][wallet][4] == 1 and features["code_counts"][wallet][1] == 1
    (pending,) = core.to_dicts(both.core.lookup_transfers([12]))
    assert features["last_activity_ts"][wallet] == pending["timestamp"]  # a pending creation is activity
    model = both.model.features_by_index()
    for key, values in model.items():
        assert features[key].tolist() == values, key


def test_bad_batches_raise_before_anything_changes(both):
    before = both.core.accounts()
    with pytest.raises(ValueError):
        both.core.create_transfers(np.zeros(core.BATCH_EVENTS_MAX + 1, core.TRANSFER_DTYPE), T0)
    with pytest.raises(ValueError):
        both.core.create_transfers(np.zeros(1, core.TRANSFER_DTYPE), 1 << 63)
    assert np.array_equal(both.core.accounts(), before)


def test_a_failed_account_chain_does_not_undo_an_earlier_transfer_batch(both):
    # Regression (found by the long property run): the undo log of a committed transfer chain
    # was left filled, and a later failing account chain "restored" it, reverting balances.
    assert both.transfers([pay(10, 1, 3, 1, flags=1), pay(11, 1, 3, 1, flags=2)]) == [R.ok, R.ok]
    assert both.accounts([{"id": 0, "ledger": 0, "code": 0, "flags": 1}]) == [R.linked_event_chain_open]
    assert both.balance(1) == (1, 1, 0, 0)


def test_reserved_ids_are_never_found(both):
    both.transfers([pay(10, 1, 3, 5)])
    for reserved in (0, (1 << 128) - 1):
        assert len(both.core.lookup_accounts([reserved])) == 0
        assert len(both.core.lookup_transfers([reserved])) == 0
        assert len(both.core.get_account_transfers(reserved)) == 0
    empty = core.Ledger(accounts_max=4, transfers_hot_max=4)
    assert len(empty.lookup_accounts([0])) == 0 and len(empty.lookup_transfers([0])) == 0


def test_the_cold_id_maximum_keeps_both_halves_of_a_128_bit_id():
    ledger = core.Ledger(accounts_max=4, transfers_hot_max=64)
    big = (7 << 64) | 5
    ledger.set_cold_id_max(big)
    assert ledger.cold_id_max == big
    ledger.set_cold_id_max(big - 1)  # it only grows
    assert ledger.cold_id_max == big


def test_the_ledger_dispatches_by_the_operation_table_and_refuses_other_numbers():
    from core.operations import OPERATIONS, Kind, Operation

    by_number = core.Ledger(accounts_max=4, transfers_hot_max=64)
    by_name = core.Ledger(accounts_max=4, transfers_hot_max=64)
    accounts = core.accounts_from_dicts([{"id": i, "ledger": 156, "code": 1} for i in (1, 2)])
    payment = core.transfers_from_dicts([{"id": 9, "debit_account_id": 1, "credit_account_id": 2, "amount": 3,
                                          "ledger": 156, "code": 1}])
    assert by_number.apply(Operation.create_accounts, accounts, 1).tolist() == by_name.create_accounts(accounts, 1).tolist()
    assert by_number.apply(Operation.create_transfers, payment, 2).tolist() == by_name.create_transfers(payment, 2).tolist()
    assert np.array_equal(by_number.accounts(), by_name.accounts())
    creates = {operation for operation, spec in OPERATIONS.items() if spec.kind is Kind.create}
    for operation in set(Operation) - creates:
        with pytest.raises(ValueError, match="applies no operation"):
            by_number.apply(operation, payment, 3)
    assert np.array_equal(by_number.accounts(), by_name.accounts())  # untouched
