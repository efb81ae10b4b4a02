"""RULER: greedy answers to the generated tasks, string-match scoring, and the effective context length.

Scoring is deterministic, no judge model: a sample scores the share of its reference strings found in the
greedy answer, case-insensitively (RULER's ``string_match_all``). Every task then has a mean per length
(``ruler_<task>``) and the tasks' mean per length (``ruler_average``, each task weighted equally, as RULER
averages its tasks).

Answers are decoded with the KV cache (:mod:`gpu_workers.evaluate.greedy`). Samples of one task and length
built on the noise haystack share their tokens up to the first needle (``RulerSample.prefix_len``); for a
RoPE that does not depend on the input length those samples continue one prefilled cache of that prefix,
which gives the same tokens as running each from scratch (tested), at fewer prompt tokens. As in the needle
grid, a sample uses the shared cache only when it saves at least half its prompt (``REUSE_MIN_PREFIX_SHARE``:
on a CPU, continuing from a cache forces a masked attention kernel that is slower per token), and a
length-dependent RoPE (dynamic NTK, LongRoPE's switch) always runs from scratch.

Effective length (RULER, NoLiMa): the longest evaluated length up to which the model keeps at least
``threshold`` × a reference score. RULER compares against a fixed bar (Llama-2-7B's 85.6% at 4K); NoLiMa
against 85% of the model's own short-context score. Here the reference is the same model's score at its
original context (:func:`reference_score`), so the number says how far the extension carries what the
model could do, independent of how strong the model was to begin with; and a dip ends it, even if a longer
length scores well again, because a length at which retrieval fails is not usable context.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from gpu_workers.data.ruler import RulerError, RulerSample
from gpu_workers.evaluate.greedy import cache_prefix, greedy_decode, prefill
from gpu_workers.evaluate.needle import REUSE_MIN_PREFIX_SHARE
from gpu_workers.evaluate.stats import wilson_interval
from gpu_workers.reporter import Cancelled, Measurement
from gpu_workers.rotary import reset_rotary_cache

if TYPE_CHECKING:
    from transformers import PreTrainedModel

ANSWER_SLACK_TOKENS = 8
"""Decoding budget beyond the reference answer's own tokens: room for a different separator or a space.
RULER decodes 30–128 tokens for chat models; a fixed large budget would mostly time the model's rambling."""
DEFAULT_THRESHOLD = 0.85
AVERAGE_METRIC = "ruler_average"
EFFECTIVE_LENGTH_METRIC = "ruler_effective_length"
REFERENCE_METRIC = "ruler_reference"


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """Share of *references* that occur in *prediction*, ignoring case (RULER's metric for its tasks)."""
    if not references:
        raise ValueError("a RULER sample has at least one reference answer")
    text = prediction.lower()
    return sum(r.lower() in text for r in references) / len(references)


def metric_name(task: str) -> str:
    return f"ruler_{task}"


@dataclass(frozen=True)
class RulerAnswer:
    sample: RulerSample
    tokens: list[int]
    text: str
    score: float


def decoding_budget(sample: RulerSample, max_new_tokens: int | Mapping[str, int] | None = None) -> int:
    """Tokens to decode for *sample*: a fixed number, a per-task number, or (default, and for tasks a mapping
    leaves out) the reference answer's tokens plus ANSWER_SLACK_TOKENS."""
    if isinstance(max_new_tokens, int):
        return max(1, max_new_tokens)
    if isinstance(max_new_tokens, Mapping) and sample.task in max_new_tokens:
        return max(1, int(max_new_tokens[sample.task]))
    return max(1, sample.answer_tokens) + ANSWER_SLACK_TOKENS


def _reusable(sample: RulerSample) -> bool:
    prompt = len(sample.prompt_ids)
    return 0 < sample.prefix_len < prompt and sample.prefix_len >= REUSE_MIN_PREFIX_SHARE * prompt


