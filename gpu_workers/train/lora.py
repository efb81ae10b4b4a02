"""LoRA (peft) on the attention projections; with LongLoRA's setting, the embeddings and norms train too.

The adapters are merged into the model after training (:func:`gpu_workers.train.train` returns the caller's
plain transformers model), or dropped unmerged when training fails.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch

from gpu_workers.spec import TrainSpec

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj")
"""Attention projections LoRA adapts: Llama-style names, plus Phi-3's fused ``qkv_proj``; those present are used."""


def embeddings_and_norms(model: PreTrainedModel) -> list[torch.nn.Parameter]:
    """The input embeddings (and the head tied to them) and every norm layer's own parameters."""
    params = list(model.get_input_embeddings().parameters())
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("Norm"):
            params += list(module.parameters(recurse=False))
    return params


def lora_targets(model: torch.nn.Module) -> list[str]:
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    targets = [t for t in LORA_TARGETS if t in names]
    if not targets:
        raise ValueError(f"LoRA found none of the attention projections {LORA_TARGETS} in this model")
    return targets


def wrap_lora(model: PreTrainedModel, spec: TrainSpec) -> PeftModel:
    """The model with LoRA adapters (rank / alpha from the spec); only the adapters (and embeddings, norms) train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=spec.lora_rank, lora_alpha=spec.lora_alpha, target_modules=lora_targets(model),
                        lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        # peft reads transformers' deprecated ``is_gradient_checkpointing`` (v5 renamed it): noise, not a problem.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        net = get_peft_model(model, config)
    if spec.train_embeddings_and_norms:
        for param in embeddings_and_norms(model):
            param.requires_grad_(True)
    return net
