"""The operations of the wire protocol and their bodies (docs/protocol.md), shared by server and client.

Record operations carry fixed 128-byte records (``core.ACCOUNT_DTYPE``/``TRANSFER_DTYPE``) so that
a batch is one contiguous buffer from the socket to the core; control messages (today the
``get_account_transfers`` filter) are msgpack, decoded by msgspec into a typed, validated struct.
"""

from __future__ import annotations

import msgspec

from core import constants as core_constants
from core import operations
from core.operations import Operation

#: Record operations: the body is ``event_count`` records of this type; the reply one
#: ``CREATE_REPLY_DTYPES`` record per event (a u32 ``core.Result``, or a record that starts with
#: it). These are exactly the operations the store logs.
CREATE_RECORD_DTYPES = operations.CREATE_EVENT_DTYPES
CREATE_REPLY_DTYPES = operations.CREATE_REPLY_DTYPES

#: Lookups: the body is 16-byte ids (at most ``EVENTS_PER_REQUEST_MAX``); the reply the records found.
LOOKUP_RECORD_DTYPES = operations.LOOKUP_REPLY_DTYPES

#: Every operation number a frame may carry (core/operations.py's table).
OPERATIONS = frozenset(operations.OPERATIONS)
ID_BYTES = operations.OPERATIONS[Operation.lookup_accounts].event_dtype.itemsize
RESULT_BYTES = operations.RESULT_DTYPE.itemsize

_U64_MAX = (1 << 64) - 1


class AccountTransfersFilter(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Body of ``get_account_transfers``: one page of an account's transfers (msgpack map).

    ``account_id`` is a msgpack int when it fits 64 bits, else 16 bytes little-endian (msgpack
    bin): msgpack integers stop at 2**64 - 1 and ids are 128-bit.
    """
    account_id: int | bytes
    timestamp_min: int = 0          # engine ns, inclusive; 0 = unbounded
    timestamp_max: int = 0          # engine ns, inclusive; 0 = unbounded
    limit: int = core_constants.ACCOUNT_TRANSFERS_LIMIT_MAX
    debits: bool = True
    credits: bool = True
    reverse: bool = False

    @classmethod
    def of(cls, account_id: int, **query) -> "AccountTransfersFilter":
        """The filter for ``account_id`` (any 128-bit id), encoded as the protocol says."""
        if account_id >= 1 << 64:
            return cls(account_id=account_id.to_bytes(16, "little"), **query)
        return cls(account_id=account_id, **query)

    @property
    def account(self) -> int:
        """``account_id`` as an int, whichever way it was sent."""
        if isinstance(self.account_id, bytes):
            return int.from_bytes(self.account_id, "little")
        return self.account_id

    def check(self) -> str | None:
        """Why this filter is out of range, or None."""
        if isinstance(self.account_id, bytes) and len(self.account_id) != 16:
            return "account_id as bytes must be 16 bytes, little-endian"
        if not 0 <= self.account < 1 << 128:
            return "account_id must fit 128 bits"
        if not (0 <= self.timestamp_min <= _U64_MAX and 0 <= self.timestamp_max <= _U64_MAX):
            return "timestamps must fit 64 bits"
        if not 0 <= self.limit <= core_constants.ACCOUNT_TRANSFERS_LIMIT_MAX:
            return f"limit must be in 0..{core_constants.ACCOUNT_TRANSFERS_LIMIT_MAX}"
        return None


class MerchantsPage(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Body of ``list_merchants``: merchants' terms in the order they were first set (msgpack
    map), ``limit`` of them from ``offset``."""
    offset: int = 0
    limit: int = core_constants.ACCOUNT_TRANSFERS_LIMIT_MAX

    def check(self) -> str | None:
        """Why this page is out of range, or None."""
        if not 0 <= self.offset <= _U64_MAX:
            return "offset must fit 64 bits"
        if not 0 <= self.limit <= core_constants.ACCOUNT_TRANSFERS_LIMIT_MAX:
            return f"limit must be in 0..{core_constants.ACCOUNT_TRANSFERS_LIMIT_MAX}"
        return None


class NotificationsRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Body of ``subscribe_notifications`` (msgpack map): the cursor to resume strictly after
    (``sequence``, ``index``: those of the last notification processed; 0, 0 from the start)
    and, optionally, the merchant accounts wanted (ints below 2**64, else 16 bytes little-endian;
    a merchant gateway gets its own merchants' only)."""
    sequence: int = 0
    index: int = 0
    merchants: list[int | bytes] | None = None

    def merchant_ids(self) -> list[int] | None:
        if self.merchants is None:
            return None
        return [int.from_bytes(m, "little") if isinstance(m, bytes) else m for m in self.merchants]

    def check(self) -> str | None:
        """Why this request is out of range, or None."""
        if not (0 <= self.sequence <= _U64_MAX and 0 <= self.index <= 0xFFFFFFFF):
            return "the cursor's sequence fits 64 bits and its index 32"
        if self.merchants is not None:
            if len(self.merchants) > core_constants.BATCH_EVENTS_MAX:
                return f"at most {core_constants.BATCH_EVENTS_MAX} merchants"
            if any(isinstance(m, bytes) and len(m) != 16 for m in self.merchants):
                return "a merchant as bytes is 16 bytes, little-endian"
            if not all(0 < m < 1 << 128 for m in self.merchant_ids()):
                return "merchant ids are in 1..2**128 - 1"
        return None


class QuoteRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``quote_cross_border``: what a payer in ``from_ledger`` pays for each merchant
    amount (minor units of ``to_ledger``) at the rate in force (docs/products.md
    "Cross-border payments"); the reply is one FX_QUOTE_DTYPE record per amount."""
    from_ledger: int
    to_ledger: int
    merchant_amounts: list[int]

    def check(self) -> str | None:
        """Why this request is out of range, or None."""
        if not (0 < self.from_ledger < 1 << 32 and 0 < self.to_ledger < 1 << 32):
            return "ledgers must be in 1..2**32 - 1"
        if len(self.merchant_amounts) > core_constants.BATCH_EVENTS_MAX:
            return f"at most {core_constants.BATCH_EVENTS_MAX} amounts"
        if not all(0 <= amount <= _U64_MAX for amount in self.merchant_amounts):
            return "amounts must fit 64 bits"
        return None


FILTER_ENCODER = msgspec.msgpack.Encoder()
FILTER_DECODER = msgspec.msgpack.Decoder(AccountTransfersFilter)
PAGE_DECODER = msgspec.msgpack.Decoder(MerchantsPage)
QUOTE_DECODER = msgspec.msgpack.Decoder(QuoteRequest)
NOTIFICATIONS_DECODER = msgspec.msgpack.Decoder(NotificationsRequest)
