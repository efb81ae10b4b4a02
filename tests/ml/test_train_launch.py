"""A worker with several processes for training: launched, followed live, stoppable, same result."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from gpu_workers import pipeline
from gpu_workers.demo import DEMO_MODEL_DIR
from gpu_workers.reporter import Cancelled, MemoryReporter
from gpu_workers.spec import DatasetSpec, EvalSpec, MethodSpec, RunSpec, TrainSpec
from gpu_workers.train.launch import launcher_command

pytestmark = pytest.mark.slow


def _spec(work: Path, steps: int = 4) -> RunSpec:
    return RunSpec(run_id="t", model_source=str(DEMO_MODEL_DIR), dataset=DatasetSpec(),
                   method=MethodSpec("pi", {"factor": 2.0}), target_length=512,
                   eval=EvalSpec(lengths=(256, 512), documents=2),
                   train=TrainSpec(mode="finetune", steps=steps, batch_size=2, warmup_steps=1, checkpoint_every=100,
                                   data_strategy="global", keep_short_p=1.0),
                   work_dir=str(work))


def _run(spec: RunSpec, reporter: MemoryReporter) -> dict[int | None, float]:
    pipeline.run(spec, reporter)
    return {m.context_length: m.value for m in reporter.measurements if m.metric == "perplexity"}


def test_two_processes_stream_their_losses_and_match_one(tmp_path: Path) -> None:
    single_reporter = MemoryReporter()
    single = _run(_spec(tmp_path / "one"), single_reporter)
    reporter = MemoryReporter()
    double = _run(replace(_spec(tmp_path / "two"), train_processes=2, train_launcher="torchrun"), reporter)
    losses = [m for m in reporter.measurements if m.metric == "train_loss"]
    assert [m.step for m in losses] == [1, 2, 3, 4]
    single_losses = [m.value for m in single_reporter.measurements if m.metric == "train_loss"]
    assert [m.value for m in losses] == pytest.approx(single_losses, rel=1e-4)
    assert double == pytest.approx(single, rel=1e-4)
    assert any("training in 2 processes" in line for line in reporter.lines)


def test_a_cancel_reaches_the_launched_processes(tmp_path: Path) -> None:

    class StopAfterFirstStep(MemoryReporter):
        def should_stop(self) -> bool:
            return any(m.metric == "train_loss" for m in self.measurements)

    reporter = StopAfterFirstStep()
    with pytest.raises(Cancelled):
        pipeline.run(replace(_spec(tmp_path, steps=200), train_processes=2, train_launcher="torchrun"), reporter)
    steps = [m.step for m in reporter.measurements if m.metric == "train_loss"]
    assert 1 <= len(steps) < 200


def test_launchers_are_named_commands() -> None:
    assert launcher_command(4, "accelerate")[1:5] == ["-m", "accelerate.commands.launch", "--num_processes", "4"]
    assert "torch.distributed.run" in launcher_command(2, "torchrun")
    with pytest.raises(ValueError, match="accelerate or torchrun"):
        launcher_command(2, "mpirun")


def test_the_worker_settings_travel_in_the_spec_and_older_specs_still_load(tmp_path: Path) -> None:
    spec = replace(_spec(tmp_path), train_processes=4, train_launcher="torchrun",
                   dataset=DatasetSpec(corpus_dir=str(tmp_path / "corpus")))
    assert RunSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    older = spec.to_json()
    for name in ("train_processes", "train_launcher"):
        del older[name]
    del older["dataset"]["corpus_dir"]
    old = RunSpec.from_json(older)
    assert (old.train_processes, old.train_launcher, old.dataset.corpus_dir) == (1, "accelerate", "")
    with pytest.raises(ValueError, match="accelerate or torchrun"):
        replace(spec, train_launcher="mpirun")
    with pytest.raises(ValueError, match="at least 1"):
        replace(spec, train_processes=0)
