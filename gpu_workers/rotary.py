"""Every live change to the rotary embedding modules of a loaded transformers model, in one place.

transformers computes RoPE in one module per model (``LlamaRotaryEmbedding`` and its kin): it holds the
inverse frequencies ``inv_freq`` and an ``attention_scaling`` it multiplies into cos and sin, and for a
dynamic rope type also the frequencies it started from (``original_inv_freq``) and the length it last grew
to (``max_seq_len_cached``). Context Lab rewrites those at run time for three reasons, all here:

* **a fresh start per pass** (:func:`reset_rotary_cache`): a dynamic RoPE grown by a long input must not
  leak into a shorter one, so evaluations and training put it back before each forward pass;
* **a fixed RoPE** (:func:`fixed_rope`): the checkpoint's own frequencies on the extended model's weights,
  the base-model reference of the retention and LongPPL measurements;
* **the factor search's candidates** (:func:`rope_override`, :func:`rope_override_rows`): per-pair factors,
  n̂ and an attention scale applied in place, so a model loaded once serves every candidate.

Every change is undone when its block ends. What transformers lacks and is registered for the whole process
(the ``dynamic_yarn`` rope type, the attention function of Self-Extend / ReRoPE / log-n) is
:mod:`gpu_workers.position_patches`; this module only touches modules of one model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

import torch

if TYPE_CHECKING:
    from gpu_workers.methods.base import RopeFacts


class FactorCandidate(Protocol):
    """What :func:`rope_override` applies (the search's ``Candidate`` is one)."""

    @property
    def factors(self) -> Sequence[float]: ...

    @property
    def n_hat(self) -> int: ...

    @property
    def attention_factor(self) -> float: ...


class RotaryModule(Protocol):
    """A transformers rotary embedding module (``LlamaRotaryEmbedding`` and its kin), as this module uses it.

    ``torch.nn.Module`` types every attribute it does not declare as ``Tensor | Module``; these are what the
    rotary modules really hold. The ``original_*`` and ``max_seq_len_cached`` attributes exist only on dynamic
    rope types (``original_attention_scaling`` once :func:`remember_attention_scaling` set it): read them
    after a ``hasattr`` check.
    """

    inv_freq: torch.Tensor
    attention_scaling: float
    rope_type: str
    original_inv_freq: torch.Tensor
    original_max_seq_len: int
    max_seq_len_cached: int
    original_attention_scaling: float
    forward: Callable[..., Any]


def is_rotary(module: torch.nn.Module) -> TypeGuard[RotaryModule]:
    return hasattr(module, "inv_freq") and hasattr(module, "attention_scaling")


def _is_dynamic(module: torch.nn.Module) -> TypeGuard[RotaryModule]:
    """A rotary module of a dynamic rope type: it grows its frequencies with the input and can reset them."""
    return hasattr(module, "original_inv_freq") and hasattr(module, "max_seq_len_cached")


def rotary_modules(model: torch.nn.Module) -> list[RotaryModule]:
    return [m for m in model.modules() if is_rotary(m)]


def rotary_module(model: torch.nn.Module) -> RotaryModule:
    """The model's one rotary embedding (model_facts refuses architectures with one per layer type)."""
    found = rotary_modules(model)
    if len(found) != 1:
        raise ValueError(f"expected one rotary embedding module, found {len(found)}")
    return found[0]


# --- a fresh start per pass -------------------------------------------------------------------------------


def remember_attention_scaling(model: torch.nn.Module) -> None:
    """Store each rotary module's starting attention scaling, for :func:`reset_rotary_cache`.

    transformers' dynamic reset restores the frequencies but not the attention scaling, which for dynamic
    YaRN grows with the input; a later short pass would keep a long pass's temperature.
    """
    for module in rotary_modules(model):
        module.original_attention_scaling = module.attention_scaling


def reset_rotary_cache(model: torch.nn.Module) -> None:
    """Put every dynamic rotary embedding back to its starting frequencies (and attention scaling)."""
    for module in model.modules():
        if _is_dynamic(module):
            module.inv_freq.copy_(module.original_inv_freq.to(module.inv_freq.device))
            module.max_seq_len_cached = module.original_max_seq_len
            if hasattr(module, "original_attention_scaling"):
                module.attention_scaling = module.original_attention_scaling


# --- a fixed RoPE -----------------------------------------------------------------------------------------


@contextmanager
def fixed_rope(model: torch.nn.Module, inv_freq: list[float], attention_scaling: float = 1.0) -> Iterator[None]:
    """Within the block, every rotary module applies these inverse frequencies and attention scaling, whatever
    the input length (no dynamic switching); everything is restored after.

    ``attention_scaling`` is the checkpoint's own (1 for plain RoPE; e.g. Phi-3's LongRoPE factor).
    """
    saved = []
    for module in rotary_modules(model):
        saved.append((module, module.inv_freq.clone(), module.attention_scaling, module.rope_type,
                      getattr(module, "max_seq_len_cached", None), getattr(module, "original_inv_freq", None),
                      getattr(module, "original_attention_scaling", None)))
        module.inv_freq = torch.tensor(inv_freq, dtype=module.inv_freq.dtype, device=module.inv_freq.device)
        module.attention_scaling = attention_scaling
        if hasattr(module, "original_attention_scaling"):
            module.original_attention_scaling = attention_scaling
        module.rope_type = "default"
        if hasattr(module, "original_inv_freq"):
            # reset_rotary_cache copies this back before each window; for LongRoPE it holds the short-factor
            # frequencies, which would quietly replace the fixed ones inside the block.
            module.original_inv_freq = module.inv_freq.clone()
    try:
        yield
    finally:
        for module, freq, scaling, rope_type, cached, original, original_scaling in saved:
            module.inv_freq = freq
            module.attention_scaling = scaling
            if original_scaling is not None:
                module.original_attention_scaling = original_scaling
            module.rope_type = rope_type
            if cached is not None:
                module.max_seq_len_cached = cached
            if original is not None:
                module.original_inv_freq = original


# --- the factor search's candidates -----------------------------------------------------------------------


def candidate_inv_freq(base: RopeFacts, factors: Sequence[float]) -> torch.Tensor:
    """inv_freq_i = 1 / (λ_i · θ^(2i/d)), float32, computed as transformers' longrope computes it."""
    dim = base.rotary_dim
    if len(factors) != dim // 2:
        raise ValueError(f"need {dim // 2} factors, one per RoPE dimension pair; got {len(factors)}")
    exponent = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    return 1.0 / (torch.tensor(list(factors), dtype=torch.float32) * float(base.rope_theta) ** exponent)


def _overridable_modules(model: torch.nn.Module) -> list[RotaryModule]:
    found = rotary_modules(model)
    if not found:
        raise ValueError("the model has no rotary embedding module (with inv_freq and attention_scaling)")
    for module in found:
        if not isinstance(getattr(module, "rope_type", None), str):
            raise ValueError(f"{type(module).__name__} has per-layer rope types, which the search does not handle")
    return found


@contextmanager
def rope_override(model: torch.nn.Module, base: RopeFacts, candidate: FactorCandidate) -> Iterator[None]:
    """Within the block, the model's rotary embeddings apply ``candidate``; everything is restored after.

    The rotary modules' ``inv_freq`` buffers are overwritten in place and ``attention_scaling`` (which
    transformers multiplies into cos and sin, so logits scale by its square) set to the candidate's; their
    ``rope_type`` is set to ``default`` meanwhile so that transformers' dynamic / longrope update does not
    swap the frequencies back. For n̂ > 0 the modules' forward is replaced by one computing cos/sin with the
    original frequencies at positions < n̂ and the candidate's from n̂ on (Llama layout: cos/sin of the pair
    angles repeated twice); the attention scale applies at every position.
    """
    modules = _overridable_modules(model)
    new = candidate_inv_freq(base, candidate.factors)
    original = candidate_inv_freq(base, [1.0] * (base.rotary_dim // 2))
    saved = []
    for module in modules:
        if module.inv_freq.numel() != new.numel():
            raise ValueError(
                f"{type(module).__name__} has {module.inv_freq.numel()} frequencies; the candidate has {new.numel()}"
            )
        saved.append(
            (
                module,
                module.inv_freq.detach().clone(),
                module.attention_scaling,
                module.rope_type,
                module.__dict__.get("forward"),
            )
        )
    try:
        for module in modules:
            module.inv_freq.copy_(new.to(module.inv_freq.device))
            module.attention_scaling = float(candidate.attention_factor)
            module.rope_type = "default"
            if candidate.n_hat > 0:
                module.forward = _mixed_forward(module, original, candidate.n_hat)
        yield
    finally:
        for module, inv_freq, scaling, rope_type, forward in saved:
            module.inv_freq.copy_(inv_freq)
            module.attention_scaling = scaling
            module.rope_type = rope_type
            if forward is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = forward


def _mixed_forward(module: RotaryModule, original: torch.Tensor, n_hat: int) -> Callable[..., Any]:
    def forward(x: Any, position_ids: Any, layer_type: Any = None) -> tuple[Any, Any]:
        with torch.no_grad():
            positions = position_ids[..., None].float()
            scaled = positions * module.inv_freq.to(device=x.device, dtype=torch.float)
            kept = positions * original.to(device=x.device, dtype=torch.float)
            freqs = torch.where(positions < n_hat, kept, scaled)
            emb = torch.cat((freqs, freqs), dim=-1)
            cos = emb.cos() * module.attention_scaling
            sin = emb.sin() * module.attention_scaling
            return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)

    return forward


@contextmanager
def rope_override_rows(model: torch.nn.Module, base: RopeFacts, candidates: Sequence[FactorCandidate],
                       repeats: int) -> Iterator[None]:
    """Within the block, batch row r of a forward pass applies ``candidates[r // repeats]``.

    Every rotary module's forward is replaced by one that computes cos/sin per batch row (Llama layout:
    ``position_ids`` [1 or batch, seq] → cos, sin [batch, seq, d], which ``apply_rotary_pos_emb`` broadcasts
    over the heads), each row with its candidate's inverse frequencies, n̂ and attention scale, so
    ``len(candidates) · repeats`` rows go through the model as one batch. The angles are computed exactly as
    :func:`rope_override` computes them for one candidate. Inputs must have exactly that many rows.
    """
    modules = _overridable_modules(model)
    if not candidates or repeats < 1:
        raise ValueError("give at least one candidate and one row per candidate")
    rows = len(candidates) * repeats
    inv = torch.stack([candidate_inv_freq(base, c.factors) for c in candidates]).repeat_interleave(repeats, dim=0)
    scale = torch.tensor([float(c.attention_factor) for c in candidates], dtype=torch.float32)
    scale = scale.repeat_interleave(repeats)[:, None, None]
    n_hat = torch.tensor([c.n_hat for c in candidates], dtype=torch.float32).repeat_interleave(repeats)[:, None, None]
    mixed = any(c.n_hat > 0 for c in candidates)
    original = candidate_inv_freq(base, [1.0] * (base.rotary_dim // 2))
    for module in modules:
        if module.inv_freq.numel() != inv.shape[1]:
            raise ValueError(
                f"{type(module).__name__} has {module.inv_freq.numel()} frequencies; the candidates have {inv.shape[1]}"
            )

    def forward(x: Any, position_ids: Any, layer_type: Any = None) -> tuple[Any, Any]:
        if x.shape[0] != rows:
            raise ValueError(f"the per-row rotary override expects {rows} batch rows, got {x.shape[0]}")
        with torch.no_grad():
            positions = position_ids[..., None].float().expand(rows, -1, -1)  # [rows, seq, 1]
            freqs = positions * inv.to(device=x.device)[:, None, :]  # [rows, seq, pairs]
            if mixed:
                kept = positions * original.to(device=x.device)
                freqs = torch.where(positions < n_hat.to(device=x.device), kept, freqs)
            emb = torch.cat((freqs, freqs), dim=-1)
            factor = scale.to(device=x.device)
            cos = emb.cos() * factor
            sin = emb.sin() * factor
            return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)

    saved = [(module, module.__dict__.get("forward")) for module in modules]
    try:
        for module in modules:
            module.forward = forward
        yield
    finally:
        for module, previous in saved:
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous
