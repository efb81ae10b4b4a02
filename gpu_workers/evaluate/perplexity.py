"""Perplexity against context length, *truncate* protocol (each document's first L tokens).

For a RoPE that does not depend on the input length, causality makes the first L' positions of a
pass at L identical to a pass at L', so one forward pass at the longest length yields every shorter
length. Length-dependent RoPE (dynamic NTK) is evaluated one length at a time, with the rotary
cache reset before each pass so an earlier, longer input cannot leak its scaling into a shorter one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gpu_workers.reporter import Cancelled, Measurement

LOSS_CHUNK = 2048
"""Positions per lm-head chunk: keeps full-vocabulary logits of a long window out of memory."""


@dataclass(frozen=True)
class LengthResult:
    length: int
    perplexity: float
    ci_low: float
    ci_high: float
    documents: int


def reset_rotary_cache(model: torch.nn.Module) -> None:
    """Put every dynamic rotary embedding back to its original frequencies."""
    for module in model.modules():
        if hasattr(module, "original_inv_freq") and hasattr(module, "max_seq_len_cached"):
            module.inv_freq.copy_(module.original_inv_freq.to(module.inv_freq.device))
            module.max_seq_len_cached = module.original_max_seq_len


@torch.no_grad()
def token_losses(model: torch.nn.Module, ids: Sequence[int], device: torch.device) -> torch.Tensor:
    """Next-token NLL (nats) at every position of one window: shape (len(ids) - 1,), float32 on CPU."""
    input_ids = torch.tensor([list(ids)], device=device)
    hidden = model.base_model(input_ids=input_ids).last_hidden_state[0]
    head = model.get_output_embeddings()
    targets = input_ids[0, 1:]
    out = []
    for start in range(0, targets.numel(), LOSS_CHUNK):
        logits = head(hidden[start : start + LOSS_CHUNK][: targets.numel() - start]).float()
        out.append(torch.nn.functional.cross_entropy(logits, targets[start : start + LOSS_CHUNK], reduction="none"))
    return torch.cat(out).cpu()


def bootstrap_ci(doc_nll: np.ndarray, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap over documents of exp(mean per-document NLL)."""
    if len(doc_nll) < 2:
        value = float(math.exp(doc_nll.mean()))
        return value, value
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(doc_nll), size=(resamples, len(doc_nll)))
    means = np.exp(doc_nll[picks].mean(axis=1))
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def summarise(length: int, doc_nll: list[float], seed: int) -> LengthResult:
    values = np.asarray(doc_nll, dtype=np.float64)
    low, high = bootstrap_ci(values, seed=seed)
    return LengthResult(length, float(math.exp(values.mean())), low, high, len(values))


def perplexity_by_length(
    model: torch.nn.Module,
    documents: Sequence[Sequence[int]],
    lengths: Sequence[int],
    *,
    device: torch.device,
    length_dependent: bool,
    should_stop: Callable[[], bool] = lambda: False,
    on_document: Callable[[int, int], None] = lambda done, total: None,
    seed: int = 0,
) -> list[LengthResult]:
    """Perplexity of each length over the same documents (each at least max(lengths) tokens)."""
    lengths = sorted(set(lengths))
    longest = lengths[-1]
    if any(len(doc) < longest for doc in documents):
        raise ValueError(f"every document needs at least {longest} tokens")
    per_length: dict[int, list[float]] = {n: [] for n in lengths}
    passes = [(longest, lengths)] if not length_dependent else [(n, [n]) for n in lengths]
    total = len(passes) * len(documents)
    done = 0
    for window, reported in passes:
        for doc in documents:
            if should_stop():
                raise Cancelled()
            if length_dependent:
                reset_rotary_cache(model)
            losses = token_losses(model, doc[:window], device)
            cumulative = torch.cumsum(losses.double(), 0)
            for n in reported:
                per_length[n].append(float(cumulative[n - 2] / (n - 1)))
            done += 1
            on_document(done, total)
    return [summarise(n, per_length[n], seed) for n in lengths]


def to_measurements(results: Sequence[LengthResult]) -> list[Measurement]:
    return [
        Measurement("perplexity", r.perplexity, context_length=r.length, samples=r.documents,
                    ci_low=r.ci_low, ci_high=r.ci_high)
        for r in results
    ]