def answer_samples(
    model: PreTrainedModel, tokenizer: Any, samples: Sequence[RulerSample], *, device: torch.device,
    max_new_tokens: int | Mapping[str, int] | None = None, length_dependent: bool = False,
    reuse_prefix: bool = True, should_stop: Callable[[], bool] = lambda: False,
    on_sample: Callable[[], None] = lambda: None,
) -> list[RulerAnswer]:
    """Greedy answers to every sample, scored, in the order given.

    Samples are answered task by task and length by length; within one (task, length), those that share a
    long enough prefix continue one prefilled cache of it (never with *length_dependent*, or with
    *reuse_prefix* off). ``should_stop`` is checked before every prefill and every sample.
    """
    groups: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, sample in enumerate(samples):
        groups[(sample.task, sample.length)].append(i)
    answers: list[RulerAnswer | None] = [None] * len(samples)
    for members in groups.values():
        shared, head = None, None
        reusing = [i for i in members if reuse_prefix and not length_dependent and _reusable(samples[i])]
        if reusing:
            head = max((samples[i] for i in reusing), key=lambda s: s.prefix_len)
            # Only samples whose prefix really is the head's (generation guarantees it; this keeps it exact).
            reusing = [i for i in reusing
                       if samples[i].prompt_ids[: samples[i].prefix_len] == head.prompt_ids[: samples[i].prefix_len]]
        if reusing:
            if should_stop():
                raise Cancelled()
            assert head is not None
            shared = prefill(model, head.prompt_ids[: head.prefix_len], device)
        for i in members:
            if should_stop():
                raise Cancelled()
            sample = samples[i]
            budget = decoding_budget(sample, max_new_tokens)
            if shared is not None and i in reusing:
                past = cache_prefix(shared, sample.prefix_len)
                tokens = greedy_decode(model, sample.prompt_ids[sample.prefix_len :], budget, device, past=past)
            else:
                if length_dependent:
                    reset_rotary_cache(model)
                tokens = greedy_decode(model, sample.prompt_ids, budget, device)
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            answers[i] = RulerAnswer(sample, tokens, text, string_match_all(text, sample.answers))
            on_sample()
        del shared
    return [a for a in answers if a is not None]


def score_by_task_and_length(answers: Sequence[RulerAnswer]) -> list[Measurement]:
    """``ruler_<task>`` per (task, length): mean score, samples, a Wilson 95% interval (scores are shares
    in [0, 1], so the interval of a rate with fractional successes); then ``ruler_average`` per length, the
    unweighted mean of the tasks' means at that length (samples = every answer at that length)."""
    by_cell: dict[tuple[int, str], list[float]] = defaultdict(list)
    for answer in answers:
        by_cell[(answer.sample.length, answer.sample.task)].append(answer.score)
    out: list[Measurement] = []
    by_length: dict[int, list[float]] = defaultdict(list)
    counts: dict[int, int] = defaultdict(int)
    for (length, task), scores in sorted(by_cell.items()):
        mean = sum(scores) / len(scores)
        low, high = wilson_interval(min(sum(scores), len(scores)), len(scores))
        out.append(Measurement(metric_name(task), mean, context_length=length, samples=len(scores),
                               ci_low=low, ci_high=high))
        by_length[length].append(mean)
        counts[length] += len(scores)
    for length, means in sorted(by_length.items()):
        out.append(Measurement(AVERAGE_METRIC, sum(means) / len(means), context_length=length,
                               samples=counts[length]))
    return out


def group_metric(group: str) -> str:
    return f"ruler_group_{group}"


