"""A real Celery worker process for tests: same code path as production, no eager mode."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """``celery -A webapp worker`` on the test database and the test broker, log kept for failures."""

    def __init__(self, database_url: str, broker_url: str, log_dir: Path, extra_env: dict[str, str] | None = None,
                 queues: str = "gpu,control", beat: bool = False) -> None:
        self.name = f"test-{uuid.uuid4().hex[:8]}@%h"
        self.log_path = log_dir / f"worker-{uuid.uuid4().hex[:8]}.log"
        env = {**os.environ, "DATABASE_URL": database_url, "CELERY_BROKER_URL": broker_url, **(extra_env or {})}
        command = [
            str(Path(sys.executable).with_name("celery")), "-A", "webapp", "worker", "-Q", queues,
            "--concurrency", "1", "--prefetch-multiplier", "1", "--loglevel", "INFO", "-n", self.name,
            "--without-gossip", "--without-mingle",
        ]
        if beat:
            command += ["-B", "--schedule", str(log_dir / f"beat-{uuid.uuid4().hex[:8]}")]
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            if " ready." in self.log():
                return
            time.sleep(0.3)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.log()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL the whole process group: what a lost host looks like to everyone else."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
