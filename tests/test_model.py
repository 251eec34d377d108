"""The reference model (tests/model.py) on hand-written scenarios, checked against docs/data-model.md.

These tests need only the model, not the compiled core: they pin the model to the document so that
the property tests (model versus core) compare the core with something known to be right.
"""

import pytest

from tests.model import ACCOUNT_FIELDS, TRANSFER_FIELDS, U64, U128, ModelLedger, R

NS = 1_000_000_000
T0 = 1_700_000_000 * NS

# Account flags.
LINKED, DEBITS_LIMIT, CREDITS_LIMIT, CLOSED = 1, 2, 4, 8
# Transfer flags.
T_LINKED, PENDING, POST, VOID, BAL_DEBIT, BAL_CREDIT = 1, 2, 4, 8, 16, 32

CNY, USD = 156, 840
FUNDING, WALLET, MERCHANT, CREDIT_LINE, FOREIGN, SHUT, SPARE = 1, 2, 3, 4, 5, 6, 7


def acct(id, ledger=CNY, code=1, flags=0, **fields):
    return dict(id=id, ledger=ledger, code=code, flags=flags, **fields)


def xfer(id, debit, credit, amount, ledger=CNY, code=1, flags=0, **fields):
    return dict(id=id, debit_account_id=debit, credit_account_id=credit, amount=amount, ledger=ledger,
                code=code, flags=flags, **fields)


def resolve(id, pending_id, amount=0, flags=POST, **fields):
    """A post or void naming only the pending transfer."""
    return dict(id=id, pending_id=pending_id, amount=amount, flags=flags, **fields)


def codes(*names):
    return [int(R[name]) for name in names]


class Book:
    """A model ledger with a clock that moves one second per batch unless told otherwise."""

    def __init__(self, accounts_max=100, transfers_hot_max=100):
        self.m = ModelLedger(accounts_max, transfers_hot_max)
        self.now = T0

    def accounts(self, events, now=None, step=NS):
        self.now = self.now + step if now is None else now
        return [R(r).name for r in self.m.create_accounts(events, self.now)]

    def transfers(self, events, now=None, step=NS):
        self.now = self.now + step if now is None else now
        return [R(r).name for r in self.m.create_transfers(events, self.now)]

    def transfer(self, event, **kw):
        (result,) = self.transfers([event], **kw)
        return result

    def account(self, account_id):
        (a,) = self.m.lookup_accounts([account_id])
        return a

    def balances(self, account_id):
        a = self.account(account_id)
        return a["debits_pending"], a["debits_posted"], a["credits_pending"], a["credits_posted"]

    def get(self, transfer_id):
        (t,) = self.m.lookup_transfers([transfer_id])
        return t


@pytest.fixture
def book():
    """Accounts of every kind the tests need: a funding card (no limits), a wallet that cannot go
    negative, a merchant, a credit line, an account of another ledger, a closed one, a spare."""
    b = Book()
    assert b.accounts([acct(FUNDING, code=3), acct(WALLET, flags=DEBITS_LIMIT), acct(MERCHANT, code=2),
                       acct(CREDIT_LINE, code=8, flags=CREDITS_LIMIT), acct(FOREIGN, ledger=USD),
                       acct(SHUT, flags=CLOSED), acct(SPARE)]) == ["ok"] * 7
    return b


def fund(book, account_id, amount, transfer_id=1000):
    assert book.transfer(xfer(transfer_id, FUNDING, account_id, amount, code=4)) == "ok"


def total_balances(book):
    """Per ledger: (sum debits_pending, sum credits_pending, sum debits_posted, sum credits_posted)."""
    sums = {}
    for a in book.m.accounts():
        s = sums.setdefault(a["ledger"], [0, 0, 0, 0])
        for k, name in enumerate(("debits_pending", "credits_pending", "debits_posted", "credits_posted")):
            s[k] += a[name]
    return sums


def assert_conserved(book):
    for dp, cp, dpo, cpo in total_balances(book).values():
        assert dp == cp and dpo == cpo


# -- result codes enum


def test_result_codes_are_numbered_as_documented():
    assert len(R) == 149 and R.product_account == 140 and R.claimer_not_found == 115 and R.below_min_spend == 132 and R.id_reserved == 91 and R.forbidden == 95
    assert R.exceeds_payment_limit == 141 and R.exceeds_balance_limit == 144 and R.tier_ledgers_limit_reached == 148
    assert R.code_invalid == 96 and R.codes_limit_reached == 102 and R.user_paying == 103 and R.payer_mismatch == 105
    assert R.out_trade_no_invalid == 66 and R.order_token_invalid == 74 and R.merchant_mismatch == 80
    assert R.ok == 0 and R.linked_event_failed == 1 and R.linked_event_chain_open == 2
    assert R.exists == 21 and R.accounts_limit_reached == 22
    assert R.exceeds_pending_transfer_amount == 44 and R.pending_transfer_expired == 53
    assert R.overflows_timeout == 62 and R.transfers_limit_reached == 65


# -- create_accounts


def test_account_is_created_empty_with_engine_timestamp():
    m = ModelLedger(10, 10)
    assert m.create_accounts([acct(1, user_data_128=U128 - 1, user_data_64=U64, user_data_32=7)], T0) == [0]
    (a,) = m.lookup_accounts([1])
    assert set(a) == set(ACCOUNT_FIELDS)
    assert a == dict(id=1, debits_pending=0, debits_posted=0, credits_pending=0, credits_posted=0,
                     user_data_128=U128 - 1, user_data_64=U64, user_data_32=7, ledger=CNY, code=1, flags=0,
                     reserved=0, timestamp=T0)


@pytest.mark.parametrize("event,expected", [
    (acct(0, timestamp=1, reserved=1, flags=1 << 4), "timestamp_must_be_zero"),
    (acct(1, reserved=1, flags=1 << 4), "reserved_field"),
    (acct(1, reserved=1 << 280), "reserved_field"),
    (acct(1, flags=1 << 15), "reserved_flag"),
    (acct(0, flags=1 << 4), "reserved_flag"),
    (acct(0, flags=DEBITS_LIMIT | CREDITS_LIMIT), "id_must_not_be_zero"),
    (acct(U128, flags=DEBITS_LIMIT | CREDITS_LIMIT), "id_must_not_be_int_max"),
    (acct(1, flags=DEBITS_LIMIT | CREDITS_LIMIT, debits_pending=1), "flags_are_mutually_exclusive"),
    (acct(1, debits_pending=1, debits_posted=1, ledger=0), "debits_pending_must_be_zero"),
    (acct(1, debits_posted=1, credits_pending=1), "debits_posted_must_be_zero"),
    (acct(1, credits_pending=1, credits_posted=1), "credits_pending_must_be_zero"),
    (acct(1, credits_posted=1, ledger=0), "credits_posted_must_be_zero"),
    (acct(1, ledger=0, code=0), "ledger_must_not_be_zero"),
    (acct(1, code=0), "code_must_not_be_zero"),
])
def test_account_checks_in_documented_order(event, expected):
    m = ModelLedger(10, 10)
    assert m.create_accounts([event], T0) == codes(expected)
    assert m.accounts() == []


