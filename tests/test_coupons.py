"""Coupons and the card pack (docs/products.md "Coupons and the card pack"): a stock funded from
the merchant into its budget account, coupons granted by scan or API (the per-user cap, the
stock's count), a payment redeeming one in one chain (the user pays the price less the face, the
budget the face), retries, expiry by the engine clock, the stock's end returning what is left of
the budget at a batch's start, the analytics kept by the engine equal to a recomputation, every
documented result code with the ledger untouched, and the tables through the store's eviction,
recovery and replay."""

import numpy as np

import core
from core import CouponChannel, CouponState, Result, StockState
from core import replay_log
from core.machine import Machine
from core.operations import Operation
from core.order_keys import (
    coupon_grants, coupon_id, coupon_pays, coupon_payment_id, holding_id, stock_creates, stock_id,
)
from core.orders import leg_id

T0 = 1_700_000_000 * 10**9
S = 10**9
DAY = 86_400 * S
CNY, USD = 156, 840
FUNDING, MERCHANT, BUDGET, OTHER_MERCHANT, NOT_BUDGET, USD_BUDGET, DOLLARS, POOR = 1, 2, 3, 4, 5, 6, 7, 8
USERS = list(range(100, 120))
ACCOUNTS = [
    {"id": FUNDING, "ledger": CNY, "code": 3},
    {"id": MERCHANT, "ledger": CNY, "code": 2, "flags": 2},
    {"id": BUDGET, "ledger": CNY, "code": 7, "flags": 2},
    {"id": OTHER_MERCHANT, "ledger": CNY, "code": 2},
    {"id": NOT_BUDGET, "ledger": CNY, "code": 5},
    {"id": USD_BUDGET, "ledger": USD, "code": 7},
    {"id": DOLLARS, "ledger": USD, "code": 1},
    {"id": POOR, "ledger": CNY, "code": 1, "flags": 2},
] + [{"id": u, "ledger": CNY, "code": 1, "flags": 2} for u in USERS]
FUNDS = 10**8
STOCK = stock_id(MERCHANT, b"SPRING")


def machine(**capacities):
    m = Machine(accounts_max=64, transfers_hot_max=1 << 14, secret=bytes(32), **capacities)
    assert not m.apply(Operation.create_accounts, core.accounts_from_dicts(ACCOUNTS), T0).any()
    fund = core.transfers_from_dicts(
        [{"id": 500 + i, "debit_account_id": FUNDING, "credit_account_id": a, "amount": FUNDS, "ledger": CNY, "code": 4}
         for i, a in enumerate([MERCHANT] + USERS)])
    assert not m.apply(Operation.create_transfers, fund, T0).any()
    return m


def create(m, now, number=b"SPRING", **fields):
    row = dict({"merchant_id": MERCHANT, "budget_account_id": BUDGET, "face_value": 500, "min_spend": 2000,
                "total_count": 10, "per_user_max": 2, "valid_for_s": 30 * 86_400, "out_stock_no": number,
                "ledger": CNY}, **fields)
    return Result(int(m.apply(Operation.create_stocks, stock_creates([row]), now)[0]))


def grant(m, now, user, request=1, stock=STOCK, channel=CouponChannel.scan, **fields):
    row = dict({"stock_id": stock, "user_id": user, "request_id": request, "merchant_id": MERCHANT,
                "channel": int(channel)}, **fields)
    return Result(int(m.apply(Operation.grant_coupons, coupon_grants([row]), now)[0]))


def pay(m, now, user, price, request=1, coupon_request=1, stock=STOCK, **fields):
    row = dict({"payer_id": user, "merchant_id": MERCHANT, "coupon_id": coupon_id(stock, user, coupon_request),
                "stock_id": stock, "request_id": request, "price": price, "ledger": CNY}, **fields)
    return Result(int(m.apply(Operation.pay_with_coupon, coupon_pays([row]), now)[0]))


