"""Cross-border payments (docs/products.md "Cross-border payments"): rates set by a logged admin
operation, quotes, a payment at the quoted (locked) rate through the pair's FX pools, refunds at
that rate whatever the rate since (a full refund returns exactly what was paid: the merchant
bears no FX drift), per currency debits equal credits, no minor unit made or lost by rounding,
every documented result code with the ledger untouched, and the tables through the store's
eviction, recovery and replay."""

from hypothesis import given, settings, strategies as st

import core
from core import Result
from core import replay_log
from core.fx import payer_amount_of, refund_payer_amount
from core.machine import Machine
from core.operations import Operation
from core.order_keys import fx_pays, fx_payment_id, fx_refund_id, fx_refunds, rate_pair_id, rates
from core.orders import leg_id

T0 = 1_700_000_000 * 10**9
S = 10**9
CNY, USD, EUR = 156, 840, 978
FUNDING, PAYER, MERCHANT, POOL_CNY, POOL_USD, OTHER_MERCHANT, NOT_POOL, EUR_POOL, POOR = 1, 2, 3, 4, 5, 6, 7, 8, 9
ACCOUNTS = [
    {"id": FUNDING, "ledger": CNY, "code": 3},
    {"id": PAYER, "ledger": CNY, "code": 1, "flags": 2},
    {"id": MERCHANT, "ledger": USD, "code": 2},
    {"id": POOL_CNY, "ledger": CNY, "code": 6},
    {"id": POOL_USD, "ledger": USD, "code": 6},
    {"id": OTHER_MERCHANT, "ledger": USD, "code": 2},
    {"id": NOT_POOL, "ledger": USD, "code": 2},
    {"id": EUR_POOL, "ledger": EUR, "code": 6},
    {"id": POOR, "ledger": CNY, "code": 1, "flags": 2},
]
FUNDS = 10**9
RATE = 138_000_000  # 0.138 USD cents per CNY fen


def machine(**capacities):
    m = Machine(accounts_max=32, transfers_hot_max=1 << 14, secret=bytes(32), **capacities)
    assert not m.apply(Operation.create_accounts, core.accounts_from_dicts(ACCOUNTS), T0).any()
    fund = core.transfers_from_dicts([{"id": 500, "debit_account_id": FUNDING, "credit_account_id": PAYER,
                                       "amount": FUNDS, "ledger": CNY, "code": 4}])
    assert not m.apply(Operation.create_transfers, fund, T0).any()
    assert set_rate(m, T0) is Result.ok
    return m


def set_rate(m, now, rate=RATE, **fields):
    row = dict({"from_ledger": CNY, "to_ledger": USD, "rate_ppb": rate, "pool_from_id": POOL_CNY,
                "pool_to_id": POOL_USD}, **fields)
    return Result(int(m.apply(Operation.set_rates, rates([row]), now)[0]))


def pay(m, now, merchant_amount, request=1, payer_amount=None, version=None, **fields):
    quote = m.fx.quote(CNY, USD, [merchant_amount])[0]
    row = dict({"payer_id": PAYER, "merchant_id": MERCHANT, "request_id": request, "merchant_amount": merchant_amount,
                "payer_amount": int(quote["payer_amount"]) if payer_amount is None else payer_amount,
                "rate_version": int(quote["rate_version"]) if version is None else version,
                "payer_ledger": CNY, "merchant_ledger": USD}, **fields)
    return Result(int(m.apply(Operation.pay_cross_border, fx_pays([row]), now)[0]))


def refund(m, now, amount, request=1, payment_request=1, **fields):
    row = dict({"payment_id": fx_payment_id(PAYER, payment_request), "merchant_id": MERCHANT, "request_id": request,
                "merchant_amount": amount}, **fields)
    return Result(int(m.apply(Operation.refund_cross_border, fx_refunds([row]), now)[0]))


def balances(m, *accounts):
    return [(int(r["debits_posted"]), int(r["credits_posted"])) for r in m.ledger.lookup_accounts(list(accounts))]


def net(m, account):
    (debits, credits), = balances(m, account)
    return credits - debits


def payment(m, request=1):
    return core.to_dicts(m.lookup_fx_payments([fx_payment_id(PAYER, request)]))[0]


def test_a_quote_then_a_payment_moves_each_currency_through_its_pool():
    m = machine()
    quote = m.fx.quote(CNY, USD, [100_00])[0]
    assert (int(quote["result"]), int(quote["payer_amount"]), int(quote["rate_version"])) == (0, 72464, 1)
    assert pay(m, T0 + S, 100_00) is Result.ok
    assert net(m, PAYER) == FUNDS - 72464 and net(m, POOL_CNY) == 72464
    assert net(m, MERCHANT) == 100_00 and net(m, POOL_USD) == -100_00
    p = payment(m)
    assert (p["payer_amount"], p["merchant_amount"], p["rate_ppb"], p["rate_version"]) == (72464, 100_00, RATE, 1)
    legs = m.ledger.lookup_transfers([leg_id(fx_payment_id(PAYER, 1), Operation.pay_cross_border, n) for n in (0, 1)])
    assert [(int(t["ledger"]), int(t["amount"])) for t in legs] == [(CNY, 72464), (USD, 100_00)]
    assert pay(m, T0 + 2 * S, 100_00) is Result.exists


