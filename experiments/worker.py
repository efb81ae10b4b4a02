"""The one writer of the worker side of a run: its claim, what its pipeline reports, how it ends.

Why a module of its own: the web side (``experiments.services``) sends a run by its task *name* and never
imports the code that executes it, while this module imports from the web side only what both must agree on
(the run's spec, the team's methods). The dependency runs one way, so the web process never pulls in the
worker's path (and, through it, torch), and the two sides cannot grow into each other again: the three
import cycles ``tests/test_import_graph.py`` used to tolerate came from keeping both in ``services``.

Why one writer still: every write a worker makes to a run, from the claim to the last measurement, goes
through here, each conditional on the run's current ``uuid`` and status ``running`` (the lifecycle and the
retry policy are in ``experiments.services``). A duplicate delivery then claims nothing, and a late write from
a worker the sweeper gave up on, or from an attempt retried since, changes nothing; one module is where that
guard can be checked and cannot be forgotten.

The pipeline knows nothing of Django: :class:`DbReporter` turns its events into these writes. Round trips do
not grow with the numbers a step reports: measurements wait in a buffer and go in one bulk insert at the next
progress or log event (or every FLUSH_EVERY of them, and when the run ends), and while the heartbeat runs it
also reads the cancel flag, so ``should_stop`` — asked before every document, sample and needle — costs no
query.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Subquery
from django.utils import timezone

from experiments.models import Artifact, Measurement, Method, Run, RunAttempt, RunLogChunk
from experiments.services import get_or_create_method, run_spec_for
from gpu_workers.methods import validate
from gpu_workers.reporter import Cancelled
from gpu_workers.reporter import Measurement as ReportedMeasurement
from gpu_workers.spec import RunSpec

logger = logging.getLogger(__name__)
# Any: without django-stubs mypy reads a TextChoices member as its (value, label) tuple; it is a str.
Status: Any = Run.Status
MAX_LINE = 1000
FLUSH_EVERY = 500


# --- a run's life on a worker --------------------------------------------------------------------------


def claim_run(run_id: str, worker: str) -> bool:
    """queued → running, atomically; False when there was nothing to claim (duplicate, cancelled).

    A claim is an attempt: its RunAttempt row is written in the same transaction, so the history never misses
    a run that ran nor records one that did not.
    """
    now = timezone.now()
    with transaction.atomic():
        claimed = Run.objects.filter(uuid=run_id, status=Status.QUEUED, cancel_requested=False).update(
            status=Status.RUNNING, worker=worker[:200], started_at=now, heartbeat_at=now, progress=0.0
        )
        if claimed == 1:
            row = Run.objects.filter(uuid=run_id).values("pk", "attempt", "queued_at").get()
            RunAttempt.objects.create(run_id=row["pk"], number=row["attempt"], task_id=run_id, worker=worker[:200],
                                      queued_at=row["queued_at"], started_at=now)
    return claimed == 1


def record_haystack_source(run_id: str, spec: RunSpec) -> None:
    """Note on the run which source fills its needle haystacks, taken from the very spec the pipeline reads,
    so the chart names what this attempt used even if the dataset's setting changes later."""
    if any(spec.eval.wants(e) for e in ("needle", "needle_perplexity")):
        Run.objects.filter(uuid=run_id, status=Status.RUNNING).update(haystack_source=spec.dataset.haystack[:100])


def finish_run(run_id: str, status: str, error: str = "", trace: str = "") -> bool:
    """running → a final status, closing the attempt (with the traceback of a failure, if any); False if the run
    was no longer running (e.g. swept)."""
    fields: dict[str, Any] = {"status": status, "finished_at": timezone.now(), "error": error}
    if status == Status.SUCCEEDED:
        fields["progress"] = 1.0
    with transaction.atomic():
        finished = Run.objects.filter(uuid=run_id, status=Status.RUNNING).update(**fields) == 1
        if finished:
            RunAttempt.objects.filter(task_id=run_id, finished_at__isnull=True).update(
                outcome=status, finished_at=fields["finished_at"], error=error, traceback=trace)
    return finished


