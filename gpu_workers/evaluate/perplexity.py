"""Perplexity against context length, two protocols.

*truncate*: each document's first L tokens in one window (the YaRN / LongRoPE proof-pile tables).
*sliding*: the same first T tokens of every document (T = the longest length) scored with windows
of L tokens moved by a stride, each window scoring only the tokens no earlier window scored (the PI /
LongLoRA PG19 tables). Every length then scores the same tokens, so the curve shows only what
the extra context buys; at L = T it is exactly the truncate number.

For a RoPE that does not depend on the input length, causality makes the first L' positions of a
pass at L identical to a pass at L', so one forward pass at the longest length yields every shorter
length. Length-dependent RoPE (dynamic NTK) is evaluated one length at a time, with the rotary
cache reset before each pass so an earlier, longer input cannot leak its scaling into a shorter one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from gpu_workers.evaluate.stats import bootstrap_ci
from gpu_workers.reporter import Cancelled, Measurement
from gpu_workers.rotary import reset_rotary_cache

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["bootstrap_ci", "perplexity_by_length", "sliding_perplexity_by_length", "token_losses"]

LOSS_CHUNK = 2048
"""Positions per lm-head chunk on a GPU: keeps full-vocabulary logits of a long window out of memory."""

CPU_CHUNK_LOGITS = 1 << 20
"""Logits per chunk on a CPU (4 MiB of fp32): a chunk that stays in cache made the evaluation 1.2× faster
at 1,024 tokens on the demo model than 2,048-position chunks (benches/eval_throughput.py, docs/evaluation.md)."""


def loss_chunk(device: torch.device, vocab_size: int) -> int:
    """Positions per lm-head + cross-entropy chunk."""
    if device.type == "cuda":
        return LOSS_CHUNK
    return max(16, CPU_CHUNK_LOGITS // max(vocab_size, 1))


@dataclass(frozen=True)
class LengthResult:
    length: int
    perplexity: float
    ci_low: float
    ci_high: float
    documents: int


@torch.no_grad()
def token_losses(model: PreTrainedModel, ids: Sequence[int], device: torch.device) -> torch.Tensor:
    """Next-token NLL (nats) at every position of one window: shape (len(ids) - 1,), float32 on CPU."""
    input_ids = torch.tensor([list(ids)], device=device)
    hidden = model.base_model(input_ids=input_ids).last_hidden_state[0]
    head = model.get_output_embeddings()
    return head_losses(head, hidden, input_ids[0, 1:]).cpu()


def head_losses(head: torch.nn.Linear, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """NLL of *targets* (n,) under the lm head applied to *hidden* (≥ n, d), chunk by chunk."""
    count = targets.numel()
    chunk = loss_chunk(targets.device, head.weight.shape[0])
    out = []
    for start in range(0, count, chunk):
        end = min(start + chunk, count)
        logits = head(hidden[start:end]).float()
        out.append(torch.nn.functional.cross_entropy(logits, targets[start:end], reduction="none"))
    return torch.cat(out)


def checked_lengths(documents: Sequence[Sequence[int]], lengths: Sequence[int]) -> list[int]:
    """The distinct lengths, ascending; every document must hold the longest."""
    ordered = sorted(set(lengths))
    if any(len(doc) < ordered[-1] for doc in documents):
        raise ValueError(f"every document needs at least {ordered[-1]} tokens")
    return ordered


def summarise(length: int, doc_nll: list[float], seed: int) -> LengthResult:
    values = np.asarray(doc_nll, dtype=np.float64)
    low, high = bootstrap_ci(values, seed=seed)
    return LengthResult(length, float(math.exp(values.mean())), low, high, len(values))


def perplexity_by_length(
    model: PreTrainedModel,
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
    lengths = checked_lengths(documents, lengths)
    longest = lengths[-1]
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


def sliding_document_nll(
    model: PreTrainedModel, tokens: Sequence[int], window: int, stride: int, *, device: torch.device,
    length_dependent: bool,
) -> float:
    """Mean NLL of tokens[1:] scored by windows of *window* tokens, *stride* apart."""
    total, count, scored_until = 0.0, 0, 1
    for begin in range(0, len(tokens), stride):
        end = min(begin + window, len(tokens))
        if length_dependent:
            reset_rotary_cache(model)
        losses = token_losses(model, tokens[begin:end], device)
        # With stride == window a window's first token has no context inside it and stays unscored.
        fresh = min(end - scored_until, losses.numel())
        total += float(losses[-fresh:].double().sum())
        count += fresh
        scored_until = end
        if end == len(tokens):
            break
    return total / count


def sliding_perplexity_by_length(
    model: PreTrainedModel,
    documents: Sequence[Sequence[int]],
    lengths: Sequence[int],
    *,
    stride: int,
    device: torch.device,
    length_dependent: bool,
    should_stop: Callable[[], bool] = lambda: False,
    on_document: Callable[[int, int], None] = lambda done, total: None,
    seed: int = 0,
) -> list[LengthResult]:
    """Sliding-window perplexity of each window length over every document's first max(lengths) tokens."""
    lengths = checked_lengths(documents, lengths)
    longest = lengths[-1]
    if not 1 <= stride <= lengths[0]:
        raise ValueError(f"the stride must be between 1 and the shortest window ({lengths[0]})")
    total = len(lengths) * len(documents)
    done = 0
    results = []
    for window in lengths:
        doc_nll = []
        for doc in documents:
            if should_stop():
                raise Cancelled()
            doc_nll.append(sliding_document_nll(model, doc[:longest], window, stride, device=device,
                                                length_dependent=length_dependent))
            done += 1
            on_document(done, total)
        results.append(summarise(window, doc_nll, seed))
    return results


def to_measurements(results: Sequence[LengthResult]) -> list[Measurement]:
    return [
        Measurement("perplexity", r.perplexity, context_length=r.length, samples=r.documents,
                    ci_low=r.ci_low, ci_high=r.ci_high)
        for r in results
    ]
