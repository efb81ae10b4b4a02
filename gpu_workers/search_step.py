"""The factor-search step of a run: search, persist progress for resume, then hand over LongRoPE params.

The model is loaded once; every candidate is applied in place (:func:`gpu_workers.rotary.rope_override`).
In LongRoPE mode several candidates share one forward batch
(:func:`gpu_workers.search.fitness.batched_perplexity_fitness`, as many as :data:`BATCH_TOKENS` allows);
LongRoPE2's needle fitness evaluates one candidate at a time.
Fitness documents come from the training side of the dataset, so the factors are not tuned on the
documents they are then evaluated on. After every generation the state is written to the run's work
directory (atomically) and the best / median fitness stream out as measurements; a retried run
continues from the last finished generation.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gpu_workers.data.needle import NeedleBuilder
from gpu_workers.data.training import search_documents
from gpu_workers.evaluate import needle
from gpu_workers.loading import LoadedModel
from gpu_workers.methods import longrope_files
from gpu_workers.methods.base import RopeFacts
from gpu_workers.methods.longrope_search import search_config
from gpu_workers.reporter import Measurement, Reporter
from gpu_workers.rotary import rope_override
from gpu_workers.search import (
    Candidate,
    SearchConfigError,
    SearchStateError,
    critical_window,
    search,
    to_method_params,
)
from gpu_workers.search.fitness import batched_perplexity_fitness
from gpu_workers.spec import SEARCH_MODES, RunSpec

NEEDLE_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
NEEDLES_PER_DEPTH = 2
STATE_FILE = "search_state.json"
BATCH_TOKENS = {"cpu": 0, "cuda": 65_536}
"""Tokens per forward batch of candidates × documents (LongRoPE mode); other devices get the CPU budget.

