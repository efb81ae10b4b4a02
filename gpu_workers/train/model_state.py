"""The caller's model settings training changes for a while: what trains, in which precision, checkpointed.

Training flips ``requires_grad``, holds trainable weights in fp32 under autocast on CUDA (bf16, fp16 where
bf16 is missing) and may turn activation checkpointing on; :class:`ModelSettings` notes how the model came
and puts it back, whatever happened (the caller gets its model as it lent it, in eval mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def enable_checkpointing(model: PreTrainedModel) -> None:
    # transformers v5 renamed gradient checkpointing to activation checkpointing; non-reentrant checkpoints
    # work with frozen inputs (LoRA) and with DDP.
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def disable_checkpointing(model: PreTrainedModel) -> None:
    if hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()
    if hasattr(model, "disable_input_require_grads"):
        model.disable_input_require_grads()


def checkpointing_on(model: torch.nn.Module) -> bool:
    return any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The forward's autocast type on CUDA (bf16, else fp16); ``None`` on the CPU, which trains in plain fp32."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@dataclass(frozen=True)
class ModelSettings:
    """How the caller's model came: each parameter's flag and dtype, and whether it was checkpointed."""

    requires_grad: dict[str, bool]
    dtypes: dict[str, torch.dtype]
    checkpointing: bool

    @classmethod
    def of(cls, model: torch.nn.Module) -> ModelSettings:
        return cls({name: p.requires_grad for name, p in model.named_parameters()},
                   {name: p.dtype for name, p in model.named_parameters()}, checkpointing_on(model))

    def restore(self, model: PreTrainedModel, disable_checkpointing_too: bool) -> None:
        """Back to the caller's settings: parameter flags and dtypes, checkpointing, eval mode."""
        for name, param in model.named_parameters():
            if name in self.dtypes and param.dtype != self.dtypes[name]:
                param.data = param.data.to(self.dtypes[name])
            param.requires_grad_(self.requires_grad.get(name, True))
        if disable_checkpointing_too:
            disable_checkpointing(model)
        model.eval()
