"""LongLoRA's shifted sparse attention (S2-Attn), for training only.

Chen et al. 2023 ("LongLoRA") train long contexts with attention restricted to groups of ``G`` tokens:
half of the heads attend inside the groups ``[0, G), [G, 2G), …``, the other half inside groups shifted
by ``G/2`` (``[G/2, 3G/2), …``), so information flows between neighbouring groups through the shifted
heads while the cost is ``O(n·G)`` instead of ``O(n²)``. At evaluation the model uses full attention;
the point of the paper is that weights trained this way work with full attention, so this module is
never used outside :func:`gpu_workers.train.train`.

Differences from the reference implementation, on purpose:

* LongLoRA rolls the shifted heads by ``−G/2`` and so puts the first ``G/2`` tokens in one group with the
  *last* ``G/2`` tokens, after them: the sequence's first tokens then attend to its last ones, a leak of
  the future into a causal language-model loss. Here that wrapped group is split into its two causal
  halves (``[0, G/2)`` and ``[n − G/2, n)``): identical to the roll everywhere else, and causal.
* The sequence length must be a multiple of ``G`` (no padding): training sequences are packed to a fixed
  length, and a padded group would change what the last tokens see. A clear error says when it is not.
* No padding mask: the function refuses an attention mask. Training batches are packed, full-length rows.

The attention function follows transformers v5's ``AttentionInterface`` (``fn(module, query, key, value,
attention_mask, scaling, dropout, **kwargs) -> (output [batch, seq, heads, dim], None)``) and is
registered under :data:`S2_ATTN`. transformers builds no mask for an implementation its mask interface
does not know, so the model hands this function ``attention_mask=None``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv

if TYPE_CHECKING:
    from transformers import PreTrainedModel

S2_ATTN = "s2_attn"
_SETTINGS = "_s2_attn_settings"
"""Attribute set on the model's config(s) while :func:`s2_attention` is active: (group fraction, shift)."""


def group_size_for(seq_len: int, group_fraction: float) -> int:
    """G = round(fraction × seq_len), at least 1; the sequence must split into whole groups."""
    size = max(1, round(group_fraction * seq_len))
    if seq_len % size:
        raise ValueError(
            f"S2-Attn needs the sequence length ({seq_len}) to be a multiple of the group size "
            f"({size} = {group_fraction} × {seq_len}); pick a training length or group fraction that divides"
        )
    return size


def _causal(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float | None,
            dropout: float) -> torch.Tensor:
    if query.shape[-2] == 0:
        return query.new_empty(query.shape[:-1] + value.shape[-1:])
    return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, is_causal=True, scale=scaling)


def _grouped(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, group_size: int, scaling: float | None,
             dropout: float) -> torch.Tensor:
    """Causal attention inside consecutive groups of ``group_size`` tokens: the groups become a batch dimension."""
    b, h, n, _ = query.shape
    if n == 0:
        return query.new_empty(b, h, 0, value.shape[-1])
    g = n // group_size

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, h, g, group_size, t.shape[-1])

    out = _causal(split(query), split(key), split(value), scaling, dropout)
    return out.reshape(b, h, n, value.shape[-1])


def _shifted(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, group_size: int, scaling: float | None,
             dropout: float) -> torch.Tensor:
    """Groups shifted by G/2: ``[0, G/2)``, then whole groups ``[G/2, 3G/2), …``, then ``[n − G + G/2, n)``."""
    n = query.shape[-2]
    first = group_size // 2
    if first == 0:
        return _grouped(query, key, value, group_size, scaling, dropout)
    last_start = n - (group_size - first)
    pieces = [
        _causal(query[..., :first, :], key[..., :first, :], value[..., :first, :], scaling, dropout),
        _grouped(query[..., first:last_start, :], key[..., first:last_start, :], value[..., first:last_start, :],
                 group_size, scaling, dropout),
        _causal(query[..., last_start:, :], key[..., last_start:, :], value[..., last_start:, :], scaling, dropout),
    ]
    return torch.cat(pieces, dim=-2)


