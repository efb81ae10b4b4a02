"""NTK-aware scaling: fixed (a larger base) and dynamic (a base that grows with the input length).

Fixed NTK has no rope type in transformers, so it is a plain ``default`` RoPE with
base' = base · s^(d/(d−2)) (bloc97, 2023). Dynamic NTK is transformers' ``dynamic`` type, which
recomputes the base from the current sequence length at run time: it treats
``max_position_embeddings`` as the original length, so we keep that at the original context.

transformers' dynamic formula is base' = base · (f·L/L0 − (f − 1))^(d/(d−2)) at input length L > L0: the NTK
scale it applies is f·L/L0 − (f − 1), not L/L0. The YaRN paper's dynamic NTK (scale L/L0) is f = 1, so that is
the default and allowed; a larger f grows the base faster (f = target/original, the old default, meant an NTK
scale of s² − s + 1 at the target: 57 at ×8). Fixed NTK keeps s > 1, blank = target / original.
"""

from __future__ import annotations

from typing import Any

from gpu_workers.methods.base import (
    FACTOR,
    Family,
    Param,
    RopeFacts,
    RopeSetup,
    require_factor_above_one,
    with_theta,
)

DYNAMIC_FACTOR = Param(
    "factor",
    "Factor",
    float,
    1.0,
    "At input length L past the original context L0 the NTK scale applied is factor·L/L0 − (factor − 1). "
    "1 (blank) = the YaRN paper's dynamic NTK, scale L/L0; a larger factor grows the base faster.",
    1.0,
)
"""Dynamic NTK's own factor: 1 is meaningful (the paper's method), so it is the default and the inclusive minimum.

Its default is a number, not None, so ``methods.validate`` does not derive it as target / original.
"""


def ntk_base(base: RopeFacts, factor: float) -> float:
    d = base.rotary_dim
    return base.rope_theta * factor ** (d / (d - 2))


def check(base: RopeFacts, target_length: int, params: dict[str, Any]) -> None:
    require_factor_above_one(params)


def build_fixed(base: RopeFacts, target_length: int, params: dict[str, Any]) -> RopeSetup:
    rope = with_theta(base, rope_type="default")
    rope["rope_theta"] = ntk_base(base, float(params["factor"]))
    return RopeSetup(rope, max(target_length, base.original_context))


def build_dynamic(base: RopeFacts, target_length: int, params: dict[str, Any]) -> RopeSetup:
    rope = with_theta(
        base,
        rope_type="dynamic",
        factor=float(params["factor"]),
        original_max_position_embeddings=base.original_context,
    )
    return RopeSetup(rope, base.original_context)


FIXED = Family(
    name="ntk",
    label="NTK-aware (fixed)",
    help="NTK-aware scaling (bloc97 2023): a larger base, base·s^(d/(d−2)), stretching low frequencies most.",
    params=(FACTOR,),
    build=build_fixed,
    check=check,
)

DYNAMIC = Family(
    name="dynamic_ntk",
    label="Dynamic NTK",
    help=(
        "Dynamic NTK (emozilla 2023, as the YaRN paper defines it): the base grows with the current input "
        "length L, as NTK at scale factor·L/L0 − (factor − 1); no change within the original context L0."
    ),
    params=(DYNAMIC_FACTOR,),
    build=build_dynamic,  # no check: the Param's inclusive bound is the only rule, and 1 is valid
    length_dependent=True,
)
