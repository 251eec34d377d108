"""Workload files: the population, the operation mix and the rate over time of a load run.

A workload is a TOML or JSON file, checked by msgspec against ``Workload`` (unknown keys and
out-of-range values are refused with the key's path in the message)::

    # payments.toml
    seconds = 30

    [population]
    users = 1_000_000
    merchants = 10_000
    merchant_zipf_s = 1.1          # merchant popularity: rank r has weight 1 / r**s

    wallet_balance_minor = 1_000_000  # each wallet is topped up from a funding card first

    [mix]                          # relative weights of the requests
    payment = 72                   # wallet -> merchant (Zipf-chosen)
    p2p = 10                       # wallet -> wallet
    hold = 5                       # two-phase: half are holds, half resolve an earlier hold
    refund = 5                     # merchant -> wallet, returning an earlier payment
    qr_order = 6                   # a merchant's QR order, then its payment (or close): both counted
    order_refund = 2               # a paid order refunded, fully or in part
    payment_code = 4               # a wallet's payment code, then a merchant's charge of it, and (held
                                   # charges) the user's confirm or decline or the merchant's revoke
    red_envelope = 5               # a wallet's red envelope (a packet), then its group's claims of it
                                   # (default weights: 0, but payment 1)

    [payments]
    amount_median_minor = 3_000    # amounts are log-normal around this (fen: 30 CNY)
    amount_sigma = 1.0
    hold_s = 1.0                   # a hold is resolved at least this long after it was made
    capture_ratio = 0.9            # the rest are voided
    partial_capture_ratio = 0.2    # captures of part of the amount (a rental's final bill)
    refund_after_s = 1.0           # a payment is refunded at least this long after it was made

    [orders]                       # merchant payments (qr_order, order_refund; docs/products.md)
    fee_bps = 60                   # the merchants' fee: 60 basis points = 0.6 %
    close_ratio = 0.1              # orders left unpaid and closed by their merchant
    expire_ratio = 0.05            # orders left unpaid to expire
    expire_after_s = 60            # every order's life (60..7,776,000; 0 = the core's 2 hours)
    partial_refund_ratio = 0.3     # refunds of part of the amount (10..99 %), the rest in full
    refund_after_s = 1.0           # an order is refunded at least this long after its payment

    [codes]                        # payment codes (payment_code; docs/products.md "Payment codes")
    step_up_ratio = 0.1            # charges above the no-password limit: held, answered user_paying
    confirm_ratio = 0.8            # held charges the user confirms (confirm_charges)...
    decline_ratio = 0.05           # ...or declines (ConfirmFlags.decline)...
    revoke_ratio = 0.05            # ...or the merchant revokes (close_orders); the rest time out (45 s)
    confirm_after_s = 5.0          # a held charge is confirmed, declined or revoked this long after it
                                   # was answered (0..30)

    [envelopes]                    # red envelopes (red_envelope; docs/products.md "Red envelopes")
    count = 10                     # shares per packet (1..10,000)
    total_min_minor = 100          # each packet's total, uniform in min..max minor units (the core
    total_max_minor = 20_000       # refuses above its envelope_total limit: 200.00 CNY by default)
    claimers = 12                  # a packet's group: this many wallets claim it; past count they are
                                   # late and find it empty (envelope_empty: here 2 of 12 claims)
    claim_after_s = 0.5            # a packet's claims are due this long after its send was answered
    claims_at_burst = false        # true: the New Year's Eve shape (rate.shape = "burst" only), below
    expire_after_s = 0             # a packet's life (1..86,400; 0 = the core's 24 h): the engine
                                   # returns what is left to the sender then

    [rate]
    shape = "burst"                # "constant", "ramp" or "burst"
    per_s = 50_000                 # constant: the rate; ramp: the rate at the end
    start_per_s = 0                # ramp: the rate at the start
    burst_at_s = 10                # burst: when the rate jumps...
    burst_factor = 10              # ...by this factor (the red-envelope spike at midnight)
    burst_s = 1                    # ...for this long

A ``qr_order``'s weight covers its two requests: the merchant's ``create_orders``, then, once
its answer (with the order's token) is in, the payer's ``pay_orders`` or, for ``close_ratio``
of them, the merchant's ``close_orders`` (``expire_ratio`` are never followed up: they expire
``expire_after_s`` after creation, or, in a shorter run, stay unpaid). ``order_refund`` needs
paid orders (``qr_order > 0`` and some of them paid). When a run has orders, its setup gives
every merchant terms (``set_merchants``: ``fee_bps``, one fee account, a settlement account
each); the server must hold them all (``orders_max``, ``refunds_max``, ``merchants_max`` in its
config), or it answers ``*_limit_reached``, which the report shows.

A ``payment_code``'s weight covers its requests: the wallet's ``issue_codes`` (the wallets take
turns, so no two codes of a batch, nor of ``users`` consecutive codes, are one wallet's: a
wallet has one live code), then, once its answer (with the code) is in, a Zipf-chosen
merchant's ``charge_codes`` of it (an amount of ``[payments]``' distribution). For
``step_up_ratio`` of the codes the code is issued with a ``no_password_limit`` below the
amount, so the charge is held for the user's confirmation and answered ``user_paying`` (an
outcome, not an error). ``confirm_after_s`` after that answer, ``confirm_ratio`` of the held
charges are confirmed (``confirm_charges``), ``decline_ratio`` declined (the same operation with
``ConfirmFlags.decline``) and ``revoke_ratio`` revoked by their merchant (``close_orders``); the
rest are left to the engine, which voids a hold 45 s after its charge (a shorter run ends with
them still held: the report's ``codes`` section counts them). A wallet's first 10 code payments
of an engine day are free of the confirmation; past them (a run of more than ``10 x users``
codes in a day) charges are held whatever their amount, and end as drawn for them.

A ``red_envelope``'s weight covers its requests: a uniform wallet's ``send_envelopes`` of a
packet of ``count`` shares (into the run's escrow account, created by the setup), then, once
its answer is in, ``claim_after_s`` later, the ``claim_envelopes`` of its group: the
``claimers`` wallets after the sender, in turn (distinct, never the sender). A slot of the
weight is a due claim if there is one, else a new packet: the shares of claims and sends follow
from ``claimers``, and claims never pile up for ever. Claims past ``count`` find the packet
empty (``envelope_empty``, an outcome: the late claimers); with ``claimers < count`` packets are
left open, and the engine refunds them ``expire_after_s`` after their send (a shorter run ends
with them open; the server holds at most ``envelopes_max`` less 8,190 open packets, past which
sends answer ``envelopes_limit_reached``). The report's ``envelopes`` section counts packets
sent, claims answered ok and late, minor units sent and claimed, packets emptied.

**New Year's Eve** (``claims_at_burst = true``, with ``rate.shape = "burst"``): packets
answered before the burst wait for it (midnight: the groups open their red envelopes
together), and the burst's requests above the base rate (``1 - 1 / burst_factor`` of them) are
their claims (payments when none is due): many packets are sent before midnight, then their
claims come in a spike. The packets of a burst are the ``red_envelope`` share of the requests
before it, and its claims ``claimers`` times as many: the burst's extra requests take them at
once when they are at least that many.

``Rate.per_s_at(t_s, seconds)`` gives the offered rate at ``t_s`` seconds; ``Rate.send_times_s(seconds)``
the open-loop schedule (request k is due at its time whatever the server's speed), and
``Rate.schedule(seconds)`` the same schedule as a function, for runs too long to list.
``loadgen.generator`` turns a workload into requests.
"""