def test_account_exists_codes_in_order():
    b = Book()
    assert b.accounts([acct(1, flags=DEBITS_LIMIT, user_data_128=1, user_data_64=2, user_data_32=3, code=5)]) == ["ok"]
    same = dict(flags=DEBITS_LIMIT, user_data_128=1, user_data_64=2, user_data_32=3, code=5)
    cases = [
        (dict(same, flags=0, user_data_128=9), "exists_with_different_flags"),
        (dict(same, user_data_128=9, user_data_64=9), "exists_with_different_user_data_128"),
        (dict(same, user_data_64=9, user_data_32=9), "exists_with_different_user_data_64"),
        (dict(same, user_data_32=9, code=9), "exists_with_different_user_data_32"),
        (dict(same, ledger=USD, code=9), "exists_with_different_ledger"),
        (dict(same, code=9), "exists_with_different_code"),
        (same, "exists"),
        (dict(same, flags=DEBITS_LIMIT | LINKED), None),   # linked is not compared: see below
    ]
    for fields, expected in cases[:-1]:
        assert b.accounts([acct(1, **fields)]) == [expected]
    # The linked bit is ignored in the comparison (a one-event chain that exists: exists fails the chain).
    assert b.accounts([acct(1, **cases[-1][0]), acct(2)]) == ["exists", "linked_event_failed"]
    assert [a["id"] for a in b.m.accounts()] == [1]
    assert b.account(1)["timestamp"] == T0 + NS          # the original record is untouched


def test_account_exists_within_the_same_batch():
    b = Book()
    assert b.accounts([acct(1), acct(1), acct(1, code=2)]) == ["ok", "exists", "exists_with_different_code"]


def test_accounts_limit_reached_but_exists_still_reported():
    b = Book(accounts_max=2)
    assert b.accounts([acct(1), acct(2), acct(3), acct(1), acct(2, code=7)]) == [
        "ok", "ok", "accounts_limit_reached", "exists", "exists_with_different_code"]
    assert [a["id"] for a in b.m.accounts()] == [1, 2]


def test_account_validation_precedes_exists():
    b = Book()
    b.accounts([acct(1)])
    assert b.accounts([acct(1, ledger=0), acct(1, debits_posted=1)]) == [
        "ledger_must_not_be_zero", "debits_posted_must_be_zero"]


def test_accounts_keep_creation_order_and_all_fields():
    b = Book()
    b.accounts([acct(5), acct(3, ledger=USD)])
    b.accounts([acct(4, flags=CLOSED | LINKED), acct(9)])
    ids = [a["id"] for a in b.m.accounts()]
    assert ids == [5, 3, 4, 9]
    assert all(set(a) == set(ACCOUNT_FIELDS) for a in b.m.accounts())
    assert b.m.lookup_accounts([9, 77, 5]) == [b.account(9), b.account(5)]


# -- timestamps


def test_timestamps_one_per_event_whether_or_not_it_succeeds():
    m = ModelLedger(10, 10)
    assert m.create_accounts([acct(1), acct(0), acct(2)], T0) == codes("ok", "id_must_not_be_zero", "ok")
    assert [a["timestamp"] for a in m.accounts()] == [T0, T0 + 2]
    assert m.last == T0 + 2


def test_timestamps_strictly_increase_when_the_clock_goes_back():
    m = ModelLedger(10, 10)
    m.create_accounts([acct(1), acct(2)], T0)
    m.create_accounts([acct(3)], T0 - 5 * NS)          # the clock went back: last + 1
    m.create_accounts([acct(4)], T0 + 2)                # equal to last: last + 1 again
    m.create_accounts([acct(5)], T0 + 100)              # ahead: the clock wins
    assert [a["timestamp"] for a in m.accounts()] == [T0, T0 + 1, T0 + 2, T0 + 3, T0 + 100]


def test_an_empty_batch_does_not_advance_the_clock():
    m = ModelLedger(10, 10)
    m.create_accounts([acct(1)], T0)
    assert m.create_transfers([], T0 + 50) == [] and m.create_accounts([], T0 + 60) == []
    assert m.last == T0
    m.create_accounts([acct(2)], 0)
    assert [a["timestamp"] for a in m.accounts()] == [T0, T0 + 1]


def test_transfer_timestamps_shared_with_accounts(book):
    last = book.m.last
    assert book.transfers([xfer(1, FUNDING, MERCHANT, 5), xfer(2, FUNDING, MERCHANT, 0),
                           xfer(3, FUNDING, MERCHANT, 5)], now=0) == ["ok", "amount_must_not_be_zero", "ok"]
    assert [t["timestamp"] for t in book.m.lookup_transfers([1, 2, 3])] == [last + 1, last + 3]


# -- single-phase transfers


def test_single_phase_transfer_moves_posted_balances(book):
    assert book.transfer(xfer(1, FUNDING, MERCHANT, 250, user_data_128=U128 - 1, user_data_64=2,
                              user_data_32=3, code=1)) == "ok"
    assert book.balances(FUNDING) == (0, 250, 0, 0)
    assert book.balances(MERCHANT) == (0, 0, 0, 250)
    t = book.get(1)
    assert set(t) == set(TRANSFER_FIELDS)
    assert t == dict(id=1, debit_account_id=FUNDING, credit_account_id=MERCHANT, amount=250, pending_id=0,
                     user_data_128=U128 - 1, user_data_64=2, user_data_32=3, timeout=0, ledger=CNY, code=1,
                     flags=0, reserved=0, timestamp=book.now)
    assert_conserved(book)


@pytest.mark.parametrize("event,expected", [
    (xfer(1, 0, 0, 0, timestamp=1, reserved=1, flags=1 << 6), "timestamp_must_be_zero"),
    (xfer(1, 0, 0, 0, reserved=1, flags=1 << 6), "reserved_field"),
    (xfer(1, 0, 0, 0, flags=1 << 6), "reserved_flag"),
    (xfer(1, 0, 0, 0, flags=1 << 15), "reserved_flag"),
    (xfer(0, 0, 0, 0, flags=PENDING | POST), "id_must_not_be_zero"),
    (xfer(U128, 0, 0, 0, flags=PENDING | POST), "id_must_not_be_int_max"),
    (xfer(1, 0, 0, 0, flags=PENDING | POST), "flags_are_mutually_exclusive"),
    (xfer(1, 0, 0, 0, flags=PENDING | VOID), "flags_are_mutually_exclusive"),
    (xfer(1, 0, 0, 0, flags=POST | VOID), "flags_are_mutually_exclusive"),
    (xfer(1, 0, 0, 0, flags=BAL_DEBIT | POST), "flags_are_mutually_exclusive"),
    (xfer(1, 0, 0, 0, flags=BAL_CREDIT | VOID), "flags_are_mutually_exclusive"),
    (xfer(1, 0, 0, 0, pending_id=5, timeout=1), "pending_id_must_be_zero"),
    (xfer(1, 0, 0, 0, timeout=1), "timeout_reserved_for_pending_transfer"),
    (xfer(1, 0, 0, 0, flags=PENDING, timeout=1), "debit_account_id_must_not_be_zero"),
    (xfer(1, U128, 0, 0), "debit_account_id_must_not_be_int_max"),
    (xfer(1, FUNDING, 0, 0), "credit_account_id_must_not_be_zero"),
    (xfer(1, FUNDING, U128, 0), "credit_account_id_must_not_be_int_max"),
    (xfer(1, FUNDING, FUNDING, 0), "accounts_must_be_different"),
    (xfer(1, FUNDING, MERCHANT, 0, ledger=0), "amount_must_not_be_zero"),
    (xfer(1, FUNDING, MERCHANT, 0, flags=BAL_DEBIT), "amount_must_not_be_zero"),
    (xfer(1, 99, 98, 1, ledger=0, code=0), "ledger_must_not_be_zero"),
    (xfer(1, 99, 98, 1, code=0), "code_must_not_be_zero"),
    (xfer(1, 99, 98, 1), "debit_account_not_found"),
    (xfer(1, FUNDING, 98, 1), "credit_account_not_found"),
    (xfer(1, FUNDING, FOREIGN, 1, ledger=USD), "accounts_must_have_the_same_ledger"),
    (xfer(1, FUNDING, MERCHANT, 1, ledger=USD), "transfer_must_have_the_same_ledger_as_accounts"),
    (xfer(1, SHUT, MERCHANT, 1), "debit_account_closed"),
    (xfer(1, MERCHANT, SHUT, 1), "credit_account_closed"),
])
def test_transfer_checks_in_documented_order(book, event, expected):
    before = book.m.accounts()
    assert book.transfer(event) == expected
    assert book.m.lookup_transfers([1, 0, U128]) == []
    assert book.m.accounts() == before


