"""Requests from a workload: the population to set up, then payments, P2P, holds, refunds,
merchant orders, payment codes and red envelopes.

A *request* is one event the server authorizes: one transfer, or one order's create, payment,
close or refund (or, while setting up, one account, top-up or merchant's terms). The load
generator sends requests the way a fleet of services using ``engine.client`` would, many to a
frame, but each is generated, scheduled, answered, timed and recorded on its own. Generation
is vectorized (NumPy): a call makes a whole frame's requests with no Python object per
request, so the generator is never what a run measures.

The population (``Population``): ``users`` wallets (which may not go below zero), ``merchants``
chosen with Zipf-skewed popularity (rank r has weight 1 / r**s: a few very hot merchants and a
long tail), and one funding card (a linked bank card) per 1,000 users that tops every wallet up
with ``wallet_balance_minor`` before the load starts. A run with orders also has the operator's
fee account and a settlement account per merchant, and gives every merchant its terms
(``set_merchants``: ``orders.fee_bps``; a run with payment codes too). A run with red envelopes
also has an escrow account (``AccountCode.escrow``, debits never above credits): the run has one
ledger, so one. All ids of a run have ``id_hi = run_id``, so runs never collide with each other
or with other data on the same server.

The requests (``Mix``, ``Payments``, ``Orders``, ``Codes``, ``Envelopes``):

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
* ``qr_order``: a Zipf-chosen merchant creates an order of a log-normal amount
  (``create_orders``; ``out_trade_no`` is the run's tag, its id in 16 hex digits, then the
  request's number in 16: unique per run; the id from ``core.order_keys.order_ids``). Once its
  answer is in, with the order's token, a later request of the weight follows it up: a uniform
  wallet pays it with that token (``pay_orders``) or, for ``close_ratio`` of the orders, its
  merchant closes it (``close_orders``); ``expire_ratio`` of them are left to expire. With no
  answered order waiting, a payment is made (so orders never pile up unanswered for ever).
* ``order_refund``: the merchant of an order paid at least ``orders.refund_after_s`` before
  (counted from its payment's ``ok``) refunds it (``refund_orders``; ``out_refund_no`` as
  ``out_trade_no``), in full or, for ``partial_refund_ratio`` of them, 10..99 % of it; a share
  of the paid orders is chosen so that refunds keep to the weight, each refunded once. With none
  ready, a payment is made.
* ``payment_code``: a wallet's ``issue_codes`` (the wallets take turns: a wallet has one live
  code; ``request_id`` = the request's number + 1 with the run's id_hi; for
  ``codes.step_up_ratio`` of them a ``no_password_limit`` of half the amount the charge will
  ask, else the default limit, or the amount itself when it is above it). Once its answer (with
  the code) is in, a later request of the weight charges it: a Zipf-chosen merchant's
  ``charge_codes`` (``out_trade_no`` as a create's, the order id from it). A charge answered
  ``user_paying`` is held; ``codes.confirm_after_s`` after that answer a later request confirms
  it (``confirm_charges``), declines it (the same, ``ConfirmFlags.decline``) or revokes it (its
  merchant's ``close_orders``), as drawn at the issue (``confirm_ratio``, ``decline_ratio``,
  ``revoke_ratio``); the rest are left to the engine's 45 s timeout (``codes_summary`` counts
  them). With nothing ready, a payment is made.
* ``red_envelope``: a slot is a due claim if there is one, else a new packet. A packet: a
  uniform wallet's ``send_envelopes`` (``out_envelope_no`` as ``out_trade_no``, the id from
  ``core.order_keys.envelope_ids``; a total uniform in ``total_min_minor .. total_max_minor``,
  ``count`` shares, into the escrow account). Once its answer is ``ok``, its ``claimers``
  claims (``claim_envelopes``: the wallets after the sender, in turn) are due
  ``claim_after_s`` later (or, with ``claims_at_burst``, not before the rate's burst, whose
  requests above the base rate are then claims, or payments when none is due); they go out in
  order, a packet's together as far as the slots allow. ``envelopes_summary`` counts what they
  came to.

Follow-ups are only for requests the server did not refuse: the load generator reports each
answer (``answered``). A transfer's follow-up (a refund, a hold's resolution) may go before its
answer has arrived (one not refused by then is assumed accepted); an order's follow-ups wait
for the answer they need (the create's token, the payment's ``ok``).

``next`` returns a ``Block``: request numbers, kinds and records as rows of 128 bytes, each row
a record of its kind's operation (``KIND_OPERATIONS``); ``Block.frames`` splits it into one
``Frame`` per operation, as the requests are sent.

Given the same workload, seed and run id, and the same answers at the same points, the same
calls give the same requests.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import numpy as np

import core
from core.operations import CREATE_EVENT_DTYPES, Operation
from core.order_keys import TOKEN_BYTES, envelope_ids, order_ids, refund_ids
from loadgen.workload import HOLD_TIMEOUT_S, Workload

CARD_PER_USERS = 1_000
#: Transfers of the load are numbered from here (below: the top-ups of the setup).
LOAD_ID_BASE = 1 << 40
#: How many holds, refundable payments or orders wait at most; past that the oldest are dropped.
QUEUE_CAPACITY = 1 << 20
#: An order's follow-up (its payment or close; a paid order's refund) is drawn this much more
#: often than the orders need: one that finds none ready makes a payment, and orders left
#: behind (their follow-ups came while a stalled server answered nothing) are caught up on.
FOLLOW_UP_SURPLUS = 0.05
NS_PER_S = 1_000_000_000
RECORD_BYTES = core.constants.RECORD_SIZE_BYTES


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
    merchant_terms = 8   # a merchant's fee and settlement accounts (setup)
    qr_create = 9        # a merchant's order
    qr_pay = 10          # its payment from a wallet, with the create's token
    qr_close = 11        # closed unpaid by its merchant
    order_refund = 12    # a paid order's refund, full or partial
    code_issue = 13      # a wallet's payment code
    code_charge = 14     # a merchant's charge of it (ok, or user_paying: held for the user)
    code_confirm = 15    # the user confirms a held charge
    code_decline = 16    # the user declines it (confirm_charges with ConfirmFlags.decline)
    code_revoke = 17     # its merchant revokes it (close_orders)
    envelope_send = 18   # a wallet sends a red envelope (a packet, into escrow)
    envelope_claim = 19  # a wallet of its group claims it (ok, or envelope_empty when late)


#: The operation each kind is sent with (indexed by kind): create_transfers unless named here.
KIND_OPERATIONS = np.array([{Kind.account: Operation.create_accounts, Kind.merchant_terms: Operation.set_merchants,
                             Kind.qr_create: Operation.create_orders, Kind.qr_pay: Operation.pay_orders,
                             Kind.qr_close: Operation.close_orders, Kind.order_refund: Operation.refund_orders,
                             Kind.code_issue: Operation.issue_codes, Kind.code_charge: Operation.charge_codes,
                             Kind.code_confirm: Operation.confirm_charges,
                             Kind.code_decline: Operation.confirm_charges, Kind.code_revoke: Operation.close_orders,
                             Kind.envelope_send: Operation.send_envelopes,
                             Kind.envelope_claim: Operation.claim_envelopes,
                             }.get(kind, Operation.create_transfers) for kind in Kind], dtype=np.uint16)

#: Kinds of the setup phase (sent before the clock starts, in order, and awaited).
SETUP_KINDS = (Kind.account, Kind.top_up, Kind.merchant_terms)

# The slots the mix is drawn over: transfers' below _QR_CREATE. ``resolve`` becomes capture or
# void (or a payment); ``qr_follow`` pays or closes an answered order (or makes a payment);
# ``code_charge`` charges an answered code and ``code_follow`` confirms, declines or revokes a
# held charge (or each makes a payment); ``envelope`` is a due claim or else a new packet. Not
# drawn: ``envelope_burst``, a request above the base rate in a New Year's Eve burst: a due claim
# or else a payment.
(_PAYMENT, _P2P, _HOLD, _RESOLVE, _REFUND, _QR_CREATE, _QR_FOLLOW, _ORDER_REFUND, _CODE_ISSUE, _CODE_CHARGE,
 _CODE_FOLLOW, _ENVELOPE, _ENVELOPE_BURST) = range(13)


class Frame(NamedTuple):
    """Requests of one operation, sent in one frame."""
    operation: int
    indexes: np.ndarray   # uint64: the request numbers their answers are reported by
    records: np.ndarray   # the operation's event records (core.operations.CREATE_EVENT_DTYPES)
    kinds: np.ndarray     # uint8: Kind


def as_records(rows: np.ndarray, operation: int) -> np.ndarray:
    """(n, 128) uint8 rows as ``operation``'s event records (a view when they are contiguous)."""
    return np.ascontiguousarray(rows).view(CREATE_EVENT_DTYPES[int(operation)]).reshape(-1)