def shifted_sparse_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    group_size: int,
    *,
    shift: bool = True,
    scaling: float | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """S2-Attn on ``[batch, heads, seq, dim]`` (keys/values may have fewer heads: GQA) → ``[batch, seq, heads, dim]``.

    The first ``heads − heads // 2`` heads attend inside plain groups, the last ``heads // 2`` inside groups
    shifted by ``group_size // 2`` (none when ``shift`` is false).
    """
    heads, n = query.shape[1], query.shape[2]
    if key.shape[2] != n:
        raise ValueError("S2-Attn is for training forwards: queries and keys must cover the same tokens (no cache)")
    if group_size < 1 or n % group_size:
        raise ValueError(f"the sequence length {n} is not a multiple of the S2-Attn group size {group_size}")
    if heads % key.shape[1]:
        raise ValueError(f"{heads} query heads cannot share {key.shape[1]} key/value heads evenly")
    key = repeat_kv(key, heads // key.shape[1])
    value = repeat_kv(value, heads // value.shape[1])
    shifted_heads = heads // 2 if shift else 0
    plain = heads - shifted_heads
    out = _grouped(query[:, :plain], key[:, :plain], value[:, :plain], group_size, scaling, dropout)
    if shifted_heads:
        moved = _shifted(query[:, plain:], key[:, plain:], value[:, plain:], group_size, scaling, dropout)
        out = torch.cat([out, moved], dim=1)
    return out.transpose(1, 2).contiguous()


def s2_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The ``AttentionInterface`` entry: reads the group fraction :func:`s2_attention` put on the module's config."""
    settings = getattr(module.config, _SETTINGS, None)
    if settings is None:
        raise RuntimeError("S2-Attn is only active inside "
                           "gpu_workers.train.s2_attn.s2_attention(model, group_fraction)")
    if attention_mask is not None:
        raise ValueError("S2-Attn takes packed, unpadded training batches: no attention mask")
    fraction, shift = settings
    group_size = group_size_for(query.shape[2], fraction)
    return shifted_sparse_attention(query, key, value, group_size, shift=shift, scaling=scaling,
                                    dropout=dropout), None


AttentionInterface.register(S2_ATTN, s2_attention_forward)


def _configs(model: torch.nn.Module) -> list[Any]:
    """Every distinct config the model's modules dispatch attention through (sub-models may have their own)."""
    seen: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            seen.setdefault(id(config), config)
    return list(seen.values())


def _transformers_model(model: torch.nn.Module) -> PreTrainedModel:
    """The transformers model under a peft or DDP wrapper."""
    while True:
        base_model = getattr(model, "get_base_model", None)
        if base_model is not None:
            model = base_model()
            continue
        inner = getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return cast("PreTrainedModel", model)  # what peft and DDP wrap: a transformers model
        model = inner


def _set_implementation(model: torch.nn.Module, implementation: str) -> None:
    set_attn_implementation = getattr(model, "set_attn_implementation", None)
    if set_attn_implementation is not None:
        set_attn_implementation(implementation)
    else:  # a bare module: set the configs directly
        for config in _configs(model):
            config._attn_implementation = implementation


@contextmanager
def s2_attention(model: torch.nn.Module, group_fraction: float, shift: bool = True) -> Iterator[None]:
    """Run ``model`` with S2-Attn (groups of ``round(group_fraction × seq)`` tokens); restore its attention after.

    ``shift=False`` keeps every head in the plain groups (for tests: one group without shift is causal attention).
    """
    if not 0 < group_fraction <= 1:
        raise ValueError("the S2-Attn group fraction must be in (0, 1]")
    inner = _transformers_model(model)
    previous = inner.config._attn_implementation
    configs = _configs(inner)
    for config in configs:
        setattr(config, _SETTINGS, (float(group_fraction), bool(shift)))
    try:
        _set_implementation(inner, S2_ATTN)
        yield
    finally:
        _set_implementation(inner, previous)
        for config in configs:
            if hasattr(config, _SETTINGS):
                delattr(config, _SETTINGS)
