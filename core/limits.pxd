# The limits in force (docs/storage.md "Capacities and limits"): how many accounts, pending
# transfers, merchants, open orders and live payment codes the state machine takes. Each is at
# most its capacity (the memory allocated), and changes only by a logged ``set_limits`` batch,
# so that a replay answers every event as the live run did even when the capacities grew since.

from core.codes cimport Codes
from core.coupons cimport Coupons
from core.envelopes cimport Envelopes
from core.merchants cimport Merchants
from core.orders cimport Orders
from core.product cimport Product
from core.records cimport result_t, tally_limits_t


cdef enum:
    OPERATION_SET_LIMITS = 6                    # core/operations.py's number (checked at import)


cdef class Limits(Product):
    cdef Merchants merchants
    cdef Orders orders
    cdef Codes codes
    cdef Envelopes envelopes
    cdef Coupons coupons

    cdef result_t set_limits(self, const tally_limits_t *e) noexcept nogil
