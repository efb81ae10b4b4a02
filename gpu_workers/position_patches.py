"""What Context Lab adds to transformers' position handling for the whole process, in one place.

Two things transformers does not have and the method table needs:

* **A rope type** ``dynamic_yarn`` (:mod:`gpu_workers.methods.dynamic_yarn`), registered in transformers'
  ``ROPE_INIT_FUNCTIONS``: transformers' own YaRN function evaluated at the scale max(1, L / L₀) of the
  current input. Because the name contains ``dynamic``, transformers' rotary modules recompute it as the
  input grows and reset it when a short input follows, exactly as for dynamic NTK.
* **An attention function** registered in transformers' ``AttentionInterface`` as :data:`ATTENTION`, for the
  methods that change which relative position attention sees (Self-Extend, ReRoPE, Leaky ReRoPE) and for
  the log-n query temperature. The attention layers still apply the checkpoint's RoPE to queries and keys;
  this function receives the rotated tensors, and because a RoPE rotation composes additively, rotating a
  query at position m by a further (P_q(m) − m) and a key at n by (P_k(n) − n) gives exactly RoPE at the
  remapped positions — with the keys as they lie in the KV cache, so generation works unchanged. Scores use
  the exact positions inside the window and the remapped ones beyond it, then one softmax. Without a
  remapping (log-n alone) the scaled queries go to transformers' own SDPA function.

A model gets the function through :func:`install`; its attention modules carry the plan as
:data:`PLAN_ATTRIBUTE`, so one process can hold models with different plans. Changes to one model's rotary
embedding (a dynamic reset, a fixed or a searched RoPE) are :mod:`gpu_workers.rotary`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, RotaryEmbeddingConfigMixin

from gpu_workers.methods.dynamic_yarn import ROPE_TYPE as DYNAMIC_YARN
from gpu_workers.rotary import RotaryModule, rotary_module

if TYPE_CHECKING:
    from transformers import PreTrainedModel

ATTENTION = "contextlab_positions"
PLAN_ATTRIBUTE = "_contextlab_position_plan"
QUERY_CHUNK_SCORES = 1 << 24
"""Scores (heads × queries × keys) per chunk of queries: two such fp32 blocks bound the extra memory (128 MiB)."""


def _dynamic_yarn_parameters(config: Any, device: Any = None, seq_len: Any = None,
                             layer_type: str | None = None) -> tuple[torch.Tensor, float]:
    """transformers' YaRN at scale max(1, seq_len / L₀): frequencies and attention factor for this input."""
    rope = dict(config.rope_parameters if layer_type is None else config.rope_parameters[layer_type])
    original = int(rope["original_max_position_embeddings"])
    scale = max(1.0, float(seq_len) / original) if seq_len is not None else 1.0
    # Inside the original context: plain RoPE (transformers' linear ×1, bit for bit the default formula).
    kind = "yarn" if scale > 1 else "linear"
    scaled_config = copy.copy(config)
    scaled_config.rope_parameters = {**rope, "rope_type": kind, "factor": scale}
    return ROPE_INIT_FUNCTIONS[kind](scaled_config, device)


def _validate_dynamic_yarn(config: Any, rope_parameters: dict[str, Any], ignore_keys: set[str] | None = None) -> None:
    """transformers' config check for the new type (it warns about a type it has no check for)."""
    if "original_max_position_embeddings" not in rope_parameters:
        raise ValueError("dynamic_yarn rope_parameters need original_max_position_embeddings")
    if float(rope_parameters.get("beta_fast", 32)) <= float(rope_parameters.get("beta_slow", 1)):
        raise ValueError("dynamic_yarn needs beta_fast > beta_slow")


ROPE_INIT_FUNCTIONS.setdefault(DYNAMIC_YARN, _dynamic_yarn_parameters)
RotaryEmbeddingConfigMixin._validate_dynamic_yarn_rope_parameters = _validate_dynamic_yarn  # type: ignore[attr-defined]


