"""Needle-in-a-haystack grid (lengths × depths) and needle-driven perplexity (LongRoPE2).

Scoring is string matching on the greedy answer, never a judge model: *exact* = every expected value
appears in the decoded answer; *partial* = for one value, the share of its digits right in place,
for several values, the share found. Where the RoPE does not depend on the input length, all cells
are answered from one prefilled KV cache of ``intro + haystack``: a cell copies the cache up to its
first needle and only runs the rest, which gives the same answers as running each cell from scratch
(tested) at a fraction of the tokens. Length-dependent RoPE (dynamic NTK, LongRoPE's switch) would
rotate a shared prefix differently per cell, so those methods run every cell from scratch.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gpu_workers.data.needle import NeedleBuilder, NeedleTask
from gpu_workers.evaluate.greedy import answer_positions_logits, cache_prefix, greedy_decode, prefill
from gpu_workers.evaluate.stats import bootstrap_ci, wilson_interval
from gpu_workers.reporter import Cancelled, Measurement
from gpu_workers.rotary import reset_rotary_cache

if TYPE_CHECKING:
    from transformers import PreTrainedModel

EXTRA_DECODE_TOKENS = 3
REUSE_MIN_PREFIX_SHARE = 0.5
"""A cell uses the shared cache only when it saves at least this share of its prompt: continuing from a
cache makes attention take an explicit mask, which PyTorch's CPU kernel runs 2–3× slower than the
maskless causal path (docs/evaluation.md), so shallow needles are cheaper from scratch."""


@dataclass(frozen=True)
class NeedleAnswer:
    task: NeedleTask
    tokens: list[int]
    text: str
    exact: bool
    partial: float


@dataclass(frozen=True)
class NeedleCell:
    length: int
    depth: float
    exact: float
    ci_low: float
    ci_high: float
    partial: float
    samples: int


def score(text: str, values: Sequence[str]) -> tuple[bool, float]:
    if len(values) > 1:
        found = sum(v in text for v in values)
        return found == len(values), found / len(values)
    value = values[0]
    if value in text:
        return True, 1.0
    digits = re.sub(r"\D", "", text)[: len(value)]
    return False, sum(a == b for a, b in zip(value, digits, strict=False)) / len(value)


def grid_tasks(builder: NeedleBuilder, stream: list[int], lengths: Sequence[int], depths: Sequence[float],
               samples: int) -> list[NeedleTask]:
    return [builder.task(stream, n, d, i) for n in sorted(set(lengths)) for d in depths for i in range(samples)]


def answer_tasks(
    model: PreTrainedModel, tokenizer: Any, prefix: list[int], tasks: Sequence[NeedleTask], *,
    device: torch.device, reuse_prefix: bool, length_dependent: bool = False,
    should_stop: Callable[[], bool] = lambda: False, on_task: Callable[[], None] = lambda: None,
) -> list[NeedleAnswer]:
    """Greedy answers to every task; with *reuse_prefix* the deep-needle cells continue one prefilled cache."""
    if reuse_prefix and length_dependent:
        raise ValueError("a shared prefix cache is not exact for length-dependent RoPE")
    shared = None
    share = REUSE_MIN_PREFIX_SHARE
    reusing = [t for t in tasks if reuse_prefix and t.prefix_len >= share * (t.prefix_len + len(t.rest))]
    if reusing:
        if should_stop():
            raise Cancelled()
        shared = prefill(model, prefix[: max(t.prefix_len for t in reusing)], device)
    reused = {id(t) for t in reusing}
    answers = []
    for task in tasks:
        if should_stop():
            raise Cancelled()
        budget = len(task.answer_ids) + EXTRA_DECODE_TOKENS
        if id(task) in reused:
            tokens = greedy_decode(model, task.rest, budget, device, past=cache_prefix(shared, task.prefix_len))
        else:
            if length_dependent:
                reset_rotary_cache(model)
            tokens = greedy_decode(model, task.prompt(prefix), budget, device)
        text = tokenizer.decode(tokens)
        exact, partial = score(text, task.values)
        answers.append(NeedleAnswer(task, tokens, text, exact, partial))
        on_task()
    return answers


def summarise_grid(answers: Sequence[NeedleAnswer]) -> list[NeedleCell]:
    cells: dict[tuple[int, float], list[NeedleAnswer]] = defaultdict(list)
    for answer in answers:
        cells[(answer.task.length, answer.task.depth)].append(answer)
    out = []
    for (length, depth), group in sorted(cells.items()):
        hits = sum(a.exact for a in group)
        low, high = wilson_interval(hits, len(group))
        partial = sum(a.partial for a in group) / len(group)
        out.append(NeedleCell(length, depth, hits / len(group), low, high, partial, len(group)))
    return out


def grid_measurements(cells: Sequence[NeedleCell]) -> list[Measurement]:
    out = []
    for c in cells:
        out.append(Measurement("needle_exact", c.exact, context_length=c.length, depth=c.depth, samples=c.samples,
                               ci_low=c.ci_low, ci_high=c.ci_high))
        out.append(Measurement("needle_partial", c.partial, context_length=c.length, depth=c.depth,
                               samples=c.samples))
    return out


@torch.no_grad()
def needle_nll(model: PreTrainedModel, prefix: list[int], task: NeedleTask, device: torch.device) -> float:
    """Mean NLL of the answer tokens only, after the full needle prompt."""
    logits = answer_positions_logits(model, task.prompt(prefix), task.answer_ids, device)
    targets = torch.tensor(task.answer_ids, device=logits.device)
    return float(torch.nn.functional.cross_entropy(logits, targets))


def needle_perplexity(
    model: PreTrainedModel, prefix: list[int], tasks: Sequence[NeedleTask], *, device: torch.device,
    length_dependent: bool, seed: int = 0, should_stop: Callable[[], bool] = lambda: False,
    on_task: Callable[[], None] = lambda: None,
) -> list[Measurement]:
    """Needle-driven perplexity per (length, depth) and per length over all depths, bootstrap CIs over needles."""
    by_cell: dict[tuple[int, float], list[float]] = defaultdict(list)
    for task in tasks:
        if should_stop():
            raise Cancelled()
        if length_dependent:
            reset_rotary_cache(model)
        by_cell[(task.length, task.depth)].append(needle_nll(model, prefix, task, device))
        on_task()
    out = []
    by_length: dict[int, list[float]] = defaultdict(list)
    for (length, depth), values in sorted(by_cell.items()):
        by_length[length] += values
        out.append(_ppl_measurement(length, depth, values, seed))
    out += [_ppl_measurement(length, None, values, seed) for length, values in sorted(by_length.items())]
    return out


def _ppl_measurement(length: int, depth: float | None, nll: list[float], seed: int) -> Measurement:
    values = np.asarray(nll, dtype=np.float64)
    low, high = bootstrap_ci(values, seed=seed)
    return Measurement("needle_perplexity", math.exp(values.mean()), context_length=length, depth=depth,
                       samples=len(values), ci_low=low, ci_high=high)