from __future__ import annotations

import json
import math
import tomllib
from typing import Literal

import msgspec
import numpy as np

#: Bounds on a workload file (TigerBeetle style: a limit on everything).
USERS_MAX = 1 << 30
MERCHANTS_MAX = 1 << 24
RATE_PER_S_MAX = 100_000_000
SECONDS_MAX = 24 * 3600
SCHEDULE_REQUESTS_MAX = 1 << 31
AMOUNT_MINOR_MAX = 1 << 40
#: An order's life, as the core bounds it (core/orders.pxd; 0 means its default, 2 hours).
ORDER_EXPIRE_AFTER_S_MIN = 60
ORDER_EXPIRE_AFTER_S_MAX = 7_776_000
FEE_BPS_MAX = 10_000
#: A held code charge is voided by the engine this long after it was made (core/codes.pyx).
HOLD_TIMEOUT_S = 45
#: A held charge's confirm, decline or revoke comes at most this long after it (well inside the hold).
CONFIRM_AFTER_S_MAX = 30.0
#: Red envelopes, as the core bounds them (core/constants.py): shares per packet, a packet's life
#: (0 means its default, 24 hours), a total (the core's envelope_total limit can be raised to this).
ENVELOPE_COUNT_MAX = 10_000
ENVELOPE_EXPIRE_AFTER_S_MAX = 86_400
ENVELOPE_TOTAL_LIMIT_MAX = 1 << 53