def stock(m, sid=STOCK):
    return core.to_dicts(m.lookup_stocks([sid]))[0]


def balances(m, *accounts):
    return [(int(r["debits_posted"]), int(r["credits_posted"])) for r in m.ledger.lookup_accounts(list(accounts))]


def pulse(m, now):
    return m.apply(Operation.create_transfers, np.empty(0, dtype=core.TRANSFER_DTYPE), now)


def test_a_stock_is_funded_and_a_coupon_pays_part_of_a_payment_in_one_chain():
    m = machine()
    assert create(m, T0 + S) is Result.ok
    assert balances(m, MERCHANT, BUDGET) == [(5000, FUNDS), (0, 5000)]
    assert grant(m, T0 + 2 * S, USERS[0]) is Result.ok
    coupon = core.to_dicts(m.lookup_coupons([coupon_id(STOCK, USERS[0], 1)]))[0]
    assert (coupon["state"], coupon["channel"], coupon["expires_at"]) == (
        CouponState.AVAILABLE, CouponChannel.scan, stock(m)["ends_at"])
    assert pay(m, T0 + 3 * S, USERS[0], 2600) is Result.ok
    # The user paid 2,100, the budget 500; the merchant got the 2,600.
    assert balances(m, USERS[0], BUDGET, MERCHANT) == [(2100, FUNDS), (500, 5000), (5000, FUNDS + 2600)]
    payment = coupon_payment_id(USERS[0], 1)
    legs = m.ledger.lookup_transfers([leg_id(payment, Operation.pay_with_coupon, 0),
                                      leg_id(payment, Operation.pay_with_coupon, 1)])
    assert [int(t["amount"]) for t in legs] == [2100, 500]
    assert [int(t["code"]) for t in legs] == [core.TransferCode.payment, core.TransferCode.coupon]
    coupon = core.to_dicts(m.lookup_coupons([coupon_id(STOCK, USERS[0], 1)]))[0]
    assert (coupon["state"], coupon["price"], coupon["payment_id"]) == (CouponState.REDEEMED, 2600, payment)
    s = stock(m)
    assert (s["issued_scan"], s["redeemed"], s["receivers"], s["repeat_buyers"]) == (1, 1, 1, 0)


def test_many_coupons_ids_at_once_are_the_scalar_ones():
    from core.order_keys import coupon_ids

    stocks = np.array([[STOCK & (2**64 - 1), STOCK >> 64], [7, 1 << 63], [2**64 - 1, 5]], dtype=np.uint64)
    users = np.array([[USERS[0], 0], [1, 2], [3, 4]], dtype=np.uint64)
    requests = np.array([[1, 0], [2**64 - 1, 9], [0, 1]], dtype=np.uint64)

    def as_int(pairs):
        return [int(lo) | int(hi) << 64 for lo, hi in pairs]

    assert as_int(coupon_ids(stocks, users, requests)) == [
        coupon_id(s, u, r) for s, u, r in zip(as_int(stocks), as_int(users), as_int(requests))]


def test_a_retried_payment_changes_nothing_and_a_coupon_pays_once():
    m = machine()
    create(m, T0)
    grant(m, T0 + S, USERS[0])
    assert pay(m, T0 + 2 * S, USERS[0], 3000) is Result.ok
    before = balances(m, USERS[0], BUDGET, MERCHANT)
    assert pay(m, T0 + 3 * S, USERS[0], 3000) is Result.exists
    assert pay(m, T0 + 3 * S, USERS[0], 3100) is Result.exists_with_different_fields
    assert pay(m, T0 + 3 * S, USERS[0], 3000, request=2) is Result.coupon_redeemed
    assert balances(m, USERS[0], BUDGET, MERCHANT) == before and stock(m)["redeemed"] == 1


