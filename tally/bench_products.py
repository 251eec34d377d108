"""`tally bench products`: the payment products' rates end to end, beside plain transfers.

Method (every figure from one run on one machine, so that the ratios mean something): a server
process (``tally serve``, uvloop, ``prefault``) is started on loopback over a fresh data
directory, this process becomes the client process (``connections`` connections of the client
library, ``depth`` requests of ``BATCH_EVENTS_MAX`` events in flight on each), the population
(wallets topped up, Zipf-skewed merchants) is created over the wire, then each phase runs
closed loop, after one second of warm-up of each:

1. ``transfers_per_s``: plain payments (``create_transfers``), as ``tally bench e2e``'s peak;
2. ``qr_pay_per_s``: merchant-presented QR payments, each a ``create_orders`` (the merchant's
   order, fresh ``out_trade_no``) then a ``pay_orders`` of the same orders with the tokens the
   create returned (the payer's app): QR payments answered ``ok`` per second, two events each.
   ``ratio_to_transfers = qr_pay_per_s / transfers_per_s``.

   The two run in ``SLICES`` alternating slices that add up to ``seconds`` each, so that the
   server's background work (epoch flushes, checkpoints) and the machine's noise fall on both
   alike (run one after the other, the ratio of three runs went from 0.30 to 0.52).

3. ``refund_per_s``, ``SETTLE_S`` later: the orders paid in phase 2, each refunded in full (``refund_orders``,
   two legs when a fee was taken: none here, the merchants have no terms), refunds answered
   ``ok`` per second of the window in which there were any left to refund.

4. ``settle_merchants_per_s`` (and ``settle_s``, ``settle_reconciled``): ``tally settle`` of
   100,000 merchants' closed day over the protocol, against a server on a thread of this process
   whose store's clock is set past the day's end (``tally.bench_settle`` says why and how).

5. ``notification_per_s``: a subscriber (``subscribe_notifications``, its own connection) first
   reads phases 2 and 3's notifications from the log's start until none comes for 0.5 s, then QR
   payments run for ``seconds``: the notifications it received per second of that phase;
   ``notifications_left_after_1s``: what it still lacked a second after the load stopped (0:
   it kept up); ``qr_pay_per_s_with_subscriber``: the payments meanwhile.

   ``payment_code_per_s``: user-presented payment codes, each an ``issue_codes`` (the wallet
   service: one code per wallet, distinct wallets per request) then a ``charge_codes`` of the
   codes it returned (the merchant's POS: a fresh ``out_trade_no``, an amount below the
   no-password limit, so paid at once): code payments answered ``ok`` per second, two events
   each, in a third slice beside the other two; ``code_ratio_to_transfers`` likewise. (Held
   charges and their confirmations are the load generator's ``payment_code`` mix.)

   ``red_envelope_claim_per_s``: red envelopes' claims (``claim_envelopes``) answered ``ok``
   per second, in a fourth slice beside the other three: each request claims 819 packets of 10
   shares whole (8,190 claims, each packet's claimers ten distinct wallets), packets sent before
   the slices (``red_envelope_send_per_s``: those sends, ``send_envelopes`` answered ``ok`` per
   second, closed loop, ``CLAIMS_MAX_PER_S`` x (``seconds`` + a warm-up) claims' worth, from
   uniform wallets into one escrow account); ``claim_ratio_to_transfers`` likewise.

   ``hot_packet_claims_ok``: after the slices, one packet of 1,000 shares (200.00 CNY) claimed
   by 10,000 distinct wallets at once (a request of 10,000 / ``connections`` claims on each
   connection, together): the claims answered ``ok``, exactly 1,000 by construction; with
   ``hot_packet_late`` (answered ``envelope_empty``) and ``hot_packet_exact`` (the packet read
   back emptied, its 1,000 shares summing to its total).

   ``pay_with_coupon_per_s``: coupon payments (``pay_with_coupon``) answered ``ok`` per second,
   in a fifth slice: each redeems a coupon granted before the slices (``coupon_grant_per_s``:
   those grants, ``grant_coupons`` by scan answered ``ok`` per second, closed loop,
   ``COUPON_PAYS_MAX_PER_S`` x (``seconds`` + a warm-up) of them, each wallet receiving coupons of
   one of ``COUPON_STOCKS`` stocks, a stock per merchant funded into its budget account when
   created), paid by its user at the stock's merchant, a price above the minimum spend: the user
   pays the price less the face, the budget the face, one chain; ``coupon_ratio_to_transfers``
   likewise. (Pay-and-get and membership merchants are the load generator's ``coupon`` mix.)

   ``cross_border_pay_per_s``: cross-border payments (``pay_cross_border``) answered ``ok`` per
   second, in a sixth slice: CNY wallets (uniform) paying ``FX_MERCHANTS`` USD merchants (Zipf)
   amounts quoted before the slices (``cross_border_quote_per_s``: ``quote_cross_border`` of
   ``ORDER_POOL`` amounts, a request of 8,190 each, after an admin's ``set_rates`` of CNY -> USD
   through two FX pools), each payment at its quote's payer amount and rate version: payer ->
   pool(CNY), pool(USD) -> merchant, one chain; ``cross_border_ratio_to_transfers`` likewise.

   ``--report DIR`` (``report_dir``) adds, untimed, ``SHARE_PACKETS`` packets of 10 claimed
   whole, and writes the distribution of a share by its claim position (``envelope_shares.svg``,
   ``.json``, ``.csv``: count, mean, standard deviation, quantiles and the mean's distance from
   total / count in standard errors, per position) and the result (``products.json``) there.

Both processes share the machine's cores; their CPU seconds per phase are reported.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import os
import shutil
import tempfile
import time

import numpy as np

import core
from core import constants
from core.order_keys import coupon_ids, envelope_ids, order_ids, refund_ids, stock_creates
from tally import bench_core, bench_e2e, bench_settle, local_server

WARMUP_S = 1.0
SLICES = 5                      # alternating slices of transfers and each product's payments
ORDER_POOL = 1 << 20            # pre-drawn merchants, payers and amounts, sliced per request
#: Red envelopes: the bench's packets (count shares, total minor units), the hot packet's and its
#: claimers, and the packets of the share distribution (--report).
PACKET_COUNT = 10
PACKET_TOTAL = 10_000
HOT_COUNT = 1_000
HOT_TOTAL = 20_000
HOT_CLAIMERS = 10_000
SHARE_PACKETS = 100_000
#: Coupons: a stock at each of the first COUPON_STOCKS merchants (each with its budget account),
#: its face and minimum spend (minor units); a payment's price is drawn in min spend..10,000.
COUPON_STOCKS = 16
COUPON_FACE = 500
COUPON_MIN_SPEND = 1_000
#: Cross-border payments: FX_MERCHANTS merchants in USD (Zipf), paid by CNY wallets (uniform) at
#: FX_RATE_PPB (US cents per 10^9 fen), amounts in 1..10,000 US cents.
FX_MERCHANTS = 1_000
FX_RATE_PPB = 138_000_000


class OrderStream:
    """Fresh order batches (``create_orders``) and their payments (``pay_orders``).

    Merchants (Zipf), payers (uniform) and amounts come from a pre-drawn pool; per batch only the
    out_trade_nos (a counter, in decimal) and their ids (in C: ``core.order_keys.order_ids``)
    are made, so that the client process spends little of the CPU it shares with the server.
    """

    def __init__(self, accounts: int, seed: int = 11):
        wallets, merchants, _ = bench_core._population(accounts)
        rng = np.random.default_rng(seed)
        self._merchants = wallets + 1 + bench_core._zipf_indices(rng, ORDER_POOL, merchants).astype(np.uint64)
        self._payers = rng.integers(1, wallets + 1, ORDER_POOL, dtype=np.uint64)
        self._amounts = rng.integers(1, 10_001, ORDER_POOL, dtype=np.uint64)
        self._offset = 0
        self._next_number = 1

    def creates(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """``count`` new orders (ORDER_CREATE_DTYPE) and the pool rows they took (for ``pays``)."""
        if self._offset + count > ORDER_POOL:
            self._offset = 0
        rows = np.arange(self._offset, self._offset + count)
        self._offset += count
        numbers = np.arange(self._next_number, self._next_number + count, dtype=np.uint64)
        self._next_number += count
        batch = np.zeros(count, dtype=core.ORDER_CREATE_DTYPE)
        digits = _decimal(numbers)   # out_trade_no: the number in 20 decimal digits, then NULs
        batch["out_trade_no"] = digits
        batch["merchant_id_lo"] = self._merchants[rows]
        batch["amount"] = self._amounts[rows]
        batch["ledger"] = core.Currency.CNY
        ids = order_ids(np.stack([self._merchants[rows], np.zeros(count, dtype=np.uint64)], axis=1), digits)
        batch["id_lo"], batch["id_hi"] = ids[:, 0], ids[:, 1]
        return batch, rows

    def charges(self, codes: np.ndarray) -> np.ndarray:
        """``charge_codes`` of these codes (u64) at the next pool rows' merchants and amounts."""
        creates, _ = self.creates(codes.shape[0])
        batch = np.zeros(codes.shape[0], dtype=core.CODE_CHARGE_DTYPE)
        batch["order_id_lo"], batch["order_id_hi"] = creates["id_lo"], creates["id_hi"]
        batch["merchant_id_lo"] = creates["merchant_id_lo"]
        batch["code_lo"] = codes
        batch["amount"] = creates["amount"]
        batch["out_trade_no"] = creates["out_trade_no"]
        batch["ledger"] = core.Currency.CNY
        return batch

    def pays(self, creates: np.ndarray, rows: np.ndarray, replies: np.ndarray) -> np.ndarray:
        """The payments of ``creates`` by their pool's payers, with the tokens ``replies`` gave."""
        batch = np.zeros(creates.shape[0], dtype=core.ORDER_PAY_DTYPE)
        batch["order_id_lo"], batch["order_id_hi"] = creates["id_lo"], creates["id_hi"]
        batch["payer_id_lo"] = self._payers[rows]
        batch["amount"] = creates["amount"]
        batch["token"] = replies["token"]
        batch["ledger"] = core.Currency.CNY
        return batch


