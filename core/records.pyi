"""Type stubs for the compiled record definitions (core/records.pyx)."""

import enum
from typing import Any, Iterable

import numpy as np
import numpy.typing as npt

ACCOUNT_DTYPE: np.dtype
TRANSFER_DTYPE: np.dtype
ID_DTYPE: np.dtype
ORDER_CREATE_DTYPE: np.dtype
ORDER_PAY_DTYPE: np.dtype
ORDER_CLOSE_DTYPE: np.dtype
ORDER_DTYPE: np.dtype
ORDER_CREATED_DTYPE: np.dtype
MERCHANT_DTYPE: np.dtype
REFUND_DTYPE: np.dtype
SETTLEMENT_DTYPE: np.dtype
NOTIFICATION_DTYPE: np.dtype
CODE_ISSUE_DTYPE: np.dtype
CODE_ISSUED_DTYPE: np.dtype
CODE_CHARGE_DTYPE: np.dtype
CODE_CONFIRM_DTYPE: np.dtype
CODE_DTYPE: np.dtype
LIMITS_DTYPE: np.dtype
WALLET_TIER_DTYPE: np.dtype
TIER_LIMITS_DTYPE: np.dtype
WALLET_LIMITS_DTYPE: np.dtype
U64_MAX: int
U128_MAX: int

class Result(enum.IntEnum):
    ok = 0
    linked_event_failed = 1
    linked_event_chain_open = 2
    timestamp_must_be_zero = 3
    reserved_field = 4
    reserved_flag = 5
    id_must_not_be_zero = 6
    id_must_not_be_int_max = 7
    flags_are_mutually_exclusive = 8
    debits_pending_must_be_zero = 9
    debits_posted_must_be_zero = 10
    credits_pending_must_be_zero = 11
    credits_posted_must_be_zero = 12
    ledger_must_not_be_zero = 13
    code_must_not_be_zero = 14
    exists_with_different_flags = 15
    exists_with_different_user_data_128 = 16
    exists_with_different_user_data_64 = 17
    exists_with_different_user_data_32 = 18
    exists_with_different_ledger = 19
    exists_with_different_code = 20
    exists = 21
    accounts_limit_reached = 22
    debit_account_id_must_not_be_zero = 23
    debit_account_id_must_not_be_int_max = 24
    credit_account_id_must_not_be_zero = 25
    credit_account_id_must_not_be_int_max = 26
    accounts_must_be_different = 27
    pending_id_must_be_zero = 28
    pending_id_must_not_be_zero = 29
    pending_id_must_not_be_int_max = 30
    pending_id_must_be_different = 31
    timeout_reserved_for_pending_transfer = 32
    amount_must_not_be_zero = 33
    debit_account_not_found = 34
    credit_account_not_found = 35
    accounts_must_have_the_same_ledger = 36
    transfer_must_have_the_same_ledger_as_accounts = 37
    pending_transfer_not_found = 38
    pending_transfer_not_pending = 39
    pending_transfer_has_different_debit_account_id = 40
    pending_transfer_has_different_credit_account_id = 41
    pending_transfer_has_different_ledger = 42
    pending_transfer_has_different_code = 43
    exceeds_pending_transfer_amount = 44
    pending_transfer_has_different_amount = 45
    exists_with_different_debit_account_id = 46
    exists_with_different_credit_account_id = 47
    exists_with_different_amount = 48
    exists_with_different_pending_id = 49
    exists_with_different_timeout = 50
    pending_transfer_already_posted = 51
    pending_transfer_already_voided = 52
    pending_transfer_expired = 53
    debit_account_closed = 54
    credit_account_closed = 55
    overflows_debits_pending = 56
    overflows_credits_pending = 57
    overflows_debits_posted = 58
    overflows_credits_posted = 59
    overflows_debits = 60
    overflows_credits = 61
    overflows_timeout = 62
    exceeds_credits = 63
    exceeds_debits = 64
    transfers_limit_reached = 65
    out_trade_no_invalid = 66
    expire_after_out_of_range = 67
    merchant_not_found = 68
    currency_mismatch = 69
    id_mismatch = 70
    exists_with_different_fields = 71
    orders_limit_reached = 72
    order_not_found = 73
    order_token_invalid = 74
    order_paid = 75
    order_closed = 76
    order_expired = 77
    amount_mismatch = 78
    payer_not_found = 79
    merchant_mismatch = 80
    fee_account_not_found = 81
    settlement_account_not_found = 82
    fee_rate_out_of_range = 83
    merchants_limit_reached = 84
    out_refund_no_invalid = 85
    order_not_paid = 86
    refund_window_closed = 87
    refunds_per_order_limit_reached = 88
    exceeds_paid_amount = 89
    refunds_limit_reached = 90
    id_reserved = 91
    merchant_not_registered = 92
    settlement_window_open = 93
    settlement_window_behind = 94
    forbidden = 95
    code_invalid = 96
    code_not_found = 97
    code_used = 98
    code_expired = 99
    code_replaced = 100
    code_collision = 101
    codes_limit_reached = 102
    user_paying = 103
    order_not_user_paying = 104
    payer_mismatch = 105
    limit_out_of_range = 106
    envelope_total_out_of_range = 107
    envelope_count_out_of_range = 108
    escrow_invalid = 109
    envelopes_limit_reached = 110
    envelope_not_found = 111
    envelope_empty = 112
    envelope_expired = 113
    claims_limit_reached = 114
    claimer_not_found = 115
    stock_count_out_of_range = 116
    min_spend_below_face = 117
    face_value_out_of_range = 118
    budget_account_invalid = 119
    stocks_limit_reached = 120
    channel_invalid = 121
    stock_not_found = 122
    user_not_found = 123
    stock_ended = 124
    stock_exhausted = 125
    per_user_limit_reached = 126
    coupons_limit_reached = 127
    coupon_not_found = 128
    coupon_mismatch = 129
    coupon_redeemed = 130
    coupon_expired = 131
    below_min_spend = 132
    rate_invalid = 133
    pool_invalid = 134
    rates_limit_reached = 135
    rate_not_found = 136
    rate_changed = 137
    fx_payments_limit_reached = 138
    fx_payment_not_found = 139
    product_account = 140
    exceeds_payment_limit = 141
    exceeds_daily_limit = 142
    exceeds_yearly_limit = 143
    exceeds_balance_limit = 144
    tier_invalid = 145
    account_not_found = 146
    tier_limits_invalid = 147
    tier_ledgers_limit_reached = 148