def test_a_payment_of_exactly_the_face_makes_only_the_budget_leg():
    m = machine()
    create(m, T0, min_spend=500)
    grant(m, T0 + S, USERS[0])
    assert pay(m, T0 + 2 * S, USERS[0], 500) is Result.ok
    assert balances(m, USERS[0], MERCHANT) == [(0, FUNDS), (5000, FUNDS + 500)]


def test_the_per_user_cap_the_count_and_repeat_buyers():
    m = machine()
    create(m, T0, total_count=4, per_user_max=2)
    assert grant(m, T0 + S, USERS[0], request=1) is Result.ok
    assert grant(m, T0 + S, USERS[0], request=2, channel=CouponChannel.api) is Result.ok
    assert grant(m, T0 + S, USERS[0], request=3) is Result.per_user_limit_reached
    assert grant(m, T0 + S, USERS[0], request=1) is Result.exists
    assert grant(m, T0 + S, USERS[0], request=1, channel=CouponChannel.api) is Result.exists_with_different_fields
    assert grant(m, T0 + S, USERS[1]) is Result.ok
    assert grant(m, T0 + S, USERS[2]) is Result.ok
    assert grant(m, T0 + S, USERS[3]) is Result.stock_exhausted
    assert pay(m, T0 + 2 * S, USERS[0], 2000, request=1, coupon_request=1) is Result.ok
    assert pay(m, T0 + 2 * S, USERS[0], 2000, request=2, coupon_request=2) is Result.ok
    s = stock(m)
    assert (s["issued_scan"], s["issued_api"], s["receivers"], s["redeemed"], s["repeat_buyers"]) == (3, 1, 3, 2, 1)
    holding = core.to_dicts(m.coupons.lookup_holdings([holding_id(STOCK, USERS[0])]))[0]
    assert (holding["received"], holding["redeemed"]) == (2, 2)


def test_coupons_expire_by_the_clock_and_the_stock_returns_the_rest_at_its_end():
    m = machine()
    create(m, T0, total_count=10, valid_for_s=3600, coupon_valid_s=60)
    ends_at = stock(m)["ends_at"]
    grant(m, T0 + S, USERS[0])
    grant(m, T0 + S, USERS[1])
    expires_at = core.to_dicts(m.lookup_coupons([coupon_id(STOCK, USERS[0], 1)]))[0]["expires_at"]
    assert expires_at < ends_at
    assert pay(m, expires_at - 1, USERS[1], 2000) is Result.ok
    assert pay(m, expires_at, USERS[0], 2000) is Result.coupon_expired
    assert m.next_expiry_ns == ends_at and m.ledger.start_legs(ends_at) == 1
    assert grant(m, ends_at - 1, USERS[2]) is Result.ok
    assert grant(m, ends_at, USERS[3]) is Result.stock_ended  # the batch's start ended it first
    s = stock(m)
    assert s["state"] == StockState.ENDED
    # Funded 5,000; one redeemed (500); 4,500 back to the merchant.
    assert balances(m, BUDGET) == [(5000, 5000)]
    back = m.ledger.lookup_transfers([leg_id(STOCK, Operation.create_stocks, 1)])
    assert int(back["amount"][0]) == 4500 and int(back["credit_account_id_lo"][0]) == MERCHANT
    assert balances(m, MERCHANT) == [(5000, FUNDS + 2000 + 4500)]
    assert m.next_expiry_ns == 0
    assert pay(m, ends_at + S, USERS[2], 2000) is Result.coupon_expired


def test_a_stock_whose_coupons_are_all_redeemed_ends_with_nothing_to_return():
    m = machine()
    create(m, T0, total_count=2, per_user_max=1)
    for user in USERS[:2]:
        grant(m, T0 + S, user)
        assert pay(m, T0 + 2 * S, user, 2000) is Result.ok
    assert stock(m)["state"] == StockState.ENDED and m.next_expiry_ns == 0
    assert balances(m, BUDGET) == [(1000, 1000)]