class CodeStream:
    """Fresh ``issue_codes`` batches: wallets in turn and request ids from a counter. A wallet
    has one live code: the batches in flight together (``in_flight``) name distinct wallets, so
    that no code is replaced before its charge; the wallets' settings let every charge through
    at once (the limits' own path is tests/test_codes.py's and the load generator's)."""

    def __init__(self, accounts: int, in_flight: int):
        self._wallets, _, _ = bench_core._population(accounts)
        self._batch_max = max(1, self._wallets // (2 * in_flight))
        self._next = 0

    def issues(self, count: int) -> np.ndarray:
        count = min(count, self._batch_max)
        batch = np.zeros(count, dtype=core.CODE_ISSUE_DTYPE)
        batch["free_payments_per_day"] = np.iinfo(np.uint32).max
        batch["wallet_id_lo"] = 1 + (np.arange(self._next, self._next + count, dtype=np.uint64) % np.uint64(self._wallets))
        batch["request_id_lo"] = np.arange(self._next + 1, self._next + count + 1, dtype=np.uint64)
        batch["ledger"] = core.Currency.CNY
        self._next += count
        return batch


class EnvelopeStream:
    """Red envelopes: ``send_envelopes`` batches (packets of ``PACKET_COUNT`` shares and
    ``PACKET_TOTAL`` minor units from pre-drawn uniform wallets, ``out_envelope_no`` from a
    counter, into the escrow account), and ``claim_envelopes`` batches of the packets sent ok,
    whole packets per batch, each packet's claimers ``PACKET_COUNT`` distinct wallets in turn."""

    def __init__(self, accounts: int, escrow: int, packets_max: int, seed: int = 13):
        self._wallets, _, _ = bench_core._population(accounts)
        self._senders = np.random.default_rng(seed).integers(1, self._wallets + 1, ORDER_POOL, dtype=np.uint64)
        self._escrow = escrow
        self._next_number = 1
        self._sent = np.zeros((packets_max, 2), dtype=np.uint64)   # packets answered ok, to claim
        self.sent = self._claimed = 0

    @property
    def requested(self) -> int:
        """Packets made so far (sent or on their way)."""
        return self._next_number - 1

    def sends(self, count: int, *, shares: int = PACKET_COUNT, total: int = PACKET_TOTAL) -> np.ndarray:
        numbers = np.arange(self._next_number, self._next_number + count, dtype=np.uint64)
        self._next_number += count
        senders = self._senders[numbers % np.uint64(ORDER_POOL)]
        batch = np.zeros(count, dtype=core.ENVELOPE_SEND_DTYPE)
        batch["out_envelope_no"] = _decimal(numbers)
        ids = envelope_ids(np.stack([senders, np.zeros(count, dtype=np.uint64)], axis=1), batch["out_envelope_no"])
        batch["id_lo"], batch["id_hi"] = ids[:, 0], ids[:, 1]
        batch["sender_id_lo"], batch["escrow_id_lo"] = senders, self._escrow
        batch["total"], batch["count"], batch["ledger"] = total, shares, core.Currency.CNY
        return batch

    def answered(self, sends: np.ndarray, results: np.ndarray) -> None:
        """Keep the packets sent ok (up to ``packets_max``), to claim."""
        ok = sends[results == 0][:len(self._sent) - self.sent]
        self._sent[self.sent:self.sent + len(ok), 0], self._sent[self.sent:self.sent + len(ok), 1] = ok["id_lo"], ok["id_hi"]
        self.sent += len(ok)

    def claims(self, count: int) -> np.ndarray | None:
        """Claims of the next ``count // PACKET_COUNT`` packets sent (None: every one is claimed)."""
        packets = min(max(1, count // PACKET_COUNT), self.sent - self._claimed)
        if packets <= 0:
            return None
        first, self._claimed = self._claimed, self._claimed + packets
        turns = np.arange(first * PACKET_COUNT, (first + packets) * PACKET_COUNT, dtype=np.uint64)
        batch = np.zeros(packets * PACKET_COUNT, dtype=core.ENVELOPE_CLAIM_DTYPE)
        batch["envelope_id_lo"] = np.repeat(self._sent[first:first + packets, 0], PACKET_COUNT)
        batch["envelope_id_hi"] = np.repeat(self._sent[first:first + packets, 1], PACKET_COUNT)
        batch["claimer_id_lo"] = 1 + turns % np.uint64(self._wallets)
        return batch

    def skip(self) -> None:
        """Leave the packets sent so far unclaimed (``claims`` goes on with the next ones sent)."""
        self._claimed = self.sent

    def hot_claims(self, envelope: np.ndarray, parts: int) -> list[np.ndarray]:
        """``HOT_CLAIMERS`` distinct wallets' claims of one packet, in ``parts`` batches."""
        batch = np.zeros(HOT_CLAIMERS, dtype=core.ENVELOPE_CLAIM_DTYPE)
        batch["envelope_id_lo"], batch["envelope_id_hi"] = envelope["id_lo"], envelope["id_hi"]
        batch["claimer_id_lo"] = np.arange(1, HOT_CLAIMERS + 1, dtype=np.uint64)
        return np.array_split(batch, parts)


class CouponStream:
    """Coupons: a ``create_stocks`` batch (a stock at each of ``COUPON_STOCKS`` merchants, funded
    into its budget account), ``grant_coupons`` batches (by scan: wallets in turn, each receiving
    a coupon of stock ``wallet % COUPON_STOCKS``, request ids from a counter) and
    ``pay_with_coupon`` batches redeeming the coupons granted ok, in turn, each by its user at its
    stock's merchant (pre-drawn prices, request ids from another counter)."""

    def __init__(self, accounts: int, budgets_first: int, coupons_max: int, seed: int = 17):
        self._wallets, _, _ = bench_core._population(accounts)
        self._merchants = np.arange(self._wallets + 1, self._wallets + 1 + COUPON_STOCKS, dtype=np.uint64)
        self._budgets = np.arange(budgets_first, budgets_first + COUPON_STOCKS, dtype=np.uint64)
        self._coupons_max = coupons_max
        rows = [{"merchant_id": int(merchant), "budget_account_id": int(budget), "face_value": COUPON_FACE,
                 "min_spend": COUPON_MIN_SPEND, "total_count": min(constants.STOCK_COUNT_MAX, coupons_max),
                 "per_user_max": min(coupons_max, 2**32 - 1), "valid_for_s": 86_400,
                 "out_stock_no": b"BENCH-%d" % number, "ledger": core.Currency.CNY}
                for number, (merchant, budget) in enumerate(zip(self._merchants, self._budgets))]
        self.stocks = stock_creates(rows)
        self._prices = np.random.default_rng(seed).integers(COUPON_MIN_SPEND, 10_001, ORDER_POOL, dtype=np.uint64)
        self._granted = np.zeros((coupons_max, 3), dtype=np.uint64)   # coupons granted ok: id lo, hi, user
        self.granted = self._paid = self.requested = 0

    def grants(self, count: int) -> np.ndarray:
        numbers = np.arange(self.requested, self.requested + count, dtype=np.uint64)
        self.requested += count
        users = 1 + numbers % np.uint64(self._wallets)
        stocks = (users % np.uint64(COUPON_STOCKS)).astype(np.intp)
        batch = np.zeros(count, dtype=core.COUPON_GRANT_DTYPE)
        batch["stock_id_lo"], batch["stock_id_hi"] = self.stocks["id_lo"][stocks], self.stocks["id_hi"][stocks]
        batch["user_id_lo"], batch["request_id_lo"] = users, numbers + np.uint64(1)
        batch["merchant_id_lo"], batch["channel"] = self._merchants[stocks], core.CouponChannel.scan
        ids = coupon_ids(np.stack([batch["stock_id_lo"], batch["stock_id_hi"]], axis=1),
                         np.stack([users, np.zeros(count, dtype=np.uint64)], axis=1),
                         np.stack([batch["request_id_lo"], np.zeros(count, dtype=np.uint64)], axis=1))
        batch["id_lo"], batch["id_hi"] = ids[:, 0], ids[:, 1]
        return batch

    def answered(self, grants: np.ndarray, results: np.ndarray) -> None:
        """Keep the coupons granted ok (up to ``coupons_max``), to pay with."""
        ok = grants[results == 0][:self._coupons_max - self.granted]
        rows = self._granted[self.granted:self.granted + len(ok)]
        rows[:, 0], rows[:, 1], rows[:, 2] = ok["id_lo"], ok["id_hi"], ok["user_id_lo"]
        self.granted += len(ok)

    def pays(self, count: int) -> np.ndarray | None:
        """Payments redeeming the next ``count`` coupons granted (None: every one is redeemed)."""
        count = min(count, self.granted - self._paid)
        if count <= 0:
            return None
        first, self._paid = self._paid, self._paid + count
        coupons = self._granted[first:first + count]
        stocks = (coupons[:, 2] % np.uint64(COUPON_STOCKS)).astype(np.intp)
        batch = np.zeros(count, dtype=core.COUPON_PAY_DTYPE)
        batch["payer_id_lo"], batch["merchant_id_lo"] = coupons[:, 2], self._merchants[stocks]
        batch["coupon_id_lo"], batch["coupon_id_hi"] = coupons[:, 0], coupons[:, 1]
        batch["stock_id_lo"], batch["stock_id_hi"] = self.stocks["id_lo"][stocks], self.stocks["id_hi"][stocks]
        batch["request_id_lo"] = np.arange(first + 1, first + count + 1, dtype=np.uint64)
        batch["price"] = self._prices[np.arange(first, first + count) % ORDER_POOL]
        batch["ledger"] = core.Currency.CNY
        return batch


class CrossBorderStream:
    """Cross-border payments: CNY wallets (uniform) paying ``FX_MERCHANTS`` USD merchants (Zipf)
    pre-drawn amounts in US cents. ``quotes`` asks for the pool's amounts (``quote_cross_border``,
    a request of up to ``BATCH_EVENTS_MAX``), ``quoted`` keeps what each payer pays and the rate's
    version, and ``pays`` makes ``pay_cross_border`` batches of quoted amounts (request ids from
    a counter: each payment its own)."""

    def __init__(self, accounts: int, merchants_first: int, seed: int = 19):
        wallets, _, _ = bench_core._population(accounts)
        rng = np.random.default_rng(seed)
        self._payers = rng.integers(1, wallets + 1, ORDER_POOL, dtype=np.uint64)
        self._merchants = merchants_first + bench_core._zipf_indices(rng, ORDER_POOL, FX_MERCHANTS).astype(np.uint64)
        self.amounts = rng.integers(1, 10_001, ORDER_POOL, dtype=np.uint64)
        self._payer_amounts = np.zeros(ORDER_POOL, dtype=np.uint64)
        self._versions = np.zeros(ORDER_POOL, dtype=np.uint32)
        self.quoted = self.requested = self.paid = 0

    def quotes(self, count: int) -> tuple[int, np.ndarray] | None:
        """The next pool rows to quote (their first row, their amounts); None once all are asked."""
        count = min(count, ORDER_POOL - self.requested)
        if count <= 0:
            return None
        first, self.requested = self.requested, self.requested + count
        return first, self.amounts[first:first + count]

    def answered(self, first: int, quotes: np.ndarray) -> None:
        if (quotes["result"] != 0).any():
            raise RuntimeError(f"a quote was refused: {core.Result(int(quotes['result'][quotes['result'] != 0][0])).name}")
        self._payer_amounts[first:first + len(quotes)] = quotes["payer_amount"]
        self._versions[first:first + len(quotes)] = quotes["rate_version"]
        self.quoted += len(quotes)

    def pays(self, count: int) -> np.ndarray:
        numbers = np.arange(self.paid, self.paid + count, dtype=np.uint64)
        self.paid += count
        rows = (numbers % np.uint64(ORDER_POOL)).astype(np.intp)
        batch = np.zeros(count, dtype=core.FX_PAY_DTYPE)
        batch["payer_id_lo"], batch["merchant_id_lo"] = self._payers[rows], self._merchants[rows]
        batch["request_id_lo"] = numbers + np.uint64(1)
        batch["merchant_amount"], batch["payer_amount"] = self.amounts[rows], self._payer_amounts[rows]
        batch["rate_version"] = self._versions[rows]
        batch["payer_ledger"], batch["merchant_ledger"] = core.Currency.CNY, core.Currency.USD
        return batch


def _decimal(numbers: np.ndarray) -> np.ndarray:
    """Numbers as 20 decimal digits, then NULs: (n, 32) uint8 (an out_trade_no, an out_envelope_no)."""
    digits = np.zeros((len(numbers), 32), dtype=np.uint8)
    remaining = numbers.copy()
    for position in range(19, -1, -1):
        digits[:, position] = ord("0") + (remaining % 10).astype(np.uint8)
        remaining //= 10
    return digits


async def _phase(clients, depth: int, seconds: float, server_pid: int, one, warmup_s: float = WARMUP_S,
                 until=None) -> dict:
    """Run ``one(client)`` (returns events answered ok, events failed) on every connection,
    ``depth`` at a time, for ``seconds`` after ``warmup_s`` (or until ``until()`` is true); counts
    what ends in the window."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    window_start, stop = start + warmup_s, start + warmup_s + seconds
    counted = failed = 0
    last_answer = window_start
    cpu = {}

    async def worker(client):
        nonlocal counted, failed, last_answer
        while loop.time() < stop and not (until is not None and until()):
            ok, refused = await one(client)
            now = loop.time()
            if window_start <= now <= stop:
                counted += ok
                failed += refused
                if ok or refused:
                    last_answer = max(last_answer, now)

    async def cpu_sampler():
        await asyncio.sleep(warmup_s)
        cpu["server"], cpu["client"] = bench_e2e._cpu_seconds(server_pid), time.process_time()
        while loop.time() < stop and not (until is not None and until()):
            await asyncio.sleep(min(0.01, max(0.0, stop - loop.time())))
        cpu["server"] = bench_e2e._cpu_seconds(server_pid) - cpu["server"]
        cpu["client"] = time.process_time() - cpu["client"]

    await asyncio.gather(cpu_sampler(), *(worker(client) for client in clients for _ in range(depth)))
    # Per second of the window that had work (a phase whose work runs out early, the refunds',
    # is not charged for the idle rest).
    busy_s = min(seconds, last_answer - window_start) if counted else seconds
    return {"per_s": counted / busy_s if busy_s > 0 else 0.0, "counted": counted, "busy_s": busy_s,
            "failed": failed, "server_cpu_s": cpu["server"],
            "client_cpu_s": cpu["client"]}


def _product_accounts(accounts: int) -> dict:
    """The accounts the products need after the population's ``accounts``: their first ids."""
    escrow = accounts + 1
    budgets = escrow + 1
    pools = budgets + COUPON_STOCKS          # CNY's, then USD's
    fx_merchants = pools + 2
    return {"escrow": escrow, "budgets": budgets, "pools": pools, "fx_merchants": fx_merchants,
            "end": fx_merchants + FX_MERCHANTS}


def _product_account_records(first: dict) -> np.ndarray:
    cny, usd, debits_limited = core.Currency.CNY, core.Currency.USD, core.AccountFlags.debits_must_not_exceed_credits
    rows = ([{"id": first["escrow"], "ledger": cny, "code": core.AccountCode.escrow, "flags": debits_limited}]
            + [{"id": first["budgets"] + i, "ledger": cny, "code": core.AccountCode.coupon_budget, "flags": debits_limited}
               for i in range(COUPON_STOCKS)]
            + [{"id": first["pools"], "ledger": cny, "code": core.AccountCode.fx_pool},
               {"id": first["pools"] + 1, "ledger": usd, "code": core.AccountCode.fx_pool}]
            + [{"id": first["fx_merchants"] + i, "ledger": usd, "code": core.AccountCode.merchant}
               for i in range(FX_MERCHANTS)])
    return core.accounts_from_dicts(rows)


async def _drive(port: int, secret: bytes, *, accounts: int, connections: int, depth: int, seconds: float,
                 server_pid: int, settle_s: float, say, packets: int, coupons: int, share_packets: int = 0) -> dict:
    from engine.client import Client
    from core.order_keys import rates

    clients = [await Client.connect("127.0.0.1", port, client_id=1, secret=secret) for _ in range(connections)]
    batch_events = constants.BATCH_EVENTS_MAX
    try:
        say(f"creating {accounts:,} accounts and their top-ups over the wire, an escrow account, {COUPON_STOCKS} "
            f"coupon budget accounts, two FX pools and {FX_MERCHANTS:,} merchants in USD")
        await bench_e2e._setup(clients, accounts)
        first = _product_accounts(accounts)
        if (await clients[0].create_accounts(_product_account_records(first))).any():
            raise RuntimeError("the products' accounts were refused")
        escrow = first["escrow"]
        payments, orders = bench_e2e.PaymentStream(accounts, first_id=1 << 61), OrderStream(accounts)
        envelopes = EnvelopeStream(accounts, escrow, packets + share_packets)
        coupon_stream = CouponStream(accounts, first["budgets"], coupons)
        fx = CrossBorderStream(accounts, first["fx_merchants"])
        if (await clients[0].create_stocks(coupon_stream.stocks)).any():
            raise RuntimeError("the coupon stocks were refused")
        if (await clients[0].set_rates(rates([{
                "from_ledger": core.Currency.CNY, "to_ledger": core.Currency.USD, "rate_ppb": FX_RATE_PPB,
                "pool_from_id": first["pools"], "pool_to_id": first["pools"] + 1}]))).any():
            raise RuntimeError("the CNY -> USD rate was refused")

        say(f"red envelopes: {packets:,} packets of {PACKET_COUNT} sent, to be claimed")
        sends = await _made_before(clients, depth, server_pid, packets, lambda: envelopes.requested,
                                   envelopes.sends, lambda client: client.send_envelopes, envelopes.answered)
        say(f"coupons: {COUPON_STOCKS} stocks, {coupons:,} coupons granted by scan, to be paid with")
        grants = await _made_before(clients, depth, server_pid, coupons, lambda: coupon_stream.requested,
                                    coupon_stream.grants, lambda client: client.grant_coupons, coupon_stream.answered)

        async def quote(client):
            asked = fx.quotes(batch_events)
            if asked is None:
                return 0, 0
            replies = await client.quote_cross_border(core.Currency.CNY, core.Currency.USD, asked[1])
            fx.answered(asked[0], replies)
            return len(replies), 0

        say(f"cross-border: {ORDER_POOL:,} amounts in USD quoted in CNY, to be paid")
        quotes = await _phase(clients, depth, 3600.0, server_pid, quote, warmup_s=0.0,
                              until=lambda: fx.requested >= ORDER_POOL)

        async def coupon_payment(client):
            batch = coupon_stream.pays(batch_events)
            if batch is None:   # every coupon redeemed: more are needed (COUPON_PAYS_MAX_PER_S)
                await asyncio.sleep(0.01)
                return 0, 0
            results = await client.pay_with_coupon(batch)
            refused = int(np.count_nonzero(results))
            return len(results) - refused, refused

        async def cross_border_payment(client):
            results = await client.pay_cross_border(fx.pays(batch_events))
            refused = int(np.count_nonzero(results))
            return len(results) - refused, refused

        async def claim(client):
            batch = envelopes.claims(batch_events)
            if batch is None:   # every packet claimed: more packets are needed (CLAIMS_MAX_PER_S)
                await asyncio.sleep(0.01)
                return 0, 0
            results = (await client.claim_envelopes(batch))["result"]
            refused = int(np.count_nonzero(results))
            return len(results) - refused, refused

        async def transfer(client):
            results = await client.create_transfers(payments.batch(batch_events))
            refused = int(np.count_nonzero(results))
            return len(results) - refused, refused

        paid = collections.deque()  # batches of paid orders, for the refunds' phase
        codes = CodeStream(accounts, connections * depth)

        async def code_payment(client):
            replies = await client.issue_codes(codes.issues(batch_events))
            issued = replies["result"] == 0
            results = await client.charge_codes(orders.charges(replies["code"][issued]))
            refused = int(np.count_nonzero(results))
            return len(results) - refused, refused + int(np.count_nonzero(~issued))

        async def qr_payment(client):
            creates, rows = orders.creates(batch_events)
            replies = await client.create_orders(creates)
            created = replies["result"] == 0
            results = await client.pay_orders(orders.pays(creates[created], rows[created], replies[created]))
            refused = int(np.count_nonzero(results))
            paid.append(creates[created][results == 0])
            return len(results) - refused, refused + int(np.count_nonzero(~created))

        async def refund(client):
            if not paid:  # every paid order refunded: the phase is over for this worker
                await asyncio.sleep(0.01)
                return 0, 0
            results = await client.refund_orders(full_refunds(paid.popleft()))
            refused = int(np.count_nonzero(results))
            return len(results) - refused, refused

        # Transfers and QR payments in alternating slices, so that what the server does in the
        # background (epoch flushes, checkpoints) and the machine's noise fall on both alike:
        # their ratio is then a measure, not the difference between two separate runs.
        slice_s = seconds / SLICES
        say(f"transfers, QR payments (create + pay), payment codes (issue + charge), red envelope claims, coupon "
            f"payments and cross-border payments: {connections} connections x {depth} requests of {batch_events:,}, "
            f"{SLICES} alternating slices of {slice_s:g} s each")
        phases = {"transfers": transfer, "qr": qr_payment, "codes": code_payment, "claims": claim,
                  "coupons": coupon_payment, "cross_border": cross_border_payment}
        for one in phases.values():   # a warm-up of each (WARMUP_S each)
            await _phase(clients, depth, 0.0, server_pid, one)
        slices = {name: [] for name in phases}
        for _ in range(SLICES):
            for name, one in phases.items():
                slices[name].append(await _phase(clients, depth, slice_s, server_pid, one, warmup_s=0.0))
        transfers, qr, code_payments, claims, coupon_pays, fx_pays = (_merged(slices[name]) for name in phases)
        say(f"a hot packet: {HOT_COUNT:,} shares, {HOT_CLAIMERS:,} claimers at once")
        hot = await _hot_packet(clients, envelopes)
        shares = None
        if share_packets:
            say(f"the shares' distribution: {share_packets:,} packets of {PACKET_COUNT} claimed (untimed)")
            shares = await _shares(clients, depth, envelopes, share_packets)
        await asyncio.sleep(settle_s)
        say(f"refunds (each paid order refunded in full): the same, {seconds:g} s")
        refunds = await _phase(clients, depth, seconds, server_pid, refund)
        say(f"notifications: a subscriber from the log's start while QR payments go on, {seconds:g} s")
        notifications = await _notifications_phase(port, secret, clients, depth, seconds, server_pid, qr_payment)
    finally:
        for client in clients:
            client.close()
    return {"transfers": transfers, "qr": qr, "codes": code_payments, "refunds": refunds,
            "notifications": notifications, "sends": sends, "claims": claims, "hot": hot, "shares": shares,
            "grants": grants, "coupons": coupon_pays, "quotes": quotes, "cross_border": fx_pays}


async def _made_before(clients, depth: int, server_pid: int, total: int, requested, make, operation,
                       answered) -> dict:
    """``total`` events made before the slices, closed loop: ``make(count)`` the next batch
    (``requested()``: how many were made so far), ``operation(client)`` sends it, ``answered(batch,
    results)`` keeps those answered ok; the phase's figures (events ok per second)."""
    async def one(client):
        left = total - requested()
        if left <= 0:
            return 0, 0
        batch = make(min(constants.BATCH_EVENTS_MAX, left))
        results = await operation(client)(batch)
        answered(batch, results)
        refused = int(np.count_nonzero(results))
        return len(results) - refused, refused

    return await _phase(clients, depth, 3600.0, server_pid, one, warmup_s=0.0, until=lambda: requested() >= total)


async def _hot_packet(clients, envelopes: EnvelopeStream) -> dict:
    """One packet of HOT_COUNT shares claimed by HOT_CLAIMERS distinct wallets at once (a request
    on each connection, together): how many got a share, how many came late, and whether the
    packet read back is emptied with its shares summing to its total."""
    packet = envelopes.sends(1, shares=HOT_COUNT, total=HOT_TOTAL)
    if (await clients[0].send_envelopes(packet)).any():
        raise RuntimeError("the hot packet's send was refused")
    replies = np.concatenate(await asyncio.gather(*(
        client.claim_envelopes(part) for client, part in zip(clients, envelopes.hot_claims(packet[0], len(clients))))))
    ok = replies["result"] == core.Result.ok
    (found,) = await clients[0].lookup_envelopes(core.ids_array([int(packet["id_lo"][0]) | int(packet["id_hi"][0]) << 64]))
    exact = (int(found["state"]) == core.EnvelopeState.EMPTY and int(found["claimed"]) == HOT_COUNT
             and int(replies["amount"][ok].sum()) == HOT_TOTAL and sorted(replies["position"][ok]) == list(range(HOT_COUNT)))
    return {"ok": int(ok.sum()), "late": int((replies["result"] == core.Result.envelope_empty).sum()),
            "exact": bool(exact)}


async def _shares(clients, depth: int, envelopes: EnvelopeStream, packets: int) -> dict:
    """``packets`` more packets sent and claimed whole (untimed): the shares answered, by position
    (the slices' packets left unclaimed are left so)."""
    batch_events = constants.BATCH_EVENTS_MAX
    envelopes.skip()
    last = envelopes.requested + packets
    positions, amounts = [], []

    async def lane(client):
        while envelopes.requested < last:
            batch = envelopes.sends(min(batch_events, last - envelopes.requested))
            envelopes.answered(batch, await client.send_envelopes(batch))
        while (batch := envelopes.claims(batch_events)) is not None:
            replies = await client.claim_envelopes(batch)
            ok = replies["result"] == core.Result.ok
            positions.append(replies["position"][ok])
            amounts.append(replies["amount"][ok])

    await asyncio.gather(*(lane(client) for client in clients for _ in range(depth)))
    return share_distribution(np.concatenate(positions), np.concatenate(amounts), PACKET_COUNT, PACKET_TOTAL)


async def _notifications_phase(port, secret, clients, depth, seconds, server_pid, qr_payment) -> dict:
    """A subscriber (its own connection) reads the earlier phases' notifications from the log's
    start until it has caught up (a page less than full), then QR payments run: the
    notifications it got per second of that phase, and whether it had them all a second after."""
    from engine.client import Client

    subscriber = await Client.connect("127.0.0.1", port, client_id=1, secret=secret)
    loop = asyncio.get_running_loop()
    received, last_cursor = [0], [(0, 0)]

    async def read():
        async for notes in subscriber.notifications():
            received[0] += notes.shape[0]
            last_cursor[0] = (int(notes["sequence"][-1]), int(notes["index"][-1]))

    reader = asyncio.ensure_future(read())
    # The history (up to millions of notifications): caught up once nothing came for half a second
    # (no load runs meanwhile).
    history = -1
    for _ in range(240):
        history, _ = received[0], await asyncio.sleep(0.5)
        if received[0] == history:
            break
    started = loop.time()
    load = await _phase(clients, depth, seconds, server_pid, qr_payment, warmup_s=0.0)
    during = received[0] - history
    elapsed_s = loop.time() - started
    await asyncio.sleep(1.0)
    reader.cancel()
    subscriber.close()
    # Caught up: nothing committed is left after its cursor (an admin's one-page read says so).
    checker = clients[0]
    more = checker.notifications(after=last_cursor[0])
    try:
        left = (await asyncio.wait_for(anext(more), 2.0)).shape[0]
    except asyncio.TimeoutError:
        left = 0
    await more.aclose()
    return {"per_s": during / elapsed_s, "received": received[0] - history, "history": history,
            "left_after_1s": left, "qr_per_s_meanwhile": load["per_s"]}


def _ratio(phase: dict, transfers: dict) -> float | None:
    return round(phase["per_s"] / transfers["per_s"], 3) if transfers["per_s"] else None


def _merged(phases: list[dict]) -> dict:
    """One phase's figures from its slices: events per second of all their windows together."""
    counted, busy_s = sum(p["counted"] for p in phases), sum(p["busy_s"] for p in phases)
    return {"per_s": counted / busy_s if busy_s else 0.0, "counted": counted, "busy_s": busy_s,
            "failed": sum(p["failed"] for p in phases), "server_cpu_s": sum(p["server_cpu_s"] for p in phases),
            "client_cpu_s": sum(p["client_cpu_s"] for p in phases)}


#: The quantiles of a share given per claim position.
SHARE_QUANTILES = (0.0, 1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0, 100.0)


def share_distribution(positions: np.ndarray, amounts: np.ndarray, count: int, total: int) -> dict:
    """The shares of packets of ``count`` shares and ``total`` minor units by claim position (0
    first): per position how many, the mean, the standard deviation, the quantiles, and how far
    the mean is from ``total / count`` in standard errors (the double-mean property: the same
    expected share at every position, docs/products.md "The share")."""
    rows = []
    for position in range(count):
        shares = amounts[positions == position].astype(np.float64)
        n = len(shares)
        mean = float(shares.mean()) if n else None
        std = float(shares.std(ddof=1)) if n > 1 else None
        quantiles = np.percentile(shares, SHARE_QUANTILES) if n else [None] * len(SHARE_QUANTILES)
        rows.append({"position": position, "count": n, "mean": mean, "std": std,
                     **{f"p{q:g}": (float(v) if v is not None else None) for q, v in zip(SHARE_QUANTILES, quantiles)},
                     "mean_minus_expected_in_se": (round((mean - total / count) / (std / n ** 0.5), 2)
                                                   if std else None)})
    packets = min(row["count"] for row in rows) if rows else 0
    return {"count": count, "total": total, "expected_mean": total / count, "packets": packets, "positions": rows}


def write_share_report(distribution: dict, directory: str) -> dict:
    """``envelope_shares.json``, ``.csv`` and ``.svg`` (a line chart: mean, expected mean and
    quantiles by position, drawn by ``loadgen.report.standalone_chart``) in ``directory``;
    their paths."""
    from loadgen.report import standalone_chart

    os.makedirs(directory, exist_ok=True)
    paths = {kind: os.path.join(directory, f"envelope_shares.{kind}") for kind in ("json", "csv", "svg")}
    with open(paths["json"], "w") as file:
        json.dump(distribution, file, indent=1)
    rows = distribution["positions"]
    columns = list(rows[0]) if rows else []
    with open(paths["csv"], "w") as file:
        file.write(",".join(columns) + "\n")
        for row in rows:
            file.write(",".join("" if row[c] is None else f"{row[c]:g}" if isinstance(row[c], float) else str(row[c])
                                for c in columns) + "\n")

    def line(name, key):
        return name, [(row["position"] + 1, row[key]) for row in rows if row[key] is not None]

    expected = distribution["expected_mean"]
    series = [line("mean", "mean"), ("total / count", [(1, expected), (distribution["count"], expected)], True),
              line("median", "p50"), line("p25", "p25"), line("p75", "p75"), line("p5", "p5"), line("p95", "p95"),
              line("p99", "p99")]
    title = (f"Red envelope shares by claim position: {distribution['packets']:,} packets of "
             f"{distribution['count']} shares, {distribution['total']:,} minor units each")
    with open(paths["svg"], "w") as file:
        file.write(standalone_chart(title, series, "claim position (1 = first)", "share (minor units)"))
    return paths


def full_refunds(creates: np.ndarray) -> np.ndarray:
    """A ``refund_orders`` batch refunding each of these paid orders in full (out_refund_no "R1")."""
    count = creates.shape[0]
    batch = np.zeros(count, dtype=core.REFUND_DTYPE)
    batch["order_id_lo"], batch["order_id_hi"] = creates["id_lo"], creates["id_hi"]
    batch["merchant_id_lo"], batch["merchant_id_hi"] = creates["merchant_id_lo"], creates["merchant_id_hi"]
    batch["amount"] = creates["amount"]
    batch["ledger"] = creates["ledger"]
    numbers = np.zeros((count, 32), dtype=np.uint8)
    numbers[:, :2] = np.frombuffer(b"R1", dtype=np.uint8)
    batch["out_refund_no"] = numbers
    ids = refund_ids(np.stack([creates["id_lo"], creates["id_hi"]], axis=1), numbers)
    batch["id_lo"], batch["id_hi"] = ids[:, 0], ids[:, 1]
    return batch


#: Orders the server holds: what the QR phase creates at up to 400,000/s for its seconds (a
#: faster run reports orders_limit_reached as failed events: raise this then). Orders are in
#: memory until their cold tier is built, and the server prefaults them.
ORDERS_MAX_PER_S = 400_000
#: Packets sent for the claims' slices: claims for this rate over their seconds and warm-up (a
#: faster run runs out of packets and claims nothing for the rest of its slices: raise this then).
#: Packets and claims are held in memory (envelopes_max, claims_max: about 180 bytes each).
CLAIMS_MAX_PER_S = 600_000
#: Coupons granted for the coupon payments' slices: payments at this rate over their seconds and
#: warm-up (a faster run runs out of coupons and pays nothing for the rest of its slices: raise
#: this then). Coupons, holdings and cross-border payments are held in memory (coupons_max,
#: holdings_max, fx_payments_max). Not more than needed: the grants are events the server logs
#: and checkpoints before and during the slices (its background work falls on every slice), and
#: at 3,600,000 coupons (600,000/s) a coupon payment ran at 40-60 % of its rate at 600,000
#: coupons on a loaded machine (a larger table's probes miss the cache).
COUPON_PAYS_MAX_PER_S = 300_000
#: Cross-border payments the server holds: this rate over their seconds and warm-up.
FX_PAYS_MAX_PER_S = 300_000


def run(seconds: float = 5.0, connections: int = 4, depth: int = 2, accounts: int = 1_000_000,
        data_dir: str | None = None, prefault: bool = True, progress=None, settle_merchants: int = 100_000,
        report_dir: str | None = None, share_packets: int = SHARE_PACKETS,
        claims_max_per_s: int = CLAIMS_MAX_PER_S, coupon_pays_max_per_s: int = COUPON_PAYS_MAX_PER_S,
        fx_pays_max_per_s: int = FX_PAYS_MAX_PER_S) -> dict:
    """The whole benchmark (see the module's docstring); ``prefault=False`` and a lower
    ``claims_max_per_s`` (fewer packets sent for the claims' slices), ``coupon_pays_max_per_s``
    (fewer coupons granted) and ``fx_pays_max_per_s`` only for smoke tests;
    ``report_dir``: write the shares' distribution over ``share_packets`` packets there too."""
    say = progress or (lambda message: None)
    wallets, _, _ = bench_core._population(accounts)
    if wallets < HOT_CLAIMERS:
        raise ValueError(f"the hot packet needs {HOT_CLAIMERS:,} wallets: at least {HOT_CLAIMERS * 102 // 100 + 1:,} "
                         "accounts")
    share_packets = share_packets if report_dir else 0
    packets = math.ceil(claims_max_per_s * (seconds + WARMUP_S) / PACKET_COUNT)
    # Every packet resident (open ones pinned: room for a batch above them) and every claim.
    envelopes_max = packets + share_packets + 1 + 2 * constants.BATCH_EVENTS_MAX
    claims_max = (packets + share_packets) * PACKET_COUNT + HOT_CLAIMERS + constants.BATCH_EVENTS_MAX
    # QR and code payments' orders, and the codes: all in memory (the cold tier is not measured here).
    orders_max = min(constants.ORDERS_MAX_LIMIT, int(ORDERS_MAX_PER_S * (3 * seconds + 4 * WARMUP_S)))
    codes_max = min(constants.CODES_MAX_LIMIT, int(ORDERS_MAX_PER_S * (seconds + 2 * WARMUP_S)))
    # Coupons: one per payment at up to coupon_pays_max_per_s, each wallet's of one stock (a
    # holding per wallet); cross-border payments at up to fx_pays_max_per_s; all in memory.
    coupons = math.ceil(coupon_pays_max_per_s * (seconds + WARMUP_S))
    coupons_max = min(constants.COUPONS_MAX_LIMIT, coupons + constants.BATCH_EVENTS_MAX)
    holdings_max = min(constants.HOLDINGS_MAX_LIMIT, min(coupons, wallets) + constants.BATCH_EVENTS_MAX)
    fx_payments_max = min(constants.FX_PAYMENTS_MAX_LIMIT,
                          math.ceil(fx_pays_max_per_s * (seconds + WARMUP_S)) + constants.BATCH_EVENTS_MAX)
    base_dir = data_dir or tempfile.mkdtemp(prefix="tally-products-")
    os.makedirs(base_dir, exist_ok=True)
    shutil.rmtree(os.path.join(base_dir, "server"), ignore_errors=True)
    try:
        say(f"starting the server ({'prefaulting' if prefault else 'no prefault'})")
        driven, server_exit = local_server.drive(
            base_dir, lambda port, secret, pid: _drive(port, secret, accounts=accounts, connections=connections,
                                                       depth=depth, seconds=seconds, server_pid=pid,
                                                       settle_s=bench_e2e.SETTLE_S if prefault else 0.0, say=say,
                                                       packets=packets, coupons=coupons,
                                                       share_packets=share_packets),
            accounts_max=_product_accounts(accounts)["end"], prefault=prefault, orders_max=orders_max,
            refunds_max=orders_max, codes_max=codes_max, envelopes_max=envelopes_max, claims_max=claims_max,
            coupons_max=coupons_max, holdings_max=holdings_max, fx_payments_max=fx_payments_max)
    finally:
        if data_dir is None:
            shutil.rmtree(base_dir, ignore_errors=True)
    transfers, qr, code_payments, refunds = driven["transfers"], driven["qr"], driven["codes"], driven["refunds"]
    sends, claims, hot = driven["sends"], driven["claims"], driven["hot"]
    grants, coupon_pays, quotes, fx_pays = driven["grants"], driven["coupons"], driven["quotes"], driven["cross_border"]
    say(f"settling {settle_merchants:,} merchants")
    settled = bench_settle.run(settle_merchants)
    result = {
        "transfers_per_s": round(transfers["per_s"]),
        "qr_pay_per_s": round(qr["per_s"]),
        "ratio_to_transfers": _ratio(qr, transfers),
        "payment_code_per_s": round(code_payments["per_s"]),
        "code_ratio_to_transfers": _ratio(code_payments, transfers),
        "red_envelope_claim_per_s": round(claims["per_s"]),
        "claim_ratio_to_transfers": _ratio(claims, transfers),
        "red_envelope_send_per_s": round(sends["per_s"]),
        "hot_packet_claims_ok": hot["ok"],
        "hot_packet_late": hot["late"],
        "hot_packet_exact": hot["exact"],
        "pay_with_coupon_per_s": round(coupon_pays["per_s"]),
        "coupon_ratio_to_transfers": _ratio(coupon_pays, transfers),
        "coupon_grant_per_s": round(grants["per_s"]),
        "cross_border_pay_per_s": round(fx_pays["per_s"]),
        "cross_border_ratio_to_transfers": _ratio(fx_pays, transfers),
        "cross_border_quote_per_s": round(quotes["per_s"]),
        "refund_per_s": round(refunds["per_s"]),
        "notification_per_s": round(driven["notifications"]["per_s"]),
        "notifications_left_after_1s": driven["notifications"]["left_after_1s"],
        "qr_pay_per_s_with_subscriber": round(driven["notifications"]["qr_per_s_meanwhile"]),
        **settled,
        "failed_events": (transfers["failed"] + qr["failed"] + code_payments["failed"] + refunds["failed"]
                          + sends["failed"] + claims["failed"] + grants["failed"] + coupon_pays["failed"]
                          + fx_pays["failed"]),
        "cpu_s": {name: {"server": round(phase["server_cpu_s"], 2), "client": round(phase["client_cpu_s"], 2)}
                  for name, phase in (("transfers", transfers), ("qr", qr), ("codes", code_payments),
                                      ("claims", claims), ("coupons", coupon_pays), ("cross_border", fx_pays),
                                      ("refunds", refunds))},
        "server_exit_code": server_exit,
        "config": {"seconds": seconds, "connections": connections, "depth": depth, "accounts": accounts,
                   "request_events": constants.BATCH_EVENTS_MAX, "red_envelope_packets": packets,
                   "packet_count": PACKET_COUNT, "packet_total": PACKET_TOTAL, "coupons": coupons,
                   "coupon_stocks": COUPON_STOCKS, "coupon_face": COUPON_FACE, "fx_merchants": FX_MERCHANTS,
                   "fx_rate_ppb": FX_RATE_PPB},
        "machine": bench_e2e.machine(),
    }
    if report_dir:
        result["report"] = write_share_report(driven["shares"], report_dir)
        result["report"]["result"] = os.path.join(report_dir, "products.json")
        with open(result["report"]["result"], "w") as file:
            json.dump(result, file, indent=1)
    return result


def summary(result: dict) -> str:
    c = result["config"]
    return "\n".join([
        f"tally bench products: {c['connections']} connections x {c['depth']} requests of {c['request_events']:,} "
        f"events, {c['seconds']:g} s per phase, {c['accounts']:,} accounts",
        f"  transfers (create_transfers)      {result['transfers_per_s']:>12,}/s",
        f"  QR payments (create + pay orders) {result['qr_pay_per_s']:>12,}/s   ratio {result['ratio_to_transfers']}",
        f"  payment codes (issue + charge)    {result['payment_code_per_s']:>12,}/s   "
        f"ratio {result['code_ratio_to_transfers']}",
        f"  red envelope claims               {result['red_envelope_claim_per_s']:>12,}/s   "
        f"ratio {result['claim_ratio_to_transfers']}   (sends {result['red_envelope_send_per_s']:,}/s)",
        f"  a hot packet of {HOT_COUNT:,}, {HOT_CLAIMERS:,} claimers  {result['hot_packet_claims_ok']:>6,} got a share, "
        f"{result['hot_packet_late']:,} late, exact: {result['hot_packet_exact']}",
        f"  coupon payments (pay_with_coupon) {result['pay_with_coupon_per_s']:>12,}/s   "
        f"ratio {result['coupon_ratio_to_transfers']}   (grants {result['coupon_grant_per_s']:,}/s)",
        f"  cross-border (pay_cross_border)   {result['cross_border_pay_per_s']:>12,}/s   "
        f"ratio {result['cross_border_ratio_to_transfers']}   (quotes {result['cross_border_quote_per_s']:,}/s)",
        f"  refunds (refund_orders, in full)  {result['refund_per_s']:>12,}/s",
        f"  notifications to a subscriber     {result['notification_per_s']:>12,}/s   (QR payments meanwhile "
        f"{result['qr_pay_per_s_with_subscriber']:,}/s; left 1 s after: {result['notifications_left_after_1s']})",
        f"  settlement (tally settle)         {result['settle_merchants_per_s']:>12,} merchants/s   "
        f"{result['settle_merchants']:,} in {result['settle_s']} s, reconciled: {result['settle_reconciled']}",
        f"  CPU s (server/client): transfers {result['cpu_s']['transfers']['server']}/{result['cpu_s']['transfers']['client']}, "
        f"QR {result['cpu_s']['qr']['server']}/{result['cpu_s']['qr']['client']}, "
        f"codes {result['cpu_s']['codes']['server']}/{result['cpu_s']['codes']['client']}, "
        f"claims {result['cpu_s']['claims']['server']}/{result['cpu_s']['claims']['client']}, "
        f"coupons {result['cpu_s']['coupons']['server']}/{result['cpu_s']['coupons']['client']}, "
        f"cross-border {result['cpu_s']['cross_border']['server']}/{result['cpu_s']['cross_border']['client']}, "
        f"refunds {result['cpu_s']['refunds']['server']}/{result['cpu_s']['refunds']['client']}; "
        f"failed events {result['failed_events']}",
    ] + ([f"  the shares by claim position: {result['report']['svg']} (and .json, .csv)"] if "report" in result else []))
