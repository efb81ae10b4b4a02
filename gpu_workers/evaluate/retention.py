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

from gpu_workers.position_patches import suspended
from gpu_workers.reporter import Measurement
from gpu_workers.rotary import fixed_rope


@contextmanager
def original_rope(model: torch.nn.Module, inv_freq: list[float], attention_scaling: float = 1.0) -> Iterator[None]:
    """Run the model as the base model: fixed RoPE of the given inverse frequencies, plain attention; restore after.

    ``attention_scaling`` is the checkpoint's own (1 for plain RoPE; e.g. Phi-3's LongRoPE factor). The
    attention-level methods (Self-Extend, ReRoPE, log-n) are suspended too: the base model has none of them.
    """
    with fixed_rope(model, inv_freq, attention_scaling), suspended(model):
        yield


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
