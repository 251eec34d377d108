"""Requests from a workload: the population to set up, then payments, P2P, holds and refunds.

A *request* is one event the server authorizes: one transfer (or, while setting up, one account
or one top-up). The load generator sends requests the way a fleet of services using
``engine.client`` would, many to a frame, but each is generated, scheduled, answered, timed
and recorded on its own. Generation is vectorized (NumPy): a call makes a whole frame's
requests with no Python object per request, so the generator is never what a run measures.

The population (``Population``): ``users`` wallets (which may not go below zero), ``merchants``
chosen with Zipf-skewed popularity (rank r has weight 1 / r**s: a few very hot merchants and a
long tail), and one funding card (a linked bank card) per 1,000 users that tops every wallet up
with ``wallet_balance_minor`` before the load starts. All ids of a run have ``id_hi = run_id``,
so runs never collide with each other or with other data on the same server.

The requests (``Mix``, ``Payments``):

* ``payment``: a uniform wallet pays a Zipf-chosen merchant a log-normal amount; wallets that
  run dry get ``exceeds_credits``, as they would.
* ``p2p``: a wallet pays another wallet.
* ``hold``: half the weight makes holds (a pending transfer to a merchant), half resolves the
  oldest hold made at least ``hold_s`` earlier: captured (``post_pending``, fully or partly)
  with probability ``capture_ratio``, else voided. With no hold old enough, a payment is made
  (so holds never outnumber resolutions and none waits for ever).
* ``refund``: a merchant returns a payment made at least ``refund_after_s`` earlier, to its
  payer and of its amount; each payment is refunded at most once. With none old enough, a
  payment is made.

Follow-ups are only for requests the server did not refuse: the load generator reports each
answer (``answered``), and a payment or hold refused by then (a dry wallet) is never refunded
or resolved. One whose answer has not arrived yet is assumed accepted.

Given the same workload, seed and run id, and the same answers at the same points, the same
calls give the same requests.
"""

from __future__ import annotations

import enum

import numpy as np

import core
from loadgen.workload import Workload

CARD_PER_USERS = 1_000
#: Transfers of the load are numbered from here (below: the top-ups of the setup).
LOAD_ID_BASE = 1 << 40
#: How many holds or refundable payments wait at most; past that the oldest are dropped.
QUEUE_CAPACITY = 1 << 20
NS_PER_S = 1_000_000_000


class Kind(enum.IntEnum):
    """What a request is (recorded in traces and counted in reports)."""
    account = 0
    top_up = 1
    payment = 2
    p2p = 3
    hold = 4
    capture = 5
    void = 6
    refund = 7


#: Kinds of the setup phase (sent before the clock starts, in order, and awaited).
SETUP_KINDS = (Kind.account, Kind.top_up)

# The slots the mix is drawn over; ``resolve`` becomes capture or void (or a hold).
_PAYMENT, _P2P, _HOLD, _RESOLVE, _REFUND = range(5)


