"""The client library: what services use to submit payments to a Tally server.

>>> client = await Client.connect("127.0.0.1", 7420, client_id=1, secret=b"...")
>>> results = await client.create_transfers(batch)       # uint32 core.Result codes, after the commit
>>> await client.create_transfer(id=new_id(), debit_account_id=1, credit_account_id=2, amount=100,
...                              ledger=156, code=1)
<Result.ok: 0>
>>> client.close()

* **Ids**: ``new_id()`` (re-exported from ``core.ids``) makes time-ordered u128 ids: the
  millisecond in the high 48 bits, random bits below, strictly increasing per process. Services
  should make transfer and account ids with it (or ``core.new_ids(n)`` for a batch): the server's
  id index then grows by appends and a new id is proven new without a disk read. Any other
  unique id works, at that cost (docs/data-model.md, "Ids"). Make the id once per payment and
  keep it for retries: it is the idempotency key.

* **Batches** (``create_accounts``/``create_transfers`` with a NumPy record batch) go out as one
  frame each; any number can be in flight on one connection, replies are matched by request id.
* **Single calls** (``create_account``/``create_transfer``) made concurrently are gathered into
  one frame per event-loop turn (at most 8,190 events each): 10,000 concurrent calls cost two
  frames, not 10,000. Each call returns its own ``core.Result``.
* **Retries**: if the connection drops (or the server answers ``unavailable`` while it shuts
  down), the client reconnects and re-sends every unanswered request with the same bodies, so
  the same ids. That is safe because creates are idempotent: an event already applied answers
  ``Result.exists`` (same id, same fields) instead of being applied twice.
* ``BlockingClient`` wraps all of this for code without an event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import threading

import numpy as np

import core
from core import order_keys
from core.ids import new_id  # noqa: F401 - re-exported: services make their ids with it
from engine import constants, frame
from engine.protocol import (
    CREATE_RECORD_DTYPES, CREATE_REPLY_DTYPES, FILTER_ENCODER, LOOKUP_RECORD_DTYPES, OPERATIONS, AccountTransfersFilter,
    QuoteRequest,
    MerchantsPage, NotificationsRequest, Operation,
)

RECONNECT_ATTEMPTS_DEFAULT = 5
RECONNECT_BACKOFF_S = 0.05       # doubled after each failed attempt
RECONNECT_BACKOFF_MAX_S = 1.0


class ServerError(Exception):
    """The server rejected a request (``status`` is an ``engine.frame.Status``)."""

    def __init__(self, status: int):
        super().__init__(f"server rejected the request: {frame.Status(status).name}")
        self.status = frame.Status(status)


#: Statuses after which the request is re-sent on a new connection (the server went away).
_RETRY = {frame.Status.unavailable}


class _Request:
    __slots__ = ("operation", "body", "event_count", "future")

    def __init__(self, operation, body, event_count, future):
        self.operation = operation
        self.body = body
        self.event_count = event_count
        self.future = future


class _ReplyReader(asyncio.Protocol):
    def __init__(self, client: "Client"):
        self.client = client
        self.decoder = client._new_decoder()

    def data_received(self, data):
        for item in self.decoder.feed(data):
            self.client._deliver(item)

    def connection_lost(self, exc):
        self.client._connection_lost(self)


class Client:
    """An asyncio connection to a Tally server; see the module's docstring.

    Ids are the caller's: make transfer (and account) ids with ``engine.client.new_id()`` (time-
    ordered, so the server's id index appends and proves them new without a disk read), once per
    payment, and reuse that id when retrying the payment so a duplicate answers ``exists``.
    """

    def __init__(self, host: str, port: int, client_id: int, secret: bytes, *, ssl=None,
                 reconnect_attempts: int = RECONNECT_ATTEMPTS_DEFAULT):
        self.host, self.port, self.ssl = host, port, ssl
        self.client_id = client_id
        self.secret = secret
        self.reconnect_attempts = reconnect_attempts
        self.frames_sent = 0       # frames written, retries included (for tests and stats)
        self.reconnects = 0
        self._retries = 0          # reconnects since the last good reply
        self._ids = itertools.count(1)
        self._waiting: dict[int, _Request] = {}
        # Open subscriptions: request id -> the queue their later frames go to.
        self._streams: dict[int, asyncio.Queue] = {}
        self._transport: asyncio.Transport | None = None
        self._reader: _ReplyReader | None = None
        self._reconnecting: asyncio.Task | None = None
        self._closed = False
        # Single calls waiting for the next flush: operation -> (record bytes, futures).
        self._gathering: dict[int, tuple[list[bytes], list[asyncio.Future]]] = {}
        self._flush_scheduled = False

    @classmethod
    async def connect(cls, host: str, port: int, *, client_id: int, secret: bytes, ssl=None,
                      reconnect_attempts: int = RECONNECT_ATTEMPTS_DEFAULT) -> "Client":
        client = cls(host, port, client_id, secret, ssl=ssl, reconnect_attempts=reconnect_attempts)
        await client._open()
        return client

    # ------------------------------------------------------------------ operations

    async def create_accounts(self, batch: np.ndarray) -> np.ndarray:
        """Create a batch of accounts (``core.ACCOUNT_DTYPE``): one ``core.Result`` code per account."""
        return await self._create(Operation.create_accounts, batch)

    async def create_transfers(self, batch: np.ndarray) -> np.ndarray:
        """Create a batch of transfers (``core.TRANSFER_DTYPE``): one ``core.Result`` code per transfer.

        The batch is sent without a copy, and re-sent as it is after a reconnect: do not change
        it until the call returns (a changed batch would be a different request under one id).
        """
        return await self._create(Operation.create_transfers, batch)

    async def create_account(self, **fields) -> core.Result:
        """Create one account (fields as in ``core.accounts_from_dicts``), batched with concurrent calls."""
        return await self._gather(Operation.create_accounts, core.accounts_from_dicts([fields]))

    async def create_transfer(self, **fields) -> core.Result:
        """Create one transfer (fields as in ``core.transfers_from_dicts``), batched with concurrent calls."""
        return await self._gather(Operation.create_transfers, core.transfers_from_dicts([fields]))

    async def set_merchants(self, batch: np.ndarray) -> np.ndarray:
        """Set merchants' terms (``core.MERCHANT_DTYPE``: fee rate, fee and settlement accounts):
        one ``core.Result`` code per merchant. See docs/products.md."""
        return await self._create(Operation.set_merchants, batch)

    async def lookup_merchants(self, ids) -> np.ndarray:
        """The terms of these merchant accounts, those with none left out (``core.MERCHANT_DTYPE``)."""
        return await self._lookup(Operation.lookup_merchants, ids)

    async def create_orders(self, batch: np.ndarray) -> np.ndarray:
        """Create merchant orders (``core.ORDER_CREATE_DTYPE``; ids from ``core.orders.order_id``):
        one ``core.ORDER_CREATED_DTYPE`` reply per order, its result and the token for its QR
        payload (``core.orders.qr_payload``). See docs/products.md."""
        return await self._create(Operation.create_orders, batch)

    async def pay_orders(self, batch: np.ndarray) -> np.ndarray:
        """Pay orders from wallets (``core.ORDER_PAY_DTYPE``): one ``core.Result`` code per payment."""
        return await self._create(Operation.pay_orders, batch)

    async def close_orders(self, batch: np.ndarray) -> np.ndarray:
        """Close unpaid orders (``core.ORDER_CLOSE_DTYPE``): one ``core.Result`` code per order."""
        return await self._create(Operation.close_orders, batch)

    async def refund_orders(self, batch: np.ndarray) -> np.ndarray:
        """Refund paid orders (``core.REFUND_DTYPE``; ids from ``core.order_keys.refund_id``): one
        ``core.Result`` code per refund."""
        return await self._create(Operation.refund_orders, batch)

    async def lookup_refunds(self, ids) -> np.ndarray:
        """The refunds with these ids that exist, in order (``core.REFUND_DTYPE``)."""
        return await self._lookup(Operation.lookup_refunds, ids)

    async def settle_merchants(self, batch: np.ndarray) -> np.ndarray:
        """Settle merchants' closed windows (``core.SETTLEMENT_DTYPE`` events: merchant, window,
        ledger): one ``core.Result`` code per merchant (docs/products.md "Settlement")."""
        return await self._create(Operation.settle_merchants, batch)

    async def lookup_settlements(self, ids) -> np.ndarray:
        """The last settlement of each of these merchants that has one (``core.SETTLEMENT_DTYPE``)."""
        return await self._lookup(Operation.lookup_settlements, ids)

    async def issue_codes(self, batch: np.ndarray) -> np.ndarray:
        """Issue wallets' payment codes (``core.CODE_ISSUE_DTYPE``; ``core.order_keys.code_issues``
        builds them): one ``core.CODE_ISSUED_DTYPE`` reply per event, its result and the
        18-digit code to show. See docs/products.md "Payment codes (built)"."""
        return await self._create(Operation.issue_codes, batch)

    async def charge_codes(self, batch: np.ndarray) -> np.ndarray:
        """Charge payment codes at a merchant's till (``core.CODE_CHARGE_DTYPE``;
        ``core.order_keys.code_charges``): one ``core.Result`` per charge, ``user_paying`` when
        it waits for the user's confirmation (its order says how it ended)."""
        return await self._create(Operation.charge_codes, batch)

    async def confirm_charges(self, batch: np.ndarray) -> np.ndarray:
        """Confirm or decline held charges (``core.CODE_CONFIRM_DTYPE``;
        ``core.order_keys.charge_confirms``): one ``core.Result`` per event."""
        return await self._create(Operation.confirm_charges, batch)

    async def lookup_codes(self, ids) -> np.ndarray:
        """The payment codes with these numbers that exist, in order (``core.CODE_DTYPE``)."""
        return await self._lookup(Operation.lookup_codes, ids)

    async def send_envelopes(self, batch: np.ndarray) -> np.ndarray:
        """Send red envelopes (``core.ENVELOPE_SEND_DTYPE``; ``core.order_keys.envelope_sends``
        builds them): one ``core.Result`` per packet. See docs/products.md "Red envelopes"."""
        return await self._create(Operation.send_envelopes, batch)

    async def claim_envelopes(self, batch: np.ndarray) -> np.ndarray:
        """Claim red envelopes (``core.ENVELOPE_CLAIM_DTYPE``; ``core.order_keys.envelope_claims``):
        one ``core.ENVELOPE_CLAIMED_DTYPE`` reply per claim, its result, place and share (a
        retried claim: ``exists`` with the same place and share)."""
        return await self._create(Operation.claim_envelopes, batch)

    async def lookup_envelopes(self, ids) -> np.ndarray:
        """The red envelopes (packets) with these ids that exist, in order (``core.ENVELOPE_DTYPE``)."""
        return await self._lookup(Operation.lookup_envelopes, ids)

    async def lookup_envelope_claims(self, ids) -> np.ndarray:
        """The claims with these ids (``core.order_keys.claim_id``) that exist, in order
        (``core.CLAIM_DTYPE``)."""
        return await self._lookup(Operation.lookup_envelope_claims, ids)

    async def envelope_claims(self, envelope_id: int) -> np.ndarray:
        """Who claimed a packet, what and when: its claim transfers in claim order
        (``core.TRANSFER_DTYPE``: ``credit_account_id`` the claimer, ``amount``, ``timestamp``)."""
        found = await self.lookup_envelopes([envelope_id])
        if not found.shape[0]:
            return np.empty(0, dtype=core.TRANSFER_DTYPE)
        return await self.lookup_transfers(order_keys.claim_transfer_ids(envelope_id, int(found["claimed"][0])))

    async def create_stocks(self, batch: np.ndarray) -> np.ndarray:
        """Create coupon stocks (``core.STOCK_CREATE_DTYPE``; ``core.order_keys.stock_creates``):
        one ``core.Result`` per stock. See docs/products.md "Coupons and the card pack"."""
        return await self._create(Operation.create_stocks, batch)

    async def grant_coupons(self, batch: np.ndarray) -> np.ndarray:
        """Grant coupons into users' card packs (``core.COUPON_GRANT_DTYPE``;
        ``core.order_keys.coupon_grants``): one ``core.Result`` per grant."""
        return await self._create(Operation.grant_coupons, batch)

    async def pay_with_coupon(self, batch: np.ndarray) -> np.ndarray:
        """Pay merchants with coupons (``core.COUPON_PAY_DTYPE``; ``core.order_keys.coupon_pays``):
        one ``core.Result`` per payment (a retry: ``exists``)."""
        return await self._create(Operation.pay_with_coupon, batch)

    async def lookup_stocks(self, ids) -> np.ndarray:
        """The coupon stocks with these ids that exist, with their analytics (``core.STOCK_DTYPE``)."""
        return await self._lookup(Operation.lookup_stocks, ids)

    async def lookup_coupons(self, ids) -> np.ndarray:
        """The coupons with these ids that exist (``core.COUPON_DTYPE``)."""
        return await self._lookup(Operation.lookup_coupons, ids)

    async def set_rates(self, batch: np.ndarray) -> np.ndarray:
        """Set currency pairs' rates (``core.FX_RATE_DTYPE``; ``core.order_keys.rates``), admin
        only: one ``core.Result`` per pair. See docs/products.md "Cross-border payments"."""
        return await self._create(Operation.set_rates, batch)

    async def quote_cross_border(self, from_ledger: int, to_ledger: int, merchant_amounts) -> np.ndarray:
        """What a payer in ``from_ledger`` pays for each merchant amount (``to_ledger``'s minor
        units) now: ``core.FX_QUOTE_DTYPE`` records (payer amount, rate, its version)."""
        body = FILTER_ENCODER.encode(QuoteRequest(from_ledger, to_ledger, [int(a) for a in merchant_amounts]))
        reply = await self.request(Operation.quote_cross_border, body)
        return np.frombuffer(reply.body, dtype=core.FX_QUOTE_DTYPE).copy()

    async def pay_cross_border(self, batch: np.ndarray) -> np.ndarray:
        """Pay merchants in their currency from wallets in another (``core.FX_PAY_DTYPE``;
        ``core.order_keys.fx_pays``, with the quote's payer amount and rate version): one
        ``core.Result`` per payment (``rate_changed``: quote again)."""
        return await self._create(Operation.pay_cross_border, batch)

    async def refund_cross_border(self, batch: np.ndarray) -> np.ndarray:
        """Refund cross-border payments at their locked rate (``core.FX_REFUND_DTYPE``;
        ``core.order_keys.fx_refunds``): one ``core.Result`` per refund."""
        return await self._create(Operation.refund_cross_border, batch)

    async def lookup_fx_payments(self, ids) -> np.ndarray:
        """The cross-border payments with these ids that exist (``core.FX_PAYMENT_DTYPE``)."""
        return await self._lookup(Operation.lookup_fx_payments, ids)

    async def lookup_fx_refunds(self, ids) -> np.ndarray:
        """Their refunds with these ids that exist (``core.FX_REFUND_DTYPE``)."""
        return await self._lookup(Operation.lookup_fx_refunds, ids)

    async def lookup_rates(self, ids) -> np.ndarray:
        """The rates of these pairs (``core.order_keys.rate_pair_id``) that are set."""
        return await self._lookup(Operation.lookup_rates, ids)

    async def set_wallet_tiers(self, batch: np.ndarray) -> np.ndarray:
        """Give wallets their tiers (``core.WALLET_TIER_DTYPE``: account, ledger, tier 0-3; an
        admin's operation, docs/products.md "Wallet limits and real-name tiers (built)"); one
        u32 Result per event::

            tiers = core.records_from_dicts([{"account_id": 42, "ledger": 156, "tier": 2}], core.WALLET_TIER_DTYPE)
            await client.set_wallet_tiers(tiers)          # [ok]; again: [exists]
        """
        return await self._create(Operation.set_wallet_tiers, batch)

    async def set_tier_limits(self, batch: np.ndarray) -> np.ndarray:
        """Set tiers' limits per ledger (ledger 0: the defaults) in minor units
        (``core.TIER_LIMITS_DTYPE``; an admin's operation); one u32 Result per event::

            jpy = core.records_from_dicts([{"ledger": 392, "tier": 1, "payment_limit": 10_000,
                                            "daily_limit": 20_000, "yearly_limit": 20_000,
                                            "balance_limit": 20_000}], core.TIER_LIMITS_DTYPE)
            await client.set_tier_limits(jpy)             # [ok]
        """
        return await self._create(Operation.set_tier_limits, batch)

    async def lookup_wallet_limits(self, ids) -> np.ndarray:
        """Wallets' tiers, their limits in force and what their current engine day and calendar
        year hold (``core.WALLET_LIMITS_DTYPE``), unknown ids left out::

            row = (await client.lookup_wallet_limits([42]))[0]
            left_today = row["daily_limit"] - row["day_spent"]
        """
        return await self._lookup(Operation.lookup_wallet_limits, ids)

    async def list_merchants(self, offset: int = 0, limit: int = core.BATCH_EVENTS_MAX) -> np.ndarray:
        """Merchants' terms (``core.MERCHANT_DTYPE``) in the order they were first set."""
        reply = await self.request(Operation.list_merchants, FILTER_ENCODER.encode(MerchantsPage(offset, limit)))
        return np.frombuffer(reply.body, dtype=core.MERCHANT_DTYPE).copy()

    async def lookup_orders(self, ids) -> np.ndarray:
        """The orders with these ids that exist, in order (``core.ORDER_DTYPE``)."""
        return await self._lookup(Operation.lookup_orders, ids)

    async def lookup_accounts(self, ids) -> np.ndarray:
        """The accounts with these ids that exist, in order (``core.ACCOUNT_DTYPE``)."""
        return await self._lookup(Operation.lookup_accounts, ids)

    async def lookup_transfers(self, ids) -> np.ndarray:
        """The transfers with these ids that exist, in order (``core.TRANSFER_DTYPE``)."""
        return await self._lookup(Operation.lookup_transfers, ids)

    async def get_account_transfers(self, account_id: int, **query) -> np.ndarray:
        """One page of an account's transfers; ``query`` as in ``engine.protocol.AccountTransfersFilter``."""
        body = FILTER_ENCODER.encode(AccountTransfersFilter.of(account_id, **query))
        reply = await self.request(Operation.get_account_transfers, body)
        return np.frombuffer(reply.body, dtype=core.TRANSFER_DTYPE).copy()

    async def ping(self) -> None:
        await self.request(Operation.ping)

    async def notifications(self, after: tuple[int, int] = (0, 0), merchants=None):
        """Merchants' notifications (``core.NOTIFICATION_DTYPE`` arrays: paid, refunded and closed
        orders) in log order, from strictly after the cursor ``after`` = ``(sequence, index)``,
        then live as they are committed, for ever; after a lost connection or a server restart
        it reconnects and resumes after the last notification it yielded (at least once: keep
        the last ``(sequence, index)`` you processed and resume after it). ``merchants``: the
        merchant accounts wanted (a merchant gateway gets its own only).

        >>> async for notes in client.notifications(after=saved_cursor):
        ...     handle(notes); saved_cursor = (int(notes["sequence"][-1]), int(notes["index"][-1]))
        """
        cursor = after
        wanted = None if merchants is None else [m if m < 1 << 64 else m.to_bytes(16, "little") for m in merchants]
        while True:
            stream: asyncio.Queue = asyncio.Queue()
            body = FILTER_ENCODER.encode(NotificationsRequest(cursor[0], cursor[1], wanted))
            try:
                reply = await self.request(Operation.subscribe_notifications, body, stream=stream)
                while True:
                    # The frame's body is the caller's: no copy, unless it is a view of bytes.
                    notes = np.frombuffer(reply.body, dtype=core.NOTIFICATION_DTYPE)
                    if not notes.flags.writeable:
                        notes = notes.copy()
                    if notes.shape[0]:
                        cursor = (int(notes["sequence"][-1]), int(notes["index"][-1]))
                        yield notes
                    reply = await stream.get()
                    if isinstance(reply, BaseException):
                        raise reply
            except ConnectionError:
                if self._closed or self.reconnect_attempts == 0:
                    raise
                await asyncio.sleep(RECONNECT_BACKOFF_S)  # then resubscribe: request() reconnects
            finally:
                self._streams = {k: v for k, v in self._streams.items() if v is not stream}

    async def request(self, operation: int, body: bytes | memoryview = b"", event_count: int = 0, *,
                      stream: asyncio.Queue | None = None) -> frame.Frame:
        """Send one request and wait for its reply (re-sent after a reconnect); raises ServerError.
        With ``stream``, the later frames the server sends under the request's id go to it."""
        if self._closed:
            raise ConnectionError("the client is closed")
        request_id = next(self._ids)
        if stream is not None:
            self._streams[request_id] = stream
        if self._transport is None and self.reconnect_attempts == 0 and self._reconnecting is None:
            raise ConnectionError("not connected to the Tally server")
        request = _Request(operation, body, event_count, asyncio.get_running_loop().create_future())
        self._waiting[request_id] = request
        if self._transport is not None:
            self._send(request_id, request)
        elif self._reconnecting is None or self._reconnecting.done():
            # The connection went while nothing was waiting: this request reconnects.
            self._reconnecting = asyncio.ensure_future(self._reconnect())
        return await request.future

    def close(self) -> None:
        """Close the connection; unanswered requests fail with ConnectionError."""
        self._closed = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        if self._transport is not None:
            self._transport.close()
        self._fail_all(ConnectionError("the client was closed"))

    # ------------------------------------------------------------------ internals

    async def _create(self, operation: int, batch: np.ndarray) -> np.ndarray:
        dtype = CREATE_RECORD_DTYPES[operation]
        if batch.dtype != dtype:
            raise TypeError(f"batch dtype must be {dtype}")
        if len(batch) > constants.EVENTS_PER_REQUEST_MAX:
            raise ValueError(f"a batch holds at most {constants.EVENTS_PER_REQUEST_MAX} events")
        body = memoryview(np.ascontiguousarray(batch)).cast("B")
        reply = await self.request(operation, body, len(batch))
        return np.frombuffer(reply.body, dtype=CREATE_REPLY_DTYPES[operation]).copy()

    async def _lookup(self, operation: int, ids) -> np.ndarray:
        ids = core.ids_array(ids)
        if len(ids) > constants.EVENTS_PER_REQUEST_MAX:
            raise ValueError(f"a lookup holds at most {constants.EVENTS_PER_REQUEST_MAX} ids")
        reply = await self.request(operation, ids.tobytes())
        return np.frombuffer(reply.body, dtype=LOOKUP_RECORD_DTYPES[operation]).copy()

    async def _gather(self, operation: int, record: np.ndarray) -> core.Result:
        future = asyncio.get_running_loop().create_future()
        records, futures = self._gathering.setdefault(operation, ([], []))
        records.append(record.tobytes())
        futures.append(future)
        if not self._flush_scheduled:
            # Every call made in this turn of the event loop joins the same frame.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return core.Result(await future)

    def _flush(self) -> None:
        self._flush_scheduled = False
        gathering, self._gathering = self._gathering, {}
        for operation, (records, futures) in gathering.items():
            for start in range(0, len(records), constants.EVENTS_PER_REQUEST_MAX):
                chunk = futures[start:start + constants.EVENTS_PER_REQUEST_MAX]
                body = b"".join(records[start:start + constants.EVENTS_PER_REQUEST_MAX])
                task = asyncio.ensure_future(self.request(operation, body, len(chunk)))
                task.add_done_callback(lambda done, chunk=chunk: _scatter(done, chunk))

    def _send(self, request_id: int, request: _Request) -> None:
        header = frame.encode_header(request.operation, request_id, request.body, client_id=self.client_id,
                                     secret=self.secret, event_count=request.event_count)
        # One writev for header and body: the body is not copied, and one system call, not two.
        self._transport.writelines((header, request.body)) if len(request.body) else self._transport.write(header)
        self.frames_sent += 1

    def _new_decoder(self) -> frame.Decoder:
        # Replies are signed with this client's secret; error frames for unreadable headers with
        # client id 0 and an empty secret.
        return frame.Decoder({self.client_id: self.secret, 0: b""}, set(OPERATIONS) | {0}, set())

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        transport, reader = await loop.create_connection(lambda: _ReplyReader(self), self.host, self.port,
                                                         ssl=self.ssl)
        self._transport, self._reader = transport, reader

    def _deliver(self, item) -> None:
        if isinstance(item, frame.FrameError):  # the server's reply did not check: do not trust the stream
            self._fail_all(ServerError(item.status))
            if self._transport is not None:
                self._transport.close()
            return
        if item.status in _RETRY:
            return  # the server is going away: the request is re-sent after reconnecting
        request = self._waiting.pop(item.request_id, None)
        if request is None and item.request_id in self._streams:  # a subscription's next frame
            self._streams[item.request_id].put_nowait(item if item.status == frame.Status.ok
                                                      else ServerError(item.status))
            return
        if request is not None:
            if request.future.done():  # cancelled by its caller meanwhile
                pass
            elif item.status != frame.Status.ok:
                request.future.set_exception(ServerError(item.status))
            else:
                request.future.set_result(item)
                self._retries = 0
        elif item.request_id == 0 and item.status != frame.Status.ok:
            self._fail_all(ServerError(item.status))  # the server could not read one of our frames

    def _connection_lost(self, reader: _ReplyReader) -> None:
        if reader is not self._reader:
            return
        self._transport = self._reader = None
        for stream in self._streams.values():  # each resubscribes from its cursor
            stream.put_nowait(ConnectionError("connection to the Tally server lost"))
        self._streams = {}
        if self._closed:
            return
        if not self._waiting or self.reconnect_attempts == 0:
            self._fail_all(ConnectionError("connection to the Tally server lost"))
            return
        self._reconnecting = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        delay = RECONNECT_BACKOFF_S
        self._retries += 1
        if self._retries > self.reconnect_attempts:  # reconnecting works, but nothing gets answered
            self._retries = 0  # a later request may find the server working again
            self._fail_all(ConnectionError(f"no reply from {self.host}:{self.port} after "
                                           f"{self.reconnect_attempts} reconnects"))
            return
        for _ in range(self.reconnect_attempts):
            await asyncio.sleep(delay)
            try:
                await self._open()
            except OSError:
                delay = min(2 * delay, RECONNECT_BACKOFF_MAX_S)
                continue
            self.reconnects += 1
            for request_id, request in sorted(self._waiting.items()):
                self._send(request_id, request)  # same bodies: the same ids, so retries are idempotent
            return
        self._retries = 0  # given up on these requests; a later one may find the server back
        self._fail_all(ConnectionError(f"could not reconnect to {self.host}:{self.port}"))

    def _fail_all(self, error: Exception) -> None:
        waiting, self._waiting = self._waiting, {}
        for request in waiting.values():
            if not request.future.done():
                request.future.set_exception(error)


