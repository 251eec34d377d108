# Refunds of paid orders (docs/products.md "Refunds"): full or partial, at most
# REFUNDS_PER_ORDER_MAX per order, never above what was paid, within REFUND_WINDOW_S of the
# payment, idempotent per out_refund_no; the merchant's fee is returned pro rata. The refund
# records live in a write-back table (core/table, docs/tables.md), keyed by the refund id.

from libc.stdint cimport uint32_t, uint64_t

from core.ledger cimport Ledger
from core.merchants cimport Merchants
from core.orders cimport Orders
from core.product cimport Product
from core.records cimport result_t, tally_refund_t
from core.table cimport Table


cdef enum:
    OPERATION_REFUND_ORDERS = 106               # core/operations.py's number (checked at import)
    TRANSFER_CODE_ORDER_REFUND = 0xF003         # merchant -> payer
    TRANSFER_CODE_ORDER_FEE_REFUND = 0xF004     # fee account -> merchant


cdef class Refunds(Product):
    cdef readonly uint64_t refunds_max          # resident refunds
    cdef readonly Table table
    cdef Orders orders
    cdef Merchants merchants

    cdef result_t refund(self, const tally_refund_t *e, uint64_t ts) noexcept nogil
