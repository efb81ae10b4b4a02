"""Base change / ABF (Xiong et al. 2023, "Effective Long-Context Scaling of Foundation Models").

A plain ``default`` RoPE with a new base. Give the base itself, or the context you want the model to
reach: then the base comes from the scaling law of Liu et al. 2023 ("Scaling Laws of RoPE-based
Extrapolation"), T_extra = 2π·base^(d_extra/d), solved for the base (see :mod:`gpu_workers.rope_theory`).
Exactly one of the two is typed; the canonical parameters carry the computed base next to the length.
"""

from __future__ import annotations

import math
from typing import Any

from gpu_workers import rope_theory
from gpu_workers.methods.base import Family, MethodError, Param, RopeFacts, RopeSetup, with_theta

FLOAT32_MAX = 3.4028234663852886e38
"""transformers raises the base to a power in float32: a larger base becomes inf and every frequency 0."""

PARAMS = (
    Param(
        "rope_theta", "New base", float, None,
        "RoPE base θ to run with (ABF); blank = solved from the length below.", 1.0, True,
    ),
    Param(
        "extrapolation_length", "Extrapolation length", int, None,
        "Context to reach; the base is solved from Liu et al.'s bound 2π·base^(d_extra/d).", 1, False,
    ),
)


def base_for_length(base: RopeFacts, length: int) -> float:
    bound = rope_theory.extrapolation_bound(base.rotary_dim, base.rope_theta, base.original_context)
    if math.isinf(bound):
        raise MethodError(
            "Every RoPE dimension of this model completes a full turn within its original context; "
            "the scaling law sets no bound to raise. Give a new base instead.",
            "extrapolation_length",
        )
    if length <= bound:
        raise MethodError(
            f"The model's own base already reaches about {bound:,.0f} tokens by the scaling law; "
            "give a longer extrapolation length or a new base.",
            "extrapolation_length",
        )
    needed = rope_theory.base_for_extrapolation(base.rotary_dim, base.rope_theta, base.original_context, length)
    if needed >= FLOAT32_MAX:
        raise MethodError(
            f"{length:,} tokens would need a base of {needed:.3g}, beyond what RoPE computes in float32; "
            "give a shorter extrapolation length.",
            "extrapolation_length",
        )
    return needed


def check(base: RopeFacts, target_length: int, params: dict[str, Any]) -> None:
    theta, length = params.get("rope_theta"), params.get("extrapolation_length")
    if theta is None and length is None:
        raise MethodError("Give either a new base or an extrapolation length.", "rope_theta")
    if theta is not None and theta >= FLOAT32_MAX:
        raise MethodError(f"A base of {theta:.3g} is beyond what RoPE computes in float32.", "rope_theta")
    if length is not None:
        needed = base_for_length(base, length)
        # Canonical parameters carry both; they must agree.
        if theta is not None and not math.isclose(theta, needed, rel_tol=1e-9):
            raise MethodError(
                "Give either a new base or an extrapolation length, not both "
                f"({length:,} tokens needs base {needed:.6g}).",
                "rope_theta",
            )


def build(base: RopeFacts, target_length: int, params: dict[str, Any]) -> RopeSetup:
    theta = params.get("rope_theta")
    if theta is None:
        theta = base_for_length(base, int(params["extrapolation_length"]))
    rope = with_theta(base, rope_type="default")
    rope["rope_theta"] = float(theta)
    return RopeSetup(rope, max(target_length, base.original_context))


FAMILY = Family(
    name="base_change",
    label="Base change (ABF)",
    help="Adjusted base frequency (Xiong et al. 2023): a new RoPE base, typed or solved from Liu et al.'s scaling law.",
    params=PARAMS,
    build=build,
    check=check,
)
