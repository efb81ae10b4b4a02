"""Confidence intervals for the two kinds of numbers the suite reports: means over documents and rates.

Perplexity is a mean over documents whose spread is unknown, so it gets a percentile bootstrap; an
accuracy is a binomial rate, where Wilson's interval stays inside [0, 1] and stays honest at 0/N and
N/N — exactly the cells (collapse beyond the original context) that a comparison is about.
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054


def bootstrap_ci(doc_nll: np.ndarray, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap over documents of exp(mean per-document NLL)."""
    if len(doc_nll) < 2:
        value = float(math.exp(doc_nll.mean()))
        return value, value
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(doc_nll), size=(resamples, len(doc_nll)))
    means = np.exp(doc_nll[picks].mean(axis=1))
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def wilson_interval(successes: float, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (successes may be fractional for partial scores)."""
    if trials <= 0:
        raise ValueError("a rate needs at least one trial")
    if not 0 <= successes <= trials:
        raise ValueError("successes must lie between 0 and the number of trials")
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high
