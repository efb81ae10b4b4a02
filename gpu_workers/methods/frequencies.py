"""A method's actual RoPE frequencies, computed by transformers' own ``ROPE_INIT_FUNCTIONS``.

What the charts draw next to :mod:`gpu_workers.rope_theory` (which is pure math) and what the evaluations
restore as the checkpoint's own RoPE: the inverse frequencies and attention scaling a method's
``rope_parameters`` give in transformers, so the curves are the RoPE a run uses, not a re-derivation.
transformers is imported when a function runs, not with this module, so the method table stays light.
"""

from __future__ import annotations

import copy
from typing import Any

from gpu_workers.methods import none, rope_setup
from gpu_workers.methods.base import RopeFacts, RopeSetup, with_theta


def rope_frequencies(
    family: str, params: dict[str, Any], base: RopeFacts, target_length: int, seq_len: int | None = None
) -> tuple[list[float], float]:
    """(inv_freq per pair, attention scaling) that transformers computes for a method, at ``seq_len``.

    For length-dependent families (dynamic NTK, LongRoPE) ``seq_len`` picks the input length; ``None``
    means the length a freshly built model starts from (the original context).
    """
    return setup_frequencies(rope_setup(family, params, base, target_length), base, seq_len)


def setup_frequencies(setup: RopeSetup, base: RopeFacts, seq_len: int | None = None) -> tuple[list[float], float]:
    """transformers' own ``ROPE_INIT_FUNCTIONS`` applied to a :class:`RopeSetup` (``default`` = ``linear`` ×1)."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    import gpu_workers.position_patches  # noqa: F401 - registers the rope types transformers lacks (dynamic YaRN)

    rope = copy.deepcopy(setup.rope_parameters)
    if rope["rope_type"] == "default":
        # transformers has no init function for plain RoPE; linear with factor 1 is the same formula.
        rope.update(rope_type="linear", factor=1.0)
    config = LlamaConfig(
        hidden_size=base.head_dim, num_attention_heads=1, num_key_value_heads=1, head_dim=base.head_dim,
        intermediate_size=4, num_hidden_layers=1, vocab_size=8,
        max_position_embeddings=int(setup.max_position_embeddings), rope_parameters=rope,
    )
    inv_freq, attention = ROPE_INIT_FUNCTIONS[rope["rope_type"]](config, None, seq_len=seq_len)
    return [float(x) for x in inv_freq.double()], float(attention)


def original_frequencies(base: RopeFacts) -> list[float]:
    """The checkpoint's own inv_freq as shipped (its scaling included), computed by transformers.

    For a length-dependent shipped scaling (Phi-3's LongRoPE) this is what a freshly loaded model starts
    from: the short factors.
    """
    return original_rotary(base)[0]


def original_rotary(base: RopeFacts) -> tuple[list[float], float]:
    """(inv_freq, attention scaling) of the checkpoint as shipped, at its original context."""
    return setup_frequencies(none.FAMILY.build(base, base.original_context, {}), base)


def plain_frequencies(base: RopeFacts) -> list[float]:
    """Plain RoPE at the checkpoint's θ over its rotary dims: the reference every scaling is drawn against."""
    return setup_frequencies(RopeSetup(with_theta(base, rope_type="default"), base.original_context), base)[0]


def effective_scaling(
    family: str, params: dict[str, Any], base: RopeFacts, target_length: int, seq_len: int | None = None
) -> list[float]:
    """Per pair: plain-RoPE inv_freq / new inv_freq — how much each RoPE dimension is interpolated.

    1 = plain RoPE at θ, s = squeezed like PI ×s, < 1 = turned faster. The reference is plain RoPE, not the
    checkpoint's own scaling, so *none* on a Llama-3.1 checkpoint draws its shipped ``llama3`` curve.
    Length-dependent families are evaluated at ``seq_len`` (default ``target_length``).
    """
    new, _ = rope_frequencies(family, params, base, target_length, target_length if seq_len is None else seq_len)
    return [old / fresh for old, fresh in zip(plain_frequencies(base), new, strict=True)]
