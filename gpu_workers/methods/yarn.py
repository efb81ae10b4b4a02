"""YaRN (Peng et al. 2023): NTK-by-parts interpolation plus an attention temperature.

transformers' ``yarn`` type computes the frequencies; we validate what it only warns about
(factor ≤ 1, β_fast ≤ β_slow) and always set the original length explicitly, because transformers
silently defaults it to ``max_position_embeddings``.
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
        "beta_fast", "β fast", float, 32.0, "Rotations above which a dimension is left alone (extrapolated).", 0.0, True
    ),
    Param("beta_slow", "β slow", float, 1.0, "Rotations below which a dimension is fully interpolated.", 0.0, True),
    Param("attention_factor", "Attention factor", float, None, "Logit temperature; blank = 0.1·ln(s) + 1.", 0.0, True),
)


def default_attention_factor(factor: float) -> float:
    return 0.1 * math.log(factor) + 1.0


def check(base: RopeFacts, target_length: int, params: dict[str, Any]) -> None:
    require_factor_above_one(params)
    if params["beta_fast"] <= params["beta_slow"]:
        raise MethodError("β fast must be greater than β slow.", "beta_fast")


def build(base: RopeFacts, target_length: int, params: dict[str, Any]) -> RopeSetup:
    factor = float(params["factor"])
    attention = params.get("attention_factor")
    rope = with_theta(
        base,
        rope_type="yarn",
        factor=factor,
        original_max_position_embeddings=base.original_context,
        beta_fast=float(params["beta_fast"]),
        beta_slow=float(params["beta_slow"]),
        attention_factor=float(attention if attention is not None else default_attention_factor(factor)),
    )
    return RopeSetup(rope, max(target_length, round(base.original_context * factor)))


FAMILY = Family(
    name="yarn",
    label="YaRN",
    help="YaRN (Peng et al. 2023): interpolates low frequencies, keeps high ones, tempers attention.",
    params=PARAMS,
    build=build,
    check=check,
)
