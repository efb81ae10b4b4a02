"""The search's constraints on a candidate, and the projection that imposes them.

Monotone factors (non-decreasing from the high-frequency pairs to the low-frequency ones), bounds, rounding
to the config's decimals, and in LongRoPE2 mode the NTK-shaped head below the critical dimension: a child of
mutation or crossover is mapped onto the nearest vector that meets them all, not rejected and redrawn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gpu_workers.search.config import SearchConfig, critical_window, lower_bound, upper_bound
from gpu_workers.search.shapes import ntk_factors


class Space:
    """The constraints: the critical dims allowed, the searched pairs' bounds, rounding, and the NTK head."""

    def __init__(self, config: SearchConfig) -> None:
        self.config = config
        self.window = critical_window(config)
        self.low = lower_bound(config)
        self.high = upper_bound(config)
        self.ntk = tuple(ntk_factors(config.rotary_dim, config.scale))

    @property
    def moves(self) -> bool:
        """True when the critical dim is searched (so mutation and crossover draw for it)."""
        return self.window[0] < self.window[1]

    def project(self, values: np.ndarray) -> np.ndarray:
        """Nearest monotone vector (isotonic regression), clipped to the bounds, rounded."""
        fitted = np.clip(isotonic(np.asarray(values, dtype=np.float64)), self.low, self.high)
        rounded = np.clip(np.round(fitted, self.config.decimals), self.low, self.high)
        return np.maximum.accumulate(rounded)

    def full(self, searched: np.ndarray, k: int) -> tuple[float, ...]:
        """The NTK head below pair k (exact), then the searched pairs."""
        return self.ntk[:k] + tuple(float(x) for x in searched)

    def critical_of(self, factors: Sequence[float]) -> int:
        """The first pair at or above the searched lower bound, within the window (the head is below s)."""
        k = next((i for i, x in enumerate(factors) if x >= self.low), len(factors) - 1)
        return min(max(k, self.window[0]), self.window[1])

    def attention(self, value: float) -> float:
        """Searched: clipped to the range and rounded. Fixed: exactly the configured (or default) value."""
        if not self.config.search_attention:
            return float(value)
        low, high = self.config.attention_range
        return float(round(min(high, max(low, value)), self.config.decimals))


def isotonic(values: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit (pool adjacent violators)."""
    sums: list[float] = []
    counts: list[int] = []
    for v in values.tolist():
        sums.append(v)
        counts.append(1)
        while len(sums) > 1 and sums[-2] / counts[-2] > sums[-1] / counts[-1]:
            s, c = sums.pop(), counts.pop()
            sums[-1] += s
            counts[-1] += c
    return np.concatenate([np.full(c, s / c) for s, c in zip(sums, counts, strict=True)])