class Population(msgspec.Struct, forbid_unknown_fields=True):
    users: int = 100_000
    merchants: int = 1_000
    merchant_zipf_s: float = 1.1
    wallet_balance_minor: int = 1_000_000

    def check(self) -> str | None:
        if not 2 <= self.users <= USERS_MAX:  # p2p needs two wallets
            return f"population.users must be in 2..{USERS_MAX}"
        if not 1 <= self.merchants <= MERCHANTS_MAX:
            return f"population.merchants must be in 1..{MERCHANTS_MAX}"
        if not 0.0 <= self.merchant_zipf_s <= 5.0:
            return "population.merchant_zipf_s must be in 0..5"
        if not 0 <= self.wallet_balance_minor <= AMOUNT_MINOR_MAX:
            return f"population.wallet_balance_minor must be in 0..{AMOUNT_MINOR_MAX}"
        return None


class Mix(msgspec.Struct, forbid_unknown_fields=True):
    """Relative weights of the operations; at least one must be positive."""
    payment: float = 1.0
    p2p: float = 0.0
    hold: float = 0.0
    refund: float = 0.0
    qr_order: float = 0.0
    order_refund: float = 0.0
    payment_code: float = 0.0
    red_envelope: float = 0.0

    def check(self) -> str | None:
        weights = msgspec.structs.asdict(self)
        if any(not math.isfinite(w) or w < 0 for w in weights.values()):
            return "mix weights must be finite and >= 0"
        if sum(weights.values()) <= 0:
            return "mix: at least one weight must be positive"
        return None

    def probabilities(self) -> dict[str, float]:
        weights = msgspec.structs.asdict(self)
        total = sum(weights.values())
        return {name: weight / total for name, weight in weights.items()}

    @property
    def has_orders(self) -> bool:
        """Whether the run makes merchant orders, QR orders or code charges (its setup then gives
        the merchants terms)."""
        return self.qr_order > 0 or self.payment_code > 0

    @property
    def has_codes(self) -> bool:
        """Whether the run issues and charges payment codes."""
        return self.payment_code > 0

    @property
    def has_envelopes(self) -> bool:
        """Whether the run sends and claims red envelopes (its setup then makes an escrow account)."""
        return self.red_envelope > 0


