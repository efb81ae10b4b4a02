"""log-n attention temperature, a modifier any family can take.

Past the original context a query attends over more keys than it ever did in training, so its attention
entropy grows; scaling the query at position m (0-based) by max(1, ln(m + 1) / ln L₀) keeps it in the
trained range (Chiang & Cholak 2022; Su 2023's log-n; Qwen's ``use_logn_attn``). It depends on the
query's absolute position only, so it is the same in one long pass and in generation with a KV cache, and it
changes nothing inside the original context. Installed by :mod:`gpu_workers.position_patches`.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from gpu_workers.methods.base import Param, RopeFacts, RopeSetup

LOG_N = Param(
    "log_n", "log-n attention", bool, False,
    "On: scale each query past the original context by ln(m + 1) / ln(original context).",
)
MODIFIERS = (LOG_N,)
"""Parameters every family (but the searches, whose result is saved as a plain LongRoPE) accepts."""


def log_n_scale(position: int, original_context: int) -> float:
    """The factor on a query at 0-based ``position``: 1 inside the original context."""
    return max(1.0, math.log(position + 1) / math.log(original_context))


def with_modifiers(setup: RopeSetup, params: dict[str, Any], base: RopeFacts) -> RopeSetup:
    """The setup with the modifiers in ``params`` added to its attention plan."""
    if not params.get("log_n"):
        return setup
    plan = dict(setup.attention or {"kind": "plain"})
    plan["log_n_context"] = base.original_context
    return replace(setup, attention=plan)