def test_a_changed_rate_asks_for_a_new_quote_and_a_refund_keeps_the_locked_rate():
    m = machine()
    assert pay(m, T0 + S, 100_00) is Result.ok
    assert set_rate(m, T0 + 2 * S, rate=150_000_000) is Result.ok
    assert core.to_dicts(m.fx.lookup_rates([rate_pair_id(CNY, USD)]))[0]["version"] == 2
    # A payment with the old quote: refused, nothing moves.
    assert pay(m, T0 + 3 * S, 50_00, request=2, payer_amount=36232, version=1) is Result.rate_changed
    # The refund of the first payment returns the CNY paid, at its locked rate, not today's.
    assert refund(m, T0 + 4 * S, 100_00) is Result.ok
    assert net(m, PAYER) == FUNDS and net(m, MERCHANT) == 0
    assert net(m, POOL_CNY) == 0 and net(m, POOL_USD) == 0
    r = core.to_dicts(m.lookup_fx_refunds([fx_refund_id(fx_payment_id(PAYER, 1), 1)]))[0]
    assert (r["merchant_amount"], r["payer_amount"]) == (100_00, 72464)


def test_partial_refunds_return_shares_and_the_last_the_rest():
    m = machine()
    assert pay(m, T0 + S, 333) is Result.ok
    paid = payment(m)["payer_amount"]
    assert refund(m, T0 + 2 * S, 100, request=1) is Result.ok
    assert refund(m, T0 + 2 * S, 100, request=2) is Result.ok
    assert refund(m, T0 + 2 * S, 134, request=3) is Result.exceeds_paid_amount
    assert refund(m, T0 + 2 * S, 133, request=3) is Result.ok
    p = payment(m)
    assert (p["merchant_refunded"], p["payer_refunded"], p["refund_count"]) == (333, paid, 3)
    assert net(m, PAYER) == FUNDS and net(m, MERCHANT) == 0
    assert refund(m, T0 + 3 * S, 100, request=1) is Result.exists
    assert refund(m, T0 + 3 * S, 1, request=4) is Result.exceeds_paid_amount


@settings(max_examples=150, deadline=None)
@given(rate=st.integers(1, 10**18), amount=st.integers(1, 10**12),
       parts=st.lists(st.integers(1, 10**4), min_size=1, max_size=8))
