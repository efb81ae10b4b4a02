"""Position Interpolation (Chen et al. 2023): divide every position by the factor s.

transformers' ``linear`` rope type implements it (inv_freq / s); we only declare the parameter.
"""

from __future__ import annotations

from typing import Any

from gpu_workers.methods.base import FACTOR, Family, RopeFacts, RopeSetup, require_factor_above_one, with_theta

PARAMS = (
    FACTOR,
)


def check(base: RopeFacts, target_length: int, params: dict[str, Any]) -> None:
    require_factor_above_one(params)


def build(base: RopeFacts, target_length: int, params: dict[str, Any]) -> RopeSetup:
    rope = with_theta(base, rope_type="linear", factor=float(params["factor"]))
    return RopeSetup(rope, max(target_length, base.original_context))


FAMILY = Family(
    name="pi",
    label="PI (linear)",
    help="Position Interpolation (Chen et al. 2023): squeezes all positions by the factor.",
    params=PARAMS,
    build=build,
    check=check,
)
