"""Fitness functions on a loaded transformers model: perplexity at the search length, one or K candidates a pass.

The model is loaded once (with plain RoPE, method ``none``) and every candidate applied in place through
:mod:`gpu_workers.rotary`, which restores it after each evaluation. Lower is better; a diverged value is +inf.
Unlike the rest of :mod:`gpu_workers.search`, this needs torch; LongRoPE2's needle fitness is
:func:`gpu_workers.search_step.needle_fitness`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gpu_workers.evaluate.perplexity import head_losses, token_losses
from gpu_workers.rotary import rope_override, rope_override_rows
from gpu_workers.search.candidates import Candidate

if TYPE_CHECKING:
    from gpu_workers.methods.base import RopeFacts


def perplexity_fitness(
    model: Any, base: RopeFacts, documents: Sequence[Sequence[int]], length: int, device: Any = None
) -> Callable[[Candidate], float]:
    """Perplexity at ``length`` of a loaded model with a candidate applied in place (model loaded once).

    exp of the mean over documents of each document's mean next-token NLL on its first ``length`` tokens
    (the truncate protocol of :func:`gpu_workers.evaluate.perplexity.perplexity_by_length`). Load the model
    with plain RoPE (method ``none``) and pass the base model's RoPE facts: the factors are relative to
    its θ. The model's state is restored after every evaluation.
    """
    windows = _fitness_windows(documents, length)
    if device is None:
        device = next(model.parameters()).device

    def fitness(candidate: Candidate) -> float:
        with rope_override(model, base, candidate):
            nll = [float(token_losses(model, ids, device).double().mean()) for ids in windows]
        value = math.exp(float(np.mean(nll)))
        return value if math.isfinite(value) else math.inf

    return fitness


def _fitness_windows(documents: Sequence[Sequence[int]], length: int) -> list[list[int]]:
    """Each document's first *length* tokens; every document must have them."""
    if not documents:
        raise ValueError("give at least one document")
    if any(len(doc) < length for doc in documents):
        raise ValueError(f"every document needs at least {length} tokens")
    return [list(doc[:length]) for doc in documents]


def batched_token_losses(model: Any, windows: Sequence[Sequence[int]], device: Any) -> torch.Tensor:
    """Next-token NLL (nats) of equal-length windows in one forward batch: (rows, length − 1), float32 on CPU.

    Row by row the same numbers as :func:`gpu_workers.evaluate.perplexity.token_losses` (up to the float
    rounding a batched matmul may differ by); the lm head runs per row and in chunks, as there.
    """
    with torch.no_grad():
        input_ids = torch.tensor([list(w) for w in windows], device=device)
        hidden = model.base_model(input_ids=input_ids).last_hidden_state
        head = model.get_output_embeddings()
        rows = [head_losses(head, hidden[row], input_ids[row, 1:]) for row in range(input_ids.shape[0])]
        return torch.stack(rows).cpu()


def batched_perplexity_fitness(
    model: Any, base: RopeFacts, documents: Sequence[Sequence[int]], length: int, device: Any = None
) -> Callable[[list[Candidate]], list[float]]:
    """:func:`perplexity_fitness` for a list of candidates: K candidates × D documents as one forward batch.

    Row k·D + j is document j under candidate k (per-row frequencies, n̂ and attention scale through
    :func:`rope_override_rows`). Each value equals what :func:`perplexity_fitness` gives that candidate up to
    float rounding (about 1e-6 relative). Memory grows with K·D·length; :func:`search` hands it
    ``batch_candidates`` candidates at a time, so choose that to fit.
    """
    windows = _fitness_windows(documents, length)
    if device is None:
        device = next(model.parameters()).device

    def fitness_many(candidates: list[Candidate]) -> list[float]:
        if not candidates:
            return []
        with rope_override_rows(model, base, candidates, len(windows)):
            losses = batched_token_losses(model, windows * len(candidates), device)
        nll = losses.double().mean(dim=1).reshape(len(candidates), len(windows))
        values = []
        for row in nll.tolist():
            value = math.exp(float(np.mean(row)))
            values.append(value if math.isfinite(value) else math.inf)
        return values

    return fitness_many
