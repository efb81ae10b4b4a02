"""When mixed context windows (LongRoPE2) mean anything: one rule, shared by the composer and the worker.

A short training step runs with exactly the RoPE the method uses at that length when evaluated. For a
method whose RoPE is the same at the original length and at the target (PI, fixed NTK, YaRN, Llama-3, a
base change, or the baseline on a plain-RoPE checkpoint) a short step is then only an ordinary step on a
shorter sequence, and the recipe would claim a LongRoPE2 ingredient it does not have; so it is refused.
Only a RoPE that changes with the input length makes the two windows differ: LongRoPE (and its searches)
switches from short to long factors past the original context, dynamic NTK grows its base with the length,
and the baseline inherits either from a checkpoint that ships it.

Torch-free: the web process imports it to validate the composer.
"""

from __future__ import annotations

from gpu_workers import methods
from gpu_workers.methods import RopeFacts

LENGTH_DEPENDENT_ROPE_TYPES = ("dynamic", "longrope")
"""The transformers rope types whose rotary embedding changes per forward pass with the input length
(``dynamic_rope_update``): a checkpoint shipping one gives the baseline a length-dependent RoPE."""


def shipped_rope_changes_with_length(rope_type: str) -> bool:
    """True when a checkpoint's own rope type changes its RoPE with the input length."""
    return rope_type in LENGTH_DEPENDENT_ROPE_TYPES


def rope_changes_with_length(family: str, rope: RopeFacts) -> bool:
    """Whether ``family`` applied to a model with ``rope`` uses another RoPE at the original length than at the
    target, i.e. whether mixed context windows train anything a plain fine-tune does not."""
    if family == "none":
        return rope.has_rope and shipped_rope_changes_with_length(rope.rope_type or "default")
    return methods.get(family).length_dependent


def refusal(labels: list[str], rope: RopeFacts) -> str:
    """The sentence that refuses mixed windows for the methods named by ``labels`` (one or more)."""
    names = ", ".join(labels)
    one = len(labels) == 1
    baseline = any(label.startswith(methods.get("none").label) for label in labels)
    shipped = f" (the baseline keeps this checkpoint's {rope.rope_type or 'default'} RoPE)" if baseline else ""
    return (
        f"Mixed context windows change nothing for {names}{shipped}: {'its' if one else 'their'} RoPE is the same "
        f"at the original length as at the target, so a short step would only be an ordinary step on a shorter "
        f"sequence. Use mixed windows with a length-dependent method (LongRoPE, a LongRoPE search, dynamic NTK) "
        f"or turn them off"
    )


def check(family: str, rope: RopeFacts) -> None:
    """Raise ``ValueError`` with :func:`refusal`'s message when mixed windows are a no-op for ``family``."""
    if not rope_changes_with_length(family, rope):
        raise ValueError(refusal([methods.get(family).label], rope))
