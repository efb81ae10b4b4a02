"""The reader of the run page: attempts, artifacts, the spec and one attempt's whole log. Fixed queries.

The whole log lives in ``RunLogChunk`` rows (one per reporter write), kept per attempt; ``Run.log_tail`` is
only the experiment page's tail. Tracebacks are for the team's members and admins: a viewer sees what went
wrong (the error line) but not the worker's file paths and code (the view decides, the page only renders).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from experiments import services
from experiments.checkpoints import CHECKPOINT
from experiments.models import Artifact, Run, RunAttempt, RunLogChunk


@dataclass
class RunPage:
    run: Run
    attempts: list[RunAttempt]
    artifacts: list[Artifact]
    log_attempt: int
    """Which attempt's log is shown (the current one unless the visitor picked another)."""
    log_text: str
    log_last_id: int
    """The id of the last chunk shown, so the page's poll asks only for what came after."""
    spec_json: str
    spec_error: str = ""
    log_attempts: list[int] = field(default_factory=list)
    """Attempts that have a log or an attempt row, newest first, for the log's attempt picker."""

    @property
    def checkpoint(self) -> Artifact | None:
        return next((a for a in reversed(self.artifacts) if a.kind == CHECKPOINT), None)

    @property
    def current_attempt(self) -> RunAttempt | None:
        return next((a for a in reversed(self.attempts) if a.number == self.run.attempt), None)


def run_page(run: Run, attempt: int | None = None) -> RunPage:
    """Everything the run page shows: five queries (attempts, artifacts, log, the spec's model and dataset)."""
    attempts = list(RunAttempt.objects.filter(run=run).order_by("number"))
    artifacts = list(Artifact.objects.filter(run=run).order_by("id"))
    shown = attempt if attempt else run.attempt
    chunks = list(RunLogChunk.objects.filter(run=run, attempt=shown).order_by("id").values_list("id", "text"))
    numbers = sorted({a.number for a in attempts} | {run.attempt, shown}, reverse=True)
    spec_json, spec_error = _spec(run)
    return RunPage(
        run=run, attempts=attempts, artifacts=artifacts, log_attempt=shown,
        log_text="\n".join(text for _, text in chunks), log_last_id=chunks[-1][0] if chunks else 0,
        spec_json=spec_json, spec_error=spec_error, log_attempts=numbers,
    )


def _spec(run: Run) -> tuple[str, str]:
    """The RunSpec as the worker builds it (what spec.json downloads), or why it cannot be built."""
    try:
        return json.dumps(services.run_spec_for(run).to_json(), indent=2), ""
    except (ValueError, TypeError) as exc:
        return "", f"{type(exc).__name__}: {exc}"


def log_after(run: Run, attempt: int, after_id: int) -> list[tuple[int, str]]:
    """The chunks of one attempt's log written after chunk *after_id*: one query (the page's poll)."""
    return list(RunLogChunk.objects.filter(run=run, attempt=attempt, id__gt=after_id).order_by("id")
                .values_list("id", "text"))


def log_lines(run: Run, attempt: int) -> Iterator[str]:
    """One attempt's whole log, streamed chunk by chunk (``log.txt``), each ending with a newline."""
    chunks = (RunLogChunk.objects.filter(run=run, attempt=attempt).order_by("id").values_list("text", flat=True)
              .iterator(chunk_size=500))
    for text in chunks:
        yield text + "\n"


def run_of_attempt(user: Any, task_id: object) -> RunAttempt | None:
    """The attempt whose task id was *task_id*, if it is in one of the user's teams: links to a run from
    before a retry (whose uuid changed) still find the run."""
    if not user.is_authenticated:
        return None
    return (RunAttempt.objects.select_related("run").filter(task_id=task_id,
                                                             run__experiment__team__memberships__user=user)
            .first())
