"""``python -m gpu_workers run``: the worker's pipeline from a shell, measurements as JSON lines.

The replay must give the numbers the in-process pipeline gives for the same spec (only wall times
differ), refuse bad input with one line and a non-zero status, and stop cleanly on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

from gpu_workers import cli
from gpu_workers.demo import DEMO_MODEL_DIR
from gpu_workers.reporter import Cancelled, Measurement, MemoryReporter
from gpu_workers.spec import DatasetSpec, EvalSpec, MethodSpec, RunSpec

ROOT = Path(__file__).resolve().parents[2]
WORDS = [
    "the", "a", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "was", "on", "be", "by", "this",
    "are", "from", "at", "or", "an", "which", "have", "not", "model", "context", "window", "position", "token",
    "sequence", "attention", "layer", "head", "rotary", "frequency", "long", "short", "text",
]


def _cli(*args: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "gpu_workers", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _corpus(root: Path) -> Path:
    rng = random.Random(0)
    path = root / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(400))}) + "\n"
                            for _ in range(3)))
    return path


def _spec(root: Path, **eval_settings: Any) -> RunSpec:
    settings: dict[str, Any] = {"lengths": (64, 128), "documents": 2, **eval_settings}
    return RunSpec(run_id="replay-1", model_source=str(DEMO_MODEL_DIR),
                   dataset=DatasetSpec(kind="local", path=str(_corpus(root))), method=MethodSpec("yarn", {}),
                   target_length=512, eval=EvalSpec(**settings), device="cpu")


def _write(spec: RunSpec | Any, path: Path) -> Path:
    path.write_text(json.dumps(spec.to_json() if isinstance(spec, RunSpec) else spec))
    return path


def _numbers(measurements: list[Measurement]) -> list[Measurement]:
    """Everything but wall times, which no two runs share."""
    return [m for m in measurements if not m.metric.endswith("_seconds")]


@pytest.fixture
def demo_model() -> Path:
    if not (DEMO_MODEL_DIR / "model.safetensors").exists():
        pytest.skip("the demo model is not built")
    return DEMO_MODEL_DIR


@pytest.mark.slow
def test_replay_prints_the_numbers_the_pipeline_reports(tmp_path: Path, demo_model: Path) -> None:
    from gpu_workers import pipeline

    spec = _spec(tmp_path)
    work = tmp_path / "work"
    done = _cli("run", "--spec", _write(spec, tmp_path / "spec.json"), "--out", "m.jsonl", "--work-dir", work,
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines == (tmp_path / "m.jsonl").read_text().splitlines()
    printed = [Measurement(**json.loads(line)) for line in lines]

    reporter = MemoryReporter()
    pipeline.run(replace(spec, work_dir=str(work)), reporter)
    assert _numbers(printed) == _numbers(reporter.measurements)
    assert [m.context_length for m in printed if m.metric == "perplexity"] == [64, 128]
    assert {m.metric for m in printed} == {m.metric for m in reporter.measurements}
    assert "[ 10%] perplexity: starting" in done.stderr and "ppl@128" in done.stderr
    assert f"done: {len(lines)} measurements to m.jsonl, 0 artifacts under {work}" in done.stderr
    assert work.is_dir()


@pytest.mark.slow
def test_ctrl_c_stops_at_the_next_check(tmp_path: Path, demo_model: Path) -> None:
    """Hundreds of passkey prompts: far more than the time the stop needs to land."""
    spec = _write(_spec(tmp_path, lengths=(256,), suite=("passkey",), passkey_samples=500), tmp_path / "s.json")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "gpu_workers", "run", "--spec", str(spec)], cwd=tmp_path,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    seen = []
    for line in process.stderr:
        seen.append(line)
        if "passkey prompts" in line:
            break
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    err = "".join(seen) + err
    assert process.returncode == cli.EXIT_CANCELLED, err
    assert time.monotonic() - started < 60
    assert "stopping at the next check" in err and "cancelled after 0 measurements" in err
    assert "Traceback" not in err and out == ""


def test_first_interrupt_asks_the_run_to_stop(tmp_path: Path) -> None:
    """The handler only sets the flag; the pipeline's own ``Cancelled`` ends the run, and the old handler returns."""
    before = signal.getsignal(signal.SIGINT)
    checks = []

    def execute(spec: RunSpec, reporter: cli.JsonlReporter) -> None:
        reporter.measurement(Measurement("perplexity", 2.5, context_length=64))
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(500):
            checks.append(reporter.should_stop())
            if checks[-1]:
                raise Cancelled()
            time.sleep(0.01)

    args = cli.parser().parse_args(["run", "--spec", str(_write(_spec(tmp_path), tmp_path / "s.json")),
                                    "--work-dir", str(tmp_path / "w")])
    out, err = StringIO(), StringIO()
    assert cli.run_command(args, out, err, execute=execute) == cli.EXIT_CANCELLED
    assert checks[-1] is True
    assert json.loads(out.getvalue()) == {"metric": "perplexity", "value": 2.5, "context_length": 64, "depth": None,
                                          "samples": None, "ci_low": None, "ci_high": None, "step": None,
                                          "protocol_key": None}
    assert "cancelled after 1 measurements" in err.getvalue()
    assert signal.getsignal(signal.SIGINT) is before


