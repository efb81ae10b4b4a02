"""The database side of the gpu_workers ``Reporter`` protocol, plus the run's heartbeat.

The pipeline knows nothing of Django; this object turns its events into service calls keyed on
the run's uuid, so a run the sweeper already gave up on (or one retried since) absorbs nothing.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.db import connection

from experiments import services
from gpu_workers.reporter import Measurement

logger = logging.getLogger(__name__)
MAX_LINE = 1000


class DbReporter:
    """Implements ``gpu_workers.reporter.Reporter`` by writing to the Run row.

    Progress messages also go to the log tail, but consecutive ones replace each other (like a
    terminal's carriage return), so "3/8 windows" does not push real log lines out of the tail.
    """

    def __init__(self, run_id: str, tail_lines: int | None = None) -> None:
        self.run_id = str(run_id)
        self.lines: deque[str] = deque(maxlen=tail_lines or settings.CONTEXTLAB_LOG_TAIL_LINES)
        self._last_was_progress = False

    # --- the Reporter protocol ---

    def progress(self, fraction: float, message: str) -> None:
        message = message.replace("\n", " ")[:MAX_LINE]
        if self._last_was_progress and self.lines:
            self.lines.pop()
        self.lines.append(message)
        self._last_was_progress = True
        services.write_progress(self.run_id, fraction, message, self.tail)

    def log(self, line: str) -> None:
        for part in str(line).splitlines() or [""]:
            self.lines.append(part[:MAX_LINE])
        self._last_was_progress = False
        services.write_log(self.run_id, self.tail)

    def measurement(self, measurement: Measurement) -> None:
        services.record_measurement(self.run_id, measurement)

    def artifact(self, kind: str, path: str) -> None:
        services.record_artifact(self.run_id, kind, path)

    def protocol(self, facts: dict[str, Any]) -> None:
        services.record_protocol(self.run_id, facts)

    def should_stop(self) -> bool:
        return services.should_stop(self.run_id)

    # --- helpers ---

    @property
    def tail(self) -> str:
        return "\n".join(self.lines)

    @contextmanager
    def heartbeat(self, interval: float | None = None) -> Iterator[None]:
        """Write ``heartbeat_at`` every *interval* seconds from a daemon thread while the block runs."""
        beat = Heartbeat(self.run_id, interval or settings.CONTEXTLAB_HEARTBEAT_INTERVAL)
        beat.start()
        try:
            yield
        finally:
            beat.stop()


class Heartbeat(threading.Thread):
    """A daemon thread: it must never keep a worker process alive, and it owns its DB connection."""

    def __init__(self, run_id: str, interval: float) -> None:
        super().__init__(name=f"heartbeat-{run_id}", daemon=True)
        self.run_id = run_id
        self.interval = interval
        self._stopped = threading.Event()

    def run(self) -> None:
        try:
            while not self._stopped.wait(self.interval):
                try:
                    services.beat(self.run_id)
                except Exception:  # a missed beat is survivable; a dead heartbeat thread is not
                    logger.exception("heartbeat for run %s failed", self.run_id)
        finally:
            connection.close()

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=max(self.interval, 1.0) + 5)