class Population:
    """Account ids of a run: users 1..U, merchants U+1..U+M, cards after (``id_hi = run_id``)."""

    def __init__(self, workload: Workload, run_id: int):
        population = workload.population
        self.run_id = run_id
        self.users = population.users
        self.merchants = population.merchants
        self.cards = max(1, population.users // CARD_PER_USERS)
        self.first_merchant = self.users + 1
        self.first_card = self.users + self.merchants + 1
        self.wallet_balance_minor = population.wallet_balance_minor
        weights = 1.0 / np.arange(1, self.merchants + 1, dtype=np.float64) ** population.merchant_zipf_s
        self.merchant_cdf = np.cumsum(weights) / weights.sum()

    @property
    def accounts(self) -> int:
        return self.users + self.merchants + self.cards

    def account_batches(self, batch_events: int = core.BATCH_EVENTS_MAX):
        """The accounts, in batches of ``core.ACCOUNT_DTYPE``."""
        for first in range(1, self.accounts + 1, batch_events):
            ids = np.arange(first, min(first + batch_events, self.accounts + 1), dtype=np.uint64)
            batch = np.zeros(len(ids), dtype=core.ACCOUNT_DTYPE)
            batch["id_lo"], batch["id_hi"] = ids, self.run_id
            batch["ledger"] = core.Currency.CNY
            is_user = ids < self.first_merchant
            batch["code"] = np.where(is_user, core.AccountCode.user_wallet,
                                     np.where(ids < self.first_card, core.AccountCode.merchant,
                                              core.AccountCode.funding_card))
            batch["flags"] = np.where(is_user, core.AccountFlags.debits_must_not_exceed_credits, 0)
            yield batch

    def top_up_batches(self, batch_events: int = core.BATCH_EVENTS_MAX):
        """One top-up per wallet from its funding card, in batches of ``core.TRANSFER_DTYPE``."""
        if self.wallet_balance_minor == 0:
            return
        for first in range(1, self.users + 1, batch_events):
            users = np.arange(first, min(first + batch_events, self.users + 1), dtype=np.uint64)
            batch = _transfers(len(users), self.run_id)
            batch["id_lo"] = users
            batch["debit_account_id_lo"] = self.first_card + (users - 1) % self.cards
            batch["credit_account_id_lo"] = users
            batch["amount"] = self.wallet_balance_minor
            batch["code"] = core.TransferCode.top_up
            yield batch


def _transfers(count: int, run_id: int) -> np.ndarray:
    batch = np.zeros(count, dtype=core.TRANSFER_DTYPE)
    batch["id_hi"] = batch["debit_account_id_hi"] = batch["credit_account_id_hi"] = run_id
    batch["ledger"] = core.Currency.CNY
    return batch


class _Queue:
    """A bounded FIFO of earlier transfers (id, payer, payee, amount) and when each may follow up."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.columns = np.zeros((4, capacity), dtype=np.uint64)
        self.ready_ns = np.zeros(capacity, dtype=np.int64)
        self.head = self.tail = 0   # monotonic; positions are taken modulo the capacity

    def push(self, columns: np.ndarray, ready_ns: int) -> None:
        count = columns.shape[1]
        if count > self.capacity:
            columns = columns[:, -self.capacity:]
            count = self.capacity
        positions = (self.tail + np.arange(count)) % self.capacity
        self.columns[:, positions] = columns
        self.ready_ns[positions] = ready_ns
        self.tail += count
        self.head = max(self.head, self.tail - self.capacity)  # full: the oldest are dropped

    def pop_ready(self, wanted: int, now_ns: int, refused: "_Refusals") -> np.ndarray:
        """Up to ``wanted`` of the oldest entries ready by ``now_ns`` (ready times only grow),
        skipping those the server refused."""
        taken = []
        while wanted > 0 and self.tail > self.head:
            available = min(wanted, self.tail - self.head)
            positions = (self.head + np.arange(available)) % self.capacity
            ready = int(np.searchsorted(self.ready_ns[positions] > now_ns, True))  # a prefix is ready
            if not ready:
                break
            self.head += ready
            columns = self.columns[:, positions[:ready]]
            columns = columns[:, ~refused.contains(columns[0] - np.uint64(LOAD_ID_BASE))]
            taken.append(columns)
            wanted -= columns.shape[1]
        return np.concatenate(taken, axis=1) if taken else self.columns[:, :0]


class _Refusals:
    """Which recent requests the server refused: a ring indexed by request number."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.index = np.full(capacity, -1, dtype=np.int64)   # the request number a slot holds

    def add(self, indexes: np.ndarray) -> None:
        self.index[indexes.astype(np.int64) % self.capacity] = indexes.astype(np.int64)

    def contains(self, indexes: np.ndarray) -> np.ndarray:
        indexes = indexes.astype(np.int64)
        return self.index[indexes % self.capacity] == indexes


class RequestGenerator:
    """Transfers for a workload's mix; see the module's docstring.

    Request numbers are ``first_index, first_index + stride, ...`` (the load generator's
    workers interleave them); request k's transfer id is ``LOAD_ID_BASE + k``.
    """

    def __init__(self, workload: Workload, population: Population, seed: int, *, first_index: int = 0,
                 stride: int = 1):
        self.population = population
        self.payments = workload.payments
        mix = workload.mix.probabilities()
        slot_weights = [mix["payment"], mix["p2p"], mix["hold"] / 2, mix["hold"] / 2, mix["refund"]]
        self._slot_cdf = np.cumsum(slot_weights)
        self._slot_cdf /= self._slot_cdf[-1]
        self._refund_share = min(1.0, mix["refund"] / mix["payment"]) if mix["payment"] else 0.0
        self._rng = np.random.default_rng(seed)
        self._next_index = first_index
        self._stride = stride
        self._holds = _Queue(QUEUE_CAPACITY)
        self._refundable = _Queue(QUEUE_CAPACITY)
        self._refused = _Refusals(QUEUE_CAPACITY)

    def answered(self, indexes: np.ndarray, kinds: np.ndarray, results: np.ndarray) -> None:
        """The server's answers to requests ``indexes`` (as ``next`` numbered them)."""
        refused = (results != core.Result.ok) & ((kinds == Kind.payment) | (kinds == Kind.hold))
        if refused.any():
            self._refused.add(indexes[refused])

    def next(self, count: int, now_ns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The next ``count`` requests, made at ``now_ns`` (ns from the run's start).

        Returns (request indexes uint64, transfers ``core.TRANSFER_DTYPE``, kinds uint8).
        """
        rng, population, payments = self._rng, self.population, self.payments
        indexes = self._next_index + self._stride * np.arange(count, dtype=np.uint64)
        self._next_index += self._stride * count
        slots = np.searchsorted(self._slot_cdf, rng.random(count), side="right").clip(0, _REFUND)
        batch = _transfers(count, population.run_id)
        batch["id_lo"] = LOAD_ID_BASE + indexes
        kinds = np.full(count, Kind.payment, dtype=np.uint8)

        # Follow-ups first: each takes an old enough earlier request, or falls back to a new one.
        resolve = np.flatnonzero(slots == _RESOLVE)
        holds = self._holds.pop_ready(len(resolve), now_ns, self._refused)
        resolved, slots[resolve[holds.shape[1]:]] = resolve[:holds.shape[1]], _PAYMENT
        refund = np.flatnonzero(slots == _REFUND)
        refunded = self._refundable.pop_ready(len(refund), now_ns, self._refused)
        refunds, slots[refund[refunded.shape[1]:]] = refund[:refunded.shape[1]], _PAYMENT

        new = np.flatnonzero((slots == _PAYMENT) | (slots == _P2P) | (slots == _HOLD))
        payers = rng.integers(1, population.users + 1, len(new), dtype=np.uint64)
        merchants = population.first_merchant + np.minimum(
            np.searchsorted(population.merchant_cdf, rng.random(len(new))), population.merchants - 1)
        # A P2P payee is any other wallet: draw from users - 1 and skip the payer.
        peers = rng.integers(1, population.users, len(new), dtype=np.uint64)
        peers += peers >= payers
        is_p2p = slots[new] == _P2P
        amounts = np.maximum(1, rng.lognormal(np.log(payments.amount_median_minor), payments.amount_sigma,
                                              len(new))).astype(np.uint64)
        batch["debit_account_id_lo"][new] = payers
        batch["credit_account_id_lo"][new] = np.where(is_p2p, peers, merchants.astype(np.uint64))
        batch["amount"][new] = amounts
        batch["code"][new] = np.where(is_p2p, core.TransferCode.p2p, core.TransferCode.payment)
        kinds[new[is_p2p]] = Kind.p2p

        made_holds = new[slots[new] == _HOLD]
        batch["flags"][made_holds] = core.TransferFlags.pending
        kinds[made_holds] = Kind.hold
        self._holds.push(self._columns(batch, made_holds), now_ns + int(payments.hold_s * NS_PER_S))

        if len(resolved):
            captured = rng.random(len(resolved)) < payments.capture_ratio
            partial = captured & (rng.random(len(resolved)) < payments.partial_capture_ratio)
            batch["pending_id_lo"][resolved], batch["pending_id_hi"][resolved] = holds[0], population.run_id
            batch["code"][resolved] = core.TransferCode.payment  # as the hold's: the ledger checks it
            batch["flags"][resolved] = np.where(captured, core.TransferFlags.post_pending,
                                                core.TransferFlags.void_pending)
            # amount 0 resolves the whole hold; a partial capture takes 10..99% of it.
            shares = rng.integers(10, 100, len(resolved), dtype=np.uint64)
            batch["amount"][resolved] = np.where(partial, np.maximum(1, holds[3] * shares // 100), 0)
            batch["debit_account_id_hi"][resolved] = batch["credit_account_id_hi"][resolved] = 0
            kinds[resolved] = np.where(captured, Kind.capture, Kind.void)

        made_payments = new[slots[new] == _PAYMENT]
        if self._refund_share:
            chosen = made_payments[rng.random(len(made_payments)) < self._refund_share]
            self._refundable.push(self._columns(batch, chosen), now_ns + int(payments.refund_after_s * NS_PER_S))
        if len(refunds):
            batch["debit_account_id_lo"][refunds] = refunded[2]   # the merchant pays back...
            batch["credit_account_id_lo"][refunds] = refunded[1]  # ...the payer, the whole amount
            batch["amount"][refunds] = refunded[3]
            batch["code"][refunds] = core.TransferCode.refund
            kinds[refunds] = Kind.refund
        return indexes, batch, kinds

    @staticmethod
    def _columns(batch: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.stack([batch["id_lo"][rows], batch["debit_account_id_lo"][rows],
                         batch["credit_account_id_lo"][rows], batch["amount"][rows]])
