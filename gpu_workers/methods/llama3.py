"""Llama-3 scaling (Meta, "The Llama 3 Herd of Models", 2024): PI for long wavelengths, none for short ones.

Wavelengths longer than original/low_freq_factor are divided by the factor, shorter than
original/high_freq_factor are kept, and those between are blended by how many times they turn in the
original context. transformers' ``llama3`` type computes it; we validate what it only warns about
(factor ≤ 1, high ≤ low) and set the original length explicitly, because transformers silently falls back
to ``max_position_embeddings`` and warns when that is not above the original length.
"""

from __future__ import annotations

import math
from typing import Any

from gpu_workers.methods.base import (
    FACTOR,
    Family,
    MethodError,
    Param,
    RopeFacts,
    RopeSetup,
    require_factor_above_one,
    with_theta,
)

PARAMS = (
    FACTOR,
    Param(
        "low_freq_factor", "Low-frequency factor", float, 1.0,
        "Wavelengths longer than original context / this are fully interpolated (Llama 3.1: 1).", 0.0, True,
    ),
    Param(
        "high_freq_factor", "High-frequency factor", float, 4.0,
        "Wavelengths shorter than original context / this are left alone (Llama 3.1: 4).", 0.0, True,
    ),
)


def check(base: RopeFacts, target_length: int, params: dict[str, Any]) -> None:
    require_factor_above_one(params)
    if params["high_freq_factor"] <= params["low_freq_factor"]:
        raise MethodError("High-frequency factor must be greater than the low-frequency factor.", "high_freq_factor")


def build(base: RopeFacts, target_length: int, params: dict[str, Any]) -> RopeSetup:
    factor = float(params["factor"])
    rope = with_theta(
        base,
        rope_type="llama3",
        factor=factor,
        low_freq_factor=float(params["low_freq_factor"]),
        high_freq_factor=float(params["high_freq_factor"]),
        original_max_position_embeddings=base.original_context,
    )
    # Strictly above the original length, or transformers' validator warns.
    return RopeSetup(rope, max(target_length, math.ceil(base.original_context * factor)))


FAMILY = Family(
    name="llama3",
    label="Llama-3 scaling",
    help="Llama 3.1 RoPE scaling (Meta 2024): PI on long wavelengths, none on short ones, a smooth blend between.",
    params=PARAMS,
    build=build,
    check=check,
)
