"""Training in several processes from a worker: launch ``gpu_workers.train.cli`` and follow it live.

A run whose spec says ``train_processes=N`` (a Celery worker that owns several GPUs sets
``CONTEXTLAB_TRAIN_PROCESSES=N``, which the web side's settings put into every RunSpec it builds) writes
its RunSpec to the work directory and starts ``accelerate launch --num_processes N -m gpu_workers.train.cli``
(``train_launcher="torchrun"`` uses ``torch.distributed.run`` instead, which is also how CPU-only hosts get
several gloo processes: accelerate runs multi-process CPU only through MPI). Step losses come back as JSON
lines on stdout and are reported as they arrive; a cancel touches the stop file, which the processes honour
before their next step.
"""

from __future__ import annotations

import json
import queue
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

from gpu_workers.reporter import Cancelled
from gpu_workers.spec import TRAIN_LAUNCHERS, RunSpec
from gpu_workers.train.cli import CANCELLED_EXIT, RESULT_FILE, STEP_PREFIX

POLL_SECONDS = 1.0
REPOSITORY = Path(__file__).resolve().parents[2]
"""Where the launched processes start, so ``-m gpu_workers.train.cli`` finds the package."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launcher_command(processes: int, launcher: str) -> list[str]:
    """The command that starts *processes* training processes with *launcher* (one of :data:`TRAIN_LAUNCHERS`)."""
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    if launcher == "accelerate":
        return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
                "--main_process_port", str(_free_port())]
    raise ValueError(f"the training launcher must be {' or '.join(TRAIN_LAUNCHERS)}, not {launcher!r}")


def launch(spec: RunSpec, *, on_step: Callable[[int, float, float], None], should_stop: Callable[[], bool]) -> dict:
    """Train in ``spec.train_processes`` processes started by ``spec.train_launcher``; returns ``result.json``.

    The trained model is in ``work_dir/trained``.
    """
    if not spec.work_dir:
        raise ValueError("multi-process training needs the run's work directory")
    work = Path(spec.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    spec_path, out, stop = work / "train_spec.json", work / "trained", work / "STOP"
    stop.unlink(missing_ok=True)
    spec_path.write_text(json.dumps(spec.to_json()))
    command = [
        *launcher_command(spec.train_processes, spec.train_launcher),
        "-m", "gpu_workers.train.cli", "--spec", str(spec_path), "--out", str(out), "--stop-file", str(stop),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=REPOSITORY)
    lines: queue.Queue[str | None] = queue.Queue()
    tail: deque[str] = deque(maxlen=40)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    finished = False
    while not finished:
        try:
            line = lines.get(timeout=POLL_SECONDS)
        except queue.Empty:
            line = ""
        if line is None:
            finished = True
        elif line.startswith(STEP_PREFIX):
            step = json.loads(line[len(STEP_PREFIX):])
            on_step(step["step"], step["loss"], step["lr"])
        elif line:
            tail.append(line.rstrip())
        if should_stop() and not stop.exists():
            stop.touch()
    code = process.wait()
    if code == CANCELLED_EXIT or stop.exists():
        stop.unlink(missing_ok=True)
        raise Cancelled()
    if code != 0:
        raise RuntimeError(f"training processes exited with status {code}: " + " | ".join(list(tail)[-5:]))
    return json.loads((out / RESULT_FILE).read_text())
