# Merchant-presented QR orders (docs/products.md "Orders: the reference"): the first product
# module over the ledger's legs and typed undo. Orders live in a write-back table (core/table:
# ``orders_max`` resident, the rest in the cold tier, docs/tables.md), with an expiry heap of
# the unpaid ones (core/expiry.pxd; a paid or closed order leaves it lazily, when it reaches
# the top or when it is evicted). Unpaid orders stay resident (pinned): at most ``open_max``.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from core.digest cimport hmac_key_t, leg_id_of  # (leg_id_of: for the modules that cimport it from here)
from core.expiry cimport expiry_heap_t
from core.ledger cimport Ledger
from core.merchants cimport Merchants, merchant_terms_t
from core.product cimport Product, event_prologue
from core.table cimport Table
from core.records cimport (
    ORDER_NOTPAY, ORDER_USERPAYING, R_AMOUNT_MUST_NOT_BE_ZERO, R_ID_MUST_NOT_BE_INT_MAX, R_ID_MUST_NOT_BE_ZERO,
    R_LEDGER_MUST_NOT_BE_ZERO, R_OK, R_OUT_TRADE_NO_INVALID, R_RESERVED_FLAG, result_t, tally_order_close_t, tally_order_create_t, tally_order_created_t, tally_order_pay_t, tally_order_t,
)


cdef enum:
    ORDER_EXPIRE_AFTER_S_DEFAULT = 7200         # 2 hours
    ORDER_EXPIRE_AFTER_S_MIN = 60
    ORDER_EXPIRE_AFTER_S_MAX = 7776000          # 90 days
    TRANSFER_CODE_ORDER_PAYMENT = 0xF001        # the payer -> merchant leg
    TRANSFER_CODE_ORDER_FEE = 0xF002            # the merchant -> fee account leg
    # The operations this module applies, by their numbers in core/operations.py (checked at import).
    OPERATION_CREATE_ORDERS = 100
    OPERATION_PAY_ORDERS = 101
    OPERATION_CLOSE_ORDERS = 102
    OPERATION_CHARGE_CODES = 113                # a held charge's pending leg is its leg 0


# What happens in the card pack after a payment at a merchant whose terms ask for it
# (core/coupons.pyx: pay and get, the membership card), in the same batch loop, after the legs.
ctypedef void (*after_payment_t)(void *owner, const tally_order_t *o, const merchant_terms_t *terms,
                                 uint64_t ts) noexcept nogil


cdef class Orders(Product):
    cdef readonly uint64_t orders_max           # resident orders
    cdef public uint64_t open_max               # open orders in force (core/limits.pyx; <= table.pinned_max)
    cdef readonly uint64_t open_count
    cdef readonly Table table                   # the orders; a slot's aux: the account its fee went to
    cdef Merchants merchants                    # their fee rates (None: no fees)
    cdef bint has_merchants
    cdef tally_order_t *rows                    # the table's records
    cdef uint32_t *heap_positions               # per slot: its place in the expiry heap
    cdef expiry_heap_t expiry_heap              # unpaid orders by expires_at
    cdef hmac_key_t token_key                   # HMAC-SHA256 key of the order tokens (store secret)
    cdef uint32_t *scratch_slot                 # per event of a pay batch: its order's slot,
    cdef uint32_t *scratch_payer                # the payer's account index,
    cdef uint32_t *scratch_merchant             # and the order's merchant's
    cdef uint64_t *expired_ids                  # the orders the last batch's start closed (lo, hi)
    cdef readonly uint64_t expired_count        # closed by the last batch's start (ids kept: the first EXPIRIES_PER_BATCH_MAX)
    cdef public uint64_t expiries_max           # closed by a batch's start at most (EXPIRIES_PER_BATCH_MAX; more
                                                # only to replay a log written before the bound: format < 3)
    cdef after_payment_t after_payment          # the card pack's (None: no card pack)
    cdef void *after_payment_owner
    cdef dict _arrays

    cdef void expire_due(self, uint64_t base_ts) noexcept nogil
    cdef void settled(self, uint32_t slot, uint64_t ts) noexcept nogil
    cdef result_t create_order(self, const tally_order_create_t *e, uint64_t ts, uint8_t *token) noexcept nogil
    cdef result_t find_order(self, uint64_t lo, uint64_t hi, uint32_t *slot) noexcept nogil
    cdef void drop_resolved(self) noexcept nogil
    cdef void pay_batch(self, const tally_order_pay_t *events, uint64_t count, uint64_t base,
                        uint32_t *results) noexcept nogil
    cdef result_t pay_order(self, const tally_order_pay_t *e, uint64_t ts, uint32_t slot, uint32_t payer,
                            uint32_t merchant) noexcept nogil
    cdef result_t close_order(self, const tally_order_close_t *e, uint64_t ts) noexcept nogil
    cdef void mark_paid(self, uint32_t slot, uint64_t ts, uint64_t fee, const merchant_terms_t *terms) noexcept nogil
    cdef uint32_t insert_order(self, const tally_order_t *o, bint open_) noexcept nogil
    cdef result_t void_hold(self, const tally_order_t *o, uint64_t operation, uint64_t ts) noexcept nogil


# A paid order's merchant asks for the card pack: pay and get, membership.
cdef inline void card_pack_after(Orders orders, const tally_order_t *o, const merchant_terms_t *terms,
                                 uint64_t ts) noexcept nogil:
    if terms != NULL and terms.card_pack != 0 and orders.after_payment_owner != NULL:
        orders.after_payment(orders.after_payment_owner, o, terms, ts)


# An order that may still be paid: unpaid, or a payment code's charge held for confirming.
cdef inline bint order_open(const tally_order_t *o) noexcept nogil:
    return o.state == ORDER_NOTPAY or o.state == ORDER_USERPAYING


# A merchant's number (out_trade_no, out_refund_no): 1..32 bytes of [0-9A-Za-z_-|*@.], then NULs.
cdef bint trade_no_valid(const uint8_t *p) noexcept nogil


# The checks a product event keyed by a client's number begins with, in this order (an order,
# a code's charge, a packet, a stock; docs/products.md): the prologue, flags, the id (not 0,
# not 2^128 - 1), the amount, the ledger, the number.
cdef inline result_t keyed_event_checks(uint16_t flags, uint64_t timestamp, const uint8_t *reserved,
                                        size_t reserved_bytes, uint64_t id_lo, uint64_t id_hi, uint64_t amount,
                                        uint32_t ledger, const uint8_t *number) noexcept nogil:
    cdef result_t r = event_prologue(flags, timestamp, reserved, reserved_bytes)
    if r != R_OK:
        return r
    if flags != 0:
        return R_RESERVED_FLAG
    if id_lo == 0 and id_hi == 0:
        return R_ID_MUST_NOT_BE_ZERO
    if id_lo == 0xFFFFFFFFFFFFFFFFULL and id_hi == 0xFFFFFFFFFFFFFFFFULL:
        return R_ID_MUST_NOT_BE_INT_MAX
    if amount == 0:
        return R_AMOUNT_MUST_NOT_BE_ZERO
    if ledger == 0:
        return R_LEDGER_MUST_NOT_BE_ZERO
    if not trade_no_valid(number):
        return R_OUT_TRADE_NO_INVALID
    return R_OK

