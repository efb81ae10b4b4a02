"""The database side of the gpu_workers ``Reporter`` protocol, plus the run's heartbeat.

The pipeline knows nothing of Django; this object turns its events into service calls keyed on
the run's uuid, so a run the sweeper already gave up on (or one retried since) absorbs nothing.

Round trips do not grow with the numbers a step reports: measurements wait in a buffer and go in one
bulk insert at the next progress or log event (or every FLUSH_EVERY of them, and when the run ends),
and while the heartbeat runs it also reads the cancel flag, so ``should_stop`` — asked before every
document, sample and needle — costs no query.
"""

from __future__ import annotations

import logging
import threading
import time
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
FLUSH_EVERY = 500


class DbReporter:
    """Implements ``gpu_workers.reporter.Reporter`` by writing to the Run row.

    Progress messages also go to the log tail, but consecutive ones replace each other (like a
    terminal's carriage return), so "3/8 windows" does not push real log lines out of the tail.

    The whole log (``RunLogChunk``) reads like that terminal too: every logged line, and a progress message
    once it stops being replaced (a log line follows it, or the run ends), so the tail is always its last lines.
    """

    def __init__(self, run_id: str, tail_lines: int | None = None) -> None:
        self.run_id = str(run_id)
        self.lines: deque[str] = deque(maxlen=tail_lines or settings.CONTEXTLAB_LOG_TAIL_LINES)
        self._last_was_progress = False
        self._pending: list[Measurement] = []
        self._progress_line = ""
        """The last progress message while it may still be replaced; the whole log gets it once it cannot."""
        self._stop = threading.Event()
        self._watched = False
        """True while a heartbeat thread keeps ``_stop`` current."""

    # --- the Reporter protocol ---

    def progress(self, fraction: float, message: str) -> None:
        message = message.replace("\n", " ")[:MAX_LINE]
        if self._last_was_progress and self.lines:
            self.lines.pop()
        self.lines.append(message)
        self._last_was_progress = True
        self._progress_line = message
        self.flush()
        services.write_progress(self.run_id, fraction, message, self.tail)

    def log(self, line: str) -> None:
        settled = self._settle_progress()
        for part in str(line).splitlines() or [""]:
            self.lines.append(part[:MAX_LINE])
            settled.append(part[:MAX_LINE])
        self.flush()
        services.write_log(self.run_id, self.tail, settled)

    def measurement(self, measurement: Measurement) -> None:
        self._pending.append(measurement)
        if len(self._pending) >= FLUSH_EVERY:
            self.flush()

    def artifact(self, kind: str, path: str) -> None:
        self.flush()
        services.record_artifact(self.run_id, kind, path)

    def protocol(self, facts: dict[str, Any]) -> None:
        services.record_protocol(self.run_id, facts)

    def should_stop(self) -> bool:
        if self._watched:
            return self._stop.is_set()
        return services.should_stop(self.run_id)

    # --- helpers ---

    def flush(self) -> None:
        """Write the buffered measurements: one query to check the attempt still runs, one bulk insert."""
        if self._pending:
            pending, self._pending = self._pending, []
            services.record_measurements(self.run_id, pending)

    def _settle_progress(self) -> list[str]:
        """The progress line that just became permanent, if any (as a list to append log lines to)."""
        settled = [self._progress_line] if self._last_was_progress else []
        self._last_was_progress = False
        self._progress_line = ""
        return settled

    def close_log(self) -> None:
        """The run's last progress message ("done") is final: add it to the whole log."""
        settled = self._settle_progress()
        if settled:
            services.write_log(self.run_id, self.tail, settled)

    @property
    def tail(self) -> str:
        return "\n".join(self.lines)

    @contextmanager
    def heartbeat(self, interval: float | None = None) -> Iterator[None]:
        """Write ``heartbeat_at`` every *interval* seconds from a daemon thread while the block runs, and read
        the cancel flag every ``CONTEXTLAB_CANCEL_POLL_INTERVAL`` seconds for ``should_stop``."""
        self._stop.clear()
        beat = Heartbeat(self.run_id, interval or settings.CONTEXTLAB_HEARTBEAT_INTERVAL, stop=self._stop,
                         poll=settings.CONTEXTLAB_CANCEL_POLL_INTERVAL)
        beat.check()  # a cancel that came before the block is seen at once
        beat.start()
        self._watched = True
        try:
            yield
        finally:
            self._watched = False
            beat.stop()
            self.flush()
            self.close_log()


class Heartbeat(threading.Thread):
    """A daemon thread: it must never keep a worker process alive, and it owns its DB connection."""

    def __init__(self, run_id: str, interval: float, stop: threading.Event | None = None,
                 poll: float | None = None) -> None:
        super().__init__(name=f"heartbeat-{run_id}", daemon=True)
        self.run_id = run_id
        self.interval = interval
        self.poll = min(poll or interval, interval)
        self.stop_flag = stop or threading.Event()
        self._stopped = threading.Event()

    def check(self) -> None:
        if services.should_stop(self.run_id):
            self.stop_flag.set()

    def run(self) -> None:
        next_beat = time.monotonic() + self.interval
        try:
            while not self._stopped.wait(self.poll):
                try:
                    self.check()
                    if time.monotonic() >= next_beat:
                        services.beat(self.run_id)
                        next_beat = time.monotonic() + self.interval
                except Exception:  # a missed beat is survivable; a dead heartbeat thread is not
                    logger.exception("heartbeat for run %s failed", self.run_id)
        finally:
            connection.close()

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=max(self.interval, 1.0) + 5)
