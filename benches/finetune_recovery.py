"""How much a short fine-tune at 4× gives back: perplexity at 256 and 1024 after training, per recipe.

Run by hand (minutes per row on 2 CPU cores) and put the table into docs/training.md:

    .venv/bin/python -m benches.finetune_recovery --recipes pi:0:1:3e-4 pi:100:4:3e-4 yarn:100:4:3e-4

A recipe is ``family:steps:batch:lr`` (steps 0 = no training). Every row goes through the worker's own
pipeline (``gpu_workers.pipeline.run``) with the demo model, fine-tuning at 1024 tokens on the demo
corpus's train split (natural documents packed, no upsampling) and evaluating on 8 held-out documents;
the base model's in-window perplexity comes from the retention evaluation on the same documents.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time

import torch
import transformers

from gpu_workers import pipeline
from gpu_workers.demo import DEMO_MODEL_DIR
from gpu_workers.reporter import MemoryReporter
from gpu_workers.spec import DatasetSpec, EvalSpec, MethodSpec, RunSpec, TrainSpec

LABELS = {"none": "none", "pi": "PI ×4", "yarn": "YaRN ×4"}


def row(family: str, steps: int, batch: int, lr: float, documents: int) -> tuple[dict[int, float], float, float]:
    train = (TrainSpec(mode="finetune", steps=steps, batch_size=batch, learning_rate=lr, warmup_steps=10,
                       data_strategy="global", keep_short_p=1.0) if steps else TrainSpec())
    spec = RunSpec(run_id="bench", model_source=str(DEMO_MODEL_DIR), dataset=DatasetSpec(),
                   method=MethodSpec(family, {} if family == "none" else {"factor": 4.0}), target_length=1024,
                   eval=EvalSpec(lengths=(256, 1024), documents=documents, suite=("perplexity", "retention")),
                   train=train, work_dir=tempfile.mkdtemp(prefix="finetune-bench-"))
    reporter = MemoryReporter()
    started = time.perf_counter()
    pipeline.run(spec, reporter)
    seconds = time.perf_counter() - started
    ppl = {m.context_length: m.value for m in reporter.measurements if m.metric == "perplexity"}
    base = next(m.value for m in reporter.measurements if m.metric == "short_perplexity_base")
    return ppl, base, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["pi:0:1:3e-4", "pi:100:4:3e-4", "yarn:100:4:3e-4"])
    parser.add_argument("--documents", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(2)
    command = " ".join(["python -m benches.finetune_recovery", *sys.argv[1:]])
    machine = platform.processor() or platform.machine()
    print(f"`{command}` on {machine}, torch {torch.__version__}, transformers {transformers.__version__}\n")
    print("| method | steps | batch | lr | ppl@256 | ppl@1024 | base in-window ppl@256 | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for recipe in args.recipes:
        family, steps, batch, lr = recipe.split(":")
        ppl, base, seconds = row(family, int(steps), int(batch), float(lr), args.documents)
        print(f"| {LABELS[family]} | {steps} | {batch} | {lr} | {ppl[256]:.1f} | {ppl[1024]:.1f} | {base:.1f} | "
              f"{seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
