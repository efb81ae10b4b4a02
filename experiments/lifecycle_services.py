"""The writer of an experiment's life after its runs: archive, unarchive, delete (issue 15).

Archiving hides an experiment from the experiment lists (dashboard, API) and from the leaderboard, and nothing
else: it stays reachable by its URL and in its exports, and its runs are untouched. The team's members and
admins may archive and unarchive; viewers get 403 (outsiders never reach here: ``access.experiment_for`` is 404).

Deleting removes the experiment with its runs and everything they recorded (measurements, artifact rows,
attempts, log chunks) in one transaction; only the team's admins may, and not while a run is queued or running
(a worker would write into rows that are gone). The runs are locked first (``SELECT … FOR UPDATE``), so a retry
racing the delete either happens before it (and the delete is refused) or finds nothing to retry. Methods stay
(``Run.method`` protects the method, not the run), and so do the files runs wrote on the workers' storage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from experiments.access import can_submit
from experiments.models import Artifact, Experiment, Measurement, Run, RunAttempt, RunLogChunk
from experiments.team_services import is_team_admin


class LifecycleRefused(Exception):
    """A change the experiment's state does not allow (a run still active); the message says what to do."""


def can_archive(user: Any, experiment: Experiment) -> bool:
    """Members and admins of the experiment's team."""
    return can_submit(user, experiment.team)


def can_delete(user: Any, experiment: Experiment) -> bool:
    """Admins of the experiment's team only."""
    return is_team_admin(user, experiment.team)


def require_archive(user: Any, experiment: Experiment) -> None:
    if not can_archive(user, experiment):
        raise PermissionDenied("Viewers can look but not archive experiments.")


def require_delete(user: Any, experiment: Experiment) -> None:
    if not can_delete(user, experiment):
        raise PermissionDenied("Only the team's admins delete experiments.")


def archive_experiment(user: Any, experiment: Experiment) -> bool:
    """Archive *experiment* (members and admins); False if it already was (nothing changes)."""
    require_archive(user, experiment)
    now = timezone.now()
    changed = Experiment.objects.filter(pk=experiment.pk, archived_at__isnull=True).update(archived_at=now) == 1
    if changed:
        experiment.archived_at = now
    return changed


def unarchive_experiment(user: Any, experiment: Experiment) -> bool:
    """Bring an archived *experiment* back into the lists (members and admins); False if it was not archived."""
    require_archive(user, experiment)
    changed = Experiment.objects.filter(pk=experiment.pk, archived_at__isnull=False).update(archived_at=None) == 1
    if changed:
        experiment.archived_at = None
    return changed


@dataclass(frozen=True)
class Deleted:
    """What a delete removed."""

    runs: int
    measurements: int
    artifacts: int
    attempts: int
    log_chunks: int


def active_runs_refusal(active: int) -> str:
    runs = "run is" if active == 1 else "runs are"
    return f"{active} {runs} queued or running: cancel them first, then delete the experiment."


def delete_experiment(user: Any, experiment: Experiment) -> Deleted:
    """Delete *experiment*, its runs, measurements, artifacts, attempts and log chunks in one transaction (team
    admins only). Raises :class:`LifecycleRefused` while a run is queued or running; then nothing is removed."""
    require_delete(user, experiment)
    with transaction.atomic():
        statuses = list(Run.objects.select_for_update().filter(experiment=experiment).values_list("status",
                                                                                                  flat=True))
        active = sum(1 for status in statuses if status in Run.ACTIVE)
        if active:
            raise LifecycleRefused(active_runs_refusal(active))
        runs = Run.objects.filter(experiment=experiment)
        deleted = Deleted(
            runs=len(statuses),
            measurements=Measurement.objects.filter(run__in=runs).delete()[0],
            artifacts=Artifact.objects.filter(run__in=runs).delete()[0],
            attempts=RunAttempt.objects.filter(run__in=runs).delete()[0],
            log_chunks=RunLogChunk.objects.filter(run__in=runs).delete()[0],
        )
        runs.delete()
        Experiment.objects.filter(pk=experiment.pk).delete()
    return deleted