def frames_of(indexes: np.ndarray, rows: np.ndarray, kinds: np.ndarray, operations: np.ndarray) -> list[Frame]:
    """Requests as frames of one operation each: all of an operation's in one frame, in their
    order, and the frames in the order of the operations' numbers (``operations``: each
    request's)."""
    if not len(kinds):
        return []
    first = operations[0]
    if operations[-1] == first and (operations == first).all():
        return [Frame(int(first), indexes, as_records(rows, first), kinds)]
    order = np.argsort(operations, kind="stable")
    cuts = np.flatnonzero(np.diff(operations[order])) + 1
    return [Frame(int(operations[part[0]]), indexes[part], as_records(rows[part], operations[part[0]]), kinds[part])
            for part in np.split(order, cuts)]


class Block(NamedTuple):
    """Requests in generation order: numbers, 128-byte record rows and kinds."""
    indexes: np.ndarray   # uint64
    events: np.ndarray    # (n, 128) uint8: row i is a record of KIND_OPERATIONS[kinds[i]]
    kinds: np.ndarray     # uint8: Kind

    def frames(self) -> list[Frame]:
        """The block as frames, one per operation (see ``frames_of``)."""
        return frames_of(self.indexes, self.events, self.kinds, KIND_OPERATIONS[self.kinds])

    def records(self, operation: int) -> np.ndarray:
        """The requests of ``operation`` as its event records (a copy)."""
        return as_records(self.events[KIND_OPERATIONS[self.kinds] == operation], operation)