def test_transfer_exists_codes_in_order(book):
    original = xfer(7, FUNDING, MERCHANT, 10, user_data_128=1, user_data_64=2, user_data_32=3, code=5,
                    flags=PENDING, timeout=100)
    assert book.transfer(original) == "ok"
    before = book.m.accounts()
    cases = [
        (dict(flags=0, timeout=0, amount=11), "exists_with_different_flags"),
        (dict(debit_account_id=SPARE, amount=11), "exists_with_different_debit_account_id"),
        (dict(credit_account_id=SPARE, amount=11), "exists_with_different_credit_account_id"),
        (dict(amount=11, user_data_128=9), "exists_with_different_amount"),
        (dict(amount=9), "exists_with_different_amount"),
        (dict(user_data_128=9, user_data_64=9), "exists_with_different_user_data_128"),
        (dict(user_data_64=9, user_data_32=9), "exists_with_different_user_data_64"),
        (dict(user_data_32=9, timeout=9), "exists_with_different_user_data_32"),
        (dict(timeout=9, code=9), "exists_with_different_timeout"),
        (dict(code=9), "exists_with_different_code"),
        ({}, "exists"),
    ]
    for change, expected in cases:
        assert book.transfers([dict(original, **change)]) == [expected], change
    # The linked bit is not compared (a linked last event would be an open chain, so close it).
    assert book.transfers([dict(original, flags=PENDING | T_LINKED), xfer(8, FUNDING, MERCHANT, 1)]) == [
        "exists", "linked_event_failed"]
    assert book.m.accounts() == before


def test_a_retry_with_another_ledger_fails_before_the_exists_checks():
    # The transfer's ledger must match its accounts' (step 13) before the exists checks (step 14), and
    # accounts of another ledger are other accounts: exists_with_different_debit_account_id comes
    # first. (So exists_with_different_ledger cannot be reached by a single-phase retry.)
    b = Book()
    b.accounts([acct(1), acct(2), acct(3, ledger=USD), acct(4, ledger=USD)])
    assert b.transfer(xfer(1, 1, 2, 5)) == "ok"
    assert b.transfer(xfer(1, 1, 2, 5, ledger=USD)) == "transfer_must_have_the_same_ledger_as_accounts"
    assert b.transfer(xfer(1, 3, 4, 5, ledger=USD)) == "exists_with_different_debit_account_id"


def test_retry_is_idempotent(book):
    batch = [xfer(1, FUNDING, MERCHANT, 10), xfer(2, FUNDING, WALLET, 20), xfer(3, WALLET, MERCHANT, 5)]
    assert book.transfers(batch) == ["ok"] * 3
    accounts, transfers = book.m.accounts(), book.m.lookup_transfers([1, 2, 3])
    assert book.transfers(batch) == ["exists"] * 3
    assert book.m.accounts() == accounts and book.m.lookup_transfers([1, 2, 3]) == transfers


def test_exists_is_reported_before_closed_and_limits(book):
    fund(book, WALLET, 10)
    assert book.transfer(xfer(1, WALLET, MERCHANT, 10)) == "ok"
    # The wallet is now empty: a fresh transfer would exceed its credits, the retry is just "exists".
    assert book.transfer(xfer(2, WALLET, MERCHANT, 10)) == "exceeds_credits"
    assert book.transfer(xfer(1, WALLET, MERCHANT, 10)) == "exists"


def test_exists_within_the_same_batch(book):
    assert book.transfers([xfer(1, FUNDING, MERCHANT, 10), xfer(1, FUNDING, MERCHANT, 10),
                           xfer(1, FUNDING, MERCHANT, 11)]) == ["ok", "exists", "exists_with_different_amount"]
    assert book.balances(MERCHANT) == (0, 0, 0, 10)


def test_ledger_mismatch(book):
    assert book.transfer(xfer(1, FOREIGN, MERCHANT, 1, ledger=USD)) == "accounts_must_have_the_same_ledger"
    assert book.transfer(xfer(1, FOREIGN, MERCHANT, 1, ledger=CNY)) == "accounts_must_have_the_same_ledger"
    assert book.transfer(xfer(1, FUNDING, MERCHANT, 1, ledger=USD)) == "transfer_must_have_the_same_ledger_as_accounts"
    assert book.transfer(xfer(1, FUNDING, MERCHANT, 1, ledger=CNY)) == "ok"


def test_closed_accounts_refuse_transfers_both_ways(book):
    assert book.transfers([xfer(1, SHUT, FUNDING, 1), xfer(2, FUNDING, SHUT, 1),
                           xfer(3, SHUT, FUNDING, 1, flags=PENDING)]) == [
        "debit_account_closed", "credit_account_closed", "debit_account_closed"]
    assert book.balances(SHUT) == (0, 0, 0, 0)


# -- account limits


def test_wallet_cannot_go_negative(book):
    fund(book, WALLET, 100)
    assert book.transfer(xfer(1, WALLET, MERCHANT, 101)) == "exceeds_credits"
    assert book.transfer(xfer(2, WALLET, MERCHANT, 60, flags=PENDING)) == "ok"
    assert book.transfer(xfer(3, WALLET, MERCHANT, 41)) == "exceeds_credits"   # pending counts
    assert book.transfer(xfer(4, WALLET, MERCHANT, 40)) == "ok"
    assert book.balances(WALLET) == (60, 40, 0, 100)


def test_credit_line_cannot_take_more_than_it_gave(book):
    assert book.transfer(xfer(1, MERCHANT, CREDIT_LINE, 1)) == "exceeds_debits"
    assert book.transfer(xfer(2, CREDIT_LINE, MERCHANT, 50)) == "ok"
    assert book.transfer(xfer(3, MERCHANT, CREDIT_LINE, 30, flags=PENDING)) == "ok"
    assert book.transfer(xfer(4, MERCHANT, CREDIT_LINE, 21)) == "exceeds_debits"
    assert book.transfer(xfer(5, MERCHANT, CREDIT_LINE, 20)) == "ok"
    assert book.balances(CREDIT_LINE) == (0, 50, 30, 20)


def test_exceeds_credits_comes_before_exceeds_debits(book):
    assert book.transfer(xfer(1, WALLET, CREDIT_LINE, 5)) == "exceeds_credits"


def test_funding_card_may_go_negative(book):
    fund(book, MERCHANT, U64)
    assert book.balances(FUNDING) == (0, U64, 0, 0)


# -- two-phase transfers


def test_pending_then_full_post(book):
    fund(book, WALLET, 100)
    assert book.transfer(xfer(1, WALLET, MERCHANT, 70, flags=PENDING, code=1)) == "ok"
    assert book.balances(WALLET) == (70, 0, 0, 100)
    assert book.balances(MERCHANT) == (0, 0, 70, 0)
    assert book.transfer(resolve(2, 1, user_data_64=5)) == "ok"
    assert book.balances(WALLET) == (0, 70, 0, 100)
    assert book.balances(MERCHANT) == (0, 0, 0, 70)
    t = book.get(2)
    assert t == dict(id=2, debit_account_id=WALLET, credit_account_id=MERCHANT, amount=70, pending_id=1,
                     user_data_128=0, user_data_64=5, user_data_32=0, timeout=0, ledger=CNY, code=1,
                     flags=POST, reserved=0, timestamp=book.now)
    assert book.get(1)["amount"] == 70 and book.get(1)["flags"] == PENDING       # the pending record stays
    assert_conserved(book)


