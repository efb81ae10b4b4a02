"""The baseline: the checkpoint's RoPE exactly as shipped, simply run past its original context.

For a plain-RoPE model that is RoPE at θ; for a checkpoint that already carries a scaling (Llama-3.1's
``llama3``, Phi-3's ``longrope``, a Qwen2.5 ``yarn`` config) it is that scaling, untouched, with the
checkpoint's own ``max_position_embeddings`` (transformers derives e.g. LongRoPE's factor from it).
"""

from __future__ import annotations

from typing import Any

from gpu_workers.methods.base import Family, RopeFacts, RopeSetup


def build(base: RopeFacts, target_length: int, params: dict[str, Any]) -> RopeSetup:
    return RopeSetup(base.shipped, base.shipped_max_position_embeddings)


FAMILY = Family(
    name="none",
    label="None (baseline)",
    help="No change: the checkpoint as shipped (its own scaling included) extrapolates past its original context.",
    params=(),
    build=build,
    needs_rope=False,
)