def test_work_dir_defaults_under_the_current_directory(tmp_path: Path) -> None:
    spec = cli.prepare(_spec(tmp_path), None, None, None)
    assert spec.work_dir == str((cli.DEFAULT_WORK_ROOT / "replay-1").resolve())
    moved = cli.prepare(_spec(tmp_path), tmp_path / "w", "cuda", "/models/x")
    assert (moved.work_dir, moved.device, moved.model_source) == (str(tmp_path / "w"), "cuda", "/models/x")


def _bad_inputs(root: Path) -> dict[str, tuple[Path, str]]:
    good = _spec(root).to_json()
    (root / "bad.json").write_text('{"run_id": "x",')
    return {
        "missing file": (root / "nope.json", f"error: spec file not found: {root / 'nope.json'}"),
        "bad json": (root / "bad.json", f"error: {root / 'bad.json'} is not valid JSON: Expecting"),
        "not an object": (_write([1, 2], root / "list.json"), f"error: {root / 'list.json'} must hold a JSON object"),
        "unknown family": (_write({**good, "method": {"family": "warp", "params": {}}}, root / "fam.json"),
                           "error: invalid spec: method.family: Unknown method family 'warp'; choose one of none,"),
        "missing field": (_write({k: v for k, v in good.items() if k != "model_source"}, root / "field.json"),
                          "error: invalid spec: missing field 'model_source'"),
        "bad eval": (_write({**good, "eval": {**good["eval"], "lengths": [8]}}, root / "eval.json"),
                     "error: invalid spec: eval.lengths: evaluation lengths must be at least 16 tokens"),
        "bad device": (_write({**good, "device": "tpu"}, root / "dev.json"),
                       "error: invalid spec: device must be one of auto, cpu, cuda, not 'tpu'"),
    }


@pytest.mark.parametrize("case", ["missing file", "bad json", "not an object", "unknown family", "missing field",
                                  "bad eval", "bad device"])
def test_bad_input_is_one_line_and_exit_2_in_process(tmp_path: Path, case: str) -> None:
    path, message = _bad_inputs(tmp_path)[case]
    out, err = StringIO(), StringIO()
    assert cli.main(["run", "--spec", str(path)], out, err) == cli.EXIT_BAD_INPUT
    assert err.getvalue().startswith(message) and err.getvalue().count("\n") == 1
    assert out.getvalue() == ""
    assert not (tmp_path / cli.DEFAULT_WORK_ROOT).exists()


@pytest.mark.parametrize("case", ["missing file", "bad json", "unknown family"])
def test_bad_input_from_the_shell(tmp_path: Path, case: str) -> None:
    path, message = _bad_inputs(tmp_path)[case]
    done = _cli("run", "--spec", path, cwd=tmp_path, timeout=120)
    assert done.returncode == cli.EXIT_BAD_INPUT
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


@pytest.mark.slow
def test_a_run_that_fails_says_why_in_one_line(tmp_path: Path) -> None:
    spec = _write(replace(_spec(tmp_path), model_source=str(tmp_path / "no-model")), tmp_path / "s.json")
    done = _cli("run", "--spec", spec, cwd=tmp_path, timeout=120)
    assert done.returncode == cli.EXIT_FAILED
    assert done.stderr.splitlines()[-1] == f"error: ModelSourceError: No model directory at {tmp_path / 'no-model'}."
    assert "Traceback" not in done.stderr
