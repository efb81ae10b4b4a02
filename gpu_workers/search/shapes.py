"""The per-pair factors the known methods imply: where the search starts looking.

λ_i is how much slower pair i turns than in plain RoPE (transformers' ``longrope`` long factors). PI, NTK
and YaRN each fix these in closed form; the search seeds its population with them
(:func:`gpu_workers.search.seeds.seed_factors`).
"""

from __future__ import annotations

from gpu_workers import rope_theory


def pi_factors(rotary_dim: int, factor: float) -> list[float]:
    """PI: every pair interpolated by s."""
    return [float(factor)] * (rotary_dim // 2)


def ntk_factors(rotary_dim: int, factor: float) -> list[float]:
    """The factors NTK-aware scaling implies per pair: (s^(d/(d−2)))^(2i/d) = s^(2i/(d−2)); 1 … s."""
    return [float(factor) ** (2 * i / (rotary_dim - 2)) for i in range(rotary_dim // 2)]


def yarn_frequency_factors(rotary_dim: int, rope_theta: float, original_context: int, factor: float) -> list[float]:
    """The factors YaRN's own frequencies imply per pair: λ_i = 1 / (1 − r_i + r_i / s), r_i its ramp (β 32 / 1).

    transformers' ``yarn`` blends the *inverse frequencies* linearly along the ramp, which is not the linear
    blend of the factors that :func:`~gpu_workers.rope_theory.yarn_ramp_factors` makes (LongRoPE's start,
    1 + (s − 1)·r_i): on the demo model at s = 4 pair 3 turns 1.47× slower under YaRN and 2.29× under the
    start shape. Seeding with this shape puts YaRN itself in the initial population.
    """
    low, high = rope_theory.yarn_ramp_dims(rotary_dim, rope_theta, original_context)
    return [1.0 / (1.0 - r + r / float(factor)) for r in rope_theory.yarn_ramp(rotary_dim, low, high)]