def execute_run(run_id: str, worker: str = "") -> str:
    """Claim, run the pipeline with a database reporter, and record how it ended. Returns the status."""
    if not claim_run(run_id, worker):
        logger.info("run %s: nothing to claim (duplicate delivery, cancelled or retried)", run_id)
        return "skipped"
    run = Run.objects.select_related("experiment__base_model", "experiment__dataset", "method").get(uuid=run_id)
    reporter = DbReporter(run_id)
    try:
        with reporter.heartbeat():
            reporter.log(f"attempt {run.attempt} on {worker or 'unknown worker'}")
            spec = run_spec_for(run)
            record_haystack_source(run_id, spec)
            from gpu_workers import pipeline  # imports torch: only in the child that runs it

            pipeline.run(spec, reporter)
    except Cancelled:
        reporter.log("cancelled")
        finish_run(run_id, Status.CANCELLED)
        return Status.CANCELLED
    except Exception as exc:  # any pipeline error fails this run only
        logger.exception("run %s failed", run_id)
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
        message = f"{type(exc).__name__}: {exc}"
        reporter.log(f"{message}{where}")
        finish_run(run_id, Status.FAILED, error=message, trace=traceback.format_exc())
        return Status.FAILED
    try:
        # One transaction, so nobody sees a succeeded search run whose method is not saved yet.
        with transaction.atomic():
            if finish_run(run_id, Status.SUCCEEDED):
                save_searched_method(run)
    except Exception as exc:  # the search result could not become a method: the run did not deliver
        logger.exception("run %s: saving its searched method failed", run_id)
        message = f"saving the searched method failed: {type(exc).__name__}: {exc}"
        reporter.log(message)
        finish_run(run_id, Status.FAILED, error=message, trace=traceback.format_exc())
        return Status.FAILED
    return Status.SUCCEEDED


def save_searched_method(run: Run) -> Method | None:
    """A finished factor search becomes a reusable LongRoPE method of the run's team."""
    artifact = Artifact.objects.filter(run=run, kind="search_result").order_by("-id").first()
    if artifact is None:
        return None
    try:
        summary = json.loads(Path(artifact.path).read_text())
    except (OSError, ValueError):
        logger.exception("run %s: could not read the search result %s", run.uuid, artifact.path)
        return None
    params = summary["method_params"]
    experiment = run.experiment
    base = experiment.base_model.rope_facts()
    canonical = validate("longrope", params, base, experiment.target_length)
    name = f"LongRoPE ×{canonical['factor']:g} searched in “{experiment.name}” ({run.method.name})"[:200]
    method = get_or_create_method(experiment.team, "longrope", canonical, name)
    Run.objects.filter(pk=run.pk).update(produced_method=method)
    return method


# --- what a running attempt reports ----------------------------------------------------------------------


def write_progress(run_id: str, fraction: float, message: str, log_tail: str) -> None:
    Run.objects.filter(uuid=run_id, status=Status.RUNNING).update(
        progress=min(max(float(fraction), 0.0), 1.0), progress_message=message[:300], log_tail=log_tail
    )


def write_log(run_id: str, log_tail: str, lines: Iterable[str] = ()) -> None:
    """Replace the tail and append *lines* to the attempt's whole log (``RunLogChunk``): two statements.

    The chunk's run and attempt are subqueries in the INSERT, and the UPDATE before it holds the run's row lock
    until commit, so a write from an attempt that stopped running changes neither the tail nor the log.
    """
    text = "\n".join(lines)
    if not text:
        Run.objects.filter(uuid=run_id, status=Status.RUNNING).update(log_tail=log_tail)
        return
    with transaction.atomic():
        if Run.objects.filter(uuid=run_id, status=Status.RUNNING).update(log_tail=log_tail):
            this_run = Run.objects.filter(uuid=run_id)
            RunLogChunk.objects.create(run_id=Subquery(this_run.values("pk")[:1]),
                                       attempt=Subquery(this_run.values("attempt")[:1]), text=text)


def beat(run_id: str) -> None:
    Run.objects.filter(uuid=run_id, status=Status.RUNNING).update(heartbeat_at=timezone.now())


def should_stop(run_id: str) -> bool:
    """True when cancel was asked for, or the run is no longer this attempt's to run."""
    row = Run.objects.filter(uuid=run_id).values("status", "cancel_requested").first()
    return row is None or row["cancel_requested"] or row["status"] != Status.RUNNING


