"""What each method does to the shipped demo model, without fine-tuning: perplexity by length.

Run by hand (about a minute on 2 CPU cores) and paste the table into docs/demo-model.md:

    .venv/bin/python -m benches.method_table --documents 16

Every method is evaluated on the same held-out documents of the demo corpus through the same
pipeline a Celery worker runs (``gpu_workers.pipeline.run``), so the numbers match the web app's.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from gpu_workers import pipeline
from gpu_workers.demo import DEMO_MODEL_DIR
from gpu_workers.reporter import MemoryReporter
from gpu_workers.spec import DatasetSpec, EvalSpec, MethodSpec, RunSpec

METHODS = (
    ("none", {}, "none"),
    ("pi", {"factor": 4}, "PI ×4"),
    ("ntk", {"factor": 4}, "NTK fixed ×4"),
    ("dynamic_ntk", {"factor": 4}, "dynamic NTK ×4"),
    ("yarn", {"factor": 4}, "YaRN ×4"),
    ("yarn", {"factor": 8}, "YaRN ×8"),
    ("llama3", {"factor": 8}, "Llama-3 ×8"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=16)
    parser.add_argument("--lengths", default="256,512,1024,2048")
    args = parser.parse_args()
    torch.set_num_threads(2)
    lengths = tuple(int(n) for n in args.lengths.split(","))
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{args.documents} held-out documents of the demo corpus\n")
    print("| method | " + " | ".join(f"ppl {n}" for n in lengths) + " | eval s |")
    print("|---|" + "---|" * (len(lengths) + 1))
    for family, params, label in METHODS:
        reporter = MemoryReporter()
        spec = RunSpec(run_id="bench", model_source=str(DEMO_MODEL_DIR), dataset=DatasetSpec(),
                       method=MethodSpec(family, params), target_length=max(lengths),
                       eval=EvalSpec(lengths=lengths, documents=args.documents))
        started = time.perf_counter()
        pipeline.run(spec, reporter)
        seconds = time.perf_counter() - started
        ppl = {m.context_length: m for m in reporter.measurements if m.metric == "perplexity"}
        cells = [f"{ppl[n].value:.1f} [{ppl[n].ci_low:.0f}–{ppl[n].ci_high:.0f}]" for n in lengths]
        print(f"| {label} | " + " | ".join(cells) + f" | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