def test_a_grant_on_a_stock_whose_coupons_were_all_redeemed_is_exhausted_not_ended():
    """docs/products.md grant_coupons: ``stock_ended`` (by the clock), ``stock_exhausted``
    (issued = total_count). A stock every coupon of which was redeemed has ended before its
    ends_at; a grant on it answered stock_ended (the state was checked with the clock)."""
    m = machine()
    create(m, T0, total_count=2, per_user_max=1)
    for user in USERS[:2]:
        grant(m, T0 + S, user)
        assert pay(m, T0 + 2 * S, user, 2000) is Result.ok
    s = stock(m)
    assert s["state"] == StockState.ENDED and s["ends_at"] > T0 + 3 * S
    assert grant(m, T0 + 3 * S, USERS[2]) is Result.stock_exhausted
    assert grant(m, s["ends_at"], USERS[2]) is Result.stock_ended


def test_bad_stocks_get_their_codes_and_leave_the_ledger_untouched():
    m = machine()
    before = balances(m, MERCHANT, BUDGET)
    cases = [
        ({"flags": 1}, Result.reserved_flag),
        ({"timestamp": 3}, Result.timestamp_must_be_zero),
        ({"face_value": 0}, Result.amount_must_not_be_zero),
        ({"ledger": 0}, Result.ledger_must_not_be_zero),
        ({"id": 99}, Result.id_mismatch),
        ({"total_count": 0}, Result.stock_count_out_of_range),
        ({"total_count": 10_000_001}, Result.stock_count_out_of_range),
        ({"min_spend": 499}, Result.min_spend_below_face),
        ({"face_value": 1 << 62, "min_spend": 1 << 62, "total_count": 2}, Result.face_value_out_of_range),
        ({"valid_for_s": 0}, Result.expire_after_out_of_range),
        ({"valid_for_s": 366 * 86_400 + 1}, Result.expire_after_out_of_range),
        ({"valid_for_s": 60, "coupon_valid_s": 61}, Result.expire_after_out_of_range),
        ({"merchant_id": 999}, Result.merchant_not_found),
        ({"ledger": USD}, Result.currency_mismatch),
        ({"budget_account_id": 999}, Result.budget_account_invalid),
        ({"budget_account_id": NOT_BUDGET}, Result.budget_account_invalid),
        ({"budget_account_id": USD_BUDGET}, Result.budget_account_invalid),
        ({"merchant_id": POOR}, Result.exceeds_credits),
    ]
    for n, (change, expected) in enumerate(cases):
        assert create(m, T0 + S, number=f"BAD-{n}".encode(), **change) is expected, change
    reserved = stock_creates([{"merchant_id": MERCHANT, "budget_account_id": BUDGET, "face_value": 1, "min_spend": 1,
                               "total_count": 1, "valid_for_s": 60, "out_stock_no": b"R", "ledger": CNY}])
    reserved.view(np.uint8).reshape(-1, 128)[0, 118] = 1
    assert Result(int(m.apply(Operation.create_stocks, reserved, T0 + S)[0])) is Result.reserved_field
    assert balances(m, MERCHANT, BUDGET) == before and m.coupons.stock_count == 0