def test_partial_post_releases_the_rest(book):
    fund(book, WALLET, 100)
    assert book.transfer(xfer(1, WALLET, MERCHANT, 70, flags=PENDING)) == "ok"
    assert book.transfer(resolve(2, 1, amount=71)) == "exceeds_pending_transfer_amount"
    assert book.transfer(resolve(2, 1, amount=30)) == "ok"
    assert book.balances(WALLET) == (0, 30, 0, 100)
    assert book.balances(MERCHANT) == (0, 0, 0, 30)
    assert book.get(2)["amount"] == 30
    assert book.transfer(resolve(3, 1, amount=10)) == "pending_transfer_already_posted"
    assert book.transfer(resolve(3, 1, flags=VOID)) == "pending_transfer_already_posted"
    assert_conserved(book)


def test_void_releases_everything(book):
    assert book.transfer(xfer(1, FUNDING, MERCHANT, 70, flags=PENDING, code=11)) == "ok"
    assert book.transfer(resolve(2, 1, amount=69, flags=VOID)) == "pending_transfer_has_different_amount"
    assert book.transfer(resolve(2, 1, amount=70, flags=VOID)) == "ok"
    assert book.balances(FUNDING) == (0, 0, 0, 0)
    assert book.balances(MERCHANT) == (0, 0, 0, 0)
    t = book.get(2)
    assert (t["amount"], t["debit_account_id"], t["credit_account_id"], t["code"], t["flags"]) == (
        70, FUNDING, MERCHANT, 11, VOID)
    assert book.transfer(resolve(3, 1, flags=VOID)) == "pending_transfer_already_voided"
    assert book.transfer(resolve(3, 1)) == "pending_transfer_already_voided"


def test_void_with_zero_amount_takes_the_pending_amount(book):
    assert book.transfer(xfer(1, FUNDING, MERCHANT, 70, flags=PENDING)) == "ok"
    assert book.transfer(resolve(2, 1, flags=VOID)) == "ok"
    assert book.get(2)["amount"] == 70


@pytest.mark.parametrize("event,expected", [
    (resolve(2, 0, timeout=1), "pending_id_must_not_be_zero"),
    (resolve(2, U128, timeout=1), "pending_id_must_not_be_int_max"),
    (resolve(2, 2, timeout=1), "pending_id_must_be_different"),
    (resolve(2, 99, timeout=1), "timeout_reserved_for_pending_transfer"),
    (resolve(2, 99, debit_account_id=SPARE), "pending_transfer_not_found"),
    (resolve(2, 3, debit_account_id=SPARE), "pending_transfer_not_pending"),
    (resolve(2, 1, debit_account_id=SPARE, credit_account_id=SPARE), "pending_transfer_has_different_debit_account_id"),
    (resolve(2, 1, debit_account_id=FUNDING, credit_account_id=SPARE, ledger=USD),
     "pending_transfer_has_different_credit_account_id"),
    (resolve(2, 1, credit_account_id=MERCHANT, ledger=USD, code=9), "pending_transfer_has_different_ledger"),
    (resolve(2, 1, ledger=CNY, code=9, amount=1000), "pending_transfer_has_different_code"),
    (resolve(2, 1, code=4, amount=1000), "exceeds_pending_transfer_amount"),
    (resolve(2, 1, amount=1000, flags=VOID), "pending_transfer_has_different_amount"),
    (resolve(2, 1, amount=1, flags=VOID), "pending_transfer_has_different_amount"),
])
def test_post_and_void_checks_in_documented_order(book, event, expected):
    assert book.transfers([xfer(1, FUNDING, MERCHANT, 70, flags=PENDING, code=4),
                           xfer(3, FUNDING, MERCHANT, 5)]) == ["ok", "ok"]
    before = book.m.accounts()
    assert book.transfer(event) == expected
    assert book.m.accounts() == before
    assert book.m.lookup_transfers([2]) == []


def test_post_with_matching_optional_fields_is_ok(book):
    assert book.transfer(xfer(1, FUNDING, MERCHANT, 70, flags=PENDING, code=4)) == "ok"
    assert book.transfer(resolve(2, 1, debit_account_id=FUNDING, credit_account_id=MERCHANT, ledger=CNY,
                                 code=4, amount=70)) == "ok"


def test_post_exists_codes_in_order(book):
    assert book.transfers([xfer(1, FUNDING, MERCHANT, 70, flags=PENDING, code=4),
                           xfer(5, FUNDING, MERCHANT, 70, flags=PENDING, code=4)]) == ["ok", "ok"]
    original = resolve(2, 1, amount=30, user_data_128=1, user_data_64=2, user_data_32=3)
    assert book.transfer(original) == "ok"
    before = book.m.accounts()
    cases = [
        (dict(flags=VOID, amount=70, pending_id=5), "exists_with_different_flags"),
        (dict(pending_id=5), "exists_with_different_pending_id"),
        (dict(amount=31, user_data_128=9), "exists_with_different_amount"),
        (dict(user_data_128=9, user_data_64=9), "exists_with_different_user_data_128"),
        (dict(user_data_64=9, user_data_32=9), "exists_with_different_user_data_64"),
        (dict(user_data_32=9), "exists_with_different_user_data_32"),
        (dict(amount=0), "exists"),                        # zero amount is not compared
        (dict(debit_account_id=FUNDING, credit_account_id=MERCHANT, ledger=CNY, code=4), "exists"),
        ({}, "exists"),
    ]
    for change, expected in cases:
        assert book.transfers([dict(original, **change)]) == [expected], change
    assert book.m.accounts() == before


def test_post_exists_is_checked_before_the_pending_state(book):
    # A retried post after the pending transfer is resolved says "exists", not "already_posted".
    assert book.transfer(xfer(1, FUNDING, MERCHANT, 70, flags=PENDING)) == "ok"
    assert book.transfer(resolve(2, 1)) == "ok"
    assert book.transfer(resolve(2, 1)) == "exists"
    assert book.transfer(resolve(3, 1)) == "pending_transfer_already_posted"


def test_post_within_the_same_batch_as_its_pending(book):
    assert book.transfers([xfer(1, FUNDING, MERCHANT, 70, flags=PENDING), resolve(2, 1, amount=20),
                           resolve(3, 1, flags=VOID)]) == ["ok", "ok", "pending_transfer_already_posted"]
    assert book.balances(MERCHANT) == (0, 0, 0, 20)


def test_pending_wallet_reservation_then_post_keeps_limit(book):
    fund(book, WALLET, 100)
    assert book.transfers([xfer(1, WALLET, MERCHANT, 100, flags=PENDING), xfer(2, WALLET, MERCHANT, 1)]) == [
        "ok", "exceeds_credits"]
    assert book.transfer(resolve(3, 1, amount=40)) == "ok"
    assert book.transfer(xfer(2, WALLET, MERCHANT, 60)) == "ok"
    assert book.balances(WALLET) == (0, 100, 0, 100)


# -- expiry


def test_pending_transfer_expires_at_the_next_batch(book):
    assert book.transfer(xfer(1, FUNDING, MERCHANT, 70, flags=PENDING, timeout=2)) == "ok"
    created = book.get(1)["timestamp"]
    assert book.transfer(xfer(2, FUNDING, MERCHANT, 1), now=created + 2 * NS - 1) == "ok"   # not yet
    assert book.balances(MERCHANT) == (0, 0, 70, 1)
    assert book.transfer(xfer(3, FUNDING, MERCHANT, 1), now=created + 2 * NS) == "ok"       # expires_at <= base
    assert book.balances(MERCHANT) == (0, 0, 0, 2)
    assert book.balances(FUNDING) == (0, 2, 0, 0)
    assert book.transfers([resolve(4, 1), resolve(5, 1, flags=VOID)]) == ["pending_transfer_expired"] * 2
    assert book.get(1)["amount"] == 70                  # the record itself is unchanged
    assert_conserved(book)


