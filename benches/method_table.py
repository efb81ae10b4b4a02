"""What each method does to the shipped demo model, without fine-tuning: perplexity, passkey and needle by length.

Run by hand and paste the tables into docs/demo-model.md:

    .venv/bin/python -m benches.method_table --documents 16                      # perplexity only, ~1 min
    .venv/bin/python -m benches.method_table --documents 16 --suite perplexity,passkey,needle \\
        --passkey-samples 40 --needle-samples 6                                  # the issue-11 targets, ~6 min

Every method is evaluated on the same held-out documents of the demo corpus through the same
pipeline a Celery worker runs (``gpu_workers.pipeline.run``), so the numbers match the web app's: needle
haystacks are the held-out prose (the demo dataset's default haystack source), never training text.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from gpu_workers import pipeline
from gpu_workers.demo import DEMO_MODEL_DIR
from gpu_workers.reporter import Measurement, MemoryReporter
from gpu_workers.spec import DatasetSpec, EvalSpec, MethodSpec, RunSpec

METHODS = (
    ("none", {}, "none"),
    ("pi", {"factor": 4}, "PI ×4"),
    ("ntk", {"factor": 4}, "NTK fixed ×4"),
    ("dynamic_ntk", {"factor": 4}, "dynamic NTK ×4"),
    ("yarn", {"factor": 4}, "YaRN ×4"),
    ("yarn", {"factor": 8}, "YaRN ×8"),
    ("llama3", {"factor": 4}, "Llama-3 ×4"),
    ("llama3", {"factor": 8}, "Llama-3 ×8"),
    ("dynamic_ntk", {}, "dynamic NTK (factor 1)"),
    ("dynamic_yarn", {}, "Dynamic YaRN"),
    ("self_extend", {}, "Self-Extend"),
    ("rerope", {}, "ReRoPE"),
    ("leaky_rerope", {}, "Leaky ReRoPE"),
    ("none", {"log_n": 1}, "none + log-n"),
    ("yarn", {"factor": 4, "log_n": 1}, "YaRN ×4 + log-n"),
)
"""Blank parameters take the family's defaults at the target length (the longest length): Self-Extend
W = 64, G = 11; ReRoPE w = 128; Leaky ReRoPE w = 128, k = 15 on the demo model at 2,048."""


def _by_length(measurements: list[Measurement], metric: str) -> dict[int, list[Measurement]]:
    out: dict[int, list[Measurement]] = {}
    for m in measurements:
        if m.metric == metric:
            out.setdefault(m.context_length, []).append(m)
    return out


def _needle_cell(cells: list[Measurement]) -> str:
    """Exact matches over every depth of one length: hits / prompts (each cell holds *samples* prompts)."""
    hits = sum(round(c.value * c.samples) for c in cells)
    total = sum(c.samples for c in cells)
    return f"{hits / total:.2f} ({hits}/{total})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEMO_MODEL_DIR))
    parser.add_argument("--documents", type=int, default=16)
    parser.add_argument("--lengths", default="256,512,1024,2048")
    parser.add_argument("--suite", default="perplexity", help="comma-separated: perplexity, passkey, needle")
    parser.add_argument("--passkey-samples", type=int, default=40)
    parser.add_argument("--needle-samples", type=int, default=6, help="prompts per (length, depth) cell")
    parser.add_argument("--needle-format", default="passkey")
    parser.add_argument("--needle-variant", default="single")
    parser.add_argument("--methods", default="", help="comma-separated labels to run (default: all)")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lengths = tuple(int(n) for n in args.lengths.split(","))
    suite = tuple(args.suite.split(","))
    wanted = set(args.methods.split(",")) if args.methods else None
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{args.documents} held-out documents of the demo corpus, model {args.model}; passkey "
          f"{args.passkey_samples} prompts a length; needle {args.needle_format}/{args.needle_variant}, "
          f"{args.needle_samples} prompts a cell × 5 depths, held-out prose haystack\n")
    columns = [f"ppl {n}" for n in lengths] if "perplexity" in suite else []
    columns += [f"passkey {n}" for n in lengths] if "passkey" in suite else []
    columns += [f"needle {n}" for n in lengths] if "needle" in suite else []
    print("| method | " + " | ".join(columns) + " | eval s |")
    print("|---|" + "---|" * (len(columns) + 1))
    dump = []
    for family, params, label in METHODS:
        if wanted is not None and label not in wanted:
            continue
        reporter = MemoryReporter()
        spec = RunSpec(run_id="bench", model_source=args.model, dataset=DatasetSpec(),
                       method=MethodSpec(family, params), target_length=max(lengths),
                       eval=EvalSpec(lengths=lengths, documents=args.documents, suite=suite,
                                     passkey_samples=args.passkey_samples, needle_samples=args.needle_samples,
                                     needle_format=args.needle_format, needle_variant=args.needle_variant))
        started = time.perf_counter()
        pipeline.run(spec, reporter)
        seconds = time.perf_counter() - started
        cells: list[str] = []
        if "perplexity" in suite:
            ppl = {n: ms[0] for n, ms in _by_length(reporter.measurements, "perplexity").items()}
            cells += [f"{ppl[n].value:.1f} [{ppl[n].ci_low:.0f}–{ppl[n].ci_high:.0f}]" for n in lengths]
        if "passkey" in suite:
            key = {n: ms[0] for n, ms in _by_length(reporter.measurements, "passkey_accuracy").items()}
            cells += [f"{key[n].value:.2f}" for n in lengths]
        if "needle" in suite:
            grid = _by_length(reporter.measurements, "needle_exact")
            cells += [_needle_cell(grid[n]) for n in lengths]
        print(f"| {label} | " + " | ".join(cells) + f" | {seconds:.1f} |", flush=True)
        dump.append({"method": label, "family": family, "params": params, "seconds": round(seconds, 1),
                     "measurements": [vars(m) for m in reporter.measurements]})
    if args.json:
        args.json.write_text(json.dumps(dump, indent=1) + "\n")


if __name__ == "__main__":
    main()