def test_bad_grants_and_payments_get_their_codes_and_leave_the_ledger_untouched():
    m = machine()
    create(m, T0)
    grant(m, T0 + S, USERS[0])
    before = balances(m, MERCHANT, BUDGET, USERS[0], USERS[1], DOLLARS)
    grants = [
        ({"channel": 0}, Result.channel_invalid),
        ({"channel": 3}, Result.channel_invalid),
        ({"request_id": 0}, Result.id_must_not_be_zero),
        ({"id": 5}, Result.id_mismatch),
        ({"stock": stock_id(MERCHANT, b"NONE")}, Result.stock_not_found),
        ({"merchant_id": OTHER_MERCHANT}, Result.merchant_mismatch),
        ({"user": 999}, Result.user_not_found),
        ({"user": DOLLARS}, Result.currency_mismatch),
        ({"flags": 4}, Result.reserved_flag),
    ]
    for change, expected in grants:
        user = change.pop("user", USERS[1])
        sid = change.pop("stock", STOCK)
        assert grant(m, T0 + 2 * S, user, request=7, stock=sid, **change) is expected, (change, expected)
    pays = [
        (dict(price=0), Result.amount_must_not_be_zero),
        (dict(request=0), Result.id_must_not_be_zero),
        (dict(ledger=0), Result.ledger_must_not_be_zero),
        (dict(user=USERS[1]), Result.coupon_not_found),
        (dict(coupon_id=coupon_id(STOCK, USERS[0], 1), user=USERS[1]), Result.coupon_mismatch),
        (dict(merchant_id=OTHER_MERCHANT), Result.merchant_mismatch),
        (dict(price=1999), Result.below_min_spend),
        (dict(ledger=USD), Result.currency_mismatch),
    ]
    for change, expected in pays:
        user = change.pop("user", USERS[0])
        price = change.pop("price", 2000)
        assert pay(m, T0 + 3 * S, user, price, **change) is expected, (change, expected)
    assert balances(m, MERCHANT, BUDGET, USERS[0], USERS[1], DOLLARS) == before
    s = stock(m)
    assert (s["issued_scan"], s["redeemed"]) == (1, 0)


def test_a_user_without_the_funds_is_refused_whole():
    m = machine()
    assert not m.apply(Operation.create_accounts, core.accounts_from_dicts(
        [{"id": 60, "ledger": CNY, "code": 1, "flags": 2}]), T0).any()
    create(m, T0)
    grant(m, T0 + S, 60)
    assert pay(m, T0 + 2 * S, 60, 2000) is Result.exceeds_credits
    assert balances(m, 60, BUDGET) == [(0, 0), (0, 5000)]
    coupon = core.to_dicts(m.lookup_coupons([coupon_id(STOCK, 60, 1)]))[0]
    assert coupon["state"] == CouponState.AVAILABLE and stock(m)["redeemed"] == 0


def test_the_analytics_equal_a_recomputation_from_the_coupons_and_the_ledger():
    m = machine()
    rng = np.random.default_rng(7)
    create(m, T0, total_count=40, per_user_max=3)
    granted, paid = [], []
    for i in range(60):
        user, request = int(rng.choice(USERS)), int(rng.integers(1, 6))
        if grant(m, T0 + S + i, user, request=request, channel=CouponChannel(int(rng.integers(1, 3)))) is Result.ok:
            granted.append((user, request))
    for i, (user, request) in enumerate(granted):
        if rng.random() < 0.6 and pay(m, T0 + 2 * S + i, user, 2500, request=1000 + i, coupon_request=request) is Result.ok:
            paid.append(user)
    coupons = m.lookup_coupons([coupon_id(STOCK, u, r) for u, r in granted])
    s = stock(m)
    assert s["issued_scan"] + s["issued_api"] == len(granted) == len(coupons)
    assert s["issued_scan"] == int((coupons["channel"] == CouponChannel.scan).sum())
    assert s["redeemed"] == len(paid) == int((coupons["state"] == CouponState.REDEEMED).sum())
    assert s["receivers"] == len({u for u, _ in granted})
    assert s["repeat_buyers"] == sum(1 for u in set(paid) if paid.count(u) >= 2)
    # The budget's debits are the faces of the redemptions (each a coupon-coded leg).
    assert balances(m, BUDGET) == [(500 * len(paid), 500 * 40)]


def _store(path, **options):
    return core.open(str(path), accounts_max=64, transfers_hot_max=4096, cold_epoch_transfers=256, stocks_max=16,
                     coupons_max=16, holdings_max=16, secret=bytes(32), clock_ns=lambda: T0, **options)