def test_expiry_happens_in_an_account_batch_too(book):
    assert book.transfer(xfer(1, FUNDING, MERCHANT, 70, flags=PENDING, timeout=1)) == "ok"
    assert book.accounts([acct(50)], step=5 * NS) == ["ok"]
    assert book.balances(MERCHANT) == (0, 0, 0, 0)


def test_expiry_at_base_even_when_the_clock_went_back(book):
    assert book.transfer(xfer(1, FUNDING, MERCHANT, 70, flags=PENDING, timeout=1)) == "ok"
    created = book.get(1)["timestamp"]
    book.m.create_accounts([acct(60 + k) for k in range(3)], created + NS - 3)  # last = expires_at - 1
    # The clock goes back, but base = last + 1 = expires_at: the transfer expires.
    assert book.transfer(resolve(2, 1), now=created) == "pending_transfer_expired"
    assert book.balances(MERCHANT) == (0, 0, 0, 0)


def test_expiry_by_the_events_own_timestamp_within_a_batch(book):
    assert book.transfer(xfer(1, FUNDING, MERCHANT, 70, flags=PENDING, timeout=1)) == "ok"
    expires_at = book.get(1)["timestamp"] + NS
    # Event 0 gets expires_at - 1 (still pending); event 1 gets expires_at (expired for posting).
    assert book.transfers([xfer(2, FUNDING, MERCHANT, 1), resolve(3, 1)], now=expires_at - 1) == [
        "ok", "pending_transfer_expired"]
    assert book.balances(MERCHANT) == (0, 0, 70, 1)     # not released until the next batch
    assert book.transfers([xfer(4, FUNDING, MERCHANT, 1)], now=0) == ["ok"]
    assert book.balances(MERCHANT) == (0, 0, 0, 2)


def test_post_just_before_expiry_succeeds(book):
    assert book.transfer(xfer(1, FUNDING, MERCHANT, 70, flags=PENDING, timeout=1)) == "ok"
    expires_at = book.get(1)["timestamp"] + NS
    assert book.transfer(resolve(2, 1), now=expires_at - 1) == "ok"
    assert book.transfers([], now=expires_at + 10 * NS) == []
    assert book.balances(MERCHANT) == (0, 0, 0, 70)


def test_zero_timeout_never_expires(book):
    assert book.transfer(xfer(1, FUNDING, MERCHANT, 70, flags=PENDING)) == "ok"
    assert book.transfer(xfer(2, FUNDING, MERCHANT, 1), step=10**6 * NS) == "ok"
    assert book.transfer(resolve(3, 1)) == "ok"


def test_expired_pending_frees_the_wallet(book):
    fund(book, WALLET, 100)
    assert book.transfer(xfer(1, WALLET, MERCHANT, 100, flags=PENDING, timeout=1)) == "ok"
    assert book.transfer(xfer(2, WALLET, MERCHANT, 100), step=1) == "exceeds_credits"
    assert book.transfer(xfer(2, WALLET, MERCHANT, 100), step=NS) == "ok"


# -- linked chains


def test_linked_chain_all_ok(book):
    assert book.transfers([xfer(1, FUNDING, WALLET, 50, flags=T_LINKED), xfer(2, WALLET, MERCHANT, 50)]) == [
        "ok", "ok"]
    assert book.balances(WALLET) == (0, 50, 0, 50)


def test_linked_chain_rolls_back_and_later_events_are_not_evaluated(book):
    base = book.m.last + 1
    result = book.transfers([
        xfer(1, FUNDING, MERCHANT, 5),                          # before the chain: kept
        xfer(2, FUNDING, WALLET, 50, flags=T_LINKED),           # sees nothing of its own, undone
        xfer(3, WALLET, MERCHANT, 50, flags=T_LINKED),          # sees #2's credit: would be ok, undone
        xfer(4, WALLET, MERCHANT, 1, flags=T_LINKED),           # exceeds_credits: the chain fails
        xfer(0, 0, 0, 0, flags=T_LINKED),                       # not evaluated
        xfer(5, FUNDING, MERCHANT, 7),                          # the chain's last event, not evaluated
        xfer(6, FUNDING, MERCHANT, 9),                          # after the chain: kept
    ], now=0)
    assert result == ["ok", "linked_event_failed", "linked_event_failed", "exceeds_credits",
                      "linked_event_failed", "linked_event_failed", "ok"]
    assert [t["id"] for t in book.m.lookup_transfers(range(1, 7))] == [1, 6]
    assert book.balances(WALLET) == (0, 0, 0, 0)
    assert book.balances(MERCHANT) == (0, 0, 0, 14)
    assert book.get(6)["timestamp"] == base + 6          # undone events still used their timestamps


def test_a_chain_sees_its_own_earlier_events(book):
    assert book.transfers([xfer(1, FUNDING, WALLET, 50, flags=T_LINKED), xfer(2, WALLET, MERCHANT, 50,
                                                                                flags=T_LINKED | PENDING),
                           resolve(3, 2, amount=20)]) == ["ok", "ok", "ok"]
    assert book.balances(WALLET) == (0, 20, 0, 50)


def test_a_failed_chain_undoes_a_post(book):
    assert book.transfer(xfer(1, FUNDING, MERCHANT, 70, flags=PENDING)) == "ok"
    assert book.transfers([resolve(2, 1, flags=POST | T_LINKED), xfer(3, 0, MERCHANT, 1)]) == [
        "linked_event_failed", "debit_account_id_must_not_be_zero"]
    assert book.balances(MERCHANT) == (0, 0, 70, 0)
    assert book.transfer(resolve(2, 1, flags=VOID)) == "ok"        # still pending, id 2 still free


def test_duplicate_inside_a_chain_fails_it(book):
    assert book.transfers([xfer(1, FUNDING, MERCHANT, 5, flags=T_LINKED), xfer(1, FUNDING, MERCHANT, 5)]) == [
        "linked_event_failed", "exists"]
    assert book.m.lookup_transfers([1]) == []


def test_open_chain_at_the_end_of_the_batch(book):
    assert book.transfers([xfer(1, FUNDING, MERCHANT, 5), xfer(2, FUNDING, MERCHANT, 5, flags=T_LINKED),
                           xfer(3, FUNDING, MERCHANT, 5, flags=T_LINKED)]) == [
        "ok", "linked_event_failed", "linked_event_chain_open"]
    assert [t["id"] for t in book.m.lookup_transfers([1, 2, 3])] == [1]


def test_open_chain_of_one_event(book):
    assert book.transfers([xfer(1, FUNDING, MERCHANT, 5, flags=T_LINKED)]) == ["linked_event_chain_open"]
    assert book.m.lookup_transfers([1]) == []


def test_open_chain_that_already_failed_keeps_the_first_failure(book):
    assert book.transfers([xfer(1, FUNDING, MERCHANT, 0, flags=T_LINKED),
                           xfer(2, FUNDING, MERCHANT, 5, flags=T_LINKED)]) == [
        "amount_must_not_be_zero", "linked_event_failed"]


def test_linked_accounts(book):
    assert book.accounts([acct(20, flags=LINKED), acct(21, flags=LINKED), acct(22, code=0), acct(23)]) == [
        "linked_event_failed", "linked_event_failed", "code_must_not_be_zero", "ok"]
    assert book.m.lookup_accounts([20, 21, 22]) == []
    assert book.accounts([acct(20, flags=LINKED), acct(21)]) == ["ok", "ok"]
    assert book.account(20)["flags"] == LINKED     # stored as submitted
    assert book.accounts([acct(30, flags=LINKED)]) == ["linked_event_chain_open"]