def test_rounding_never_makes_or_loses_a_minor_unit(rate, amount, parts):
    try:
        payer = payer_amount_of(amount, rate)
    except OverflowError:   # (the quote answers rate_invalid)
        return
    if payer >= 1 << 63:
        return
    assert payer * rate >= amount * 10**9 > (payer - 1) * rate  # the payer pays the rounding, at most 1
    total = sum(parts)
    pieces = [max(1, amount * p // total) for p in parts]
    pieces[-1] = amount - sum(pieces[:-1])
    if pieces[-1] <= 0:
        return
    payer_refunded = merchant_refunded = 0
    for piece in pieces:
        back = refund_payer_amount(payer, amount, payer_refunded, merchant_refunded, piece)
        assert 0 <= back <= payer - payer_refunded
        payer_refunded += back
        merchant_refunded += piece
    assert (payer_refunded, merchant_refunded) == (payer, amount)


def test_per_currency_debits_equal_credits_after_payments_and_refunds():
    m = machine()
    for request in range(1, 20):
        assert pay(m, T0 + request, 1 + request * 37, request=request) is Result.ok
    for request in range(1, 20, 2):
        assert refund(m, T0 + 100, 1 + request * 37, request=1, payment_request=request) is Result.ok
    rows = m.ledger.lookup_accounts([a["id"] for a in ACCOUNTS])
    for ledger in (CNY, USD):
        mine = rows[rows["ledger"] == ledger]
        assert int(mine["debits_posted"].sum()) == int(mine["credits_posted"].sum())


def test_bad_rates_payments_and_refunds_get_their_codes_and_leave_the_ledger_untouched():
    m = machine()
    assert pay(m, T0 + S, 100_00) is Result.ok
    before = balances(m, PAYER, MERCHANT, POOL_CNY, POOL_USD)
    for change, expected in [
        ({"rate_ppb": 0}, Result.rate_invalid),
        ({"rate_ppb": 10**18 + 1}, Result.rate_invalid),
        ({"to_ledger": CNY, "pool_to_id": POOL_CNY}, Result.rate_invalid),
        ({"from_ledger": 0}, Result.ledger_must_not_be_zero),
        ({"pool_to_id": NOT_POOL}, Result.pool_invalid),
        ({"pool_to_id": 999}, Result.pool_invalid),
        ({"pool_to_id": EUR_POOL}, Result.pool_invalid),
        ({"version": 3}, Result.reserved_field),
        ({"flags": 1}, Result.reserved_flag),
        ({"timestamp": 1}, Result.timestamp_must_be_zero),
    ]:
        assert set_rate(m, T0 + 2 * S, **change) is expected, change
    for change, expected in [
        ({"request_id": 0}, Result.id_must_not_be_zero),
        ({"merchant_amount": 0}, Result.amount_must_not_be_zero),
        ({"merchant_ledger": 0}, Result.ledger_must_not_be_zero),
        ({"merchant_ledger": EUR}, Result.rate_not_found),
        ({"version": 9}, Result.rate_changed),
        ({"payer_amount": 72463}, Result.amount_mismatch),
        ({"payer_id": 999}, Result.payer_not_found),
        ({"merchant_id": 999}, Result.merchant_not_found),
        ({"payer_id": MERCHANT}, Result.currency_mismatch),
        ({"payer_id": POOR}, Result.exceeds_credits),
        ({"flags": 2}, Result.reserved_flag),
    ]:
        amount = change.pop("merchant_amount", 100_00)
        assert pay(m, T0 + 3 * S, amount, request=77, **change) is expected, change
    for change, expected in [
        ({"payment_request": 55}, Result.fx_payment_not_found),
        ({"merchant_id": OTHER_MERCHANT}, Result.merchant_mismatch),
        ({"id": 5}, Result.id_mismatch),
        ({"payer_amount": 1}, Result.reserved_field),
        ({"request_id": 0, "id": 1}, Result.id_must_not_be_zero),
    ]:
        assert refund(m, T0 + 4 * S, 10, **change) is expected, change
    assert refund(m, T0 + 4 * S, 100_01) is Result.exceeds_paid_amount
    assert balances(m, PAYER, MERCHANT, POOL_CNY, POOL_USD) == before
    # A pair's pools are fixed at its first rate.
    assert set_rate(m, T0 + 5 * S, pool_from_id=FUNDING) is Result.pool_invalid


def _store(path, **options):
    return core.open(str(path), accounts_max=32, transfers_hot_max=4096, cold_epoch_transfers=256, fx_payments_max=16,
                     fx_refunds_max=16, secret=bytes(32), clock_ns=lambda: T0, **options)


def test_payments_survive_eviction_recovery_and_replay(tmp_path):
    store = _store(tmp_path / "a")
    assert not store.submit(Operation.create_accounts, core.accounts_from_dicts(ACCOUNTS), T0).result().any()
    fund = core.transfers_from_dicts([{"id": 500, "debit_account_id": FUNDING, "credit_account_id": PAYER,
                                       "amount": FUNDS, "ledger": CNY, "code": 4}])
    assert not store.create_transfers(fund, T0).any()
    assert store.set_rates(rates([{"from_ledger": CNY, "to_ledger": USD, "rate_ppb": RATE, "pool_from_id": POOL_CNY,
                                   "pool_to_id": POOL_USD}]), T0).tolist() == [0]
    for request in range(1, 50):
        quote = store.quote_cross_border(CNY, USD, [request * 100])[0]
        row = {"payer_id": PAYER, "merchant_id": MERCHANT, "request_id": request, "merchant_amount": request * 100,
               "payer_amount": int(quote["payer_amount"]), "rate_version": 1, "payer_ledger": CNY, "merchant_ledger": USD}
        assert store.pay_cross_border(fx_pays([row]), T0 + request * S).tolist() == [0]
    # The first payment, long evicted, is refunded in full.
    row = {"payment_id": fx_payment_id(PAYER, 1), "merchant_id": MERCHANT, "request_id": 1, "merchant_amount": 100}
    assert store.refund_cross_border(fx_refunds([row]), T0 + 60 * S).tolist() == [0]
    assert store.stats()["fx_payments_resident"] <= 16
    first = core.to_dicts(store.lookup_fx_payments([fx_payment_id(PAYER, 1)]))[0]
    assert first["payer_refunded"] == first["payer_amount"]
    state_hash = store.state_hash()
    store.close()
    reopened = _store(tmp_path / "a")
    assert reopened.state_hash() == state_hash
    assert core.to_dicts(reopened.lookup_rates([rate_pair_id(CNY, USD)]))[0]["rate_ppb"] == RATE
    reopened.close()
    assert replay_log.run(str(tmp_path / "a"), str(tmp_path / "b"))["equal"]


def test_an_amount_past_64_bits_is_refused_not_clamped():
    m = machine()
    assert set_rate(m, T0 + S, rate=1) is Result.ok   # 1 ppb: 10^9 payer units per merchant unit
    amount = 10**11
    assert int(m.fx.quote(CNY, USD, [amount])["result"][0]) == Result.rate_invalid
    assert pay(m, T0 + 2 * S, amount, payer_amount=2**64 - 1, version=2) is Result.rate_invalid
    assert net(m, POOL_USD) == 0


def test_a_product_account_may_not_pay_or_be_paid_across_borders():
    m = machine()
    assert pay(m, T0 + S, 100, payer_id=POOL_CNY) is Result.product_account
    assert pay(m, T0 + S, 100, merchant_id=POOL_USD) is Result.product_account
    assert net(m, POOL_CNY) == 0 and net(m, POOL_USD) == 0
