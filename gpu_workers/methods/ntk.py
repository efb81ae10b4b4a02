"""NTK-aware scaling: fixed (a larger base) and dynamic (a base that grows with the input length).

Fixed NTK has no rope type in transformers, so it is a plain ``default`` RoPE with
base' = base · s^(d/(d−2)) (bloc97, 2023). Dynamic NTK is transformers' ``dynamic`` type, which
recomputes the base from the current sequence length at run time: it treats
``max_position_embeddings`` as the original length, so we keep that at the original context.
"""

from __future__ import annotations

from typing import Any

from gpu_workers.methods.base import FACTOR, Family, RopeFacts, RopeSetup, require_factor_above_one, with_theta


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
        "Dynamic NTK (emozilla 2023): the base grows with the current input length; "
        "no change within the original context."
    ),
    params=(FACTOR,),
    build=build_dynamic,
    check=check,
    length_dependent=True,
)
