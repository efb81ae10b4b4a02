"""Self-Extend (Jin et al. 2024, "LLM Maybe LongLM"): training-free grouped attention for distant tokens.

Keys within ``window`` tokens of a query keep their exact relative position; farther keys are seen at
floor-divided positions, query ⌊m/G⌋ + W − ⌊W/G⌋ against key ⌊n/G⌋, so a distance of up to
(L − W)/G + W stays inside the positions the model was trained on. The RoPE frequencies are the
checkpoint's own; the change lives in the attention layers (:mod:`gpu_workers.position_patches`).
"""

from __future__ import annotations

import math
from typing import Any

from gpu_workers.methods.base import Family, MethodError, Param, RopeFacts, RopeSetup

PARAMS = (
    Param("window", "Neighbour window", int, None,
          "Keys closer than this keep exact positions; blank = a quarter of the original context.", 1.0),
    Param("group", "Group size", int, None,
          "G: distant positions are divided by G; blank = the smallest G that keeps the target inside the "
          "original context, ⌈(target − W) / (original − W)⌉.", 1.0),
)


def default_window(base: RopeFacts) -> int:
    return max(1, base.original_context // 4)


def default_group(base: RopeFacts, target_length: int, window: int) -> int:
    return max(1, math.ceil((target_length - window) / (base.original_context - window)))


def _filled(base: RopeFacts, target_length: int, params: dict[str, Any]) -> tuple[int, int]:
    window = int(params.get("window") or default_window(base))
    group = int(params.get("group") or default_group(base, target_length, window))
    return window, group


def check(base: RopeFacts, target_length: int, params: dict[str, Any]) -> None:
    window = int(params.get("window") or default_window(base))
    if window >= base.original_context:
        raise MethodError(
            f"The neighbour window must be shorter than the original context ({base.original_context} tokens).",
            "window",
        )


def build(base: RopeFacts, target_length: int, params: dict[str, Any]) -> RopeSetup:
    window, group = _filled(base, target_length, params)
    plan = {"kind": "self_extend", "window": window, "group": group}
    return RopeSetup(base.shipped, base.shipped_max_position_embeddings, attention=plan)


FAMILY = Family(
    name="self_extend",
    label="Self-Extend",
    help="Self-Extend (Jin et al. 2024): exact positions inside a neighbour window, floor(position / G) beyond "
         "it; training-free, the checkpoint's own RoPE.",
    params=PARAMS,
    build=build,
    check=check,
    needs_rope=True,
    export_refusal="Self-Extend changes the attention layers, which a transformers config cannot describe",
    acts_on_attention=True,
)