def test_coupons_survive_eviction_recovery_and_replay(tmp_path):
    store = _store(tmp_path / "a")
    assert not store.submit(Operation.create_accounts, core.accounts_from_dicts(ACCOUNTS), T0).result().any()
    fund = core.transfers_from_dicts(
        [{"id": 500 + i, "debit_account_id": FUNDING, "credit_account_id": a, "amount": FUNDS, "ledger": CNY, "code": 4}
         for i, a in enumerate([MERCHANT] + USERS)])
    assert not store.create_transfers(fund, T0).any()
    row = {"merchant_id": MERCHANT, "budget_account_id": BUDGET, "face_value": 100, "min_spend": 100,
           "total_count": 100, "per_user_max": 5, "valid_for_s": 3600, "out_stock_no": b"BIG", "ledger": CNY}
    assert store.create_stocks(stock_creates([row]), T0).tolist() == [0]
    big = stock_id(MERCHANT, b"BIG")
    now = T0 + S
    for i in range(60):  # more coupons and holdings than the tables hold
        user = USERS[i % 20]
        grant_row = {"stock_id": big, "user_id": user, "request_id": i + 1, "merchant_id": MERCHANT, "channel": 1}
        assert store.grant_coupons(coupon_grants([grant_row]), now).tolist() == [0]
        now += S
    # An early coupon, long evicted, is redeemed (its holding loaded from the cold tier too).
    payment = {"payer_id": USERS[0], "merchant_id": MERCHANT, "coupon_id": coupon_id(big, USERS[0], 1),
               "stock_id": big, "request_id": 77, "price": 300, "ledger": CNY}
    assert store.pay_with_coupon(coupon_pays([payment]), now).tolist() == [0]
    assert store.pay_with_coupon(coupon_pays([payment]), now + S).tolist() == [Result.exists]
    holding = core.to_dicts(store.lookup_holdings([holding_id(big, USERS[0])]))[0]
    assert (holding["received"], holding["redeemed"]) == (3, 1)
    stats = store.stats()
    assert stats["coupons_resident"] <= 16 and stats["holdings_resident"] <= 16 and stats["coupons"] == 60
    assert store.pulse(stock(store, big)["ends_at"]) is not None  # the stock's end: 99 x 100 back
    assert stock(store, big)["state"] == StockState.ENDED
    assert [int(x) for x in store.lookup_accounts([BUDGET])[0][["debits_posted", "credits_posted"]]] == [10_000, 10_000]
    state_hash = store.state_hash()
    store.close()
    reopened = _store(tmp_path / "a")
    assert reopened.state_hash() == state_hash
    reopened.close()
    assert replay_log.run(str(tmp_path / "a"), str(tmp_path / "b"))["equal"]


# ---------------------------------------------------------------- pay and get, membership cards

from core.order_keys import member_id, order_creates, order_id, order_pays  # noqa: E402


def _terms(m, now, award_stock=0, award_min_amount=0, membership=True):
    terms = core.records_from_dicts([{"merchant_id": MERCHANT, "fee_account_id": NOT_BUDGET, "fee_bps": 0,
                                      "ledger": CNY, "flags": int(membership), "award_stock_id": award_stock,
                                      "award_min_amount": award_min_amount}], core.MERCHANT_DTYPE)
    return Result(int(m.apply(Operation.set_merchants, terms, now)[0]))


def _qr_pay(m, now, payer, number, amount=3000):
    created = m.apply(Operation.create_orders, order_creates([{"merchant_id": MERCHANT, "out_trade_no": number,
                                                                "amount": amount, "ledger": CNY}]), now)
    assert int(created["result"][0]) == 0
    pays = order_pays([{"order_id": order_id(MERCHANT, number), "payer_id": payer, "amount": amount, "ledger": CNY,
                        "token": bytes(created["token"][0])}])
    return Result(int(m.apply(Operation.pay_orders, pays, now + 1)[0])), pays


