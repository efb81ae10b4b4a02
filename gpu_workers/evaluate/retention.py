"""Short-context retention: the extended model at the original length, against the base model.

The base model's reference is computed from the *same* loaded weights with the rotary embeddings
temporarily put back to the checkpoint's own RoPE (inverse frequencies and attention scaling as
shipped at the original context, no dynamic switching) — no second copy of the model in memory, and
the reference can be taken before training changes the weights. Ratios are "higher is better,
1 = fully retained": base perplexity / extended perplexity, extended passkey accuracy / base passkey accuracy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from gpu_workers.reporter import Measurement


def rotary_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if hasattr(m, "inv_freq") and hasattr(m, "attention_scaling")]


@contextmanager
def original_rope(model: torch.nn.Module, inv_freq: list[float], attention_scaling: float = 1.0) -> Iterator[None]:
    """Run the model with fixed RoPE of the given inverse frequencies and plain attention; restore after.

    ``attention_scaling`` is the checkpoint's own (1 for plain RoPE; e.g. Phi-3's LongRoPE factor).
    """
    from gpu_workers.position_patches import suspended

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
            # perplexity.reset_rotary_cache copies this back before each window; for LongRoPE it holds the
            # short-factor frequencies, which would quietly replace the reference inside the block.
            module.original_inv_freq = module.inv_freq.clone()
    try:
        with suspended(model):  # attention-level methods (Self-Extend, ReRoPE, log-n) are off for the base
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


@dataclass(frozen=True)
class Retention:
    length: int
    perplexity: float
    base_perplexity: float
    passkey: float | None = None
    base_passkey: float | None = None

    @property
    def perplexity_ratio(self) -> float:
        return self.base_perplexity / self.perplexity

    @property
    def passkey_ratio(self) -> float | None:
        if self.passkey is None or not self.base_passkey:
            return None
        return self.passkey / self.base_passkey

    def measurements(self, documents: int, passkey_samples: int | None) -> list[Measurement]:
        n = self.length
        out = [
            Measurement("short_perplexity", self.perplexity, context_length=n, samples=documents),
            Measurement("short_perplexity_base", self.base_perplexity, context_length=n, samples=documents),
            Measurement("retention_perplexity", self.perplexity_ratio, context_length=n, samples=documents),
        ]
        if self.passkey is not None and self.base_passkey is not None:
            out += [
                Measurement("short_passkey", self.passkey, context_length=n, samples=passkey_samples),
                Measurement("short_passkey_base", self.base_passkey, context_length=n, samples=passkey_samples),
            ]
            if self.passkey_ratio is not None:
                out.append(Measurement("retention_passkey", self.passkey_ratio, context_length=n,
                                       samples=passkey_samples))
        return out
