"""The analytic side of RoPE: the numbers plotted next to measurements, and the ones methods derive from.

Conventions (those of transformers' ``inv_freq``): a RoPE of rotary dimension ``d`` has ``d/2`` dimension
*pairs*; pair ``i`` turns by ``θ_i = base^(−2i/d)`` radians per position, so its wavelength is
``λ_i = 2π·base^(2i/d)`` tokens. "Per dimension" below means per pair (lists of length ``d/2``), except the
critical dimension, which the papers count in dimensions (``2 × pairs``).

Sources: Liu et al. 2023, "Scaling Laws of RoPE-based Extrapolation" (critical dimension, extrapolation
bound); Peng et al. 2023, YaRN (ramp dims, as transformers' ``find_correction_range`` computes them);
Shang et al. 2025, LongRoPE2 (critical dimension split of the factor search); Ding et al. 2024, LongRoPE
(its YaRN-shaped starting factors and attention scale).

Pure math: nothing here imports torch, transformers or a method family, so the methods and the factor search
can both build on it. A model's *actual* frequencies, which go through the method family and transformers'
own ``ROPE_INIT_FUNCTIONS`` so that the theory plotted is the RoPE a run uses, are
:mod:`gpu_workers.methods.frequencies`.
"""

from __future__ import annotations

import math


def _check_dim(rotary_dim: int) -> None:
    if rotary_dim < 2 or rotary_dim % 2:
        raise ValueError(f"the rotary dimension must be even and at least 2, not {rotary_dim}")


