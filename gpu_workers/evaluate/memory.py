"""Memory and time per length: a prefill forward pass, its peak memory, and the KV cache it leaves.

The KV cache a model's shape predicts, 2 · layers · kv-heads · head-dim · length · bytes, is reported
beside the cache actually held after the pass, so a surprise (an extra copy, a dtype upcast) shows.
Peak memory comes from the CUDA allocator; on the CPU there is no per-call peak to read, so only time
and the cache are reported there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from gpu_workers import device as devices
from gpu_workers.device import Placement
from gpu_workers.evaluate.greedy import prefill
from gpu_workers.model_facts import ModelFacts
from gpu_workers.reporter import Cancelled, Measurement
from gpu_workers.rotary import reset_rotary_cache

if TYPE_CHECKING:
    from transformers import PreTrainedModel

MB = 2**20


def predicted_kv_cache_bytes(facts: ModelFacts, length: int, dtype: torch.dtype, batch: int = 1) -> int:
    """2 (K and V) × layers × KV heads × head dim × tokens × bytes.

    The head dim is the whole head (explicit ``head_dim`` where the config sets one, as Qwen3 and Gemma do),
    not the rotary dims: a partial-rotary model (Phi, GPT-NeoX) caches every key dimension, rotated or not.
    """
    bytes_per_value = torch.empty((), dtype=dtype).element_size()
    return 2 * facts.num_layers * facts.num_kv_heads * facts.head_dim * length * bytes_per_value * batch


def cache_bytes(cache: object) -> int:
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class LengthCost:
    length: int
    seconds: float
    kv_cache_bytes: int
    kv_cache_predicted_bytes: int
    peak_memory_bytes: int | None


def measure_lengths(
    model: PreTrainedModel, facts: ModelFacts, lengths: Sequence[int], placement: Placement, *,
    length_dependent: bool, seed: int = 0, should_stop: Callable[[], bool] = lambda: False,
) -> list[LengthCost]:
    """One warm-up pass at the shortest length, then one timed prefill per length on random tokens."""
    embeddings = model.get_input_embeddings()
    vocab = embeddings.num_embeddings if isinstance(embeddings, torch.nn.Embedding) else model.config.vocab_size
    generator = torch.Generator().manual_seed(seed)
    out = []
    lengths = sorted(set(lengths))
    for index, length in enumerate([lengths[0], *lengths]):
        if should_stop():
            raise Cancelled()
        ids = torch.randint(0, vocab, (length,), generator=generator).tolist()
        if length_dependent:
            reset_rotary_cache(model)
        devices.reset_peak_memory(placement)
        if placement.is_cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        cache = prefill(model, ids, placement.device)
        if placement.is_cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        peak = devices.peak_memory_mb(placement)
        if index == 0:
            continue  # warm-up
        out.append(LengthCost(length, seconds, cache_bytes(cache),
                              predicted_kv_cache_bytes(facts, length, placement.dtype),
                              None if peak is None else int(peak * MB)))
        del cache
    return out


def to_measurements(costs: Sequence[LengthCost]) -> list[Measurement]:
    out = []
    for c in costs:
        out += [
            Measurement("forward_seconds", c.seconds, context_length=c.length, samples=1),
            Measurement("kv_cache_mb", c.kv_cache_bytes / MB, context_length=c.length),
            Measurement("kv_cache_mb_predicted", c.kv_cache_predicted_bytes / MB, context_length=c.length),
        ]
        if c.peak_memory_bytes is not None:
            out.append(Measurement("peak_memory_mb", c.peak_memory_bytes / MB, context_length=c.length))
    return out
