"""The settlement's rate for `tally bench products`: ``settle_merchants_per_s``.

Method: a store in a fresh directory whose engine clock this process sets (a window closes at
the end of an engine day: a server on the wall clock would have to run past midnight), with
``merchants`` merchants (terms with a fee rate and a settlement account) that each sold one QR
order on day D; then the clock moves to D + 1 and ``tally settle`` (``tally.settle.settle``)
runs over the protocol against a server on a thread of this process over that store: pages of
merchants listed, settled (one transfer each), their settlements looked up and every
settlement transfer read back to reconcile. ``settle_s`` is that whole run; the issue's bar is
100,000 merchants in 5 s or less, reconciled.
"""

from __future__ import annotations

import secrets as secrets_module
import shutil
import tempfile
import time

import numpy as np

import core
from core import constants
from core.operations import Operation
from core.order_keys import order_ids
from engine.client import BlockingClient
from tally import local_server, settle

NS_PER_S = 10**9
DAY_NS = constants.SETTLEMENT_WINDOW_S * NS_PER_S
FIRST_MERCHANT = 1_000
FEES, BANK, FUNDING, WALLET = 1, 2, 3, 4


def run(merchants: int = 100_000, data_dir: str | None = None) -> dict:
    """Set up, settle, and time it (see the module's docstring)."""
    base_dir = data_dir or tempfile.mkdtemp(prefix="tally-settle-")
    day = time.time_ns() // DAY_NS - 2
    clock = [day * DAY_NS + 3_600 * NS_PER_S]
    secret = secrets_module.token_bytes(32)
    try:
        with core.open(base_dir, accounts_max=merchants + 16, merchants_max=merchants,
                       orders_max=max(2 * constants.BATCH_EVENTS_MAX, merchants + constants.BATCH_EVENTS_MAX),
                       transfers_hot_max=max(1 << 20, 4 * merchants), secret=secret,
                       clock_ns=lambda: clock[0]) as store:
            _population(store, merchants)
            clock[0] += DAY_NS
            with local_server.serving_in_thread(store, {1: secret}) as port, \
                    BlockingClient("127.0.0.1", port, client_id=1, secret=secret) as client:
                report = settle.settle(client, day)
    finally:
        if data_dir is None:
            shutil.rmtree(base_dir, ignore_errors=True)
    settled = sum(total["merchants"] for total in report["totals"].values())
    return {"settle_merchants_per_s": report["merchants_per_s"], "settle_s": report["seconds"],
            "settle_merchants": report["merchants"], "settle_moved": settled, "settle_reconciled": report["reconciled"]}


def _population(store, merchants: int) -> None:
    """Accounts, merchants' terms, and one paid order per merchant (batches straight into the store)."""
    step = constants.BATCH_EVENTS_MAX
    accounts = np.zeros(merchants + 4, dtype=core.ACCOUNT_DTYPE)
    accounts["id_lo"][:4] = (FEES, BANK, FUNDING, WALLET)
    accounts["id_lo"][4:] = np.arange(FIRST_MERCHANT, FIRST_MERCHANT + merchants)
    accounts["ledger"] = core.Currency.CNY
    accounts["code"] = 1
    for first in range(0, accounts.shape[0], step):
        _ok(store.create_accounts(accounts[first:first + step]))
    fund = core.transfers_from_dicts([{"id": 1, "debit_account_id": FUNDING, "credit_account_id": WALLET,
                                       "amount": 1 << 60, "ledger": core.Currency.CNY, "code": 1}])
    _ok(store.create_transfers(fund))
    ids = np.arange(FIRST_MERCHANT, FIRST_MERCHANT + merchants, dtype=np.uint64)
    terms = np.zeros(merchants, dtype=core.MERCHANT_DTYPE)
    terms["merchant_id_lo"] = ids
    terms["fee_account_id_lo"], terms["settlement_account_id_lo"] = FEES, BANK
    terms["fee_bps"] = (ids % 100).astype(np.uint16)
    terms["ledger"] = core.Currency.CNY
    for first in range(0, merchants, step):
        _ok(store.set_merchants(terms[first:first + step]))
    digits = np.zeros((merchants, 32), dtype=np.uint8)
    digits[:, 0] = ord("S")
    order = order_ids(np.stack([ids, np.zeros(merchants, dtype=np.uint64)], axis=1), digits)
    for first in range(0, merchants, step):
        part = slice(first, first + step)
        creates = np.zeros(len(ids[part]), dtype=core.ORDER_CREATE_DTYPE)
        creates["id_lo"], creates["id_hi"] = order[part, 0], order[part, 1]
        creates["merchant_id_lo"] = ids[part]
        creates["amount"] = 1_000 + ids[part] % 9_000
        creates["out_trade_no"] = digits[part]
        creates["ledger"] = core.Currency.CNY
        created = store.submit(Operation.create_orders, creates).result()
        _ok(created["result"])
        pays = np.zeros(creates.shape[0], dtype=core.ORDER_PAY_DTYPE)
        pays["order_id_lo"], pays["order_id_hi"] = creates["id_lo"], creates["id_hi"]
        pays["payer_id_lo"] = WALLET
        pays["amount"] = creates["amount"]
        pays["token"] = created["token"]
        pays["ledger"] = core.Currency.CNY
        _ok(store.pay_orders(pays))


def _ok(results: np.ndarray) -> None:
    if results.any():
        codes = sorted({core.Result(int(code)).name for code in np.unique(results) if code})
        raise RuntimeError(f"the settlement bench's setup failed: {codes}")
