"""PAARC's user-facing knobs (the seed's names and README defaults), checked once, shared by every host."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any


@dataclass(frozen=True, slots=True)
class PaarcParams:
    """The user-facing knobs, with the seed's names and README defaults."""

    C_init: int = 8
    C_min: int = 2
    C_max: int = 2000
    mu: float = 1.0
    beta: float = 0.7
    theta_50: float = 1.5
    theta_95: float = 2.0
    probe_rtt_period: float = 30.0
    alpha_ema: float = 0.3

    def __post_init__(self) -> None:
        # The one place these rules live: config.py reports them as user errors.
        if not 1 <= self.C_min <= self.C_init <= self.C_max:
            raise ValueError(f"need 1 <= C_min <= C_init <= C_max, got {self.C_min}, {self.C_init}, {self.C_max}")
        if not 0 < self.mu <= 1:
            raise ValueError(f"mu must be in (0, 1], got {self.mu}")
        if not 0 < self.beta < 1:
            raise ValueError(f"beta must be in (0, 1), got {self.beta}")
        if self.theta_50 <= 1 or self.theta_95 <= 1:
            raise ValueError("theta_50 and theta_95 must be > 1 (they multiply unloaded latencies)")
        if self.probe_rtt_period <= 0:
            raise ValueError("probe_rtt_period must be > 0")
        if not 0 < self.alpha_ema <= 1:
            raise ValueError(f"alpha_ema must be in (0, 1], got {self.alpha_ema}")

    @classmethod
    def from_options(cls, opts: object) -> PaarcParams:
        """Copy the knobs from any object with the same attribute names (e.g. config.PaarcOptions)."""
        return interned(*(getattr(opts, name) for name in _PARAM_NAMES))

    @classmethod
    def defaults(cls) -> PaarcParams:
        return interned(*(f.default for f in fields(cls)))

    def scaled(self, share: float) -> PaarcParams:
        """These knobs for one of several partitions that share a host: C_init and C_max times the
        share (rounded down, so the shares add up to no more than the whole), never under C_min."""
        if not 0 < share <= 1:
            raise ValueError(f"a host's budget share must be in (0, 1], got {share}")
        if share == 1:
            return self
        values = {name: getattr(self, name) for name in _PARAM_NAMES}
        for name in ("C_init", "C_max"):
            values[name] = max(self.C_min, math.floor(values[name] * share + 1e-9))  # 1e-9: 0.29 x 100 is 28.99..
        return interned(*values.values())


_PARAM_NAMES = tuple(f.name for f in fields(PaarcParams))


@lru_cache(maxsize=64)
def interned(*values: Any) -> PaarcParams:
    """One params object per distinct set of values: a million hosts share it instead of a copy each."""
    return PaarcParams(*values)
