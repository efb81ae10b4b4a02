"""The reader behind archive, delete and rerun (issue 15): which of those a visitor may do, and what a delete
would remove. Writes are in ``experiments.lifecycle_services``; the rules are the same (members and admins
archive, admins delete, anyone who may submit somewhere runs an experiment again)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Q

from experiments.access import SUBMIT_ROLES, submit_teams_of
from experiments.models import Experiment, Measurement, Membership, Run


@dataclass(frozen=True)
class LifecycleActions:
    """Which buttons the experiment page shows the visitor."""

    can_archive: bool
    can_delete: bool
    can_rerun: bool


def actions_for(user: Any, experiment: Experiment) -> LifecycleActions:
    """The visitor's role in the experiment's team decides: one query, two for a viewer (may they submit
    to another team? then they may run it again there)."""
    role = (Membership.objects.filter(user=user, team_id=experiment.team_id).values_list("role", flat=True).first()
            if user.is_authenticated else None)
    member = role in SUBMIT_ROLES
    return LifecycleActions(
        can_archive=member,
        can_delete=role == Membership.Role.ADMIN,
        can_rerun=member or (user.is_authenticated and submit_teams_of(user).exists()),
    )


@dataclass(frozen=True)
class DeletionSummary:
    """What deleting the experiment would remove, for the confirmation page."""

    runs: int
    measurements: int
    active_runs: int

    @property
    def blocked(self) -> bool:
        return self.active_runs > 0


def deletion_summary(experiment: Experiment) -> DeletionSummary:
    """Its runs (and how many are queued or running) and their measurements: two queries."""
    runs = Run.objects.filter(experiment=experiment).aggregate(
        total=Count("pk"), active=Count("pk", filter=Q(status__in=Run.ACTIVE)),
    )
    measurements = Measurement.objects.filter(run__experiment=experiment).count()
    return DeletionSummary(runs=runs["total"], measurements=measurements, active_runs=runs["active"])