def _scatter(done: asyncio.Future, futures: list[asyncio.Future]) -> None:
    """Hand each gathered single call its own result code (or the frame's error)."""
    if done.cancelled():
        for future in futures:
            future.cancel()
        return
    error = done.exception()
    if error is not None:
        for future in futures:
            if not future.done():
                future.set_exception(error)
        return
    codes = np.frombuffer(done.result().body, dtype=np.uint32).tolist()
    for future, code in zip(futures, codes):
        if not future.done():
            future.set_result(code)


def failures(results: np.ndarray) -> list[tuple[int, core.Result]]:
    """The events of a batch that did not succeed, as (index, result code name) pairs.

    >>> failures(await client.create_transfers(batch))
    [(3, <Result.exceeds_credits: 42>)]
    """
    return [(int(i), core.Result(int(results[i]))) for i in np.flatnonzero(results != core.Result.ok)]


class BlockingClient:
    """The same client for code without an event loop: each call blocks until its reply.

    >>> with BlockingClient("127.0.0.1", 7420, client_id=1, secret=b"...") as client:
    ...     client.create_transfers(batch)

    It runs an event loop on a background thread; calls from several threads are batched
    together like concurrent calls of the asyncio client.
    """

    def __init__(self, host: str, port: int, *, client_id: int, secret: bytes, ssl=None,
                 reconnect_attempts: int = RECONNECT_ATTEMPTS_DEFAULT):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tally-client", daemon=True)
        self._thread.start()
        self._client: Client = self._call(Client.connect(host, port, client_id=client_id, secret=secret, ssl=ssl,
                                                         reconnect_attempts=reconnect_attempts))

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def create_accounts(self, batch):
        return self._call(self._client.create_accounts(batch))

    def create_transfers(self, batch):
        return self._call(self._client.create_transfers(batch))

    def create_account(self, **fields):
        return self._call(self._client.create_account(**fields))

    def create_transfer(self, **fields):
        return self._call(self._client.create_transfer(**fields))

    def set_merchants(self, batch):
        return self._call(self._client.set_merchants(batch))

    def lookup_merchants(self, ids):
        return self._call(self._client.lookup_merchants(ids))

    def create_orders(self, batch):
        return self._call(self._client.create_orders(batch))

    def pay_orders(self, batch):
        return self._call(self._client.pay_orders(batch))

    def close_orders(self, batch):
        return self._call(self._client.close_orders(batch))

    def lookup_orders(self, ids):
        return self._call(self._client.lookup_orders(ids))

    def refund_orders(self, batch):
        return self._call(self._client.refund_orders(batch))

    def lookup_refunds(self, ids):
        return self._call(self._client.lookup_refunds(ids))

    def settle_merchants(self, batch):
        return self._call(self._client.settle_merchants(batch))

    def lookup_settlements(self, ids):
        return self._call(self._client.lookup_settlements(ids))

    def issue_codes(self, batch):
        return self._call(self._client.issue_codes(batch))

    def charge_codes(self, batch):
        return self._call(self._client.charge_codes(batch))

    def confirm_charges(self, batch):
        return self._call(self._client.confirm_charges(batch))

    def lookup_codes(self, ids):
        return self._call(self._client.lookup_codes(ids))

    def send_envelopes(self, batch):
        return self._call(self._client.send_envelopes(batch))

    def claim_envelopes(self, batch):
        return self._call(self._client.claim_envelopes(batch))

    def lookup_envelopes(self, ids):
        return self._call(self._client.lookup_envelopes(ids))

    def lookup_envelope_claims(self, ids):
        return self._call(self._client.lookup_envelope_claims(ids))

    def envelope_claims(self, envelope_id):
        return self._call(self._client.envelope_claims(envelope_id))

    def create_stocks(self, batch):
        return self._call(self._client.create_stocks(batch))

    def grant_coupons(self, batch):
        return self._call(self._client.grant_coupons(batch))

    def pay_with_coupon(self, batch):
        return self._call(self._client.pay_with_coupon(batch))

    def lookup_stocks(self, ids):
        return self._call(self._client.lookup_stocks(ids))

    def lookup_coupons(self, ids):
        return self._call(self._client.lookup_coupons(ids))

    def set_rates(self, batch):
        return self._call(self._client.set_rates(batch))

    def quote_cross_border(self, from_ledger, to_ledger, merchant_amounts):
        return self._call(self._client.quote_cross_border(from_ledger, to_ledger, merchant_amounts))

    def pay_cross_border(self, batch):
        return self._call(self._client.pay_cross_border(batch))

    def refund_cross_border(self, batch):
        return self._call(self._client.refund_cross_border(batch))

    def lookup_fx_payments(self, ids):
        return self._call(self._client.lookup_fx_payments(ids))

    def lookup_fx_refunds(self, ids):
        return self._call(self._client.lookup_fx_refunds(ids))

    def lookup_rates(self, ids):
        return self._call(self._client.lookup_rates(ids))

    def set_wallet_tiers(self, batch):
        return self._call(self._client.set_wallet_tiers(batch))

    def set_tier_limits(self, batch):
        return self._call(self._client.set_tier_limits(batch))

    def lookup_wallet_limits(self, ids):
        return self._call(self._client.lookup_wallet_limits(ids))

    def list_merchants(self, offset=0, limit=core.BATCH_EVENTS_MAX):
        return self._call(self._client.list_merchants(offset, limit))

    def lookup_accounts(self, ids):
        return self._call(self._client.lookup_accounts(ids))

    def lookup_transfers(self, ids):
        return self._call(self._client.lookup_transfers(ids))

    def get_account_transfers(self, account_id, **query):
        return self._call(self._client.get_account_transfers(account_id, **query))

    def ping(self):
        return self._call(self._client.ping())

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._client.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