def record_measurement(run_id: str, measurement: ReportedMeasurement) -> Measurement | None:
    """Store one reported number, if the run is still running as this attempt."""
    stored = record_measurements(run_id, [measurement])
    return stored[0] if stored else None


def record_measurements(run_id: str, measurements: Iterable[ReportedMeasurement]) -> list[Measurement]:
    """Store reported numbers in one insert, if the run is still running as this attempt: two queries."""
    run_pk = Run.objects.filter(uuid=run_id, status=Status.RUNNING).values_list("pk", flat=True).first()
    if run_pk is None:
        return []
    return Measurement.objects.bulk_create([
        Measurement(run_id=run_pk, metric=m.metric, value=float(m.value), context_length=m.context_length,
                    depth=m.depth, samples=m.samples, ci_low=m.ci_low, ci_high=m.ci_high, step=m.step,
                    protocol_key=(m.protocol_key or "")[:16])
        for m in measurements
    ])


def record_protocol(run_id: str, facts: dict[str, Any]) -> bool:
    """Store the attempt's evaluation protocol on its run (the worker reports it once, after loading)."""
    return Run.objects.filter(uuid=run_id, status=Status.RUNNING).update(protocol=facts) == 1


def record_artifact(run_id: str, kind: str, path: str) -> Artifact | None:
    run = Run.objects.filter(uuid=run_id, status=Status.RUNNING).only("id").first()
    if run is None:
        return None
    return Artifact.objects.create(run=run, kind=kind[:60], path=path[:1000])


# --- the gpu_workers Reporter, on the database ----------------------------------------------------------


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
        self._pending: list[ReportedMeasurement] = []
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
        write_progress(self.run_id, fraction, message, self.tail)

    def log(self, line: str) -> None:
        settled = self._settle_progress()
        for part in str(line).splitlines() or [""]:
            self.lines.append(part[:MAX_LINE])
            settled.append(part[:MAX_LINE])
        self.flush()
        write_log(self.run_id, self.tail, settled)

    def measurement(self, measurement: ReportedMeasurement) -> None:
        self._pending.append(measurement)
        if len(self._pending) >= FLUSH_EVERY:
            self.flush()

    def artifact(self, kind: str, path: str) -> None:
        self.flush()
        record_artifact(self.run_id, kind, path)

    def protocol(self, facts: dict[str, Any]) -> None:
        record_protocol(self.run_id, facts)

    def should_stop(self) -> bool:
        if self._watched:
            return self._stop.is_set()
        return should_stop(self.run_id)

    # --- helpers ---

    def flush(self) -> None:
        """Write the buffered measurements: one query to check the attempt still runs, one bulk insert."""
        if self._pending:
            pending, self._pending = self._pending, []
            record_measurements(self.run_id, pending)

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
            write_log(self.run_id, self.tail, settled)

    @property
    def tail(self) -> str:
        return "\n".join(self.lines)

    @contextmanager
    def heartbeat(self, interval: float | None = None) -> Iterator[None]:
        """Write ``heartbeat_at`` every *interval* seconds from a daemon thread while the block runs, and read
        the cancel flag every ``CONTEXTLAB_CANCEL_POLL_INTERVAL`` seconds for ``should_stop``."""
        self._stop.clear()
        heart = Heartbeat(self.run_id, interval or settings.CONTEXTLAB_HEARTBEAT_INTERVAL, stop=self._stop,
                          poll=settings.CONTEXTLAB_CANCEL_POLL_INTERVAL)
        heart.check()  # a cancel that came before the block is seen at once
        heart.start()
        self._watched = True
        try:
            yield
        finally:
            self._watched = False
            heart.stop()
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
        if should_stop(self.run_id):
            self.stop_flag.set()

    def run(self) -> None:
        next_beat = time.monotonic() + self.interval
        try:
            while not self._stopped.wait(self.poll):
                try:
                    self.check()
                    if time.monotonic() >= next_beat:
                        beat(self.run_id)
                        next_beat = time.monotonic() + self.interval
                except Exception:  # a missed beat is survivable; a dead heartbeat thread is not
                    logger.exception("heartbeat for run %s failed", self.run_id)
        finally:
            connection.close()

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=max(self.interval, 1.0) + 5)
