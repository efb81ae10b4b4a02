"""Load a base model with a method's RoPE applied, from a local path or the offline HF cache.

The method is applied through the config (transformers v5 ``rope_parameters``) before the weights
load, so the rotary embedding is built once, the way ``from_pretrained`` of an exported
checkpoint would build it. *none* leaves the config untouched: the baseline is the checkpoint exactly
as ``AutoModelForCausalLM.from_pretrained`` gives it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpu_workers import methods
from gpu_workers.device import Placement
from gpu_workers.model_facts import ModelFacts, inspect_model
from gpu_workers.spec import MethodSpec


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    facts: ModelFacts
    params: dict[str, Any]
    """The method's canonical parameters."""
    length_dependent: bool


def load(source: str, method: MethodSpec, target_length: int, placement: Placement) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    facts = inspect_model(source)
    params = methods.validate(method.family, method.params, facts.rope, target_length)
    setup = methods.get(method.family).build(facts.rope, target_length, params)
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
    model.to(placement.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    return LoadedModel(model, tokenizer, facts, params, methods.get(method.family).length_dependent)