class Population:
    """Account ids of a run: users 1..U, merchants U+1..U+M, cards after, then (with orders) the
    fee account and a settlement account per merchant, then (with red envelopes) the escrow
    account (``id_hi = run_id``)."""

    def __init__(self, workload: Workload, run_id: int):
        population = workload.population
        self.run_id = run_id
        self.users = population.users
        self.merchants = population.merchants
        self.cards = max(1, population.users // CARD_PER_USERS)
        self.first_merchant = self.users + 1
        self.first_card = self.users + self.merchants + 1
        self.orders = workload.mix.has_orders
        self.fee_bps = workload.orders.fee_bps
        # One fee account: the run has one ledger (CNY). Without orders, neither kind exists.
        self.fee_account = self.first_card + self.cards
        self.first_settlement = self.fee_account + 1
        self.envelopes = workload.mix.has_envelopes
        self.escrow_account = self.fee_account + (1 + self.merchants if self.orders else 0)
        self.wallet_balance_minor = population.wallet_balance_minor
        weights = 1.0 / np.arange(1, self.merchants + 1, dtype=np.float64) ** population.merchant_zipf_s
        self.merchant_cdf = np.cumsum(weights) / weights.sum()

    @property
    def accounts(self) -> int:
        return self.escrow_account - 1 + self.envelopes

    @property
    def escrow_account_id(self) -> int:
        """The escrow account's 128-bit id (where open packets' money waits, with red envelopes)."""
        return self.run_id << 64 | self.escrow_account

    @property
    def fee_account_id(self) -> int:
        """The fee account's 128-bit id (where the merchants' fees go, with orders)."""
        return self.run_id << 64 | self.fee_account

    def draw_merchants(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """``count`` merchant account ids (id_lo), Zipf-popular."""
        ranks = np.minimum(np.searchsorted(self.merchant_cdf, rng.random(count)), self.merchants - 1)
        return (self.first_merchant + ranks).astype(np.uint64)

    def account_batches(self, batch_events: int = core.BATCH_EVENTS_MAX):
        """The accounts, in batches of ``core.ACCOUNT_DTYPE``."""
        # Each kind's first id and code (the ones a run has: ids in order).
        firsts = [(self.first_merchant, core.AccountCode.merchant), (self.first_card, core.AccountCode.funding_card)]
        if self.orders:
            firsts += [(self.fee_account, core.AccountCode.fee), (self.first_settlement, core.AccountCode.settlement)]
        if self.envelopes:
            firsts.append((self.escrow_account, core.AccountCode.escrow))
        starts = np.array([first for first, _ in firsts], dtype=np.uint64)
        codes = np.array([core.AccountCode.user_wallet] + [code for _, code in firsts], dtype=np.uint16)
        for first in range(1, self.accounts + 1, batch_events):
            ids = np.arange(first, min(first + batch_events, self.accounts + 1), dtype=np.uint64)
            batch = np.zeros(len(ids), dtype=core.ACCOUNT_DTYPE)
            batch["id_lo"], batch["id_hi"] = ids, self.run_id
            batch["ledger"] = core.Currency.CNY
            batch["code"] = codes[np.searchsorted(starts, ids, side="right")]
            # Wallets and the escrow may never go below zero.
            batch["flags"] = np.where((ids < self.first_merchant) | (batch["code"] == core.AccountCode.escrow),
                                      core.AccountFlags.debits_must_not_exceed_credits, 0)
            yield batch

    def top_up_batches(self, batch_events: int = core.BATCH_EVENTS_MAX):
        """One top-up per wallet from its funding card, in batches of ``core.TRANSFER_DTYPE``."""
        if self.wallet_balance_minor == 0:
            return
        for first in range(1, self.users + 1, batch_events):
            users = np.arange(first, min(first + batch_events, self.users + 1), dtype=np.uint64)
            batch = np.zeros(len(users), dtype=core.TRANSFER_DTYPE)
            _transfer_defaults(batch, slice(None), users, self.run_id)
            batch["debit_account_id_lo"] = self.first_card + (users - 1) % self.cards
            batch["credit_account_id_lo"] = users
            batch["amount"] = self.wallet_balance_minor
            batch["code"] = core.TransferCode.top_up
            yield batch

    def merchant_terms_batches(self, batch_events: int = core.BATCH_EVENTS_MAX):
        """With orders: every merchant's terms (``core.MERCHANT_DTYPE``: ``fee_bps``, the fee
        account, its settlement account), in batches; without, none."""
        if not self.orders:
            return
        for first in range(0, self.merchants, batch_events):
            ranks = np.arange(first, min(first + batch_events, self.merchants), dtype=np.uint64)
            batch = np.zeros(len(ranks), dtype=core.MERCHANT_DTYPE)
            batch["merchant_id_lo"] = self.first_merchant + ranks
            batch["fee_account_id_lo"] = self.fee_account
            batch["settlement_account_id_lo"] = self.first_settlement + ranks
            batch["merchant_id_hi"] = batch["fee_account_id_hi"] = batch["settlement_account_id_hi"] = self.run_id
            batch["fee_bps"] = self.fee_bps
            batch["ledger"] = core.Currency.CNY
            yield batch


def timed_operations(workload: Workload) -> list[Operation]:
    """The operations a workload's load may send, for the trace writer to be ready for
    (create_transfers always: a follow-up that finds nothing to follow makes a payment)."""
    operations = [Operation.create_transfers]
    if workload.mix.qr_order > 0:
        orders = workload.orders
        operations += [operation for operation, weight in (
            (Operation.create_orders, 1.0), (Operation.pay_orders, orders.paid_ratio),
            (Operation.close_orders, orders.close_ratio), (Operation.refund_orders, workload.mix.order_refund))
            if weight > 0]
    if workload.mix.has_codes:
        codes = workload.codes
        operations += [operation for operation, weight in (
            (Operation.issue_codes, 1.0), (Operation.charge_codes, 1.0),
            (Operation.confirm_charges, codes.step_up_ratio * (codes.confirm_ratio + codes.decline_ratio)),
            (Operation.close_orders, codes.step_up_ratio * codes.revoke_ratio))
            if weight > 0 and operation not in operations]
    if workload.mix.has_envelopes:
        operations += [Operation.send_envelopes, Operation.claim_envelopes]
    return operations


def _transfer_defaults(transfers: np.ndarray, rows, ids_lo: np.ndarray, run_id: int) -> None:
    """What every transfer of a run has: its id, the run's id_hi on its ids, the ledger."""
    transfers["id_lo"][rows] = ids_lo
    transfers["id_hi"][rows] = transfers["debit_account_id_hi"][rows] = run_id
    transfers["credit_account_id_hi"][rows] = run_id
    transfers["ledger"][rows] = core.Currency.CNY


def _amounts(rng: np.random.Generator, payments, count: int) -> np.ndarray:
    """``count`` log-normal amounts around the workload's median, at least 1."""
    return np.maximum(1, rng.lognormal(np.log(payments.amount_median_minor), payments.amount_sigma,
                                       count)).astype(np.uint64)


class _Queue:
    """A bounded FIFO of earlier requests (``width`` uint64 columns) and when each may follow up."""

    def __init__(self, capacity: int, width: int = 4):
        self.capacity = capacity
        self.columns = np.zeros((width, capacity), dtype=np.uint64)
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

    def pop_ready(self, wanted: int, now_ns: int, refused: "_Refusals | None" = None) -> np.ndarray:
        """Up to ``wanted`` of the oldest entries ready by ``now_ns`` (ready times only grow),
        skipping those the server refused (column 0 is a transfer's id)."""
        taken = []
        while wanted > 0 and self.tail > self.head:
            available = min(wanted, self.tail - self.head)
            positions = (self.head + np.arange(available)) % self.capacity
            ready = int(np.searchsorted(self.ready_ns[positions] > now_ns, True))  # a prefix is ready
            if not ready:
                break
            self.head += ready
            columns = self.columns[:, positions[:ready]]
            if refused is not None:
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


class _Awaited:
    """What requests whose answer is awaited will need then (``width`` uint64 columns), by
    request number: a ring, so an answer that comes after ``capacity`` later requests finds
    nothing (its follow-up is dropped)."""

    def __init__(self, capacity: int, width: int, stride: int):
        self.capacity = capacity
        self.stride = stride
        self.number = np.full(capacity, np.iinfo(np.uint64).max, dtype=np.uint64)
        self.columns = np.zeros((width, capacity), dtype=np.uint64)

    def put(self, indexes: np.ndarray, columns: np.ndarray) -> None:
        slots = (indexes // np.uint64(self.stride)) % np.uint64(self.capacity)
        self.number[slots] = indexes
        self.columns[:, slots] = columns

    def take(self, indexes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which of ``indexes`` are here (a mask), and their columns; then forgets them."""
        slots = (indexes // np.uint64(self.stride)) % np.uint64(self.capacity)
        found = self.number[slots] == indexes
        slots = slots[found]
        self.number[slots] = np.iinfo(np.uint64).max
        return found, self.columns[:, slots]


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_NIBBLE_SHIFTS = np.arange(60, -4, -4, dtype=np.uint64)


def _hex16(values: np.ndarray) -> np.ndarray:
    """uint64 values as 16 lowercase hex digits each: an (n, 16) uint8 array."""
    return _HEX_DIGITS[(values[:, None] >> _NIBBLE_SHIFTS) & np.uint64(0xF)]


def _numbers(tag: np.ndarray, indexes: np.ndarray) -> np.ndarray:
    """out_trade_no / out_refund_no of requests: the run's tag and the request's number, 32 bytes."""
    numbers = np.empty((len(indexes), 32), dtype=np.uint8)
    numbers[:, :16] = tag
    numbers[:, 16:] = _hex16(indexes)
    return numbers


def _tokens_to_columns(tokens: np.ndarray) -> np.ndarray:
    """(n, 10) uint8 tokens as two uint64 columns (a (2, n) array), to keep in a queue."""
    padded = np.zeros((len(tokens), 16), dtype=np.uint8)
    padded[:, :TOKEN_BYTES] = tokens
    return padded.view(np.uint64).T


def _columns_to_tokens(columns: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(columns.T).view(np.uint8)[:, :TOKEN_BYTES]


class _Orders:
    """The merchant payments of a mix (``qr_order``, ``order_refund``; see the module's docstring)."""

    # Columns of the queues: an order's id (lo, hi), its merchant (id_lo) and amount, then
    # (answered creates) whether its merchant closes it and its token in two words.
    _ID_LO, _ID_HI, _MERCHANT, _AMOUNT, _CLOSES, _TOKEN = 0, 1, 2, 3, 4, 5

    def __init__(self, workload: Workload, population: Population, refund_share: float, stride: int):
        self.population = population
        self.spec = workload.orders
        self.payments = workload.payments
        self.refund_share = refund_share
        self.tag = np.frombuffer(b"%016x" % population.run_id, dtype=np.uint8)   # the run's, in every number
        self._awaited = _Awaited(QUEUE_CAPACITY, 5, stride)   # creates (to follow up) and payments (to refund)
        self._created = _Queue(QUEUE_CAPACITY, 7)             # answered creates, to pay or close
        self._paid = _Queue(QUEUE_CAPACITY, 4)                # paid orders, to refund

    def _numbers(self, indexes: np.ndarray) -> np.ndarray:
        return _numbers(self.tag, indexes)

    def take_follow_ups(self, wanted: int, now_ns: int) -> np.ndarray:
        return self._created.pop_ready(wanted, now_ns)

    def take_refundable(self, wanted: int, now_ns: int) -> np.ndarray:
        return self._paid.pop_ready(wanted, now_ns)

    def create(self, rng, events, kinds, indexes, rows) -> None:
        population, run_id, count = self.population, self.population.run_id, len(rows)
        merchants = population.draw_merchants(rng, count)
        amounts = _amounts(rng, self.payments, count)
        numbers = self._numbers(indexes[rows])
        ids = order_ids(np.stack([merchants, np.full(count, run_id, dtype=np.uint64)], axis=1), numbers)
        creates = events.view(core.ORDER_CREATE_DTYPE).reshape(-1)
        creates["id_lo"][rows], creates["id_hi"][rows] = ids[:, 0], ids[:, 1]
        creates["merchant_id_lo"][rows], creates["merchant_id_hi"][rows] = merchants, run_id
        creates["amount"][rows] = amounts
        creates["out_trade_no"][rows] = numbers
        creates["expire_after_s"][rows] = self.spec.expire_after_s
        creates["ledger"][rows] = core.Currency.CNY
        kinds[rows] = Kind.qr_create
        # Each order's end, drawn now: closed by its merchant, left to expire, or paid.
        fate = rng.random(count)
        closes = fate < self.spec.close_ratio
        followed = closes | (fate >= self.spec.close_ratio + self.spec.expire_ratio)
        self._awaited.put(indexes[rows][followed], np.stack([ids[followed, 0], ids[followed, 1], merchants[followed],
                                                             amounts[followed], closes[followed]]))

    def follow_up(self, rng, events, kinds, indexes, rows, orders: np.ndarray) -> None:
        """Pay or close the answered ``orders`` (columns of ``_created``) in ``rows``."""
        run_id = self.population.run_id
        closes = orders[self._CLOSES] == 1
        paying, paid = rows[~closes], orders[:, ~closes]
        pays = events.view(core.ORDER_PAY_DTYPE).reshape(-1)
        pays["order_id_lo"][paying], pays["order_id_hi"][paying] = paid[self._ID_LO], paid[self._ID_HI]
        pays["payer_id_lo"][paying] = rng.integers(1, self.population.users + 1, len(paying), dtype=np.uint64)
        pays["payer_id_hi"][paying] = run_id
        pays["amount"][paying] = paid[self._AMOUNT]
        pays["token"][paying] = _columns_to_tokens(paid[self._TOKEN:self._TOKEN + 2])
        pays["ledger"][paying] = core.Currency.CNY
        kinds[paying] = Kind.qr_pay
        # The payments whose order will be refunded (once they are answered ok).
        chosen = rng.random(len(paying)) < self.refund_share
        self._awaited.put(indexes[paying][chosen], paid[:self._CLOSES + 1, chosen])

        closing, closed = rows[closes], orders[:, closes]
        closes_ = events.view(core.ORDER_CLOSE_DTYPE).reshape(-1)
        closes_["order_id_lo"][closing], closes_["order_id_hi"][closing] = closed[self._ID_LO], closed[self._ID_HI]
        closes_["merchant_id_lo"][closing], closes_["merchant_id_hi"][closing] = closed[self._MERCHANT], run_id
        kinds[closing] = Kind.qr_close

    def refund(self, rng, events, kinds, indexes, rows, orders: np.ndarray) -> None:
        """Refund the paid ``orders`` (columns of ``_paid``) in ``rows``, in full or in part."""
        count = len(rows)
        numbers = self._numbers(indexes[rows])
        ids = refund_ids(np.stack([orders[self._ID_LO], orders[self._ID_HI]], axis=1), numbers)
        partial = rng.random(count) < self.spec.partial_refund_ratio
        shares = rng.integers(10, 100, count, dtype=np.uint64)
        amounts = orders[self._AMOUNT]
        refunds = events.view(core.REFUND_DTYPE).reshape(-1)
        refunds["id_lo"][rows], refunds["id_hi"][rows] = ids[:, 0], ids[:, 1]
        refunds["order_id_lo"][rows], refunds["order_id_hi"][rows] = orders[self._ID_LO], orders[self._ID_HI]
        refunds["merchant_id_lo"][rows] = orders[self._MERCHANT]
        refunds["merchant_id_hi"][rows] = self.population.run_id
        refunds["amount"][rows] = np.where(partial, np.maximum(1, amounts * shares // 100), amounts)
        refunds["out_refund_no"][rows] = numbers
        refunds["ledger"][rows] = core.Currency.CNY
        kinds[rows] = Kind.order_refund

    def answered(self, indexes: np.ndarray, kinds: np.ndarray, results: np.ndarray, replies: np.ndarray,
                 reply_ns: int) -> None:
        accepted = results == core.Result.ok
        created = accepted & (kinds == Kind.qr_create)
        if created.any():   # to be paid or closed, with the token the answer holds
            found, orders = self._awaited.take(indexes[created])
            tokens = _tokens_to_columns(replies["token"][created][found])
            self._created.push(np.concatenate([orders, tokens]), reply_ns)
        paid = accepted & (kinds == Kind.qr_pay)
        if paid.any():      # those chosen to be refunded, refund_after_s from now
            _, orders = self._awaited.take(indexes[paid])
            self._paid.push(orders[:self._AMOUNT + 1], reply_ns + int(self.spec.refund_after_s * NS_PER_S))


#: What a payment code's held charge is left to (drawn when the code is issued).
_TIMEOUT, _CONFIRM, _DECLINE, _REVOKE = 0, 1, 2, 3
#: The core's default no-password limit (core/codes.pyx), minor units: a code issued with 0 has it.
NO_PASSWORD_LIMIT_DEFAULT = 300_000


class _Codes:
    """The payment codes of a mix (``payment_code``; see the module's docstring)."""

    # Columns: issued codes awaited (wallet, amount, no_password_limit, fate), then the code;
    # charges awaited (order id lo, hi, merchant, wallet, amount, fate); held charges to follow
    # up (order id lo, hi, merchant, wallet, fate).
    _WALLET, _AMOUNT, _LIMIT, _FATE, _CODE = 0, 1, 2, 3, 4
    _ORDER_LO, _ORDER_HI, _MERCHANT, _C_WALLET, _C_AMOUNT, _C_FATE = 0, 1, 2, 3, 4, 5

    def __init__(self, workload: Workload, population: Population, first_index: int, stride: int):
        self.population = population
        self.spec = workload.codes
        self.payments = workload.payments
        self.tag = np.frombuffer(b"%016x" % population.run_id, dtype=np.uint8)
        self._worker, self._stride = first_index, stride
        self._turn = 0                                        # the wallets take turns (one live code each)
        self._issues = _Awaited(QUEUE_CAPACITY, 4, stride)    # issues whose code is awaited
        self._charges = _Awaited(QUEUE_CAPACITY, 6, stride)   # charges whose answer is awaited
        self._issued = _Queue(QUEUE_CAPACITY, 5)              # answered codes, to charge
        self._held = _Queue(QUEUE_CAPACITY, 5)                # held charges, to confirm, decline or revoke
        self.at_once = self.held = 0                          # charges answered ok / user_paying
        self._left = []                                       # per second of its answer: held ones left to time out
        fates = self.spec
        self._fate_cdf = np.cumsum([fates.confirm_ratio, fates.decline_ratio, fates.revoke_ratio])

    def _wallets(self, count: int) -> np.ndarray:
        """The next ``count`` wallets in turn (this worker's share: wallets worker + k x stride)."""
        turns = self._turn + np.arange(count, dtype=np.uint64)
        self._turn += count
        return (1 + (self._worker + turns * np.uint64(self._stride)) % np.uint64(self.population.users)).astype(
            np.uint64)

    def take_charges(self, wanted: int, now_ns: int) -> np.ndarray:
        return self._issued.pop_ready(wanted, now_ns)

    def take_held(self, wanted: int, now_ns: int) -> np.ndarray:
        return self._held.pop_ready(wanted, now_ns)

    def issue(self, rng, events, kinds, indexes, rows) -> None:
        run_id, count = self.population.run_id, len(rows)
        wallets = self._wallets(count)
        amounts = _amounts(rng, self.payments, count)
        stepped = rng.random(count) < self.spec.step_up_ratio
        # Held: a no-password limit below the amount (half of it); else one above it (0: the default).
        amounts[stepped] = np.maximum(amounts[stepped], 2)
        limits = np.where(stepped, amounts // 2, np.where(amounts > NO_PASSWORD_LIMIT_DEFAULT, amounts, 0))
        fates = np.searchsorted(self._fate_cdf, rng.random(count), side="right")
        fates = np.where(fates < len(self._fate_cdf), fates + 1, _TIMEOUT).astype(np.uint64)
        issues = events.view(core.CODE_ISSUE_DTYPE).reshape(-1)
        issues["wallet_id_lo"][rows], issues["wallet_id_hi"][rows] = wallets, run_id
        issues["request_id_lo"][rows], issues["request_id_hi"][rows] = indexes[rows] + np.uint64(1), run_id
        issues["no_password_limit"][rows] = limits
        issues["ledger"][rows] = core.Currency.CNY
        kinds[rows] = Kind.code_issue
        self._issues.put(indexes[rows], np.stack([wallets, amounts, limits.astype(np.uint64), fates]))

    def charge(self, rng, events, kinds, indexes, rows, codes: np.ndarray) -> None:
        """Charge the answered ``codes`` (columns of ``_issued``) in ``rows``, at Zipf-chosen merchants."""
        run_id, count = self.population.run_id, len(rows)
        merchants = self.population.draw_merchants(rng, count)
        numbers = _numbers(self.tag, indexes[rows])
        ids = order_ids(np.stack([merchants, np.full(count, run_id, dtype=np.uint64)], axis=1), numbers)
        charges = events.view(core.CODE_CHARGE_DTYPE).reshape(-1)
        charges["order_id_lo"][rows], charges["order_id_hi"][rows] = ids[:, 0], ids[:, 1]
        charges["merchant_id_lo"][rows], charges["merchant_id_hi"][rows] = merchants, run_id
        charges["code_lo"][rows] = codes[self._CODE]
        charges["amount"][rows] = codes[self._AMOUNT]
        charges["out_trade_no"][rows] = numbers
        charges["ledger"][rows] = core.Currency.CNY
        kinds[rows] = Kind.code_charge
        self._charges.put(indexes[rows], np.stack([ids[:, 0], ids[:, 1], merchants, codes[self._WALLET],
                                                   codes[self._AMOUNT], codes[self._FATE]]))

    def follow_up(self, events, kinds, rows, held: np.ndarray) -> None:
        """Confirm, decline or revoke the ``held`` charges (columns of ``_held``) in ``rows``."""
        run_id = self.population.run_id
        fates = held[4]
        revoking = fates == _REVOKE
        users, used = rows[~revoking], held[:, ~revoking]
        confirms = events.view(core.CODE_CONFIRM_DTYPE).reshape(-1)
        confirms["order_id_lo"][users], confirms["order_id_hi"][users] = used[0], used[1]
        confirms["wallet_id_lo"][users], confirms["wallet_id_hi"][users] = used[3], run_id
        declines = used[4] == _DECLINE
        confirms["flags"][users] = np.where(declines, core.ConfirmFlags.decline, 0)
        kinds[users] = np.where(declines, Kind.code_decline, Kind.code_confirm)
        merchants, revoked = rows[revoking], held[:, revoking]
        closes = events.view(core.ORDER_CLOSE_DTYPE).reshape(-1)
        closes["order_id_lo"][merchants], closes["order_id_hi"][merchants] = revoked[0], revoked[1]
        closes["merchant_id_lo"][merchants], closes["merchant_id_hi"][merchants] = revoked[2], run_id
        kinds[merchants] = Kind.code_revoke

    def answered(self, indexes: np.ndarray, kinds: np.ndarray, results: np.ndarray, replies: np.ndarray,
                 reply_ns: int) -> None:
        issued = (results == core.Result.ok) & (kinds == Kind.code_issue)
        if issued.any():    # to be charged, with the code the answer holds
            found, codes = self._issues.take(indexes[issued])
            self._issued.push(np.concatenate([codes, replies["code"][issued][found][None, :].astype(np.uint64)]),
                              reply_ns)
        charged = kinds == Kind.code_charge
        if charged.any():
            self.at_once += int((results[charged] == core.Result.ok).sum())
            held = charged & (results == core.Result.user_paying)
            found, charges = self._charges.take(indexes[charged])   # forgotten whatever the answer
            if held.any():
                held_charges = charges[:, results[charged][found] == core.Result.user_paying]
                self.held += held_charges.shape[1]
                fates = held_charges[self._C_FATE]
                followed = fates != _TIMEOUT
                self._held.push(held_charges[[0, 1, 2, 3, 5]][:, followed],
                                reply_ns + int(self.spec.confirm_after_s * NS_PER_S))
                if (~followed).any():
                    second = reply_ns // NS_PER_S
                    if second >= len(self._left):
                        self._left.extend([0] * (second + 1 - len(self._left)))
                    self._left[second] += int((~followed).sum())

    def summary(self, end_ns: int) -> dict:
        """What became of the held charges by ``end_ns`` (ns from the start): how many were held,
        left to the engine's 45 s timeout (timed out by then, or still held), or still awaiting
        their confirm, decline or revoke (not yet due at the end)."""
        timed_out_before = (end_ns - HOLD_TIMEOUT_S * NS_PER_S) // NS_PER_S   # answered before this second: expired
        left = sum(self._left)
        timed_out = sum(self._left[:max(0, timed_out_before)])
        waiting = self._held.tail - self._held.head
        return {"charged_at_once": self.at_once, "held": self.held, "left_to_time_out": left,
                "timed_out": timed_out, "still_held_at_end": left - timed_out + waiting,
                "follow_ups_not_sent": waiting}


class _Envelopes:
    """The red envelopes of a mix (``red_envelope``; see the module's docstring)."""

    # Columns: sends awaited (packet id lo, hi, sender, total); answered packets to claim (id lo,
    # hi, sender); claims (packet id lo, hi, claimer).
    _ID_LO, _ID_HI, _SENDER, _TOTAL = 0, 1, 2, 3

    def __init__(self, workload: Workload, population: Population, stride: int):
        self.population = population
        self.spec = workload.envelopes
        self.tag = np.frombuffer(b"%016x" % population.run_id, dtype=np.uint8)
        self._sends = _Awaited(QUEUE_CAPACITY, 4, stride)    # sends whose answer is awaited
        self._packets = _Queue(QUEUE_CAPACITY, 3)            # answered packets, to claim
        self._claims = np.zeros((3, 0), dtype=np.uint64)     # claims of packets taken, not yet handed out
        self._claim_after_ns = int(self.spec.claim_after_s * NS_PER_S)
        rate = workload.rate
        # New Year's Eve: claims wait for the burst, whose requests above the base rate are envelopes'.
        self.burst_ns = ((int(rate.burst_at_s * NS_PER_S), int((rate.burst_at_s + rate.burst_s) * NS_PER_S),
                          1.0 - 1.0 / rate.burst_factor) if self.spec.claims_at_burst else None)
        self.figures = dict.fromkeys(("packets_sent", "sent_minor", "sends_refused", "claims_ok", "claims_late",
                                      "claims_refused", "claimed_minor", "packets_emptied"), 0)

    def take_claims(self, wanted: int, now_ns: int) -> np.ndarray:
        """Up to ``wanted`` due claims (columns: packet id lo, hi, claimer), a packet's in turn."""
        claimers = self.spec.claimers
        if self._claims.shape[1] < wanted:
            packets = self._packets.pop_ready(-(-(wanted - self._claims.shape[1]) // claimers), now_ns)
            if packets.shape[1]:
                # A packet's group: the `claimers` wallets after its sender (never the sender: claimers < users).
                turns = np.tile(np.arange(1, claimers + 1, dtype=np.uint64), packets.shape[1])
                members = 1 + (np.repeat(packets[self._SENDER], claimers) - np.uint64(1) + turns) % np.uint64(
                    self.population.users)
                self._claims = np.concatenate([self._claims, np.stack([
                    np.repeat(packets[self._ID_LO], claimers), np.repeat(packets[self._ID_HI], claimers), members])],
                    axis=1)
        taken, self._claims = self._claims[:, :wanted], self._claims[:, wanted:]
        return taken

    def send(self, rng, events, kinds, indexes, rows) -> None:
        run_id, count, spec = self.population.run_id, len(rows), self.spec
        senders = rng.integers(1, self.population.users + 1, count, dtype=np.uint64)
        totals = rng.integers(spec.total_min_minor, spec.total_max_minor + 1, count, dtype=np.uint64)
        numbers = _numbers(self.tag, indexes[rows])
        ids = envelope_ids(np.stack([senders, np.full(count, run_id, dtype=np.uint64)], axis=1), numbers)
        sends = events.view(core.ENVELOPE_SEND_DTYPE).reshape(-1)
        sends["id_lo"][rows], sends["id_hi"][rows] = ids[:, 0], ids[:, 1]
        sends["sender_id_lo"][rows], sends["sender_id_hi"][rows] = senders, run_id
        sends["escrow_id_lo"][rows], sends["escrow_id_hi"][rows] = self.population.escrow_account, run_id
        sends["total"][rows] = totals
        sends["out_envelope_no"][rows] = numbers
        sends["count"][rows] = spec.count
        sends["expire_after_s"][rows] = spec.expire_after_s
        sends["ledger"][rows] = core.Currency.CNY
        kinds[rows] = Kind.envelope_send
        self._sends.put(indexes[rows], np.stack([ids[:, 0], ids[:, 1], senders, totals]))

    def claim(self, events, kinds, rows, claims: np.ndarray) -> None:
        """The ``claims`` (``take_claims``' columns) in ``rows``."""
        records = events.view(core.ENVELOPE_CLAIM_DTYPE).reshape(-1)
        records["envelope_id_lo"][rows], records["envelope_id_hi"][rows] = claims[0], claims[1]
        records["claimer_id_lo"][rows], records["claimer_id_hi"][rows] = claims[2], self.population.run_id
        kinds[rows] = Kind.envelope_claim

    def answered(self, indexes: np.ndarray, kinds: np.ndarray, results: np.ndarray, replies: np.ndarray,
                 reply_ns: int) -> None:
        figures = self.figures
        sent = kinds == Kind.envelope_send
        if sent.any():      # claimed from claim_after_s on (with claims_at_burst, not before the burst)
            found, packets = self._sends.take(indexes[sent])    # forgotten whatever the answer
            accepted = results[sent][found] == core.Result.ok
            figures["packets_sent"] += int(accepted.sum())
            figures["sends_refused"] += int((~accepted).sum())
            figures["sent_minor"] += int(packets[self._TOTAL][accepted].sum())
            ready_ns = reply_ns + self._claim_after_ns
            if self.burst_ns is not None:
                ready_ns = max(ready_ns, self.burst_ns[0])
            self._packets.push(packets[:self._TOTAL, accepted], ready_ns)
        claimed = kinds == Kind.envelope_claim
        if claimed.any():
            got, answers = results[claimed], replies[claimed]
            accepted = got == core.Result.ok
            late = got == core.Result.envelope_empty
            figures["claims_ok"] += int(accepted.sum())
            figures["claims_late"] += int(late.sum())
            figures["claims_refused"] += int((~accepted & ~late).sum())
            figures["claimed_minor"] += int(answers["amount"][accepted].sum())
            figures["packets_emptied"] += int((answers["position"][accepted] == self.spec.count - 1).sum())

    def extra_share(self, now_ns: int) -> float:
        """With claims_at_burst, inside the burst: the share of requests above the base rate (else 0)."""
        if self.burst_ns is None or not self.burst_ns[0] <= now_ns < self.burst_ns[1]:
            return 0.0
        return self.burst_ns[2]

    def summary(self) -> dict:
        """What the run's red envelopes came to: packets sent (and minor units), claims ok, late
        (envelope_empty) or refused, minor units claimed, packets emptied, and the claims still
        waiting to be sent at the end (their packets answered, their slots not come)."""
        waiting = self._claims.shape[1] + (self._packets.tail - self._packets.head) * self.spec.claimers
        return dict(self.figures, claims_waiting_at_end=int(waiting))


class RequestGenerator:
    """Requests for a workload's mix; see the module's docstring.

    Request numbers are ``first_index, first_index + stride, ...`` (the load generator's
    workers interleave them); request k's transfer id is ``LOAD_ID_BASE + k``.
    """

    def __init__(self, workload: Workload, population: Population, seed: int, *, first_index: int = 0,
                 stride: int = 1):
        self.population = population
        self.payments = workload.payments
        mix = workload.mix.probabilities()
        orders = workload.orders
        # A qr_order is a create and, unless it is left to expire, a follow-up: its weight is theirs.
        follow_ups = (1.0 - orders.expire_ratio) * (1.0 + FOLLOW_UP_SURPLUS)   # per create
        slot_weights = [mix["payment"], mix["p2p"], mix["hold"] / 2, mix["hold"] / 2, mix["refund"],
                        mix["qr_order"] / (1.0 + follow_ups), mix["qr_order"] * follow_ups / (1.0 + follow_ups),
                        mix["order_refund"]]
        # A payment_code is an issue, its charge and, for the held ones followed up, their confirm,
        # decline or revoke: its weight is theirs (the follow-ups drawn with the same surplus).
        codes = workload.codes
        code_follows = codes.step_up_ratio * codes.resolved_ratio
        code_requests = 1.0 + (1.0 + FOLLOW_UP_SURPLUS) * (1.0 + code_follows)
        slot_weights += [mix["payment_code"] / code_requests,
                         mix["payment_code"] * (1.0 + FOLLOW_UP_SURPLUS) / code_requests,
                         mix["payment_code"] * (1.0 + FOLLOW_UP_SURPLUS) * code_follows / code_requests,
                         mix["red_envelope"]]
        self._slot_cdf = np.cumsum(slot_weights)
        self._slot_cdf /= self._slot_cdf[-1]
        self._refund_share = min(1.0, mix["refund"] / mix["payment"]) if mix["payment"] else 0.0
        self._rng = np.random.default_rng(seed)
        self._next_index = first_index
        self._stride = stride
        self._holds = _Queue(QUEUE_CAPACITY)
        self._refundable = _Queue(QUEUE_CAPACITY)
        self._refused = _Refusals(QUEUE_CAPACITY)
        self._orders = None
        if workload.mix.has_orders:
            paid_per_request = mix["qr_order"] * orders.paid_ratio / (1.0 + follow_ups)
            share = (min(1.0, mix["order_refund"] / paid_per_request / (1.0 + FOLLOW_UP_SURPLUS))
                     if paid_per_request else 0.0)
            self._orders = _Orders(workload, population, share, stride)
        self._codes = _Codes(workload, population, first_index, stride) if workload.mix.has_codes else None
        self._envelopes = _Envelopes(workload, population, stride) if workload.mix.has_envelopes else None

    def answered(self, indexes: np.ndarray, kinds: np.ndarray, replies: np.ndarray, reply_ns: int = 0) -> None:
        """The server's answers to one frame's requests ``indexes`` (as ``next`` numbered them):
        its replies (u32 result codes, or ``create_orders``' records that start with one), at
        ``reply_ns`` (ns from the run's start, as ``next``'s ``now_ns``)."""
        results = replies["result"] if replies.dtype.names else replies
        refused = (results != core.Result.ok) & ((kinds == Kind.payment) | (kinds == Kind.hold))
        if refused.any():
            self._refused.add(indexes[refused])
        if self._orders is not None:
            self._orders.answered(indexes, kinds, results, replies, reply_ns)
        if self._codes is not None:
            self._codes.answered(indexes, kinds, results, replies, reply_ns)
        if self._envelopes is not None:
            self._envelopes.answered(indexes, kinds, results, replies, reply_ns)

    def envelopes_summary(self) -> dict | None:
        """With red envelopes: what they came to (``_Envelopes.summary``)."""
        return self._envelopes.summary() if self._envelopes is not None else None

    def codes_summary(self, end_ns: int) -> dict | None:
        """With payment codes: what became of the held charges by ``end_ns`` (``_Codes.summary``)."""
        return self._codes.summary(end_ns) if self._codes is not None else None

    def next(self, count: int, now_ns: int) -> Block:
        """The next ``count`` requests, made at ``now_ns`` (ns from the run's start)."""
        rng, population, payments = self._rng, self.population, self.payments
        indexes = self._next_index + self._stride * np.arange(count, dtype=np.uint64)
        self._next_index += self._stride * count
        slots = np.searchsorted(self._slot_cdf, rng.random(count), side="right").clip(0, len(self._slot_cdf) - 1)
        if self._envelopes is not None and self._envelopes.extra_share(now_ns):
            slots[rng.random(count) < self._envelopes.extra_share(now_ns)] = _ENVELOPE_BURST
        events = np.zeros((count, RECORD_BYTES), dtype=np.uint8)
        kinds = np.full(count, Kind.payment, dtype=np.uint8)

        # Follow-ups first: each takes an old enough earlier request, or falls back to a new one.
        resolve = np.flatnonzero(slots == _RESOLVE)
        holds = self._holds.pop_ready(len(resolve), now_ns, self._refused)
        resolved, slots[resolve[holds.shape[1]:]] = resolve[:holds.shape[1]], _PAYMENT
        refund = np.flatnonzero(slots == _REFUND)
        refunded = self._refundable.pop_ready(len(refund), now_ns, self._refused)
        refunds, slots[refund[refunded.shape[1]:]] = refund[:refunded.shape[1]], _PAYMENT
        if self._orders is not None:
            follow = np.flatnonzero(slots == _QR_FOLLOW)
            answered_orders = self._orders.take_follow_ups(len(follow), now_ns)
            followed, slots[follow[answered_orders.shape[1]:]] = follow[:answered_orders.shape[1]], _PAYMENT
            order_refund = np.flatnonzero(slots == _ORDER_REFUND)
            paid_orders = self._orders.take_refundable(len(order_refund), now_ns)
            order_refunds, slots[order_refund[paid_orders.shape[1]:]] = order_refund[:paid_orders.shape[1]], _PAYMENT
        if self._codes is not None:
            charge = np.flatnonzero(slots == _CODE_CHARGE)
            issued_codes = self._codes.take_charges(len(charge), now_ns)
            charged, slots[charge[issued_codes.shape[1]:]] = charge[:issued_codes.shape[1]], _PAYMENT
            follow = np.flatnonzero(slots == _CODE_FOLLOW)
            held_charges = self._codes.take_held(len(follow), now_ns)
            code_followed, slots[follow[held_charges.shape[1]:]] = follow[:held_charges.shape[1]], _PAYMENT
        if self._envelopes is not None:   # due claims first; then a slot sends a packet, a burst's pays
            envelope = np.flatnonzero((slots == _ENVELOPE) | (slots == _ENVELOPE_BURST))
            claims = self._envelopes.take_claims(len(envelope), now_ns)
            claiming, rest = envelope[:claims.shape[1]], envelope[claims.shape[1]:]
            sending = rest[slots[rest] == _ENVELOPE]
            slots[rest[slots[rest] == _ENVELOPE_BURST]] = _PAYMENT
        if self._orders is not None or self._codes is not None or self._envelopes is not None:
            transfer_rows = np.flatnonzero(slots < _QR_CREATE)
        else:
            transfer_rows = slice(None)

        batch = events.view(core.TRANSFER_DTYPE).reshape(-1)
        _transfer_defaults(batch, transfer_rows, LOAD_ID_BASE + indexes[transfer_rows], population.run_id)
        new = np.flatnonzero((slots == _PAYMENT) | (slots == _P2P) | (slots == _HOLD))
        payers = rng.integers(1, population.users + 1, len(new), dtype=np.uint64)
        merchants = population.draw_merchants(rng, len(new))
        # A P2P payee is any other wallet: draw from users - 1 and skip the payer.
        peers = rng.integers(1, population.users, len(new), dtype=np.uint64)
        peers += peers >= payers
        is_p2p = slots[new] == _P2P
        batch["debit_account_id_lo"][new] = payers
        batch["credit_account_id_lo"][new] = np.where(is_p2p, peers, merchants)
        batch["amount"][new] = _amounts(rng, payments, len(new))
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

        if self._orders is not None:
            self._orders.create(rng, events, kinds, indexes, np.flatnonzero(slots == _QR_CREATE))
            self._orders.follow_up(rng, events, kinds, indexes, followed, answered_orders)
            self._orders.refund(rng, events, kinds, indexes, order_refunds, paid_orders)
        if self._codes is not None:
            self._codes.issue(rng, events, kinds, indexes, np.flatnonzero(slots == _CODE_ISSUE))
            self._codes.charge(rng, events, kinds, indexes, charged, issued_codes)
            self._codes.follow_up(events, kinds, code_followed, held_charges)
        if self._envelopes is not None:
            self._envelopes.claim(events, kinds, claiming, claims)
            self._envelopes.send(rng, events, kinds, indexes, sending)
        return Block(indexes, events, kinds)

    @staticmethod
    def _columns(batch: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.stack([batch["id_lo"][rows], batch["debit_account_id_lo"][rows],
                         batch["credit_account_id_lo"][rows], batch["amount"][rows]])