@dataclass(frozen=True)
class PositionPlan:
    """What the attention function does, read from :attr:`gpu_workers.methods.base.RopeSetup.attention`."""

    kind: str = "plain"
    """``plain`` (no remapping), ``self_extend``, ``rerope`` or ``leaky_rerope``."""
    window: int = 0
    group: int = 1
    leak: float = 1.0
    log_n_context: int = 0
    """The original context of the log-n temperature; 0 = no temperature."""
    rotary: RotaryModule | None = None
    """The model's rotary embedding: its current inverse frequencies rotate the remapped positions."""

    @classmethod
    def from_setup(cls, plan: dict[str, Any], rotary: RotaryModule | None) -> PositionPlan:
        return cls(kind=str(plan.get("kind", "plain")), window=int(plan.get("window", 0)),
                   group=int(plan.get("group", 1)), leak=float(plan.get("leak", 1.0)),
                   log_n_context=int(plan.get("log_n_context", 0)), rotary=rotary)

    def far_positions(self, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(P_q(m), P_k(n)): the positions attention sees for keys at or beyond the window."""
        if self.kind == "self_extend":
            g, w = self.group, self.window
            return torch.div(query, g, rounding_mode="floor") + (w - w // g), torch.div(key, g, rounding_mode="floor")
        if self.kind == "rerope":
            return torch.full_like(query, float(self.window)), torch.zeros_like(key)
        if self.kind == "leaky_rerope":
            return query / self.leak + self.window * (1 - 1 / self.leak), key / self.leak
        raise ValueError(f"unknown position plan {self.kind!r}")


def log_n_scales(positions: torch.Tensor, original_context: int) -> torch.Tensor:
    """max(1, ln(m + 1) / ln L₀) per 0-based query position (see methods.attention_temperature)."""
    return torch.clamp(torch.log(positions.double() + 1) / math.log(original_context), min=1.0)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate_by(x: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """RoPE rotation of x (…, seq, head_dim) by ``delta`` (seq,) more positions, over the rotary dims only."""
    rotary = 2 * inv_freq.numel()
    angles = delta.double()[:, None] * inv_freq.double().to(delta.device)[None, :]
    angles = torch.cat((angles, angles), dim=-1)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    turned = x[..., :rotary] * cos + _rotate_half(x[..., :rotary]) * sin
    return torch.cat((turned, x[..., rotary:]), dim=-1) if rotary < x.shape[-1] else turned


def _positions(query: torch.Tensor, key: torch.Tensor, kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute positions of the queries and keys: the position ids when given (PoSE), else the cache's."""
    q_len, k_len, device = query.shape[-2], key.shape[-2], query.device
    given = kwargs.get("position_ids")
    if isinstance(given, torch.Tensor) and given.shape[-1] == q_len:
        q_pos = given.reshape(-1, q_len)[0].to(device)
        k_pos = q_pos if k_len == q_len else torch.arange(k_len, device=device)
        if k_len != q_len and int(q_pos[-1]) != k_len - 1:
            raise ValueError("position remapping needs a full KV cache (keys at positions 0 … n − 1)")
        return q_pos, k_pos
    k_pos = torch.arange(k_len, device=device)
    return k_pos[k_len - q_len:], k_pos


def _two_band(plan: PositionPlan, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, scaling: float, dropout: float, training: bool,
              q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """Softmax attention with exact positions inside the window and remapped ones beyond; (b, q, h, d)."""
    assert plan.rotary is not None
    inv_freq = plan.rotary.inv_freq
    far_q, far_k = plan.far_positions(q_pos.double(), k_pos.double())
    query_far = rotate_by(query, far_q - q_pos, inv_freq)
    key_far = rotate_by(key, far_k - k_pos, inv_freq)
    heads, keys = query.shape[1], key.shape[-2]
    chunk = max(1, QUERY_CHUNK_SCORES // max(1, heads * keys))
    outputs = []
    for start in range(0, query.shape[-2], chunk):
        end = min(start + chunk, query.shape[-2])
        relative = q_pos[start:end, None] - k_pos[None, :]
        near = torch.matmul(query[..., start:end, :], key.transpose(-1, -2)).float()
        far = torch.matmul(query_far[..., start:end, :], key_far.transpose(-1, -2)).float()
        scores = torch.where(relative < plan.window, near, far) * scaling
        allowed = relative >= 0
        if attention_mask is not None and attention_mask.dtype == torch.bool:
            allowed = allowed & attention_mask[..., start:end, :keys]
        scores = scores.masked_fill(~allowed, float("-inf"))
        if attention_mask is not None and attention_mask.dtype != torch.bool:
            scores = scores + attention_mask[..., start:end, :keys].float()
        probs = torch.softmax(scores, dim=-1).to(value.dtype)
        if training and dropout > 0:
            probs = torch.nn.functional.dropout(probs, p=dropout)
        outputs.append(torch.matmul(probs, value))
    return torch.cat(outputs, dim=-2).transpose(1, 2).contiguous()


def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: rotated (b, h, s, d) tensors in, (b, s, h, d) out."""
    plan: PositionPlan | None = getattr(module, PLAN_ATTRIBUTE, None)
    if plan is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    q_pos, k_pos = _positions(query, key, kwargs)
    if plan.log_n_context:
        query = query * log_n_scales(q_pos, plan.log_n_context).to(query.dtype)[:, None]
    if plan.kind == "plain":
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = _two_band(plan, query, key, value, attention_mask, scale, dropout, module.training, q_pos, k_pos)
    return out, None


AttentionInterface.register(ATTENTION, attention_forward)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def _attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if type(m).__name__.endswith("Attention") and hasattr(m, "layer_idx")]


def install(model: PreTrainedModel, plan: dict[str, Any]) -> None:
    """Give every attention layer of ``model`` the plan and switch the model to :data:`ATTENTION`."""
    position_plan = PositionPlan.from_setup(plan, rotary_module(model) if plan.get("kind", "plain") != "plain"
                                            else None)
    layers = _attention_modules(model)
    if not layers:
        raise ValueError(f"found no attention layers in {type(model).__name__}")
    for layer in layers:
        setattr(layer, PLAN_ATTRIBUTE, position_plan)
    model.set_attn_implementation(ATTENTION)


def installed(model: torch.nn.Module) -> bool:
    return any(getattr(m, PLAN_ATTRIBUTE, None) is not None for m in _attention_modules(model))


@contextmanager
def suspended(model: torch.nn.Module) -> Iterator[None]:
    """Attention as the checkpoint computes it (the plans removed) inside the block: the base-model reference."""
    saved = [(m, getattr(m, PLAN_ATTRIBUTE, None)) for m in _attention_modules(model)]
    for layer, _ in saved:
        setattr(layer, PLAN_ATTRIBUTE, None)
    try:
        yield
    finally:
        for layer, plan in saved:
            setattr(layer, PLAN_ATTRIBUTE, plan)