def group_measurements(task_measurements: Sequence[Measurement]) -> list[Measurement]:
    """``ruler_group_<group>`` per length: the unweighted mean of that group's task means (RULER's categories:
    retrieval, multi-hop tracing, aggregation), for every group with at least one task evaluated."""
    from gpu_workers.data.ruler import TASKS

    means: dict[tuple[str, int], list[float]] = defaultdict(list)
    counts: dict[tuple[str, int], int] = defaultdict(int)
    for m in task_measurements:
        task = TASKS.get(m.metric.removeprefix("ruler_")) if m.metric.startswith("ruler_") else None
        if task is None or m.context_length is None:
            continue
        means[(task.group, m.context_length)].append(m.value)
        counts[(task.group, m.context_length)] += m.samples or 0
    return [Measurement(group_metric(group), sum(values) / len(values), context_length=length,
                        samples=counts[(group, length)])
            for (group, length), values in sorted(means.items())]


def effective_lengths(measurements: Sequence[Measurement], original_length: int,
                      threshold: float = DEFAULT_THRESHOLD) -> list[Measurement]:
    """:func:`effective_length_measurements` for the average (``ruler_reference``, ``ruler_effective_length``)
    and for every task group present (``ruler_reference_<group>``, ``ruler_effective_length_<group>``)."""
    out = effective_length_measurements(measurements, original_length, threshold)
    groups = sorted({m.metric.removeprefix("ruler_group_") for m in measurements
                     if m.metric.startswith("ruler_group_")})
    for group in groups:
        for m in effective_length_measurements(measurements, original_length, threshold, group_metric(group)):
            out.append(Measurement(f"{m.metric}_{group}", m.value, context_length=m.context_length))
    return out


def scores_by_length(measurements: Sequence[Measurement], metric: str = AVERAGE_METRIC) -> dict[int, float]:
    """``{length: value}`` of one metric (default the average), for :func:`effective_length`."""
    return {int(m.context_length): m.value for m in measurements
            if m.metric == metric and m.context_length is not None}


def reference_score(scores: Mapping[int, float], original_length: int) -> float | None:
    """The score at the longest evaluated length within the original context (the model's own baseline),
    or None when no evaluated length is that short."""
    inside = [n for n in scores if n <= original_length]
    return scores[max(inside)] if inside else None


def validate_threshold(threshold: float) -> float:
    value = float(threshold)
    if math.isnan(value) or not 0 < value <= 1:
        raise RulerError("the effective-length threshold is a fraction of the reference score, above 0 and at "
                         "most 1 (RULER and NoLiMa use 0.85)", "ruler_threshold")
    return value


def effective_length(scores_by_length: Mapping[int, float], reference: float,
                     threshold: float = DEFAULT_THRESHOLD) -> int | None:
    """The longest evaluated length L such that the score at every evaluated length ≤ L is at least
    ``threshold × reference``; None when the shortest length already falls short, when nothing was evaluated,
    or when the reference is not positive (a model that fails at its own context has no context to keep)."""
    bar = validate_threshold(threshold) * reference
    if not reference > 0:
        return None
    best = None
    for length in sorted(scores_by_length):
        if scores_by_length[length] < bar:
            break
        best = length
    return best


def effective_length_measurements(measurements: Sequence[Measurement], original_length: int,
                                  threshold: float = DEFAULT_THRESHOLD, metric: str = AVERAGE_METRIC
                                  ) -> list[Measurement]:
    """From a run's RULER measurements: ``ruler_reference`` (the *metric*'s score at the longest evaluated
    length within *original_length*, at that length) and ``ruler_effective_length`` (value in tokens, no
    length coordinate). Nothing when no evaluated length lies within the original context; the reference
    alone when the effective length is undefined (the shortest length already fails, or the reference is 0).
    """
    validate_threshold(threshold)
    scores = scores_by_length(measurements, metric)
    reference = reference_score(scores, original_length)
    if reference is None:
        return []
    inside = max(n for n in scores if n <= original_length)
    out = [Measurement(REFERENCE_METRIC, reference, context_length=inside)]
    found = effective_length(scores, reference, threshold)
    if found is not None:
        out.append(Measurement(EFFECTIVE_LENGTH_METRIC, float(found)))
    return out