def wavelengths(rotary_dim: int, base: float) -> list[float]:
    """λ_i = 2π·base^(2i/d), in tokens, for each pair i (shortest first)."""
    _check_dim(rotary_dim)
    return [2 * math.pi * base ** (2 * i / rotary_dim) for i in range(rotary_dim // 2)]


def full_period_dims(rotary_dim: int, base: float, context: int) -> list[int]:
    """The pairs whose wavelength fits in ``context`` tokens: they saw every angle during training."""
    return [i for i, wavelength in enumerate(wavelengths(rotary_dim, base)) if wavelength <= context]


def critical_dimension(rotary_dim: int, base: float, train_length: int) -> int:
    """Liu et al.'s d_extra = 2⌈(d/2)·log_base(T_train/2π)⌉: the dimensions trained on a full period.

    Clipped to [0, d]. Equals ``2 * len(full_period_dims(...))`` unless a wavelength equals T_train exactly.
    """
    _check_dim(rotary_dim)
    if train_length <= 2 * math.pi:
        return 0
    pairs = math.ceil(rotary_dim / 2 * math.log(train_length / (2 * math.pi)) / math.log(base))
    return max(0, min(rotary_dim, 2 * pairs))


def extrapolation_bound(rotary_dim: int, train_base: float, train_length: int, base: float | None = None) -> float:
    """T_extra = 2π·base^(d_extra/d): the longest context the scaling law expects to work.

    ``d_extra`` comes from the base and length the model was *trained* with; ``base`` is the base used at
    run time (default: the trained one), so a larger base raises the bound. When every dimension completed
    a full period in training (d_extra = d) the law sets no bound: ``inf``.
    """
    d_extra = critical_dimension(rotary_dim, train_base, train_length)
    if d_extra >= rotary_dim:
        return math.inf
    return 2 * math.pi * (train_base if base is None else base) ** (d_extra / rotary_dim)


def base_for_extrapolation(rotary_dim: int, train_base: float, train_length: int, wanted_length: float) -> float:
    """The base whose bound is ``wanted_length``: (T/2π)^(d/d_extra), the inverse of :func:`extrapolation_bound`."""
    d_extra = critical_dimension(rotary_dim, train_base, train_length)
    if d_extra <= 0 or d_extra >= rotary_dim:
        raise ValueError(f"the scaling law gives no base here (critical dimension {d_extra} of {rotary_dim})")
    if wanted_length <= 2 * math.pi:
        raise ValueError("the wanted length must exceed 2π tokens")
    return (wanted_length / (2 * math.pi)) ** (rotary_dim / d_extra)


def yarn_correction_dim(rotary_dim: int, base: float, original_length: int, rotations: float) -> float:
    """The (fractional) pair index that turns ``rotations`` times over the original context."""
    return rotary_dim * math.log(original_length / (rotations * 2 * math.pi)) / (2 * math.log(base))


def yarn_ramp_dims(
    rotary_dim: int,
    base: float,
    original_length: int,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    truncate: bool = True,
) -> tuple[float, float]:
    """(low, high) pair indices of YaRN's ramp, as transformers' ``find_correction_range`` computes them.

    Pairs ≤ low are left alone, pairs ≥ high are divided by the factor, pairs between are blended linearly
    in the index. ``truncate`` (transformers' default) widens the ramp to whole indices (floor, ceil); the
    result is clamped to [0, d − 1] exactly as transformers does (its upper clamp is d − 1, not d/2 − 1).
    """
    low = yarn_correction_dim(rotary_dim, base, original_length, beta_fast)
    high = yarn_correction_dim(rotary_dim, base, original_length, beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, rotary_dim - 1)


def yarn_ramp(rotary_dim: int, low: float, high: float) -> list[float]:
    """Per pair: 0 = left alone (extrapolated), 1 = fully interpolated; linear in the index between."""
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    return [min(1.0, max(0.0, (i - low) / (high - low))) for i in range(rotary_dim // 2)]


def yarn_ramp_factors(rotary_dim: int, base: float, original_length: int, factor: float) -> list[float]:
    """1 + (s − 1)·ramp_i per pair: each pair's share of YaRN's interpolation (β 32 / 1 ramp), as a factor.

    LongRoPE's search starts from this shape, and a ``longrope`` method with blank long factors uses it.
    """
    low, high = yarn_ramp_dims(rotary_dim, base, original_length)
    return [1.0 + (factor - 1.0) * r for r in yarn_ramp(rotary_dim, low, high)]


def longrope_attention_factor(factor: float, original_length: int) -> float:
    """√(1 + ln s / ln L₀): LongRoPE's (and transformers' ``longrope``) default attention scale."""
    return math.sqrt(1 + math.log(factor) / math.log(original_length))


def longrope2_critical_dim(rotary_dim: int, base: float, original_length: int) -> int:
    """d_extra/2 − 1: the theoretical split of LongRoPE2's factor search with one pair of margin below it.

    LongRoPE2 (Shang et al. 2025) lets the pairs below its critical dimension follow a fixed curve and
    constrains the pairs from it on (those near or beyond a full period over the original context) to at least
    the length ratio. This is ⌈(d/2)·log_base(T_train/2π)⌉ − 1, one pair below Liu et al.'s critical dimension,
    clipped to [0, d/2 − 1]. The search does not fix the split here: it searches it in
    :func:`longrope2_critical_window`, which contains this value.
    """
    pairs = critical_dimension(rotary_dim, base, original_length) // 2
    return max(0, min(rotary_dim // 2 - 1, pairs - 1))


def longrope2_theoretical_pair(rotary_dim: int, base: float, original_length: int) -> int:
    """d_extra/2, clipped to [0, d/2 − 1]: the theory value of LongRoPE2's critical dimension, in pairs.

    The first pair that did not turn through a full period over the original context (at least one pair is
    left to search, hence the clip when every pair did).
    """
    pairs = critical_dimension(rotary_dim, base, original_length) // 2
    return max(0, min(rotary_dim // 2 - 1, pairs))


def longrope2_critical_window(rotary_dim: int, base: float, original_length: int, radius: int) -> tuple[int, int]:
    """(low, high) pairs LongRoPE2's search may put its critical dimension at: the theory value ± ``radius``.

    LongRoPE2 computes the theoretical critical dimension and then searches the real one near it, because the
    dimensions a model actually trained on a full period need not split where the closed form says. Clipped to
    [0, d/2 − 1], so at least one pair is always searched.
    """
    centre = longrope2_theoretical_pair(rotary_dim, base, original_length)
    return max(0, centre - radius), min(rotary_dim // 2 - 1, centre + radius)
