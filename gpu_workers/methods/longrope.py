"""LongRoPE (Ding et al. 2024): a searched factor per RoPE dimension, one set for short inputs, one for long.

transformers' ``longrope`` type applies them: inv_freq_i = 1 / (λ_i · base^(2i/d)), with the long factors
once the input is longer than the original context and the short ones otherwise (decided per forward
pass, so the method is length-dependent), and an attention scaling of √(1 + ln s / ln L₀), which is
transformers' default and the LongRoPE/Phi-3 "su" policy — we write it out so the config says what runs.

transformers only warns about wrong-length lists and factors < 1; we refuse them, naming the field.
Blank factors are derived: on a checkpoint that already ships LongRoPE factors (Phi-3, Phi-3.5) they are its
own; otherwise short = all 1 (the original frequencies inside the original context), long = the YaRN-shaped
start LongRoPE's own search begins from, 1 + (s − 1)·ramp_i with YaRN's β 32 / 1 ramp.
Note that transformers applies the one attention factor to short inputs too (as Phi-3 does), so even
with short factors of 1 a short input is not computed exactly as by the base model.
Factor files written by microsoft/LongRoPE's search are read by :mod:`gpu_workers.methods.longrope_files`.
"""

from __future__ import annotations

from typing import Any

from gpu_workers import rope_theory
from gpu_workers.methods.base import (
    Family,
    MethodError,
    Param,
    RopeFacts,
    RopeSetup,
    require_factor_above_one,
    with_theta,
)

PARAMS = (
    Param("factor", "Factor", float, None, "Length scale s; blank = target length / original context.", 1.0, True),
    Param(
        "long_factor", "Long factors", list, None,
        "One factor ≥ 1 per dimension pair, used past the original context; "
        "blank = the checkpoint's own, else a YaRN-shaped start.", 1.0,
    ),
    Param(
        "short_factor", "Short factors", list, None,
        "One factor per dimension pair, used within the original context; "
        "blank = the checkpoint's own, else all 1.", 0.0, True,
    ),
    Param(
        "attention_factor", "Attention factor", float, None,
        "Logit scale; blank = √(1 + ln s / ln original).", 0.0, True,
    ),
)


def default_attention_factor(factor: float, original_context: int) -> float:
    """√(1 + ln s / ln L₀) (:func:`gpu_workers.rope_theory.longrope_attention_factor`)."""
    return rope_theory.longrope_attention_factor(factor, original_context)


def yarn_start_factors(base: RopeFacts, factor: float) -> list[float]:
    """1 + (s − 1)·ramp_i: each pair's share of YaRN's interpolation, as LongRoPE's search initialises."""
    return rope_theory.yarn_ramp_factors(base.rotary_dim, base.rope_theta, base.original_context, factor)


def _check_length(base: RopeFacts, params: dict[str, Any], name: str, label: str) -> None:
    values = params.get(name)
    pairs = base.rotary_dim // 2
    if values is not None and len(values) != pairs:
        raise MethodError(
            f"{label} need {pairs} numbers, one per RoPE dimension pair (rotary dim {base.rotary_dim}); "
            f"got {len(values)}.",
            name,
        )


def shipped_factors(base: RopeFacts) -> dict[str, list[float]]:
    """A LongRoPE checkpoint's own factor lists (Phi-3 / Phi-3.5): blank factors start from them."""
    if base.rope_type != "longrope":
        return {}
    shipped = base.shipped
    return {key: [float(x) for x in shipped[key]] for key in ("long_factor", "short_factor") if shipped.get(key)}


def check(base: RopeFacts, target_length: int, params: dict[str, Any]) -> None:
    require_factor_above_one(params)
    for key, values in shipped_factors(base).items():
        if params.get(key) is None and len(values) != base.rotary_dim // 2:
            raise MethodError(
                f"The checkpoint's own {key.replace('_', ' ')}s hold {len(values)} numbers but its rotary dim "
                f"{base.rotary_dim} has {base.rotary_dim // 2} pairs; type the factors.", key,
            )
    _check_length(base, params, "long_factor", "Long factors")
    _check_length(base, params, "short_factor", "Short factors")


def build(base: RopeFacts, target_length: int, params: dict[str, Any]) -> RopeSetup:
    factor = float(params["factor"])
    shipped = shipped_factors(base)
    long_factor = params.get("long_factor") or shipped.get("long_factor") or yarn_start_factors(base, factor)
    short_factor = params.get("short_factor") or shipped.get("short_factor") or [1.0] * (base.rotary_dim // 2)
    attention = params.get("attention_factor")
    if attention is None:
        attention = default_attention_factor(factor, base.original_context)
    rope = with_theta(
        base,
        rope_type="longrope",
        factor=factor,
        long_factor=[float(x) for x in long_factor],
        short_factor=[float(x) for x in short_factor],
        original_max_position_embeddings=base.original_context,
        attention_factor=float(attention),
    )
    return RopeSetup(rope, max(target_length, round(base.original_context * factor)))


FAMILY = Family(
    name="longrope",
    label="LongRoPE",
    help="LongRoPE (Ding et al. 2024): searched per-dimension factors, one set for short inputs and one for long.",
    params=PARAMS,
    build=build,
    check=check,
    length_dependent=True,
)
