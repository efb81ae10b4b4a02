"""LongRoPE factor search: what the efficiency measures save against the paper's schedule.

Run by hand and paste the output into docs/search.md:

    .venv/bin/python -m benches.search_efficiency

On the demo model at 4× (1,024 tokens; fitness = perplexity on training documents, as a run searches):

1. time per fitness evaluation, one candidate at a time against ``--batch`` (and ``--timing-batches``)
   candidates per forward batch (interleaved, order rotating, median of ``--repeats``: the machine is shared);
2. the *reference* schedule, LongRoPE's published search (microsoft/LongRoPE ``dim_mono.json``:
   population 64, 32 parents, 16 mutations + 16 crossovers a generation, 40 generations, no early
   stop). It is run in batches — batching proposes and evaluates exactly the same candidates — because
   one at a time it takes over an hour on 2 shared cores; its one-at-a-time time is projected from step 1.
   ``--reference-generations`` shortens it (the table then says so);
3. the *efficient* schedules (``--efficient``): fitness cache, candidates in forward batches, early stop
   after P generations without a 0.1% improvement, smaller populations — the composer's default (8×3,
   patience 3), the paper's population with early stopping, and two with more patience — for ``--seeds``.

The table gives each schedule's evaluations and wall time, its best fitness, the gap to the reference's
best, and the evaluations it needed to come within 1% of, and to reach, the reference's best. Batching
does not change which candidates are evaluated (tests/ml/test_search.py checks that), so evaluation
counts are exact and only the wall times are noisy.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from benches.machine import cpu_model
from gpu_workers import search
from gpu_workers.data.training import search_documents
from gpu_workers.demo import DEMO_MODEL_DIR
from gpu_workers.device import place
from gpu_workers.loading import LoadedModel, load
from gpu_workers.methods.longrope_search import SEARCH_PARAMS
from gpu_workers.search import Candidate, SearchConfig
from gpu_workers.search.fitness import batched_perplexity_fitness, perplexity_fitness
from gpu_workers.search_step import batch_candidates
from gpu_workers.spec import DatasetSpec, EvalSpec, MethodSpec, RunSpec

CPU = place("cpu")
DEFAULTS = {p.name: p.default for p in SEARCH_PARAMS}


def machine_line() -> str:
    import transformers

    return (
        f"machine: CPU {cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads (fp32); "
        f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}"
    )


def command_line() -> str:
    return "command: .venv/bin/python -m benches.search_efficiency " + shlex.join(sys.argv[1:])


def load_base(length: int) -> LoadedModel:
    """The demo model with plain RoPE: candidates are applied in place, as the search step does."""
    return load(str(DEMO_MODEL_DIR), MethodSpec("none"), length, CPU)


def training_documents(loaded: LoadedModel, length: int, count: int, seed: int = 0) -> list[list[int]]:
    """The documents a run's search uses: training split of the built-in corpus, never evaluation ones."""
    spec = RunSpec(
        run_id="bench", model_source=str(DEMO_MODEL_DIR), dataset=DatasetSpec(),
        method=MethodSpec("longrope_search", {}), target_length=length,
        eval=EvalSpec(lengths=(length,), documents=1), seed=seed,
    )
    return search_documents(spec, loaded.tokenizer, length, count)