class OrderState(enum.IntEnum):
    NOTPAY = 1
    SUCCESS = 2
    CLOSED = 3
    REFUND = 4
    USERPAYING = 5

class CloseReason(enum.IntEnum):
    none = 0
    merchant = 1
    expired = 2
    revoked = 3
    declined = 4
    timeout = 5

class CodeState(enum.IntEnum):
    LIVE = 1
    CHARGED = 2
    EXPIRED = 3
    REPLACED = 4

class OrderKind(enum.IntEnum):
    qr = 0
    code = 1

class ConfirmFlags(enum.IntFlag):
    none = 0
    decline = 1

class AccountFlags(enum.IntFlag):
    none = 0
    linked = 1
    debits_must_not_exceed_credits = 2
    credits_must_not_exceed_debits = 4
    closed = 8

class TransferFlags(enum.IntFlag):
    none = 0
    linked = 1
    pending = 2
    post_pending = 4
    void_pending = 8
    balancing_debit = 16
    balancing_credit = 32

class AccountCode(enum.IntEnum):
    user_wallet = 1
    merchant = 2
    funding_card = 3
    escrow = 4
    fee = 5
    fx_pool = 6
    coupon_budget = 7
    credit_line = 8
    settlement = 9

class TransferCode(enum.IntEnum):
    payment = 1
    refund = 2
    p2p = 3
    top_up = 4
    withdrawal = 5
    red_envelope_fund = 6
    red_envelope_claim = 7
    red_envelope_refund = 8
    coupon = 9
    fx = 10
    fee = 11
    order_payment = 61441
    order_fee = 61442
    order_refund = 61443
    order_fee_refund = 61444
    order_settlement = 61445
    settlement = 12

class Currency(enum.IntEnum):
    CNY = 156
    HKD = 344
    JPY = 392
    USD = 840
    EUR = 978


def records_from_dicts(rows: Iterable[dict[str, int | bytes]], dtype: np.dtype) -> npt.NDArray[np.void]: ...
def accounts_from_dicts(rows: Iterable[dict[str, int]]) -> npt.NDArray[np.void]: ...
def transfers_from_dicts(rows: Iterable[dict[str, int]]) -> npt.NDArray[np.void]: ...
def to_dicts(records: npt.NDArray[np.void]) -> list[dict[str, int]]: ...
def ids_array(ids: Iterable[int] | npt.NDArray[Any]) -> npt.NDArray[np.void]: ...
EVENT_FLAG_FORBIDDEN_BIT: int
