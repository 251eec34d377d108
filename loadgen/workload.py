"""Workload files: the population, the operation mix and the rate over time of a load run.

A workload is a TOML or JSON file, checked by msgspec against ``Workload`` (unknown keys and
out-of-range values are refused with the key's path in the message)::

    # payments.toml
    seconds = 30

    [population]
    users = 1_000_000
    merchants = 10_000
    merchant_zipf_s = 1.1          # merchant popularity: rank r has weight 1 / r**s

    [mix]                          # relative weights of the operations
    payment = 80
    p2p = 10
    hold = 5                       # two-phase: a pending transfer, then capture or void
    refund = 5

    [rate]
    shape = "burst"                # "constant", "ramp" or "burst"
    per_s = 50_000                 # constant: the rate; ramp: the rate at the end
    start_per_s = 0                # ramp: the rate at the start
    burst_at_s = 10                # burst: when the rate jumps...
    burst_factor = 10              # ...by this factor (the red-envelope spike at midnight)
    burst_s = 1                    # ...for this long

``Rate.per_s_at(t)`` gives the offered rate at ``t`` seconds; ``Rate.send_times_s(seconds)``
the open-loop schedule (request k is due at its time whatever the server's speed).
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


class Population(msgspec.Struct, forbid_unknown_fields=True):
    users: int = 100_000
    merchants: int = 1_000
    merchant_zipf_s: float = 1.1

    def check(self) -> str | None:
        if not 1 <= self.users <= USERS_MAX:
            return f"population.users must be in 1..{USERS_MAX}"
        if not 1 <= self.merchants <= MERCHANTS_MAX:
            return f"population.merchants must be in 1..{MERCHANTS_MAX}"
        if not 0.0 <= self.merchant_zipf_s <= 5.0:
            return "population.merchant_zipf_s must be in 0..5"
        return None


class Mix(msgspec.Struct, forbid_unknown_fields=True):
    """Relative weights of the operations; at least one must be positive."""
    payment: float = 1.0
    p2p: float = 0.0
    hold: float = 0.0
    refund: float = 0.0

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


class Rate(msgspec.Struct, forbid_unknown_fields=True):
    shape: Literal["constant", "ramp", "burst"] = "constant"
    per_s: float = 10_000.0
    start_per_s: float = 0.0
    burst_at_s: float = 0.0
    burst_factor: float = 10.0
    burst_s: float = 1.0

    def check(self) -> str | None:
        for name in ("per_s", "start_per_s", "burst_at_s", "burst_factor", "burst_s"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                return f"rate.{name} must be finite and >= 0"
        if not 0 < self.per_s <= RATE_PER_S_MAX:
            return f"rate.per_s must be in (0, {RATE_PER_S_MAX}]"
        if self.start_per_s > RATE_PER_S_MAX or self.per_s * self.burst_factor > RATE_PER_S_MAX:
            return f"rates must stay <= {RATE_PER_S_MAX}/s"
        if self.shape == "burst" and (self.burst_factor < 1 or self.burst_s <= 0):
            return "a burst needs burst_factor >= 1 and burst_s > 0"
        return None

    def per_s_at(self, t_s: float, seconds: float) -> float:
        """The offered rate (requests/s) at ``t_s`` seconds into a run of ``seconds``."""
        if self.shape == "ramp":
            return self.start_per_s + (self.per_s - self.start_per_s) * min(max(t_s / seconds, 0.0), 1.0)
        if self.shape == "burst" and self.burst_at_s <= t_s < self.burst_at_s + self.burst_s:
            return self.per_s * self.burst_factor
        return self.per_s

    def send_times_s(self, seconds: float) -> np.ndarray:
        """When each request is due, in seconds from the start: the open-loop schedule.

        Request k is due when the integral of the rate reaches k (so a ramp or a burst is
        followed exactly, not in steps), computed on a 1 ms grid and interpolated.
        """
        steps = max(1, int(math.ceil(seconds * 1000)))
        grid = np.linspace(0.0, seconds, steps + 1)
        middles = (grid[:-1] + grid[1:]) / 2  # exact for a ramp, and a burst edge falls on the grid
        rates = np.array([self.per_s_at(t, seconds) for t in middles])
        cumulative = np.concatenate(([0.0], np.cumsum(rates * np.diff(grid))))
        total = int(math.floor(cumulative[-1] + 1e-6))  # not lost to rounding in the sum
        if total > SCHEDULE_REQUESTS_MAX:
            raise ValueError(f"{total:,} requests: more than {SCHEDULE_REQUESTS_MAX:,} in one run")
        return np.interp(np.arange(total, dtype=np.float64), cumulative, grid)


class Workload(msgspec.Struct, forbid_unknown_fields=True):
    seconds: float = 10.0
    population: Population = msgspec.field(default_factory=Population)
    mix: Mix = msgspec.field(default_factory=Mix)
    rate: Rate = msgspec.field(default_factory=Rate)

    def check(self) -> str | None:
        if not 0 < self.seconds <= SECONDS_MAX:
            return f"seconds must be in (0, {SECONDS_MAX}]"
        return self.population.check() or self.mix.check() or self.rate.check()


class WorkloadError(Exception):
    """A workload file that cannot be read or is out of range."""


def load(path: str) -> Workload:
    """Read a workload from a ``.toml`` or ``.json`` file, and check it."""
    try:
        with open(path, "rb") as file:
            raw = tomllib.load(file) if path.endswith(".toml") else json.load(file)
        workload = msgspec.convert(raw, Workload)
    except (OSError, ValueError, tomllib.TOMLDecodeError, msgspec.ValidationError) as error:
        raise WorkloadError(f"{path}: {error}") from error
    problem = workload.check()
    if problem:
        raise WorkloadError(f"{path}: {problem}")
    return workload