def test_accounts_limit_inside_a_chain_counts_the_chain():
    b = Book(accounts_max=2)
    assert b.accounts([acct(1, flags=LINKED), acct(2, flags=LINKED), acct(3)]) == [
        "linked_event_failed", "linked_event_failed", "accounts_limit_reached"]
    assert b.accounts([acct(1), acct(2)]) == ["ok", "ok"]


def test_features_of_a_failed_chain_are_undone(book):
    before = book.m.features()
    assert book.transfers([xfer(1, FUNDING, MERCHANT, 5, flags=T_LINKED), xfer(2, FUNDING, MERCHANT, 0)]) == [
        "linked_event_failed", "amount_must_not_be_zero"]
    assert book.m.features() == before


# -- balancing


def test_balancing_debit_clamps_to_the_available_balance(book):
    fund(book, WALLET, 30)
    assert book.transfer(xfer(1, WALLET, MERCHANT, 100, flags=BAL_DEBIT)) == "ok"
    assert book.get(1)["amount"] == 30
    assert book.balances(WALLET) == (0, 30, 0, 30)
    assert book.transfer(xfer(2, WALLET, MERCHANT, 100, flags=BAL_DEBIT)) == "exceeds_credits"


def test_balancing_debit_below_the_available_keeps_the_amount(book):
    fund(book, WALLET, 30)
    assert book.transfer(xfer(1, WALLET, MERCHANT, 10, flags=BAL_DEBIT | PENDING)) == "ok"
    assert book.get(1)["amount"] == 10
    assert book.transfer(xfer(2, WALLET, MERCHANT, 100, flags=BAL_DEBIT)) == "ok"
    assert book.get(2)["amount"] == 20                  # pending debits reduce the available balance


def test_balancing_debit_on_an_account_without_limit_flag(book):
    # The clamp applies whatever the account's flags: a funding card with no credits is clamped to 0.
    assert book.transfer(xfer(1, FUNDING, MERCHANT, 100, flags=BAL_DEBIT)) == "exceeds_credits"


def test_balancing_credit_clamps_to_what_the_account_can_take(book):
    assert book.transfer(xfer(1, CREDIT_LINE, MERCHANT, 40)) == "ok"
    assert book.transfer(xfer(2, MERCHANT, CREDIT_LINE, 100, flags=BAL_CREDIT)) == "ok"
    assert book.get(2)["amount"] == 40
    assert book.transfer(xfer(3, MERCHANT, CREDIT_LINE, 100, flags=BAL_CREDIT)) == "exceeds_debits"


def test_both_balancing_flags(book):
    fund(book, WALLET, 30)
    assert book.transfer(xfer(1, CREDIT_LINE, MERCHANT, 10)) == "ok"
    assert book.transfer(xfer(2, WALLET, CREDIT_LINE, 100, flags=BAL_DEBIT | BAL_CREDIT)) == "ok"
    assert book.get(2)["amount"] == 10
    assert book.transfer(xfer(3, WALLET, CREDIT_LINE, 100, flags=BAL_DEBIT | BAL_CREDIT)) == "exceeds_debits"
    assert book.transfer(xfer(4, SPARE, FUNDING, 100, flags=BAL_DEBIT | BAL_CREDIT)) == "exceeds_credits"


def test_balancing_retry_compares_amount_as_at_least(book):
    fund(book, WALLET, 30)
    assert book.transfer(xfer(1, WALLET, MERCHANT, 100, flags=BAL_DEBIT)) == "ok"
    assert book.transfer(xfer(1, WALLET, MERCHANT, 100, flags=BAL_DEBIT)) == "exists"
    assert book.transfer(xfer(1, WALLET, MERCHANT, 30, flags=BAL_DEBIT)) == "exists"
    assert book.transfer(xfer(1, WALLET, MERCHANT, 29, flags=BAL_DEBIT)) == "exists_with_different_amount"
    assert book.balances(WALLET) == (0, 30, 0, 30)


def test_balancing_checks_closed_before_clamping(book):
    assert book.transfer(xfer(1, SHUT, MERCHANT, 5, flags=BAL_DEBIT)) == "debit_account_closed"


# -- overflows


def big(book, transfer_id, debit, credit, amount=U64 - 5, flags=0):
    assert book.transfer(xfer(transfer_id, debit, credit, amount, flags=flags)) == "ok"


def test_overflows_debits_pending(book):
    big(book, 1, FUNDING, MERCHANT, flags=PENDING)
    assert book.transfer(xfer(2, FUNDING, SPARE, 6, flags=PENDING)) == "overflows_debits_pending"
    assert book.transfer(xfer(2, FUNDING, SPARE, 5, flags=PENDING)) == "ok"
    assert book.balances(FUNDING) == (U64, 0, 0, 0)


def test_overflows_credits_pending(book):
    big(book, 1, FUNDING, MERCHANT, flags=PENDING)
    assert book.transfer(xfer(2, SPARE, MERCHANT, 6, flags=PENDING)) == "overflows_credits_pending"


def test_overflows_debits_posted(book):
    big(book, 1, FUNDING, MERCHANT)
    assert book.transfer(xfer(2, FUNDING, SPARE, 6)) == "overflows_debits_posted"
    assert book.transfer(xfer(2, FUNDING, SPARE, 5)) == "ok"


def test_overflows_credits_posted(book):
    big(book, 1, FUNDING, MERCHANT)
    assert book.transfer(xfer(2, SPARE, MERCHANT, 6)) == "overflows_credits_posted"


def test_overflows_debits_over_pending_plus_posted(book):
    big(book, 1, FUNDING, MERCHANT)
    assert book.transfer(xfer(2, FUNDING, SPARE, 6, flags=PENDING)) == "overflows_debits"
    big(book, 3, SPARE, WALLET, amount=10, flags=PENDING)
    assert book.transfer(xfer(4, SPARE, FUNDING, U64 - 9)) == "overflows_debits"
    assert book.transfer(xfer(4, SPARE, FUNDING, U64 - 10)) == "ok"


def test_overflows_credits_over_pending_plus_posted(book):
    big(book, 1, FUNDING, MERCHANT)
    assert book.transfer(xfer(2, SPARE, MERCHANT, 6, flags=PENDING)) == "overflows_credits"


def test_overflows_timeout():
    b = Book()
    b.accounts([acct(1), acct(2)], now=U64 - 3 * NS)
    assert b.transfers([xfer(1, 1, 2, 5, flags=PENDING, timeout=3)]) == ["overflows_timeout"]  # ts = U64-3e9+1+...
    assert b.transfers([xfer(1, 1, 2, 5, flags=PENDING, timeout=1)], now=0) == ["ok"]


def test_overflows_timeout_exact_boundary():
    b = Book()
    b.accounts([acct(1), acct(2)], now=U64 - NS - 10)
    ts = b.m.last + 1                                    # U64 - NS - 8
    assert b.transfers([xfer(1, 1, 2, 5, flags=PENDING, timeout=1)], now=0) == ["ok"]
    assert b.get(1)["timestamp"] == ts and ts + NS <= U64
    assert b.transfers([xfer(2, 1, 2, 5, flags=PENDING, timeout=1)], now=U64 - NS + 1) == ["overflows_timeout"]


def test_overflow_is_checked_before_the_account_limits(book):
    big(book, 1, FUNDING, WALLET)
    big(book, 2, WALLET, MERCHANT, amount=10)
    assert book.transfer(xfer(3, WALLET, SPARE, U64)) == "overflows_debits_posted"
    assert book.transfer(xfer(3, WALLET, SPARE, U64, flags=PENDING)) == "overflows_debits"


