"""Load a base model with a method's RoPE applied, from a local path or the offline HF cache.

The method is applied through the config (transformers v5 ``rope_parameters``) before the weights
load, so the rotary embedding is built once, the way ``from_pretrained`` of an exported
checkpoint would build it; attention-level methods (Self-Extend, ReRoPE, log-n) are then installed in
the attention layers by :mod:`gpu_workers.position_patches`. *none* leaves the config untouched: the
baseline is the checkpoint exactly as ``AutoModelForCausalLM.from_pretrained`` gives it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gpu_workers import methods
from gpu_workers.device import Placement
from gpu_workers.model_facts import ModelFacts, inspect_model
from gpu_workers.spec import MethodSpec

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: Any
    facts: ModelFacts
    params: dict[str, Any]
    """The method's canonical parameters."""
    length_dependent: bool


def load(source: str, method: MethodSpec, target_length: int, placement: Placement) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from gpu_workers import position_patches
    from gpu_workers.rotary import remember_attention_scaling

    facts = inspect_model(source)
    params = methods.validate(method.family, method.params, facts.rope, target_length)
    setup = methods.rope_setup(method.family, params, facts.rope, target_length)
    config = AutoConfig.from_pretrained(source, local_files_only=True)
    if method.family != "none":
        # Already merged by the family (methods.base.with_theta keeps every key of the checkpoint it does not own).
        config.rope_parameters = dict(setup.rope_parameters)
        config.max_position_embeddings = setup.max_position_embeddings
        if hasattr(config, "original_max_position_embeddings"):
            # Phi-3's config attribute wins over rope_parameters in transformers; keep the two in step.
            config.original_max_position_embeddings = setup.rope_parameters.get(
                "original_max_position_embeddings", facts.original_context
            )
    model = AutoModelForCausalLM.from_pretrained(
        source, config=config, dtype=placement.dtype, attn_implementation="sdpa", local_files_only=True
    )
    # transformers decorates PreTrainedModel.to with @functools.wraps(Module.to): mypy then sees it unbound.
    model.to(placement.device).eval()  # type: ignore[arg-type]
    remember_attention_scaling(model)
    if setup.attention is not None:
        position_patches.install(model, setup.attention)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    return LoadedModel(model, tokenizer, facts, params, length_dependent(method.family, facts))


def length_dependent(family: str, facts: ModelFacts) -> bool:
    """Whether the RoPE depends on the input length, so each length needs its own pass.

    *none* inherits it from the checkpoint: Phi-3's shipped LongRoPE switches factors at the original context.
    """
    from gpu_workers.mixed_windows import rope_changes_with_length

    return rope_changes_with_length(family, facts.rope)
