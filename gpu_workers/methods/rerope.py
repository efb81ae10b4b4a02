"""ReRoPE and Leaky ReRoPE (Su 2023): relative positions clipped (or slowed) beyond a window.

ReRoPE keeps exact relative positions up to ``window`` and sees every farther key at distance ``window``;
Leaky ReRoPE lets the distance keep growing past the window, ``leak`` times slower, so that the target
length maps onto the original context: w + (L − w)/k. Both keep the checkpoint's RoPE frequencies and
change the attention layers (:mod:`gpu_workers.position_patches`), which rotate the cached keys afresh for
every query, so they work with the KV cache during generation (at the cost of one more rotation of the cache).
"""

from __future__ import annotations

from typing import Any

from gpu_workers.methods.base import Family, MethodError, Param, RopeFacts, RopeSetup

WINDOW = Param("window", "Window", int, None,
               "Relative positions up to this stay exact; blank = half the original context.", 1.0)
LEAK = Param("leak", "Leak k", float, None,
             "Past the window the distance grows 1/k as fast; blank = (target − w) / (original − w), which maps "
             "the target onto the original context.", 1.0)


def default_window(base: RopeFacts) -> int:
    return max(1, base.original_context // 2)


def default_leak(base: RopeFacts, target_length: int, window: int) -> float:
    return max(1.0, (target_length - window) / (base.original_context - window))


def check(base: RopeFacts, target_length: int, params: dict[str, Any]) -> None:
    window = int(params.get("window") or default_window(base))
    if window >= base.original_context:
        raise MethodError(
            f"The window must be shorter than the original context ({base.original_context} tokens).", "window"
        )


def build_rerope(base: RopeFacts, target_length: int, params: dict[str, Any]) -> RopeSetup:
    window = int(params.get("window") or default_window(base))
    return RopeSetup(base.shipped, base.shipped_max_position_embeddings,
                     attention={"kind": "rerope", "window": window})


def build_leaky(base: RopeFacts, target_length: int, params: dict[str, Any]) -> RopeSetup:
    window = int(params.get("window") or default_window(base))
    leak = float(params.get("leak") or default_leak(base, target_length, window))
    return RopeSetup(base.shipped, base.shipped_max_position_embeddings,
                     attention={"kind": "leaky_rerope", "window": window, "leak": leak})


_REFUSAL = "ReRoPE changes the attention layers, which a transformers config cannot describe"

RE_ROPE = Family(
    name="rerope",
    label="ReRoPE",
    help="ReRoPE (Su 2023): exact relative positions inside a window, every farther key at the window's distance; "
         "training-free.",
    params=(WINDOW,),
    build=build_rerope,
    check=check,
    export_refusal=_REFUSAL,
    acts_on_attention=True,
)

LEAKY = Family(
    name="leaky_rerope",
    label="Leaky ReRoPE",
    help="Leaky ReRoPE (Su 2023): exact relative positions inside a window, then growing k times slower, so the "
         "target maps onto the original context; training-free.",
    params=(WINDOW, LEAK),
    build=build_leaky,
    check=check,
    export_refusal=_REFUSAL,
    acts_on_attention=True,
)