class Payments(msgspec.Struct, forbid_unknown_fields=True):
    """Amounts, and how two-phase payments and refunds follow the requests they depend on."""
    amount_median_minor: int = 3_000
    amount_sigma: float = 1.0
    hold_s: float = 1.0
    capture_ratio: float = 0.9
    partial_capture_ratio: float = 0.2
    refund_after_s: float = 1.0

    def check(self) -> str | None:
        if not 1 <= self.amount_median_minor <= AMOUNT_MINOR_MAX:
            return f"payments.amount_median_minor must be in 1..{AMOUNT_MINOR_MAX}"
        if not 0.0 <= self.amount_sigma <= 4.0:
            return "payments.amount_sigma must be in 0..4"
        for name in ("capture_ratio", "partial_capture_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                return f"payments.{name} must be in 0..1"
        for name in ("hold_s", "refund_after_s"):
            if not 0.0 <= getattr(self, name) <= SECONDS_MAX:
                return f"payments.{name} must be in 0..{SECONDS_MAX}"
        return None


class Orders(msgspec.Struct, forbid_unknown_fields=True):
    """Merchant payments: the merchants' fee, how unpaid orders end, and their refunds."""
    fee_bps: int = 60
    close_ratio: float = 0.1
    expire_ratio: float = 0.05
    expire_after_s: int = ORDER_EXPIRE_AFTER_S_MIN
    partial_refund_ratio: float = 0.3
    refund_after_s: float = 1.0

    def check(self) -> str | None:
        if not 0 <= self.fee_bps <= FEE_BPS_MAX:
            return f"orders.fee_bps must be in 0..{FEE_BPS_MAX}"
        for name in ("close_ratio", "expire_ratio", "partial_refund_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                return f"orders.{name} must be in 0..1"
        if self.close_ratio + self.expire_ratio > 1.0:
            return "orders.close_ratio + orders.expire_ratio must be <= 1"
        if self.expire_after_s != 0 and not ORDER_EXPIRE_AFTER_S_MIN <= self.expire_after_s <= ORDER_EXPIRE_AFTER_S_MAX:
            return f"orders.expire_after_s must be 0 or in {ORDER_EXPIRE_AFTER_S_MIN}..{ORDER_EXPIRE_AFTER_S_MAX}"
        if not 0.0 <= self.refund_after_s <= SECONDS_MAX:
            return f"orders.refund_after_s must be in 0..{SECONDS_MAX}"
        return None

    @property
    def paid_ratio(self) -> float:
        """The share of orders their payer pays."""
        return max(0.0, 1.0 - self.close_ratio - self.expire_ratio)


class Codes(msgspec.Struct, forbid_unknown_fields=True):
    """Payment codes: the share of charges held for the user's confirmation, and how held ones end."""
    step_up_ratio: float = 0.1
    confirm_ratio: float = 0.8
    decline_ratio: float = 0.05
    revoke_ratio: float = 0.05
    confirm_after_s: float = 5.0

    def check(self) -> str | None:
        for name in ("step_up_ratio", "confirm_ratio", "decline_ratio", "revoke_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                return f"codes.{name} must be in 0..1"
        if self.confirm_ratio + self.decline_ratio + self.revoke_ratio > 1.0 + 1e-9:
            return "codes.confirm_ratio + codes.decline_ratio + codes.revoke_ratio must be <= 1"
        # A held charge is voided 45 s after it was made: a later confirm would find it ended.
        if not 0.0 <= self.confirm_after_s <= CONFIRM_AFTER_S_MAX:
            return f"codes.confirm_after_s must be in 0..{CONFIRM_AFTER_S_MAX:g} (a hold ends after {HOLD_TIMEOUT_S} s)"
        return None

    @property
    def resolved_ratio(self) -> float:
        """The share of held charges followed up (confirmed, declined or revoked)."""
        return min(1.0, self.confirm_ratio + self.decline_ratio + self.revoke_ratio)


class Envelopes(msgspec.Struct, forbid_unknown_fields=True):
    """Red envelopes: the packets' shares and totals, who claims them and when."""
    count: int = 10
    total_min_minor: int = 100
    total_max_minor: int = 20_000
    claimers: int = 12
    claim_after_s: float = 0.5
    claims_at_burst: bool = False
    expire_after_s: int = 0

    def check(self) -> str | None:
        if not 1 <= self.count <= ENVELOPE_COUNT_MAX:
            return f"envelopes.count must be in 1..{ENVELOPE_COUNT_MAX:,}"
        # Every share is at least one minor unit: a total below the count is refused by the core.
        if not self.count <= self.total_min_minor <= self.total_max_minor <= ENVELOPE_TOTAL_LIMIT_MAX:
            return ("envelopes: count <= total_min_minor <= total_max_minor <= "
                    f"{ENVELOPE_TOTAL_LIMIT_MAX} must hold (a share is at least 1 minor unit)")
        if not 1 <= self.claimers <= ENVELOPE_COUNT_MAX * 10:
            return f"envelopes.claimers must be in 1..{ENVELOPE_COUNT_MAX * 10:,}"
        if not 0.0 <= self.claim_after_s <= SECONDS_MAX:
            return f"envelopes.claim_after_s must be in 0..{SECONDS_MAX}"
        if not 0 <= self.expire_after_s <= ENVELOPE_EXPIRE_AFTER_S_MAX:
            return f"envelopes.expire_after_s must be in 0..{ENVELOPE_EXPIRE_AFTER_S_MAX:,} (0: 24 hours)"
        return None


class Rate(msgspec.Struct, forbid_unknown_fields=True):
    shape: Literal["constant", "ramp", "burst"] = "constant"
    per_s: float = 10_000.0
    start_per_s: float = 0.0
    burst_at_s: float = 0.0
    burst_factor: float = 10.0
    burst_s: float = 1.0

    def check(self) -> str | None:
        # per_s first, with its one range: 0, -5, nan and inf (from a file or --rate) get the same message.
        if not 0 < self.per_s <= RATE_PER_S_MAX:
            return f"rate.per_s must be in (0, {RATE_PER_S_MAX}]"
        for name in ("start_per_s", "burst_at_s", "burst_factor", "burst_s"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                return f"rate.{name} must be finite and >= 0"
        peak_per_s = self.per_s * self.burst_factor if self.shape == "burst" else self.per_s
        if self.start_per_s > RATE_PER_S_MAX or peak_per_s > RATE_PER_S_MAX:
            return f"rates must stay <= {RATE_PER_S_MAX}/s"
        if self.shape == "burst" and (self.burst_factor < 1 or self.burst_s <= 0):
            return "a burst needs burst_factor >= 1 and burst_s > 0"
        return None

    def per_s_at(self, t_s, seconds: float):
        """The offered rate (requests/s) at ``t_s`` seconds (a number or an array) into a run of ``seconds``."""
        t_s = np.asarray(t_s, dtype=np.float64)
        if self.shape == "ramp":
            rate = self.start_per_s + (self.per_s - self.start_per_s) * np.clip(t_s / seconds, 0.0, 1.0)
        elif self.shape == "burst":
            in_burst = (self.burst_at_s <= t_s) & (t_s < self.burst_at_s + self.burst_s)
            rate = np.where(in_burst, self.per_s * self.burst_factor, self.per_s)
        else:
            rate = np.full(t_s.shape, self.per_s)
        return float(rate) if rate.ndim == 0 else rate

    def schedule(self, seconds: float) -> "Schedule":
        """The open-loop schedule: request k is due when the integral of the rate reaches k.

        So a ramp or a burst is followed exactly, not in steps; the integral is computed on a
        1 ms grid (where a burst's edges fall) and interpolated.
        """
        steps = max(1, int(math.ceil(seconds * 1000)))
        grid_s = np.linspace(0.0, seconds, steps + 1)
        middles = (grid_s[:-1] + grid_s[1:]) / 2  # exact for a ramp
        rates = self.per_s_at(middles, seconds)
        cumulative = np.concatenate(([0.0], np.cumsum(rates * np.diff(grid_s))))
        # Not lost to rounding in the sum: 30 s at 200,000/s is 6,000,000 requests, not 5,999,999.
        total = int(math.floor(cumulative[-1] * (1 + 1e-12) + 1e-6))
        if total > SCHEDULE_REQUESTS_MAX:
            raise ValueError(f"{total:,} requests: more than {SCHEDULE_REQUESTS_MAX:,} in one run")
        return Schedule(grid_s, cumulative, total)

    def send_times_s(self, seconds: float) -> np.ndarray:
        """When each request is due, in seconds from the start (the whole schedule as an array)."""
        schedule = self.schedule(seconds)
        return schedule.times_s(0, schedule.total)

    def scaled(self, factor: float) -> "Rate":
        """The same shape at ``factor`` times the rate (a worker's share of the load)."""
        return msgspec.structs.replace(self, per_s=self.per_s * factor, start_per_s=self.start_per_s * factor)


class Schedule:
    """When each request of an open-loop run is due, without listing them all."""

    def __init__(self, grid_s: np.ndarray, cumulative: np.ndarray, total: int):
        self._grid_s = grid_s
        self._cumulative = cumulative
        self.total = total
        self.seconds = float(grid_s[-1])

    def due_by(self, t_s: float) -> int:
        """How many requests are due by ``t_s`` seconds from the start (request k is due once
        the rate's integral reaches k, so request 0 is due at 0)."""
        if t_s < 0:
            return 0
        if t_s >= self.seconds:
            return self.total  # the last request is due at the end even if the sum rounded below it
        integral = float(np.interp(t_s, self._grid_s, self._cumulative))
        return min(self.total, int(math.floor(integral * (1 + 1e-12) + 1e-6)) + 1)

    def times_s(self, first: int, end: int) -> np.ndarray:
        """The due times of requests ``first`` .. ``end - 1``, in seconds from the start."""
        return np.interp(np.arange(first, end, dtype=np.float64), self._cumulative, self._grid_s)


class Workload(msgspec.Struct, forbid_unknown_fields=True):
    seconds: float = 10.0
    population: Population = msgspec.field(default_factory=Population)
    mix: Mix = msgspec.field(default_factory=Mix)
    payments: Payments = msgspec.field(default_factory=Payments)
    orders: Orders = msgspec.field(default_factory=Orders)
    codes: Codes = msgspec.field(default_factory=Codes)
    envelopes: Envelopes = msgspec.field(default_factory=Envelopes)
    rate: Rate = msgspec.field(default_factory=Rate)

    def check(self) -> str | None:
        if not 0 < self.seconds <= SECONDS_MAX:
            return f"seconds must be in (0, {SECONDS_MAX}]"
        problem = (self.population.check() or self.mix.check() or self.payments.check() or self.orders.check()
                   or self.codes.check() or self.envelopes.check() or self.rate.check())
        if problem:
            return problem
        if self.mix.order_refund > 0 and not (self.mix.qr_order > 0 and self.orders.paid_ratio > 0):
            return ("mix.order_refund needs paid orders: mix.qr_order > 0 and "
                    "orders.close_ratio + orders.expire_ratio < 1")
        if self.mix.has_envelopes and self.envelopes.claimers >= self.population.users:
            return (f"envelopes.claimers ({self.envelopes.claimers}) must be below population.users: a "
                    "packet's claimers are distinct wallets other than its sender")
        if self.envelopes.claims_at_burst and self.rate.shape != "burst":
            return 'envelopes.claims_at_burst needs rate.shape = "burst" (the claims come in its burst)'
        if self.rate.shape == "burst" and self.rate.burst_at_s >= self.seconds:
            return f"rate.burst_at_s ({self.rate.burst_at_s:g}) is after the run's end ({self.seconds:g} s)"
        # The most requests the rate can add up to (the schedule is built only when a run starts).
        peak_per_s = max(self.rate.per_s * (self.rate.burst_factor if self.rate.shape == "burst" else 1.0),
                         self.rate.start_per_s)
        if peak_per_s * self.seconds > SCHEDULE_REQUESTS_MAX:
            return f"rate x seconds may reach {peak_per_s * self.seconds:,.0f} requests: at most {SCHEDULE_REQUESTS_MAX:,} a run"
        return None


class WorkloadError(Exception):
    """A workload file that cannot be read or is out of range."""


def load(path: str) -> Workload:
    """Read a workload from a TOML or JSON file, and check it.

    ``.toml`` is read as TOML and ``.json`` as JSON; any other name by its content (JSON starts
    with ``{``), so a TOML file named ``.yaml`` or ``.txt`` is not met with a JSON parser's error.
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
        if path.endswith(".toml"):
            kind = "TOML"
        elif path.endswith(".json"):
            kind = "JSON"
        else:
            kind = "JSON" if data.lstrip().startswith(b"{") else "TOML"
        try:
            raw = json.loads(data) if kind == "JSON" else tomllib.loads(data.decode())
        except ValueError as error:  # JSONDecodeError, TOMLDecodeError and UnicodeDecodeError are ValueErrors
            raise WorkloadError(f"{path}: not valid {kind}: {error}") from error
        workload = msgspec.convert(raw, Workload)
    except (OSError, msgspec.ValidationError) as error:
        raise WorkloadError(f"{path}: {error}") from error
    problem = workload.check()
    if problem:
        raise WorkloadError(f"{path}: {problem}")
    return workload