@dataclass
class Trace:
    """A search's progress: (evaluations, best, seconds since start) after every generation."""

    points: list[tuple[int, float, float]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def __call__(self, state: dict[str, Any]) -> None:
        record = state["history"][-1]
        self.points.append((record["evaluations"], record["best"], time.perf_counter() - self.started))

    def reach(self, target: float) -> tuple[int, float] | None:
        """(evaluations, seconds) at the first generation whose best is ≤ target."""
        for evaluations, best, seconds in self.points:
            if best <= target:
                return evaluations, seconds
        return None


def timing_candidates(config: SearchConfig, count: int) -> list[Candidate]:
    """Distinct candidates around the seeds (what a generation looks like), for the per-evaluation timing."""
    seeds = list(search.seed_factors(config).values())
    attention = search.default_attention(config)
    return [Candidate(tuple(seeds[i % len(seeds)]), 0, round(attention + 0.01 * i, 4)) for i in range(count)]


def time_per_evaluation(
    single: Callable[[Candidate], float],
    many: Callable[[list[Candidate]], list[float]],
    candidates: Sequence[Candidate],
    sizes: Sequence[int],
    repeats: int,
) -> dict[int, float]:
    """Median seconds per candidate at each batch size (1 = the one-at-a-time fitness), interleaved with the
    order rotating every repeat, over the same ``candidates``."""
    times: dict[int, list[float]] = {n: [] for n in sizes}
    many(list(candidates[:1]))  # warm-up
    for r in range(repeats):
        order = list(sizes[r % len(sizes) :]) + list(sizes[: r % len(sizes)])
        for size in order:
            started = time.perf_counter()
            if size == 1:
                for candidate in candidates:
                    single(candidate)
            else:
                for start in range(0, len(candidates), size):
                    many(list(candidates[start : start + size]))
            times[size].append((time.perf_counter() - started) / len(candidates))
    return {n: statistics.median(v) for n, v in times.items()}


@dataclass
class ReferenceResult:
    """What the table needs of the reference search (also what ``--reference-json`` keeps)."""

    fitness: float
    evaluations: int
    skipped: int
    stopped_early: bool
    history: list[Any]


def reference_run(
    args: argparse.Namespace, config: SearchConfig, many: Callable[[list[Candidate]], list[float]], batch: int
) -> tuple[Any, Trace]:
    """Run the reference schedule, or reuse the trace a previous run of the same settings saved.

    The reference is deterministic (same seed, documents and settings give the same candidates and
    fitness), so only its wall times are not reproduced by reusing it; the table says so.
    """
    import json
    from pathlib import Path

    key = {"config": config.to_json(), "documents": args.documents, "torch": torch.__version__}
    path = Path(args.reference_json) if args.reference_json else None
    if path is not None and path.exists():
        saved = json.loads(path.read_text())
        if saved["key"] == key:
            print(f"reference: reused from {path} (wall times are from the run that saved it)", flush=True)
            trace = Trace(points=[tuple(p) for p in saved["points"]])
            return ReferenceResult(saved["fitness"], saved["evaluations"], saved["skipped"], False,
                                   [None] * saved["generations"]), trace
    trace = Trace()
    result = search.search(config, None, fitness_many=many, batch_candidates=batch, on_generation=trace)
    if path is not None:
        path.write_text(json.dumps({
            "key": key, "points": trace.points, "fitness": result.fitness, "evaluations": result.evaluations,
            "skipped": result.skipped, "generations": len(result.history),
        }))
    return result, trace


def fmt_reach(found: tuple[int, float] | None) -> str:
    return "not reached" if found is None else f"{found[0]} ({found[1]:.0f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=4, help="length scale s (search length 256·s)")
    parser.add_argument("--documents", type=int, default=int(DEFAULTS["search_documents"]))
    parser.add_argument("--reference-generations", type=int, default=40)
    parser.add_argument(
        "--efficient", default="64x32p3@0,8x3p3,16x4p8,8x3p10",
        help="efficient schedules, population×parents[pPATIENCE][@SEED]: patience defaults to --patience, "
        "@N runs seed N only (else every --seeds)",
    )
    parser.add_argument("--efficient-generations", type=int, default=60, help="cap; early stop ends them first")
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--batch", type=int, default=0, help="candidates per forward batch; 0 = the search step's")
    parser.add_argument("--timing-batches", default="8", help="batch sizes timed besides 1 and --batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reference-json", default="", help="save the reference's trace here, or reuse it "
                        "when the file holds one for the same settings")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    length = 256 * args.scale
    print(machine_line())
    print(command_line())

    loaded = load_base(length)
    facts = loaded.facts.rope
    docs = training_documents(loaded, length, args.documents)
    batch = args.batch or batch_candidates(CPU.device, len(docs), length)
    single = perplexity_fitness(loaded.model, facts, docs, length)
    many = batched_perplexity_fitness(loaded.model, facts, docs, length)
    base_config = SearchConfig.for_model(facts, length, factor=float(args.scale))
    print(
        f"demo model, s = {args.scale}, search length {length}, {len(docs)} training documents, "
        f"{batch} candidates per forward batch\n"
    )

    sizes = sorted({1, batch, *(int(n) for n in args.timing_batches.split(",") if n)})
    per = time_per_evaluation(single, many, timing_candidates(base_config, max(sizes)), sizes, args.repeats)
    cells = [f"{'one at a time' if n == 1 else f'batches of {n}'} {per[n]:.3f} (×{per[1] / per[n]:.2f})" for n in sizes]
    print(f"seconds per evaluation (median of {args.repeats}, interleaved): " + ", ".join(cells))
    print(flush=True)

    reference = SearchConfig.for_model(
        facts, length, factor=float(args.scale), population=64, parents=32, crossover_rate=0.5,
        generations=args.reference_generations, patience=0,
    )
    planned = reference.population + reference.generations * (reference.population - reference.parents)
    print(f"reference: {planned} evaluations, about {planned * per[1] / 60:.0f} min one at a time or "
          f"{planned * per[batch] / 60:.0f} min in batches of {batch} at the rates above; it runs in batches "
          "(the same candidates and results, see tests/ml/test_search.py)", flush=True)
    ref, ref_trace = reference_run(args, reference, many, batch)
    target = ref.fitness
    ref_seconds = ref_trace.points[-1][2]
    marks = sorted({*(int(ref.evaluations * f) for f in (0.125, 0.25, 0.5, 0.75)), ref.evaluations})
    print("reference best after N evaluations: " + ", ".join(
        f"{n}: {min(b for e, b, _ in ref_trace.points if e <= n):.3f}" for n in marks), flush=True)
    label = "reference 64×32, no early stop" if args.reference_generations == 40 else (
        f"reference 64×32, {args.reference_generations} generations (shortened from 40)")
    rows = [(label, "0", f"batches of {batch}", ref, ref_trace, ref_seconds)]
    print(f"reference done: best {target:.3f} after {ref.evaluations} evaluations, {ref_seconds:.0f} s "
          f"(one at a time it would take about {ref.evaluations * per[1]:.0f} s)\n", flush=True)

    for spec in args.efficient.split(","):
        shape, _, only = spec.partition("@")
        shape, _, own_patience = shape.partition("p")
        patience = int(own_patience) if own_patience else args.patience
        population, parents = (int(x) for x in shape.split("x"))
        for seed in [int(only)] if only else [int(s) for s in args.seeds.split(",")]:
            config = SearchConfig.for_model(
                facts, length, factor=float(args.scale), population=population, parents=parents,
                generations=args.efficient_generations, patience=patience, seed=seed,
            )
            trace = Trace()
            result = search.search(config, None, fitness_many=many, batch_candidates=batch, on_generation=trace)
            rows.append((f"efficient {population}×{parents}, patience {patience}", str(seed),
                         f"batches of {batch}", result, trace, trace.points[-1][2]))
            print(f"{rows[-1][0]} seed {seed}: best {result.fitness:.3f}, {result.evaluations} evaluations, "
                  f"{trace.points[-1][2]:.0f} s", flush=True)

    print(f"\nreference best fitness (perplexity@{length} on the {len(docs)} search documents): {target:.3f}\n")
    print("| schedule | seed | evaluation | generations | evaluations (cache hits) | wall s | best | gap to ref "
          "| evals (s) to ≤ ref +1% | evals (s) to ≤ ref | evaluations ÷ reference |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, seed, how, result, trace, seconds in rows:
        gap = 100 * (result.fitness / target - 1)
        stop = ", stopped early" if result.stopped_early else ""
        print(
            f"| {name} | {seed} | {how} | {len(result.history) - 1}{stop} | {result.evaluations} ({result.skipped}) "
            f"| {seconds:.0f} | {result.fitness:.3f} | {gap:+.2f}% | {fmt_reach(trace.reach(target * 1.01))} "
            f"| {fmt_reach(trace.reach(target))} | {result.evaluations / ref.evaluations:.2f} |"
        )


if __name__ == "__main__":
    main()
