"""RULER on the shipped demo model: the composer's default methods, average and effective length per method.

Run by hand and paste the table into docs/evaluation.md:

    .venv/bin/python -m benches.ruler_table --samples 10          # ~3 min on 2 cores
    .venv/bin/python -m benches.ruler_table --samples 20 --methods none,"YaRN ×4"

Each method runs through the worker's pipeline (``gpu_workers.pipeline.run``) with the composer's defaults
for a 1,024-token target (lengths 256 / 512 / 1,024, seed 0, all 13 tasks, threshold 0.85), so the figures
are the ones an experiment page shows. Accuracy, not speed: the seconds column only says what a run costs.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from gpu_workers import pipeline
from gpu_workers.data.ruler import TASK_NAMES
from gpu_workers.demo import DEMO_MODEL_DIR
from gpu_workers.reporter import Measurement, MemoryReporter
from gpu_workers.spec import DatasetSpec, EvalSpec, MethodSpec, RunSpec

METHODS = (
    ("none", {}, "none"),
    ("pi", {"factor": 4}, "PI ×4"),
    ("dynamic_ntk", {}, "dynamic NTK (factor 1)"),
    ("yarn", {"factor": 4}, "YaRN ×4"),
)
"""The composer's default methods at a 1,024-token target on the demo model (factor 1,024 / 256)."""


def _values(measurements: list[Measurement], metric: str) -> dict[int | None, float]:
    return {m.context_length: m.value for m in measurements if m.metric == metric}


def _row(label: str, measurements: list[Measurement], lengths: tuple[int, ...], seconds: float) -> str:
    average = _values(measurements, "ruler_average")
    retrieval = _values(measurements, "ruler_group_retrieval")
    reference = _values(measurements, "ruler_reference")
    effective = _values(measurements, "ruler_effective_length")
    effective_retrieval = _values(measurements, "ruler_effective_length_retrieval")
    ref = next(iter(reference.values()), 0.0)
    bar = f"{0.85 * ref:.3f}" if ref else "—"
    signal = sorted({m.metric.removeprefix("ruler_") for m in measurements
                     if m.metric.startswith("ruler_") and m.context_length and m.value > 0
                     and m.metric.removeprefix("ruler_") in TASK_NAMES})
    return (f"| {label} | {' / '.join(f'{average.get(n, 0):.3f}' for n in lengths)} | {bar} "
            f"| {int(effective[None]) if None in effective else 'none'} "
            f"| {' / '.join(f'{retrieval.get(n, 0):.3f}' for n in lengths)} "
            f"| {int(effective_retrieval[None]) if None in effective_retrieval else 'none'} "
            f"| {', '.join(signal)} | {seconds:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEMO_MODEL_DIR))
    parser.add_argument("--samples", type=int, default=10, help="per task and length")
    parser.add_argument("--lengths", default="256,512,1024")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="", help="comma-separated labels to run (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lengths = tuple(int(n) for n in args.lengths.split(","))
    wanted = set(args.methods.split(",")) if args.methods else None
    print(f"machine: {platform.machine()} ({platform.processor() or 'cpu'}), {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; model {args.model}; seed {args.seed}; {args.samples} samples a task and "
          f"length; 13 tasks\n")
    print("| method | average " + " / ".join(map(str, lengths)) + " | bar (0.85 × reference) | effective length "
          "| retrieval group | retrieval effective length | tasks with signal | s |")
    print("|---|---|---|---|---|---|---|---|")
    for family, params, label in METHODS:
        if wanted is not None and label not in wanted:
            continue
        reporter = MemoryReporter()
        spec = RunSpec(run_id="bench", model_source=args.model, dataset=DatasetSpec(),
                       method=MethodSpec(family, params), target_length=max(lengths), seed=args.seed,
                       eval=EvalSpec(lengths=lengths, documents=4, suite=("ruler",), ruler_samples=args.samples))
        started = time.perf_counter()
        pipeline.run(spec, reporter)
        print(_row(label, reporter.measurements, lengths, time.perf_counter() - started), flush=True)


if __name__ == "__main__":
    main()
