# cython: boundscheck=False, wraparound=False
"""The shared batch path of the product tables (core/product.pxd): orders, merchants, refunds."""

import numpy as np

from libc.stdint cimport uint32_t, uint64_t

from core.ledger cimport LEGS_MAX, Ledger, batch_bytes

from core import constants
from core.operations import OPERATIONS

cdef enum:
    # As the ledger's (core/ledger.pyx): a smaller batch keeps the GIL (giving it away costs a
    # wait of up to a switch interval to get it back from a background thread).
    NOGIL_EVENTS_MIN = 1024


cdef class Product:
    """A product table (subclassed by each product's module; not used alone)."""

    def apply(self, operation, batch, uint64_t now_ns):
        """Apply a batch of one of this table's create operations at engine time ``now_ns``:
        one reply record per event (core/operations.py: a u32 ``core.Result``, or a record that
        starts with it). Bad input raises before anything changes."""
        spec = OPERATIONS.get(operation)
        if spec is None or spec.component != self.component:
            raise ValueError(f"the {self.component} apply no operation {operation}")
        if now_ns >= constants.NOW_NS_LIMIT:
            raise ValueError(f"now_ns must be below {constants.NOW_NS_LIMIT}, got {now_ns}")
        cdef const unsigned char[::1] raw = batch_bytes(batch, spec.event_dtype)
        cdef uint64_t count = raw.shape[0] // spec.event_dtype.itemsize
        out = np.zeros(count, dtype=spec.reply_dtype)
        cdef unsigned char[::1] out_bytes = out.view(np.uint8)
        cdef const unsigned char *events = &raw[0] if count else NULL
        cdef void *out_first = <void *> &out_bytes[0] if count else NULL
        cdef uint32_t op = operation
        cdef uint64_t base
        self.ledger._enter()
        try:
            if count >= NOGIL_EVENTS_MIN:
                with nogil:
                    base = self.ledger.begin_batch(now_ns, count * LEGS_MAX)
                    self.run_batch(op, events, count, base, out_first)
            else:
                base = self.ledger.begin_batch(now_ns, count * LEGS_MAX)
                self.run_batch(op, events, count, base, out_first)
        finally:
            self.ledger.busy = False
        return out

    cdef void run_batch(self, uint32_t operation, const unsigned char *events, uint64_t count, uint64_t base,
                        void *out) noexcept nogil:
        pass