A CPU gets one candidate per batch: its cores are already busy with one candidate's documents, and on the
demo model at 4× two candidates a batch ran at 0.96× and eight at 0.70× the one-at-a-time rate
(benches/search_efficiency.py, docs/search.md). Batching is for a GPU that one candidate leaves idle."""


def batch_candidates(device: Any, documents: int, length: int) -> int:
    """How many candidates one forward batch holds: the device's token budget over documents × length, ≥ 1."""
    budget = BATCH_TOKENS.get(getattr(device, "type", str(device)), BATCH_TOKENS["cpu"])
    return max(1, budget // (documents * length))


def needle_fitness(loaded: LoadedModel, base: RopeFacts, documents: list[list[int]], length: int
                   ) -> Callable[[Candidate], float]:
    """LongRoPE2's fitness: perplexity of needle answers only, needles in the search documents' text."""
    builder = NeedleBuilder(loaded.tokenizer, fmt="passkey", seed=0)
    stream = [t for doc in documents for t in doc]
    tasks = needle.grid_tasks(builder, stream, [length], NEEDLE_DEPTHS, NEEDLES_PER_DEPTH)
    prefix = builder.prefix(stream)
    device = next(loaded.model.parameters()).device

    def fitness(candidate: Candidate) -> float:
        with rope_override(loaded.model, base, candidate):
            nll = [needle.needle_nll(loaded.model, prefix, task, device) for task in tasks]
        value = math.exp(float(np.mean(nll)))
        return value if math.isfinite(value) else math.inf

    return fitness


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _fitness_args(mode: str, loaded: LoadedModel, docs: list[list[int]], length: int,
                  advance: Callable[[int], None]) -> dict[str, Any]:
    """The fitness arguments of :func:`~gpu_workers.search.search` for ``mode``, each evaluation counted by
    ``advance``: batched perplexity for LongRoPE, needle perplexity one candidate at a time for LongRoPE2."""
    base = loaded.facts.rope
    if mode == "longrope":
        # Several candidates per forward batch, each batch row with its own frequencies and attention scale.
        device = next(loaded.model.parameters()).device
        many = batched_perplexity_fitness(loaded.model, base, docs, length, device)

        def counted_many(candidates: list[Candidate]) -> list[float]:
            values = many(candidates)
            advance(len(candidates))
            return values

        return {"fitness": None, "fitness_many": counted_many,
                "batch_candidates": batch_candidates(device, len(docs), length)}
    single = needle_fitness(loaded, base, docs, length)

    def counted(candidate: Candidate) -> float:
        value = single(candidate)
        advance(1)
        return value

    return {"fitness": counted}


def run_search(spec: RunSpec, loaded: LoadedModel, reporter: Reporter, progress: Callable[[float, str], None]
               ) -> dict[str, Any]:
    """Search, report, save the factors; returns the ``longrope`` parameters of the best candidate."""
    mode = SEARCH_MODES[spec.method.family]
    base = loaded.facts.rope
    params = loaded.params
    config = search_config(base, spec.target_length, params, mode)
    length = config.target_length
    docs = search_documents(spec, loaded.tokenizer, length, int(params["search_documents"]))
    planned = config.population * (config.generations + 1)
    done = [0]

    def advance(count: int) -> None:
        done[0] += count
        progress(min(done[0] / planned, 1.0), f"{done[0]}/{planned} candidates evaluated (at most)")

    fitness_args = _fitness_args(mode, loaded, docs, length, advance)
    work = Path(spec.work_dir) if spec.work_dir else None
    state_path = work / STATE_FILE if work else None
    resume = None
    if state_path is not None and state_path.exists():
        resume = json.loads(state_path.read_text())
        reporter.log(f"resuming the search after generation {resume['generation']}")

    def on_generation(state: dict[str, Any]) -> None:
        g = state["generation"]
        record = state["history"][-1]
        reporter.measurement(Measurement("search_best", record["best"], context_length=length, step=g))
        reporter.measurement(Measurement("search_median", record["median"], context_length=length, step=g))
        reporter.measurement(Measurement("search_evaluations", record["evaluations"], step=g))
        for pair, value in enumerate(state["best"]["factors"]):
            reporter.measurement(Measurement("search_factor", value, depth=pair, step=g))
        reporter.log(f"generation {g}: best {record['best']:.3f}, median {record['median']:.3f}, "
                     f"{record['evaluations']} evaluations")
        if state_path is not None:
            _write_json(state_path, state)

    batching = f", {fitness_args['batch_candidates']} candidates per forward batch" if mode == "longrope" else ""
    if mode == "longrope2":
        low, high = critical_window(config)
        batching += (f", critical dimension fixed at pair {low}" if low == high
                     else f", critical dimension searched in pairs {low}–{high}")
    reporter.log(f"{mode} search at {length} tokens on {len(docs)} training documents: population "
                 f"{config.population}, {config.generations} generations{batching}")
    try:
        result = search(config, **fitness_args, on_generation=on_generation, should_stop=reporter.should_stop,
                        resume_from=resume)
    except (SearchConfigError, SearchStateError) as exc:
        # A state of another format (an older worker's) or another search cannot be continued; this one can start.
        if resume is None:
            raise
        reporter.log(f"the saved search state does not fit this search ({exc}); starting afresh")
        result = search(config, **fitness_args, on_generation=on_generation, should_stop=reporter.should_stop)
    reporter.measurement(Measurement("search_critical_dim", result.critical_dim))
    method_params = to_method_params(result)
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
        factors = longrope_files.write_factors(work / "long_factor.csv", result.factors)
        reporter.artifact("longrope_factors", str(factors))
        summary = work / "search_result.json"
        _write_json(summary, {"result": result.to_json(), "method_params": method_params})
        reporter.artifact("search_result", str(summary))
    split = f", critical dimension {result.critical_dim}" if mode == "longrope2" else ""
    reporter.log(f"best fitness {result.fitness:.3f} after {result.evaluations} evaluations "
                 f"({result.skipped} repeats skipped{', stopped early' if result.stopped_early else ''}){split}")
    return method_params
