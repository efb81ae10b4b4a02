"""Dynamic YaRN (Peng et al. 2023, the dynamic variant of the YaRN repository): YaRN whose scale follows the input.

At an input of L tokens the scale is s = max(1, L / L₀) and the frequencies and the attention temperature
are YaRN's at s: nothing changes inside the original context and no factor is fixed ahead of time, which
is what makes it usable without fine-tuning. transformers has no such rope type; :mod:`gpu_workers.
position_patches` registers ``dynamic_yarn`` in its ``ROPE_INIT_FUNCTIONS`` (transformers' own YaRN
function evaluated at s), and the ``dynamic`` in the name makes transformers' rotary modules recompute it
when the input grows, with the same machinery as dynamic NTK.
"""

from __future__ import annotations

from typing import Any

from gpu_workers.methods import yarn
from gpu_workers.methods.base import Family, MethodError, RopeFacts, RopeSetup, with_theta

ROPE_TYPE = "dynamic_yarn"
PARAMS = tuple(p for p in yarn.PARAMS if p.name in ("beta_fast", "beta_slow"))


def check(base: RopeFacts, target_length: int, params: dict[str, Any]) -> None:
    if params["beta_fast"] <= params["beta_slow"]:
        raise MethodError("β fast must be greater than β slow.", "beta_fast")


def build(base: RopeFacts, target_length: int, params: dict[str, Any]) -> RopeSetup:
    rope = with_theta(
        base,
        rope_type=ROPE_TYPE,
        original_max_position_embeddings=base.original_context,
        beta_fast=float(params["beta_fast"]),
        beta_slow=float(params["beta_slow"]),
    )
    # transformers' dynamic machinery reads max_position_embeddings as the length it starts scaling from.
    return RopeSetup(rope, base.original_context)


FAMILY = Family(
    name="dynamic_yarn",
    label="Dynamic YaRN",
    help="Dynamic YaRN (Peng et al. 2023): YaRN at scale max(1, L/L₀) for the current input length L — "
         "unchanged inside the original context, no factor to choose.",
    params=PARAMS,
    build=build,
    check=check,
    length_dependent=True,
    export_refusal="transformers has no dynamic YaRN rope type, so an exported config would not load; "
                   "export YaRN at a fixed factor instead",
)
