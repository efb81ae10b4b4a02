"""A worker with several processes for training: launched, followed live, stoppable, same result."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpu_workers import pipeline
from gpu_workers.data.documents import builtin_corpus_dir
from gpu_workers.demo import DEMO_MODEL_DIR
from gpu_workers.reporter import Cancelled, MemoryReporter
from gpu_workers.spec import DatasetSpec, EvalSpec, MethodSpec, RunSpec, TrainSpec
from gpu_workers.train_launch import launcher_command

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


def test_two_processes_stream_their_losses_and_match_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTEXTLAB_CORPUS_DIR", str(builtin_corpus_dir()))
    single_reporter = MemoryReporter()
    single = _run(_spec(tmp_path / "one"), single_reporter)
    monkeypatch.setenv("CONTEXTLAB_TRAIN_PROCESSES", "2")
    monkeypatch.setenv("CONTEXTLAB_TRAIN_LAUNCHER", "torchrun")
    reporter = MemoryReporter()
    double = _run(_spec(tmp_path / "two"), reporter)
    losses = [m for m in reporter.measurements if m.metric == "train_loss"]
    assert [m.step for m in losses] == [1, 2, 3, 4]
    single_losses = [m.value for m in single_reporter.measurements if m.metric == "train_loss"]
    assert [m.value for m in losses] == pytest.approx(single_losses, rel=1e-4)
    assert double == pytest.approx(single, rel=1e-4)
    assert any("training in 2 processes" in line for line in reporter.lines)


def test_a_cancel_reaches_the_launched_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTEXTLAB_CORPUS_DIR", str(builtin_corpus_dir()))
    monkeypatch.setenv("CONTEXTLAB_TRAIN_PROCESSES", "2")
    monkeypatch.setenv("CONTEXTLAB_TRAIN_LAUNCHER", "torchrun")

    class StopAfterFirstStep(MemoryReporter):
        def should_stop(self) -> bool:
            return any(m.metric == "train_loss" for m in self.measurements)

    reporter = StopAfterFirstStep()
    with pytest.raises(Cancelled):
        pipeline.run(_spec(tmp_path, steps=200), reporter)
    steps = [m.step for m in reporter.measurements if m.metric == "train_loss"]
    assert 1 <= len(steps) < 200


def test_launchers_are_named_commands() -> None:
    assert launcher_command(4, "accelerate")[1:5] == ["-m", "accelerate.commands.launch", "--num_processes", "4"]
    assert "torch.distributed.run" in launcher_command(2, "torchrun")
    with pytest.raises(ValueError, match="accelerate or torchrun"):
        launcher_command(2, "mpirun")
