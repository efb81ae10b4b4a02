"""Passkey retrieval accuracy against length (landmark-attention format), with Wilson intervals.

Samples come from :mod:`gpu_workers.data.passkey`, the builder the demo model was taught with; each
(length, sample) pair has its own seeded RNG so a length's prompts do not depend on which other
lengths were asked for.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from gpu_workers.data.passkey import make_sample
from gpu_workers.evaluate.greedy import greedy_prefix_match
from gpu_workers.evaluate.stats import wilson_interval
from gpu_workers.reporter import Cancelled, Measurement
from gpu_workers.rotary import reset_rotary_cache

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class PasskeyResult:
    length: int
    accuracy: float
    ci_low: float
    ci_high: float
    samples: int
    mean_depth_of_misses: float | None


def sample_rng(seed: int, length: int, index: int) -> random.Random:
    return random.Random(f"passkey:{seed}:{length}:{index}")


def passkey_accuracy(
    model: PreTrainedModel, tokenizer: Any, length: int, samples: int, *, device: torch.device,
    length_dependent: bool, depth: float | None = None, seed: int = 0,
    should_stop: Callable[[], bool] = lambda: False, on_sample: Callable[[], None] = lambda: None,
) -> PasskeyResult:
    hits, miss_depths = 0, []
    for index in range(samples):
        if should_stop():
            raise Cancelled()
        sample = make_sample(tokenizer, length, sample_rng(seed, length, index), depth)
        if length_dependent:
            reset_rotary_cache(model)
        exact = greedy_prefix_match(model, sample.input_ids, sample.answer_ids, device) == len(sample.answer_ids)
        hits += exact
        if not exact:
            miss_depths.append(sample.depth)
        on_sample()
    low, high = wilson_interval(hits, samples)
    missed = sum(miss_depths) / len(miss_depths) if miss_depths else None
    return PasskeyResult(length, hits / samples, low, high, samples, missed)


def passkey_by_length(
    model: PreTrainedModel, tokenizer: Any, lengths: Sequence[int], samples: int, *, device: torch.device,
    length_dependent: bool, depth: float | None = None, seed: int = 0,
    should_stop: Callable[[], bool] = lambda: False, on_sample: Callable[[], None] = lambda: None,
) -> list[PasskeyResult]:
    return [
        passkey_accuracy(model, tokenizer, n, samples, device=device, length_dependent=length_dependent,
                         depth=depth, seed=seed, should_stop=should_stop, on_sample=on_sample)
        for n in sorted(set(lengths))
    ]


def to_measurements(results: Sequence[PasskeyResult], depth: float | None = None) -> list[Measurement]:
    return [
        Measurement("passkey_accuracy", r.accuracy, context_length=r.length, depth=depth, samples=r.samples,
                    ci_low=r.ci_low, ci_high=r.ci_high)
        for r in results
    ]
