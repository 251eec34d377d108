"""An order's keys, for services: its id from the merchant's ``out_trade_no``, its token, its QR
payload, a payment code's digits, a red envelope's and a claim's ids, and batches from dicts
(docs/products.md "Orders: the reference", "Payment codes (built)", "Red envelopes").

Light on purpose (hashlib, NumPy, core/digest for many ids at once): a merchant service or a wallet app imports it with the
client, never the ledger. The core recomputes the id (``id_mismatch``) and the token.

>>> oid = order_id(7, b"20261207-0001")
>>> parse_qr_payload(qr_payload(oid, bytes(10))) == (oid, bytes(10))
True
>>> batch = order_creates([{"merchant_id": 7, "out_trade_no": b"20261207-0001", "amount": 2500, "ledger": 156}])
>>> int(batch["id_lo"][0]) == oid & (2**64 - 1)
True
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import numpy as np

from core.records import (
    CODE_CHARGE_DTYPE, CODE_CONFIRM_DTYPE, CODE_ISSUE_DTYPE, ORDER_CLOSE_DTYPE, ORDER_CREATE_DTYPE, ORDER_PAY_DTYPE,
    REFUND_DTYPE, ENVELOPE_CLAIM_DTYPE, ENVELOPE_SEND_DTYPE, ID_DTYPE, STOCK_CREATE_DTYPE, COUPON_GRANT_DTYPE,
    COUPON_PAY_DTYPE, FX_PAY_DTYPE, FX_RATE_DTYPE, FX_REFUND_DTYPE, records_from_dicts,
)

ORDER_ID_DOMAIN = b"ordr"
CODE_DOMAIN = b"code"
CODE_DIGITS = 18
_CODE_RANGE = 10 ** 16
REFUND_ID_DOMAIN = b"rfnd"
ENVELOPE_ID_DOMAIN = b"rpkt"
CLAIM_ID_DOMAIN = b"clam"
STOCK_ID_DOMAIN = b"stck"
COUPON_ID_DOMAIN = b"cpon"
HOLDING_ID_DOMAIN = b"hold"
MEMBER_ID_DOMAIN = b"mbr_"
PAYMENT_ID_DOMAIN = b"cpay"
FX_PAYMENT_ID_DOMAIN = b"fxpy"
FX_REFUND_ID_DOMAIN = b"fxrf"
OUT_TRADE_NO_BYTES = 32
TOKEN_BYTES = 10
QR_PREFIX = "TALLY1"


#: The bytes a merchant's number (out_trade_no, out_refund_no) may hold (WeChat Pay's, and '.').
NUMBER_ALPHABET = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-|*@.")


def _check_number(name: str, number: bytes) -> None:
    # The core refuses the same (out_trade_no_invalid, out_refund_no_invalid): fail early here.
    if not 1 <= len(number) <= OUT_TRADE_NO_BYTES or not NUMBER_ALPHABET.issuperset(number):
        raise ValueError(f"{name} must be 1..{OUT_TRADE_NO_BYTES} bytes of [0-9A-Za-z_-|*@.]")


def order_id(merchant_id: int, out_trade_no: bytes) -> int:
    """The order id of a merchant's ``out_trade_no``: the first 16 bytes of SHA-256(b"ordr" +
    merchant id as 16 bytes LE + out_trade_no NUL-padded to 32), as a little-endian int."""
    _check_number("out_trade_no", out_trade_no)
    preimage = ORDER_ID_DOMAIN + merchant_id.to_bytes(16, "little") + out_trade_no.ljust(OUT_TRADE_NO_BYTES, b"\0")
    return int.from_bytes(hashlib.sha256(preimage).digest()[:16], "little")


def refund_id(order_id: int, out_refund_no: bytes) -> int:
    """The refund id of an order's ``out_refund_no``: as ``order_id``, with b"rfnd" and the
    order's id in place of b"ordr" and the merchant's."""
    _check_number("out_refund_no", out_refund_no)
    preimage = REFUND_ID_DOMAIN + order_id.to_bytes(16, "little") + out_refund_no.ljust(OUT_TRADE_NO_BYTES, b"\0")
    return int.from_bytes(hashlib.sha256(preimage).digest()[:16], "little")


def token_of(secret: bytes, order_id: int) -> bytes:
    """An order's token: the first 10 bytes of HMAC-SHA256(secret, order id as 16 bytes LE)
    (the core computes it; a test or a tool holding the store's secret can too)."""
    return hmac.new(secret, order_id.to_bytes(16, "little"), hashlib.sha256).digest()[:TOKEN_BYTES]


def qr_payload(order_id: int, token: bytes) -> str:
    """What the merchant renders as a QR code: ``TALLY1`` + base32(order id 16 bytes LE + token)."""
    if len(token) != TOKEN_BYTES:
        raise ValueError(f"a token is {TOKEN_BYTES} bytes")
    return QR_PREFIX + base64.b32encode(order_id.to_bytes(16, "little") + bytes(token)).decode().rstrip("=")


def parse_qr_payload(payload: str) -> tuple[int, bytes]:
    """(order id, token) from a QR payload; ValueError if it is not one."""
    if not payload.startswith(QR_PREFIX):
        raise ValueError("not a Tally order QR payload")
    body = payload[len(QR_PREFIX):]
    try:
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except ValueError as error:
        raise ValueError("not a Tally order QR payload") from error
    if len(raw) != 16 + TOKEN_BYTES:
        raise ValueError("a QR payload holds 26 bytes")
    return int.from_bytes(raw[:16], "little"), raw[16:]


def order_ids(merchant_ids, out_trade_nos) -> np.ndarray:
    """Many orders' ids at once, in C (core/digest.pyx): ``merchant_ids`` an (n, 2) uint64
    array (lo, hi), ``out_trade_nos`` an (n, 32) uint8 array (NUL-padded); an (n, 2) uint64
    array (lo, hi) back. For services and load generators making many orders a second."""
    from core import digest
    return digest.key_ids(ORDER_ID_DOMAIN, merchant_ids, out_trade_nos)


def refund_ids(order_ids, out_refund_nos) -> np.ndarray:
    """Many refunds' ids at once, as ``order_ids``: ``order_ids`` an (n, 2) uint64 array (lo,
    hi), ``out_refund_nos`` an (n, 32) uint8 array (NUL-padded)."""
    from core import digest
    return digest.key_ids(REFUND_ID_DOMAIN, order_ids, out_refund_nos)


def order_creates(rows) -> np.ndarray:
    """A ``create_orders`` batch from dicts (fields of ORDER_CREATE_DTYPE; ``id`` is computed
    from ``merchant_id`` and ``out_trade_no`` when not given)."""
    rows = [row if "id" in row else dict(row, id=order_id(int(row["merchant_id"]), bytes(row["out_trade_no"])))
            for row in rows]
    return records_from_dicts(rows, ORDER_CREATE_DTYPE)


def order_pays(rows) -> np.ndarray:
    """A ``pay_orders`` batch from dicts (fields of ORDER_PAY_DTYPE; ``token`` as bytes)."""
    return records_from_dicts(rows, ORDER_PAY_DTYPE)


def refunds(rows) -> np.ndarray:
    """A ``refund_orders`` batch from dicts (fields of REFUND_DTYPE; ``id`` is computed from
    ``order_id`` and ``out_refund_no`` when not given)."""
    rows = [row if "id" in row else dict(row, id=refund_id(int(row["order_id"]), bytes(row["out_refund_no"])))
            for row in rows]
    return records_from_dicts(rows, REFUND_DTYPE)


def order_closes(rows) -> np.ndarray:
    """A ``close_orders`` batch from dicts (fields of ORDER_CLOSE_DTYPE)."""
    return records_from_dicts(rows, ORDER_CLOSE_DTYPE)


def code_of(secret: bytes, wallet_id: int, request_id: int) -> int:
    """The payment code ``issue_codes`` gives (wallet, request): prefix 10-15 and 16 digits from
    HMAC-SHA256(secret, b"code" + wallet id + request id, 16 bytes LE each) (the core computes
    it; a test or a tool holding the store's secret can too)."""
    digest = hmac.new(secret, CODE_DOMAIN + wallet_id.to_bytes(16, "little") + request_id.to_bytes(16, "little"),
                      hashlib.sha256).digest()
    return (10 + int.from_bytes(digest[:8], "little") % 6) * _CODE_RANGE + int.from_bytes(digest[8:16], "little") % _CODE_RANGE


def format_code(code: int) -> str:
    """A code as the wallet shows it (and its barcode holds): its 18 digits."""
    if not 10 * _CODE_RANGE <= code < 16 * _CODE_RANGE:
        raise ValueError("a payment code has 18 digits, the first two 10-15")
    return str(code)


def parse_code(text: str) -> int:
    """A scanned code's digits as the int ``charge_codes`` takes; ValueError if it is not one."""
    if len(text) != CODE_DIGITS or not text.isdigit() or not 10 <= int(text[:2]) <= 15:
        raise ValueError("a payment code has 18 digits, the first two 10-15")
    return int(text)


def code_issues(rows) -> np.ndarray:
    """An ``issue_codes`` batch from dicts (fields of CODE_ISSUE_DTYPE: wallet_id, request_id,
    ledger; no_password_limit and free_payments_per_day 0 for the defaults)."""
    return records_from_dicts(rows, CODE_ISSUE_DTYPE)


def code_charges(rows) -> np.ndarray:
    """A ``charge_codes`` batch from dicts (fields of CODE_CHARGE_DTYPE; ``order_id`` is computed
    from ``merchant_id`` and ``out_trade_no`` when not given)."""
    rows = [row if "order_id" in row else dict(row, order_id=order_id(int(row["merchant_id"]), bytes(row["out_trade_no"])))
            for row in rows]
    return records_from_dicts(rows, CODE_CHARGE_DTYPE)


def charge_confirms(rows) -> np.ndarray:
    """A ``confirm_charges`` batch from dicts (order_id, wallet_id, flags: ``core.ConfirmFlags``)."""
    return records_from_dicts(rows, CODE_CONFIRM_DTYPE)


def envelope_id(sender_id: int, out_envelope_no: bytes) -> int:
    """A red envelope's id: as ``order_id``, with b"rpkt" and the sender's account id."""
    _check_number("out_envelope_no", out_envelope_no)
    preimage = (ENVELOPE_ID_DOMAIN + sender_id.to_bytes(16, "little")
                + out_envelope_no.ljust(OUT_TRADE_NO_BYTES, b"\0"))
    return int.from_bytes(hashlib.sha256(preimage).digest()[:16], "little")


def _pair_id(domain: bytes, key: int, first: int, second: int = 0) -> int:
    # The first 16 bytes of SHA-256(domain + key + first + second), 16 bytes LE each.
    preimage = domain + key.to_bytes(16, "little") + first.to_bytes(16, "little") + second.to_bytes(16, "little")
    return int.from_bytes(hashlib.sha256(preimage).digest()[:16], "little")


def claim_id(envelope_id: int, claimer_id: int) -> int:
    """A claim's id (the core computes it): the first 16 bytes of SHA-256(b"clam" + the packet's
    id + the claimer's id + 16 zero bytes), 16 bytes LE each."""
    return _pair_id(CLAIM_ID_DOMAIN, envelope_id, claimer_id)


def envelope_ids(sender_ids, out_envelope_nos) -> np.ndarray:
    """Many packets' ids at once, as ``order_ids``: ``sender_ids`` an (n, 2) uint64 array (lo,
    hi), ``out_envelope_nos`` an (n, 32) uint8 array (NUL-padded)."""
    from core import digest
    return digest.key_ids(ENVELOPE_ID_DOMAIN, sender_ids, out_envelope_nos)


def claim_ids(envelope_ids, claimer_ids) -> np.ndarray:
    """Many claims' ids at once (``claim_id``): ``envelope_ids`` and ``claimer_ids`` (n, 2)
    uint64 arrays (lo, hi); an (n, 2) uint64 array (lo, hi) back."""
    from core import digest
    claimers = np.ascontiguousarray(claimer_ids, dtype=np.uint64).reshape(-1, 2)
    numbers = np.zeros((claimers.shape[0], OUT_TRADE_NO_BYTES), dtype=np.uint8)
    numbers[:, :16] = claimers.view(np.uint8)
    return digest.key_ids(CLAIM_ID_DOMAIN, envelope_ids, numbers)


def claim_transfer_ids(envelope_id: int, claimed: int) -> np.ndarray:
    """The ids of a packet's claim transfers, positions 0 .. claimed - 1, as an ID_DTYPE array:
    ``lookup_transfers`` of them says who claimed what, when (the credit account, the amount,
    the timestamp)."""
    from core import digest
    pairs = digest.claim_transfer_ids([envelope_id & (2**64 - 1), envelope_id >> 64], claimed)
    return pairs.view(ID_DTYPE).reshape(-1)


def envelope_sends(rows) -> np.ndarray:
    """A ``send_envelopes`` batch from dicts (fields of ENVELOPE_SEND_DTYPE: sender_id,
    escrow_id, total, count, out_envelope_no, ledger; ``id`` is computed when not given)."""
    rows = [row if "id" in row else dict(row, id=envelope_id(int(row["sender_id"]), bytes(row["out_envelope_no"])))
            for row in rows]
    return records_from_dicts(rows, ENVELOPE_SEND_DTYPE)


def envelope_claims(rows) -> np.ndarray:
    """A ``claim_envelopes`` batch from dicts (envelope_id, claimer_id)."""
    return records_from_dicts(rows, ENVELOPE_CLAIM_DTYPE)


def stock_id(merchant_id: int, out_stock_no: bytes) -> int:
    """A coupon stock's id: as ``order_id``, with b"stck" and the merchant's out_stock_no."""
    _check_number("out_stock_no", out_stock_no)
    preimage = STOCK_ID_DOMAIN + merchant_id.to_bytes(16, "little") + out_stock_no.ljust(OUT_TRADE_NO_BYTES, b"\0")
    return int.from_bytes(hashlib.sha256(preimage).digest()[:16], "little")


def coupon_id(stock_id: int, user_id: int, request_id: int) -> int:
    """A coupon's id: SHA-256(b"cpon" + stock + user + request, 16 bytes LE each)[:16]."""
    return _pair_id(COUPON_ID_DOMAIN, stock_id, user_id, request_id)


def coupon_ids(stock_ids, user_ids, request_ids) -> np.ndarray:
    """Many coupons' ids at once (``coupon_id``), as ``claim_ids``: ``stock_ids``, ``user_ids``
    and ``request_ids`` (n, 2) uint64 arrays (lo, hi); an (n, 2) uint64 array (lo, hi) back."""
    from core import digest
    users = np.ascontiguousarray(user_ids, dtype=np.uint64).reshape(-1, 2)
    numbers = np.zeros((users.shape[0], OUT_TRADE_NO_BYTES), dtype=np.uint8)
    numbers[:, :16] = users.view(np.uint8)
    numbers[:, 16:] = np.ascontiguousarray(request_ids, dtype=np.uint64).reshape(-1, 2).view(np.uint8)
    return digest.key_ids(COUPON_ID_DOMAIN, stock_ids, numbers)


def holding_id(stock_id: int, user_id: int) -> int:
    """A user's holding of a stock (its counts: received, redeemed; the core computes it)."""
    return _pair_id(HOLDING_ID_DOMAIN, stock_id, user_id)


def member_id(merchant_id: int, user_id: int) -> int:
    """A member of a merchant's membership card (the core computes it)."""
    return _pair_id(MEMBER_ID_DOMAIN, merchant_id, user_id)


def coupon_payment_id(payer_id: int, request_id: int) -> int:
    """A coupon payment's id, from the wallet service's request number (its legs' ids derive
    from it: ``core.orders.leg_id(payment_id, 122, 0 | 1)``)."""
    return _pair_id(PAYMENT_ID_DOMAIN, payer_id, request_id)


def stock_creates(rows) -> np.ndarray:
    """A ``create_stocks`` batch from dicts (fields of STOCK_CREATE_DTYPE; ``id`` is computed
    from ``merchant_id`` and ``out_stock_no`` when not given)."""
    rows = [row if "id" in row else dict(row, id=stock_id(int(row["merchant_id"]), bytes(row["out_stock_no"])))
            for row in rows]
    return records_from_dicts(rows, STOCK_CREATE_DTYPE)


def coupon_grants(rows) -> np.ndarray:
    """A ``grant_coupons`` batch from dicts (stock_id, user_id, request_id, merchant_id, channel:
    ``core.CouponChannel``; ``id`` is computed when not given)."""
    rows = [row if "id" in row else dict(row, id=coupon_id(int(row["stock_id"]), int(row["user_id"]),
                                                           int(row["request_id"])))
            for row in rows]
    return records_from_dicts(rows, COUPON_GRANT_DTYPE)


def coupon_pays(rows) -> np.ndarray:
    """A ``pay_with_coupon`` batch from dicts (fields of COUPON_PAY_DTYPE)."""
    return records_from_dicts(rows, COUPON_PAY_DTYPE)


def rate_pair_id(from_ledger: int, to_ledger: int) -> int:
    """A currency pair's id (``lookup_rates``): from_ledger | to_ledger << 32."""
    return from_ledger | to_ledger << 32


def fx_payment_id(payer_id: int, request_id: int) -> int:
    """A cross-border payment's id, from the wallet service's request number (the core computes it)."""
    return _pair_id(FX_PAYMENT_ID_DOMAIN, payer_id, request_id)


def fx_refund_id(payment_id: int, request_id: int) -> int:
    """A cross-border refund's id, from the merchant's request number."""
    return _pair_id(FX_REFUND_ID_DOMAIN, payment_id, request_id)


def rates(rows) -> np.ndarray:
    """A ``set_rates`` batch from dicts (from_ledger, to_ledger, rate_ppb, pool_from_id, pool_to_id)."""
    return records_from_dicts(rows, FX_RATE_DTYPE)


def fx_pays(rows) -> np.ndarray:
    """A ``pay_cross_border`` batch from dicts (fields of FX_PAY_DTYPE)."""
    return records_from_dicts(rows, FX_PAY_DTYPE)


def fx_refunds(rows) -> np.ndarray:
    """A ``refund_cross_border`` batch from dicts (payment_id, merchant_id, request_id,
    merchant_amount; ``id`` is computed when not given)."""
    rows = [row if "id" in row else dict(row, id=fx_refund_id(int(row["payment_id"]), int(row["request_id"])))
            for row in rows]
    return records_from_dicts(rows, FX_REFUND_DTYPE)
