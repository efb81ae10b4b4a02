"""Train one run's model from the command line: the entry point ``accelerate launch`` runs on multi-GPU hosts.

    python -m gpu_workers.train.cli --spec spec.json --out DIR
    accelerate launch --num_processes 4 -m gpu_workers.train.cli --spec spec.json --out DIR
    torchrun --nproc_per_node 2 -m gpu_workers.train.cli ...   # several CPU processes (gloo)

(``accelerate launch --cpu`` starts a single process whatever ``--num_processes`` says — accelerate runs
several CPU processes only through MPI — while ``torchrun`` sets the same environment that
``accelerate.Accelerator`` reads, so it is the way to run the multi-process path without GPUs.)

``spec.json`` is ``RunSpec.to_json()``. Every process loads the model with the run's method applied and
builds the same (seeded) training data; :func:`gpu_workers.train.train` splits each global micro-batch
across the processes. The main process saves the trained model and tokenizer into ``DIR`` with
``save_pretrained`` and writes ``DIR/result.json``: the :class:`~gpu_workers.train.TrainResult` (with the
loss of every step) and the data mixture statistics. Checkpoints go to ``RunSpec.work_dir`` when it is set,
so relaunching a killed command resumes. ``--stop-file PATH`` cancels cleanly (exit status 3) once PATH
exists: a worker that launched this command can stop it without killing it mid-write.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from gpu_workers.data.training import build_training_data
from gpu_workers.device import Placement, place
from gpu_workers.loading import load
from gpu_workers.mixed_windows import check as check_mixed_windows
from gpu_workers.reporter import Cancelled
from gpu_workers.spec import RunSpec
from gpu_workers.train.loop import TrainResult, train

if TYPE_CHECKING:
    import accelerate

RESULT_FILE = "result.json"
CANCELLED_EXIT = 3
STEP_PREFIX = "contextlab-step "
"""Prefix of the JSON line the main process prints after every step, read live by a launching worker."""


def print_step(step: int, loss: float, lr: float) -> None:
    print(STEP_PREFIX + json.dumps({"step": step, "loss": loss, "lr": lr}), flush=True)


def run(spec: RunSpec, out: Path, *, accelerator: accelerate.Accelerator | None = None,
        stop_file: Path | None = None) -> TrainResult:
    """Load, build the data, train, and (main process) save model, tokenizer and ``result.json`` into ``out``."""
    placement = place(spec.device)
    if accelerator is not None:  # each process computes on the device accelerate gave it
        placement = Placement(accelerator.device, placement.dtype)
    loaded = load(spec.model_source, spec.method, spec.target_length, placement)
    if spec.train.mixed_windows:  # the composer refuses these; a hand-written spec is refused here
        check_mixed_windows(spec.method.family, loaded.facts.rope)
    data = build_training_data(spec, loaded.tokenizer, loaded.facts.original_context)
    model, result = train(
        loaded.model, data, spec.train,
        work_dir=Path(spec.work_dir) if spec.work_dir else None,
        should_stop=(lambda: stop_file.exists()) if stop_file is not None else (lambda: False),
        accelerator=accelerator,
        on_step=print_step if accelerator is None or accelerator.is_main_process else (lambda *_: None),
    )
    if accelerator is None or accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        loaded.tokenizer.save_pretrained(out)
        payload = {**asdict(result), "data": {"before": data.before, "after": data.after},
                   "processes": accelerator.num_processes if accelerator is not None else 1}
        (out / RESULT_FILE).write_text(json.dumps(payload, indent=1))
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpu_workers.train.cli", description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, required=True, help="RunSpec.to_json() as a file")
    parser.add_argument("--out", type=Path, required=True, help="directory for the trained model and result.json")
    parser.add_argument("--stop-file", type=Path, default=None, help="cancel once this file exists")
    args = parser.parse_args(argv)
    spec = RunSpec.from_json(json.loads(args.spec.read_text()))
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not place(spec.device).is_cuda)
    try:
        run(spec, args.out, accelerator=accelerator, stop_file=args.stop_file)
    except Cancelled as exc:
        print(f"cancelled: {exc}")
        return CANCELLED_EXIT
    finally:
        accelerator.end_training()  # tears the process group down cleanly
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
