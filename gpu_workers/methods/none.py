"""The baseline: the base model's RoPE untouched, simply run past its original context."""

from __future__ import annotations

from typing import Any

from gpu_workers.methods.base import Family, RopeFacts, RopeSetup, with_theta


def build(base: RopeFacts, target_length: int, params: dict[str, Any]) -> RopeSetup:
    return RopeSetup(with_theta(base, rope_type="default"), max(target_length, base.original_context))


FAMILY = Family(
    name="none",
    label="None (baseline)",
    help="No scaling: the model extrapolates past its original context as it is.",
    params=(),
    build=build,
    needs_rope=False,
)
