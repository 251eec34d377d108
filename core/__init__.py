"""Tally's compiled core: records, the ledger state machine, and the durable LMDB store.

>>> import core
>>> led = core.Ledger(accounts_max=100, transfers_hot_max=1000)
>>> led.create_accounts(core.accounts_from_dicts([
...     {"id": 1, "ledger": core.Currency.CNY, "code": core.AccountCode.funding_card},
...     {"id": 2, "ledger": core.Currency.CNY, "code": core.AccountCode.user_wallet,
...      "flags": core.AccountFlags.debits_must_not_exceed_credits}]), now_ns=1).tolist()
[0, 0]

The compiled extensions are required: there is no pure-Python fallback, and importing without
them fails loudly (build with ``pip install -e .``).

The wire's vocabulary (record layouts and dtypes, result codes, flags, codes, ids) is loaded
at once; the state machine and the store (``Ledger``, ``IdMap``, ``open``, ``Store`` ...) on
first use: a service that only needs the client library (``engine.client``) or the load
generator never loads LMDB or the ledger (tests/test_client_imports.py).
"""

import importlib

try:
    from core.records import (
        ACCOUNT_DTYPE, TRANSFER_DTYPE, ID_DTYPE, Result, AccountFlags, TransferFlags, AccountCode,
        TransferCode, Currency, accounts_from_dicts, transfers_from_dicts, records_from_dicts, to_dicts, ids_array,
        ORDER_CREATE_DTYPE, ORDER_PAY_DTYPE, ORDER_CLOSE_DTYPE, ORDER_DTYPE, ORDER_CREATED_DTYPE, OrderState,
        CloseReason, MERCHANT_DTYPE, NOTIFICATION_DTYPE, REFUND_DTYPE, SETTLEMENT_DTYPE, CODE_ISSUE_DTYPE,
        CODE_ISSUED_DTYPE, CODE_CHARGE_DTYPE, CODE_CONFIRM_DTYPE, CODE_DTYPE, CodeState, OrderKind, ConfirmFlags,
        ENVELOPE_SEND_DTYPE, ENVELOPE_CLAIM_DTYPE, ENVELOPE_CLAIMED_DTYPE, ENVELOPE_DTYPE, CLAIM_DTYPE, EnvelopeState,
        STOCK_CREATE_DTYPE, STOCK_DTYPE, COUPON_GRANT_DTYPE, COUPON_DTYPE, COUPON_PAY_DTYPE, HOLDING_DTYPE, StockState,
        CouponState, CouponChannel, FX_RATE_DTYPE, FX_PAY_DTYPE, FX_PAYMENT_DTYPE, FX_REFUND_DTYPE, FX_QUOTE_DTYPE,
        MEMBER_DTYPE, COUPON_PAYMENT_DTYPE, WALLET_TIER_DTYPE, TIER_LIMITS_DTYPE, WALLET_LIMITS_DTYPE,
    )
except ImportError as error:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "Tally's compiled core is not built: run `pip install -e .` (see README.md)"
    ) from error

from core import constants
from core.constants import BATCH_EVENTS_MAX
from core.ids import new_id, new_ids

#: Loaded on first use: name -> the module that defines it.
_LAZY = {"Ledger": "core.ledger", "IdMap": "core.idmap", "Store": "core.store", "StoreError": "core.store",
         "StoreFailedError": "core.store", "RecoveryStats": "core.store", "open": "core.store",
         "Machine": "core.machine"}

__all__ = [
    "ACCOUNT_DTYPE", "TRANSFER_DTYPE", "ID_DTYPE", "Result", "AccountFlags", "TransferFlags",
    "AccountCode", "TransferCode", "Currency", "accounts_from_dicts", "transfers_from_dicts", "records_from_dicts",
    "to_dicts", "ids_array", "ORDER_CREATE_DTYPE", "ORDER_PAY_DTYPE", "ORDER_CLOSE_DTYPE", "ORDER_DTYPE",
    "ORDER_CREATED_DTYPE", "OrderState", "CloseReason", "MERCHANT_DTYPE", "REFUND_DTYPE", "SETTLEMENT_DTYPE", "NOTIFICATION_DTYPE",
    "CODE_ISSUE_DTYPE", "CODE_ISSUED_DTYPE", "CODE_CHARGE_DTYPE", "CODE_CONFIRM_DTYPE", "CODE_DTYPE", "CodeState", "OrderKind",
    "ConfirmFlags", "ENVELOPE_SEND_DTYPE", "ENVELOPE_CLAIM_DTYPE", "ENVELOPE_CLAIMED_DTYPE", "ENVELOPE_DTYPE",
    "CLAIM_DTYPE", "EnvelopeState", "STOCK_CREATE_DTYPE", "STOCK_DTYPE", "COUPON_GRANT_DTYPE", "COUPON_DTYPE",
    "COUPON_PAY_DTYPE", "HOLDING_DTYPE", "StockState", "CouponState", "CouponChannel", "FX_RATE_DTYPE", "FX_PAY_DTYPE",
    "FX_PAYMENT_DTYPE", "FX_REFUND_DTYPE", "FX_QUOTE_DTYPE", "MEMBER_DTYPE", "COUPON_PAYMENT_DTYPE", "WALLET_TIER_DTYPE",
    "TIER_LIMITS_DTYPE", "WALLET_LIMITS_DTYPE", "constants", "BATCH_EVENTS_MAX", "new_id", "new_ids", *_LAZY,
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
