"""Key-token perplexity (LongPPL, Fang et al. 2024): perplexity over the tokens that need long context.

Ordinary perplexity is dominated by tokens any short window predicts, so it barely moves when a model
does or does not use its long context. LongPPL averages only over *key tokens*: x_i is one when, under an
evaluator, reading the long context lowers its loss by more than ``gain`` nats (LSD = loss_short − loss_long
> α = 2) and the long-context prediction is good (loss_long < ``bound``, i.e. LCL = log p > −2). The
evaluated model's LongPPL at length L is exp(NLL summed over the key tokens among each document's first
L tokens / their number), the model reading those L tokens in one window (perplexity's truncate protocol).

The evaluator here is the base checkpoint inside its own window (the pipeline wraps the model in
``retention.original_rope``): loss_long from windows of ``long_window`` tokens (the original context),
loss_short from windows of ``short_window`` tokens. Known limitation: the paper uses a stronger
long-context evaluator; we stay offline and use the model's own base, so a token beyond the evaluator's
window is judged with at most ``long_window`` tokens of context — a dependency reaching further back than
that cannot make a key token.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from gpu_workers import protocol
from gpu_workers.evaluate.perplexity import checked_lengths, head_losses, token_losses
from gpu_workers.reporter import Cancelled, Measurement
from gpu_workers.rotary import reset_rotary_cache

if TYPE_CHECKING:
    from transformers import PreTrainedModel

DEFAULT_GAIN = 2.0
"""Nats the long context must save on a token (the paper's α)."""
DEFAULT_BOUND = 2.0
"""Largest long-context loss of a key token (the paper's LCL threshold, −log p < 2)."""
MIN_SHORT_WINDOW = 16
RESAMPLES = 1000


def default_short_window(original_context: int) -> int:
    return max(MIN_SHORT_WINDOW, protocol.default_short_window(original_context))


def window_starts(count: int, window: int) -> list[int]:
    """Starts of the windows over *count* tokens: every window//2 tokens, then one ending at the end."""
    if count <= window:
        return [0]
    stride = window // 2
    starts = list(range(0, count - window + 1, stride))
    if starts[-1] + window < count:
        starts.append(count - window)
    return starts


@torch.no_grad()
def windowed_losses(
    model: PreTrainedModel, ids: Sequence[int], window: int, *, device: torch.device, batch: int = 32
) -> torch.Tensor:
    """NLL (float32, CPU, shape (len(ids)-1,)) of ids[1:], index j = predicting ids[j+1].

    Tokens inside the first window are scored by it (context 0..window-1); every later token by a window
    that gives it between window//2 and window-1 tokens of context: windows of ``window`` tokens moved by
    window//2 (the last window ends at the end of ids), each scoring the tokens no earlier window holds.
    Full-length windows are batched ``batch`` at a time in one forward (batch dim).
    """
    if window < 2:
        raise ValueError("a window needs at least two tokens")
    if len(ids) < 2:
        return torch.zeros(0)
    if len(ids) <= window:
        return token_losses(model, ids, device).float()
    tokens = torch.tensor(list(ids), device=device)
    starts = window_starts(len(ids), window)
    # Window k scores the targets from the end of window k-1 (the first window from position 1) to its own end.
    spans = [(start, max(start + 1, prev + window), start + window)
             for start, prev in zip(starts, [-window, *starts[:-1]], strict=True)]
    head = model.get_output_embeddings()
    out = []
    for first in range(0, len(spans), batch):
        group = spans[first:first + batch]
        inputs = torch.stack([tokens[start:end] for start, _, end in group])
        hidden = model.base_model(input_ids=inputs).last_hidden_state
        for row, (start, lo, end) in enumerate(group):
            out.append(head_losses(head, hidden[row, lo - 1 - start:end - 1 - start], tokens[lo:end]))
    return torch.cat(out).float().cpu()


@torch.no_grad()
def key_token_masks(
    model: PreTrainedModel,
    documents: Sequence[Sequence[int]],
    *,
    long_window: int,
    short_window: int,
    gain: float = DEFAULT_GAIN,
    bound: float = DEFAULT_BOUND,
    device: torch.device,
    should_stop: Callable[[], bool] = lambda: False,
    on_document: Callable[[int, int], None] = lambda done, total: None,
) -> list[torch.Tensor]:
    """One bool mask per document over its predicted positions (len(doc)-1,): True at key tokens."""
    if not MIN_SHORT_WINDOW <= short_window < long_window:
        raise ValueError(f"need {MIN_SHORT_WINDOW} <= short_window < long_window, got {short_window} and {long_window}")
    masks = []
    for done, doc in enumerate(documents, 1):
        if should_stop():
            raise Cancelled()
        long = windowed_losses(model, doc, long_window, device=device)
        short = windowed_losses(model, doc, short_window, device=device)
        masks.append((short - long > gain) & (long < bound))
        on_document(done, len(documents))
    return masks


@dataclass(frozen=True)
class LongPPLResult:
    length: int
    longppl: float | None
    """None when no key token lies within the first ``length`` tokens of any document."""
    ci_low: float | None
    ci_high: float | None
    key_tokens: int
    """Key tokens within the first ``length`` tokens, all documents."""
    documents: int
    """Documents with at least one such key token."""


def ratio_bootstrap_ci(sums: np.ndarray, counts: np.ndarray, resamples: int = RESAMPLES, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap over documents of exp(Σ NLL / Σ key tokens): documents carry unequal counts,
    so the pooled ratio, not a mean of per-document means (stats.bootstrap_ci), is resampled."""
    value = float(math.exp(sums.sum() / counts.sum()))
    if len(sums) < 2:
        return value, value
    picks = np.random.default_rng(seed).integers(0, len(sums), size=(resamples, len(sums)))
    ratios = np.exp(sums[picks].sum(axis=1) / counts[picks].sum(axis=1))
    tail = (1 - level) / 2
    return float(np.quantile(ratios, tail)), float(np.quantile(ratios, 1 - tail))


def summarise(length: int, pairs: list[tuple[float, int]], seed: int) -> LongPPLResult:
    kept = [(s, c) for s, c in pairs if c > 0]
    if not kept:
        return LongPPLResult(length, None, None, None, 0, 0)
    sums = np.array([s for s, _ in kept], dtype=np.float64)
    counts = np.array([c for _, c in kept], dtype=np.float64)
    low, high = ratio_bootstrap_ci(sums, counts, seed=seed)
    value = float(math.exp(sums.sum() / counts.sum()))
    return LongPPLResult(length, value, low, high, int(counts.sum()), len(kept))


def longppl_by_length(
    model: PreTrainedModel,
    documents: Sequence[Sequence[int]],
    masks: Sequence[torch.Tensor],
    lengths: Sequence[int],
    *,
    device: torch.device,
    length_dependent: bool,
    should_stop: Callable[[], bool] = lambda: False,
    on_document: Callable[[int, int], None] = lambda done, total: None,
    seed: int = 0,
) -> list[LongPPLResult]:
    """LongPPL of each length over the same documents (each at least max(lengths) tokens).

    Passes as in perplexity.perplexity_by_length: one at the longest length unless the RoPE depends on the
    input length, else one per length with the rotary cache reset first. A document with no key token in a
    pass's window is not run at all: it adds nothing to any length of that pass.
    """
    if len(masks) != len(documents):
        raise ValueError(f"{len(masks)} masks for {len(documents)} documents")
    for doc, mask in zip(documents, masks, strict=True):
        if mask.shape != (len(doc) - 1,):
            raise ValueError(f"a mask of shape {tuple(mask.shape)} for a document of {len(doc)} tokens")
    lengths = checked_lengths(documents, lengths)
    per_length: dict[int, list[tuple[float, int]]] = {n: [] for n in lengths}
    passes = [(lengths[-1], lengths)] if not length_dependent else [(n, [n]) for n in lengths]
    total = len(passes) * len(documents)
    done = 0
    for window, reported in passes:
        for doc, mask in zip(documents, masks, strict=True):
            if should_stop():
                raise Cancelled()
            keys = mask[:window - 1].bool()
            if keys.any():
                if length_dependent:
                    reset_rotary_cache(model)
                nll = torch.where(keys, token_losses(model, doc[:window], device).double(), 0.0)
                cumulative_nll, cumulative_keys = torch.cumsum(nll, 0), torch.cumsum(keys.long(), 0)
                for n in reported:
                    per_length[n].append((float(cumulative_nll[n - 2]), int(cumulative_keys[n - 2])))
            done += 1
            on_document(done, total)
    return [summarise(n, per_length[n], seed) for n in lengths]


def to_measurements(results: Sequence[LongPPLResult]) -> list[Measurement]:
    out = []
    for r in results:
        if r.longppl is not None:
            out.append(Measurement("longppl", r.longppl, context_length=r.length, samples=r.key_tokens,
                                   ci_low=r.ci_low, ci_high=r.ci_high))
        out.append(Measurement("longppl_key_tokens", float(r.key_tokens), context_length=r.length))
    return out
