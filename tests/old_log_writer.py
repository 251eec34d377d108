"""Writes a store as the engine before the expiries' bound did (tests/test_notifications.py):
log format 2 (no expiries section) and every due order closed at a batch's start, then dies
as a kill -9 would. Argument: the store's directory."""

import os
import struct
import sys

import core.constants

core.constants.EXPIRIES_PER_BATCH_MAX = 20_000  # before the bound: every due order at once (set before core.orders loads)

import core  # noqa: E402
from core import store as store_module  # noqa: E402
from core.operations import Operation  # noqa: E402
from core.order_keys import order_closes, order_creates, order_id  # noqa: E402

ORDERS = 9_000  # more than EXPIRIES_PER_BATCH_MAX, due at the same instant
S = 10**9
T0 = 1_700_000_000 * S


def _pack_format_2(entry, end, failures, expired):
    struct.pack_into("<I", entry, end, failures.shape[0])
    entry[end + 4:end + 4 + failures.nbytes] = failures.tobytes()
    return 4 + failures.nbytes


store_module.LOG_VERSION = 2
store_module._pack_tail = _pack_format_2
store = core.open(sys.argv[1], accounts_max=16, transfers_hot_max=1 << 14, orders_max=1 << 15, secret=bytes(range(32)),
                  checkpoint_interval_events=10**9)
assert not store.create_accounts(core.accounts_from_dicts([{"id": 7, "ledger": 156, "code": 2}]), T0).any()
for first in range(0, ORDERS, 8190):
    rows = [{"merchant_id": 7, "out_trade_no": b"O%d" % n, "amount": 100, "ledger": 156, "expire_after_s": 60}
            for n in range(first, min(ORDERS, first + 8190))]
    assert not store.submit(Operation.create_orders, order_creates(rows), T0 + S).result()["result"].any()
# An hour on, the merchant closes its last order: closed by the clock already (exists).
close = order_closes([{"order_id": order_id(7, b"O%d" % (ORDERS - 1)), "merchant_id": 7}])
print(int(store.submit(Operation.close_orders, close, T0 + 3600 * S).result()[0]), flush=True)
os._exit(0)  # no clean close: the next open replays the whole log