def test_a_qr_payment_at_a_pay_and_get_merchant_awards_a_coupon_and_counts_a_visit():
    m = machine()
    assert create(m, T0, total_count=3, per_user_max=2) is Result.ok
    assert _terms(m, T0, award_stock=STOCK, award_min_amount=2500) is Result.ok
    result, pays = _qr_pay(m, T0 + S, USERS[0], b"Q-1")
    assert result is Result.ok
    awarded = coupon_id(STOCK, USERS[0], order_id(MERCHANT, b"Q-1"))
    coupon = core.to_dicts(m.lookup_coupons([awarded]))[0]
    assert (coupon["channel"], coupon["state"], coupon["user_id"]) == (CouponChannel.pay_and_get, CouponState.AVAILABLE,
                                                                         USERS[0])
    assert stock(m)["issued_pay_and_get"] == 1
    member = core.to_dicts(m.lookup_members([member_id(MERCHANT, USERS[0])]))[0]
    assert (member["visits"], member["spend"], member["points"]) == (1, 3000, 30)
    # A retried payment: exists, no second coupon, no second visit.
    assert Result(int(m.apply(Operation.pay_orders, pays, T0 + 2 * S)[0])) is Result.exists
    assert stock(m)["issued_pay_and_get"] == 1 and m.coupons.coupon_count == 1
    # Below the award's minimum: a visit, no coupon. The per-user cap and the count hold.
    assert _qr_pay(m, T0 + 3 * S, USERS[0], b"Q-2", amount=2000)[0] is Result.ok
    assert stock(m)["issued_pay_and_get"] == 1
    for n, user in enumerate([USERS[0], USERS[0], USERS[1], USERS[2]]):
        assert _qr_pay(m, T0 + 4 * S + n * 10, user, f"Q-{3 + n}".encode())[0] is Result.ok
    s = stock(m)
    assert s["issued_pay_and_get"] == 3 and s["receivers"] == 2  # user 0: two (the cap), user 1: one, then none left
    member = core.to_dicts(m.lookup_members([member_id(MERCHANT, USERS[0])]))[0]
    assert (member["visits"], member["spend"]) == (4, 3000 + 2000 + 3000 + 3000)
    # The awarded coupon pays like any other.
    pay_row = {"payer_id": USERS[0], "merchant_id": MERCHANT, "coupon_id": awarded, "stock_id": STOCK,
               "request_id": 5, "price": 2500, "ledger": CNY}
    assert Result(int(m.apply(Operation.pay_with_coupon, coupon_pays([pay_row]), T0 + 9 * S)[0])) is Result.ok
    member = core.to_dicts(m.lookup_members([member_id(MERCHANT, USERS[0])]))[0]
    assert member["visits"] == 5


def test_a_merchant_without_card_pack_terms_changes_nothing_in_it():
    m = machine()
    assert create(m, T0) is Result.ok
    assert _terms(m, T0, membership=False) is Result.ok
    assert _qr_pay(m, T0 + S, USERS[0], b"Q-1")[0] is Result.ok
    assert m.coupons.coupon_count == 0 and not m.lookup_members([member_id(MERCHANT, USERS[0])]).shape[0]
    # An award stock of another merchant awards nothing.
    other = stock_id(OTHER_MERCHANT, b"X")
    assert _terms(m, T0 + 2 * S, award_stock=other) is Result.ok
    assert _qr_pay(m, T0 + 3 * S, USERS[0], b"Q-2")[0] is Result.ok
    assert m.coupons.coupon_count == 0