# -- transfers limit


def test_transfers_limit_reached_for_every_kind():
    b = Book(transfers_hot_max=2)
    b.accounts([acct(1), acct(2)])
    assert b.transfers([xfer(1, 1, 2, 5, flags=PENDING), xfer(2, 1, 2, 5, flags=PENDING),
                        xfer(3, 1, 2, 5), resolve(4, 1), resolve(5, 2, flags=VOID), xfer(1, 1, 2, 5, flags=PENDING)]) == [
        "ok", "ok", "transfers_limit_reached", "transfers_limit_reached", "transfers_limit_reached", "exists"]
    assert b.balances(1) == (10, 0, 0, 0)


# -- lookups and history


def test_lookup_transfers_in_the_order_asked(book):
    book.transfers([xfer(1, FUNDING, MERCHANT, 1), xfer(2, FUNDING, MERCHANT, 2)])
    assert [t["id"] for t in book.m.lookup_transfers([2, 99, 1, 2])] == [2, 1, 2]
    assert book.m.lookup_transfers([]) == []
    assert book.m.lookup_accounts([]) == []


def test_lookups_return_copies(book):
    book.transfers([xfer(1, FUNDING, MERCHANT, 1)])
    book.m.lookup_transfers([1])[0]["amount"] = 99
    book.m.lookup_accounts([MERCHANT])[0]["credits_posted"] = 99
    book.m.accounts()[0]["flags"] = 99
    assert book.get(1)["amount"] == 1 and book.balances(MERCHANT) == (0, 0, 0, 1)
    assert book.account(FUNDING)["flags"] == 0


@pytest.fixture
def history(book):
    """Ten transfers touching MERCHANT (debit on even ids), one per batch, plus noise elsewhere."""
    for k in range(1, 11):
        if k % 2:
            book.transfers([xfer(k, FUNDING, MERCHANT, k), xfer(100 + k, FUNDING, SPARE, 1)])
        else:
            book.transfers([xfer(k, MERCHANT, SPARE, k)])
    return book


def ids(transfers):
    return [t["id"] for t in transfers]


def test_account_history_orders_and_filters(history):
    m = history.m
    assert ids(m.get_account_transfers(MERCHANT)) == list(range(1, 11))
    assert ids(m.get_account_transfers(MERCHANT, reverse=True)) == list(range(10, 0, -1))
    assert ids(m.get_account_transfers(MERCHANT, debits=False)) == [1, 3, 5, 7, 9]
    assert ids(m.get_account_transfers(MERCHANT, credits=False)) == [2, 4, 6, 8, 10]
    assert m.get_account_transfers(MERCHANT, debits=False, credits=False) == []
    assert m.get_account_transfers(999) == []
    assert ids(m.get_account_transfers(MERCHANT, limit=3)) == [1, 2, 3]
    assert ids(m.get_account_transfers(MERCHANT, limit=3, reverse=True)) == [10, 9, 8]
    assert m.get_account_transfers(MERCHANT, limit=0) == []
    assert m.get_account_transfers(MERCHANT)[0] == history.get(1)


def test_account_history_limit_is_at_most_8190(history):
    assert len(history.m.get_account_transfers(MERCHANT, limit=8190)) == 10
    with pytest.raises(ValueError):
        history.m.get_account_transfers(MERCHANT, limit=8191)


def test_account_history_timestamp_bounds_are_inclusive(history):
    m = history.m
    ts = {t["id"]: t["timestamp"] for t in m.get_account_transfers(MERCHANT)}
    assert ids(m.get_account_transfers(MERCHANT, timestamp_min=ts[3], timestamp_max=ts[6])) == [3, 4, 5, 6]
    assert ids(m.get_account_transfers(MERCHANT, timestamp_min=ts[9])) == [9, 10]
    assert ids(m.get_account_transfers(MERCHANT, timestamp_max=ts[2])) == [1, 2]
    assert ids(m.get_account_transfers(MERCHANT, timestamp_min=ts[6], timestamp_max=ts[3])) == []


@pytest.mark.parametrize("reverse", [False, True])
def test_account_history_paging(history, reverse):
    m = history.m
    pages, lo, hi = [], 0, 0
    while True:
        page = m.get_account_transfers(MERCHANT, timestamp_min=lo, timestamp_max=hi, limit=3, reverse=reverse)
        if not page:
            break
        pages.append(ids(page))
        if reverse:
            hi = page[-1]["timestamp"] - 1
        else:
            lo = page[-1]["timestamp"] + 1
    expected = list(range(10, 0, -1)) if reverse else list(range(1, 11))
    assert pages == [expected[k:k + 3] for k in range(0, 10, 3)]


def test_account_history_includes_pending_posts_and_voids(book):
    assert book.transfers([xfer(1, FUNDING, MERCHANT, 5, flags=PENDING), xfer(2, FUNDING, MERCHANT, 5,
                                                                              flags=PENDING)]) == ["ok", "ok"]
    assert book.transfers([resolve(3, 1), resolve(4, 2, flags=VOID)]) == ["ok", "ok"]
    assert ids(book.m.get_account_transfers(MERCHANT)) == [1, 2, 3, 4]
    assert ids(book.m.get_account_transfers(FUNDING, debits=False)) == []


# -- features


def features_of(book, account_id):
    index = [a["id"] for a in book.m.accounts()].index(account_id)
    return {key: values[index] for key, values in book.m.features().items()}


def test_features_shape(book):
    f = book.m.features()
    assert set(f) == {"spend_minor", "receive_minor", "code_counts", "first_activity_ts", "last_activity_ts"}
    assert all(len(v) == 7 for v in f.values())
    assert all(len(row) == 16 for row in f["code_counts"])
    assert features_of(book, SPARE) == dict(spend_minor=0, receive_minor=0, code_counts=[0] * 16,
                                            first_activity_ts=0, last_activity_ts=0)


def test_features_count_settled_transfers_only(book):
    assert book.transfer(xfer(1, FUNDING, MERCHANT, 10, code=1)) == "ok"
    t1 = book.now
    assert book.transfer(xfer(2, FUNDING, MERCHANT, 20, code=2, flags=PENDING)) == "ok"
    assert book.transfer(resolve(3, 2, amount=15)) == "ok"
    assert book.transfer(xfer(4, MERCHANT, FUNDING, 7, code=3, flags=PENDING)) == "ok"
    assert book.transfer(resolve(5, 4, flags=VOID)) == "ok"
    t5 = book.now
    assert book.transfer(xfer(6, MERCHANT, FUNDING, 0, code=3)) == "amount_must_not_be_zero"   # failed: ignored
    merchant = features_of(book, MERCHANT)
    assert merchant["spend_minor"] == 0
    assert merchant["receive_minor"] == 25
    assert merchant["code_counts"][:4] == [0, 1, 1, 0]           # the post counts under the pending's code
    assert (merchant["first_activity_ts"], merchant["last_activity_ts"]) == (t1, t5)
    funding = features_of(book, FUNDING)
    assert (funding["spend_minor"], funding["receive_minor"]) == (25, 0)
    assert funding["code_counts"] == merchant["code_counts"]


def test_features_code_buckets(book):
    book.transfers([xfer(k, FUNDING, MERCHANT, 1, code=code) for k, code in
                    enumerate([14, 15, 16, 0xFFFF, 12], start=1)])
    counts = features_of(book, MERCHANT)["code_counts"]
    assert counts[14] == 1 and counts[15] == 3 and counts[12] == 1 and sum(counts) == 5


def test_features_activity_from_a_pending_alone(book):
    assert book.transfer(xfer(1, FUNDING, MERCHANT, 10, flags=PENDING, timeout=1)) == "ok"
    t = book.now
    book.transfers([], step=10 * NS)                     # expiry is not activity
    f = features_of(book, MERCHANT)
    assert (f["first_activity_ts"], f["last_activity_ts"], f["receive_minor"], sum(f["code_counts"])) == (t, t, 0, 0)


def test_features_timestamps_are_per_event_within_a_batch(book):
    base = book.m.last + 1
    assert book.transfers([xfer(1, FUNDING, MERCHANT, 1), xfer(2, FUNDING, SPARE, 1),
                           xfer(3, FUNDING, MERCHANT, 1)], now=0) == ["ok"] * 3
    f = features_of(book, MERCHANT)
    assert (f["first_activity_ts"], f["last_activity_ts"]) == (base, base + 2)
    f = features_of(book, FUNDING)
    assert (f["first_activity_ts"], f["last_activity_ts"]) == (base, base + 2)


# -- a longer scenario: money is conserved


def test_mixed_scenario_conserves_money(book):
    fund(book, WALLET, 500)
    events = [
        xfer(1, WALLET, MERCHANT, 100, flags=PENDING, timeout=3),
        xfer(2, WALLET, MERCHANT, 100, flags=PENDING),
        resolve(3, 2, amount=60),
        xfer(4, CREDIT_LINE, MERCHANT, 50),
        xfer(5, MERCHANT, CREDIT_LINE, 80, flags=BAL_CREDIT),
        xfer(6, WALLET, MERCHANT, 1000, flags=BAL_DEBIT | T_LINKED),
        xfer(7, MERCHANT, WALLET, 10),
    ]
    assert book.transfers(events) == ["ok"] * 7
    assert_conserved(book)
    book.transfers([], step=10 * NS)
    assert_conserved(book)
    assert book.balances(WALLET) == (0, 400, 0, 510)     # 60 posted + 340 clamped; the pending 100 expired
    assert book.get(6)["amount"] == 340


# -- properties of the model alone (random batches; the comparison with the core is in test_properties.py)

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

PROPERTY_ACCOUNTS = [acct(1, code=3), acct(2, code=3), acct(3, flags=DEBITS_LIMIT), acct(4, flags=DEBITS_LIMIT),
                     acct(5, ledger=USD, flags=CREDITS_LIMIT), acct(6, ledger=USD), acct(7, flags=CLOSED)]
POOL = list(range(1, 13))

GROUPS = {CNY: [1, 2, 3, 4, 7], USD: [5, 6]}


def _rarely(usual, unusual):
    """``usual`` values, and ``unusual`` ones in about one draw of ten."""
    return st.integers(0, 9).flatmap(lambda roll: unusual if roll == 0 else usual)


@st.composite
def random_transfer(draw):
    """Mostly well-formed transfers between accounts of one ledger, with a fault now and then.
    Pending transfers take ids 1..6, the others 7..12; resolutions refer to 1..6."""
    ledger = draw(st.sampled_from([CNY, CNY, USD]))
    accounts = _rarely(st.sampled_from(GROUPS[ledger]), st.integers(0, 8))
    flags = draw(_rarely(st.sampled_from([0, 0, 0, T_LINKED, PENDING, PENDING, T_LINKED | PENDING, POST, POST,
                                          VOID, T_LINKED | POST, BAL_DEBIT, BAL_CREDIT, BAL_DEBIT | PENDING]),
                         st.sampled_from([PENDING | POST, BAL_CREDIT | VOID, 1 << 7, 1 << 15])))
    e = {"id": draw(_rarely(st.sampled_from(POOL[:6] if flags & PENDING else POOL[6:]), st.sampled_from(POOL))),
         "flags": flags, "debit_account_id": draw(accounts), "credit_account_id": draw(accounts),
         "amount": draw(_rarely(st.integers(1, 300), st.sampled_from([0, U64, U64 - 1, 1 << 63]))),
         "ledger": draw(_rarely(st.just(ledger), st.sampled_from([0, CNY, USD]))),
         "code": draw(_rarely(st.sampled_from([1, 2, 3]), st.sampled_from([0, 15, 0xFFFF])))}
    if flags & PENDING:
        e["timeout"] = draw(st.sampled_from([0, 0, 1, 2]))
    if flags & (POST | VOID):
        e["pending_id"] = draw(_rarely(st.sampled_from(POOL[:6]), st.sampled_from([0, U128] + POOL)))
        if draw(st.booleans()):
            e.update(debit_account_id=0, credit_account_id=0, ledger=0, code=0, amount=e["amount"] % 80)
    return e


random_batches = st.lists(st.tuples(st.sampled_from([0, 1, NS, 3 * NS, -NS]),
                                    st.lists(random_transfer(), max_size=8)), min_size=1, max_size=10)


def _replay_balances(m):
    """Balances recomputed from the stored transfers and the pending states alone."""
    sums = {a["id"]: dict(debits_pending=0, debits_posted=0, credits_pending=0, credits_posted=0)
            for a in m.accounts()}
    for t in m.lookup_transfers(list(m.transfers_by_id)):
        if t["flags"] & PENDING:
            if m.state[t["id"]] == "pending":
                sums[t["debit_account_id"]]["debits_pending"] += t["amount"]
                sums[t["credit_account_id"]]["credits_pending"] += t["amount"]
        elif not t["flags"] & VOID:
            sums[t["debit_account_id"]]["debits_posted"] += t["amount"]
            sums[t["credit_account_id"]]["credits_posted"] += t["amount"]
    return sums


def _check_model_invariants(m):
    by_ledger = {}
    for a in m.accounts():
        s = by_ledger.setdefault(a["ledger"], [0, 0, 0, 0])
        for k, name in enumerate(("debits_pending", "credits_pending", "debits_posted", "credits_posted")):
            s[k] += a[name]
            assert 0 <= a[name] <= U64
        if a["flags"] & DEBITS_LIMIT:
            assert a["debits_pending"] + a["debits_posted"] <= a["credits_posted"]
        if a["flags"] & CREDITS_LIMIT:
            assert a["credits_pending"] + a["credits_posted"] <= a["debits_posted"]
    for dp, cp, dpo, cpo in by_ledger.values():
        assert dp == cp and dpo == cpo
    replayed = _replay_balances(m)
    for a in m.accounts():
        assert {k: a[k] for k in replayed[a["id"]]} == replayed[a["id"]]
    f = m.features()
    assert f["spend_minor"] == [a["debits_posted"] for a in m.accounts()]
    assert f["receive_minor"] == [a["credits_posted"] for a in m.accounts()]
    stamps = [a["timestamp"] for a in m.accounts()] + [t["timestamp"] for t in m.transfers_by_id.values()]
    assert len(set(stamps)) == len(stamps) and max(stamps) <= m.last


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_batches)
def test_model_conserves_money_keeps_limits_and_ignores_retries(batches):
    m = ModelLedger(10, 10)
    now = T0
    assert m.create_accounts(PROPERTY_ACCOUNTS, now) == [0] * len(PROPERTY_ACCOUNTS)
    m.create_transfers([xfer(100, 1, 3, 500), xfer(101, 2, 4, 500), xfer(102, 6, 5, 500, ledger=USD)], now)
    for step, events in batches:
        now += step
        first = m.create_transfers(events, now)
        _check_model_invariants(m)
        acknowledged = [e for e, r in zip(events, first) if r == R.ok]
        m.create_transfers([], now)                  # let due expiries happen, then measure the retry alone
        state = (m.accounts(), m.lookup_transfers(POOL), m.features())
        retry = m.create_transfers(acknowledged, now)
        assert R.ok not in retry
        assert (m.accounts(), m.lookup_transfers(POOL), m.features()) == state