def test_card_pack_records_are_loaded_back_for_a_payment(tmp_path):
    store = core.open(str(tmp_path / "a"), accounts_max=64, transfers_hot_max=1 << 15, cold_epoch_transfers=1024,
                      holdings_max=16, members_max=16, coupons_max=16, secret=bytes(32), clock_ns=lambda: T0)
    assert not store.submit(Operation.create_accounts, core.accounts_from_dicts(ACCOUNTS), T0).result().any()
    fund = core.transfers_from_dicts(
        [{"id": 500 + i, "debit_account_id": FUNDING, "credit_account_id": a, "amount": FUNDS, "ledger": CNY, "code": 4}
         for i, a in enumerate([MERCHANT] + USERS)])
    assert not store.create_transfers(fund, T0).any()
    row = {"merchant_id": MERCHANT, "budget_account_id": BUDGET, "face_value": 100, "min_spend": 100,
           "total_count": 1000, "per_user_max": 3, "valid_for_s": 3600, "out_stock_no": b"PAG", "ledger": CNY}
    assert store.create_stocks(stock_creates([row]), T0).tolist() == [0]
    pag = stock_id(MERCHANT, b"PAG")
    terms = core.records_from_dicts([{"merchant_id": MERCHANT, "fee_account_id": NOT_BUDGET, "ledger": CNY, "flags": 1,
                                      "award_stock_id": pag}], core.MERCHANT_DTYPE)
    assert store.set_merchants(terms, T0).tolist() == [0]
    now = T0 + S
    for n in range(80):  # 20 users x 4 payments: more members, holdings and coupons than memory holds
        number = f"P-{n}".encode()
        created = store.create_orders(order_creates([{"merchant_id": MERCHANT, "out_trade_no": number, "amount": 500,
                                                      "ledger": CNY}]), now)
        pays = order_pays([{"order_id": order_id(MERCHANT, number), "payer_id": USERS[n % 20], "amount": 500,
                            "ledger": CNY, "token": bytes(created["token"][0])}])
        assert store.pay_orders(pays, now + 1).tolist() == [0]
        now += S
    members = store.lookup_members([member_id(MERCHANT, u) for u in USERS])
    assert (members["visits"] == 4).all() and (members["spend"] == 2000).all()
    holdings = store.lookup_holdings([holding_id(pag, u) for u in USERS])
    assert (holdings["received"] == 3).all()  # the cap held across evictions
    assert stock(store, pag)["issued_pay_and_get"] == 60
    state_hash = store.state_hash()
    store.close()
    assert replay_log.run(str(tmp_path / "a"), str(tmp_path / "b"))["equal"]
    reopened = core.open(str(tmp_path / "a"), secret=bytes(32), clock_ns=lambda: T0)
    assert reopened.state_hash() == state_hash
    reopened.close()


def test_a_payment_request_pays_once_whatever_coupon_a_retry_names():
    m = machine()
    create(m, T0, per_user_max=2)
    grant(m, T0 + S, USERS[0], request=1)
    grant(m, T0 + S, USERS[0], request=2)
    assert pay(m, T0 + 2 * S, USERS[0], 2000, request=9, coupon_request=1) is Result.ok
    before = balances(m, USERS[0], BUDGET, MERCHANT)
    # The same request with the other coupon: refused, not a second payment.
    assert pay(m, T0 + 3 * S, USERS[0], 2000, request=9, coupon_request=2) is Result.exists_with_different_fields
    assert balances(m, USERS[0], BUDGET, MERCHANT) == before
    record = core.to_dicts(m.coupons.lookup_coupon_payments([coupon_payment_id(USERS[0], 9)]))[0]
    assert (record["coupon_id"], record["price"], record["face_value"]) == (coupon_id(STOCK, USERS[0], 1), 2000, 500)


def test_a_product_account_may_not_be_a_stock_merchant_or_receive_coupons():
    m = machine()
    assert not m.apply(Operation.create_accounts, core.accounts_from_dicts([{"id": 70, "ledger": CNY, "code": 4}]),
                       T0).any()
    assert create(m, T0, number=b"B", merchant_id=BUDGET) is Result.product_account
    assert create(m, T0) is Result.ok
    assert grant(m, T0 + S, 70) is Result.product_account
    assert balances(m, BUDGET) == [(0, 5000)]
