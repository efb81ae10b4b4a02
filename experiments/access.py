"""Who may see and change what: every query and every write goes through these scopes.

Outsiders get 404 (an object in another team does not exist for them); viewers get 403 on writes.
"""

from __future__ import annotations

from typing import TypeAlias

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404

from experiments.models import BaseModel, Dataset, Experiment, Membership, Method, Run, Team

User: TypeAlias = AbstractBaseUser | AnonymousUser
SUBMIT_ROLES = (Membership.Role.MEMBER, Membership.Role.ADMIN)


def teams_of(user: User) -> QuerySet[Team]:
    if not user.is_authenticated:
        return Team.objects.none()
    return Team.objects.filter(memberships__user=user)


def submit_teams_of(user: User) -> QuerySet[Team]:
    """Teams in which *user* may start, cancel and retry runs and register models and data."""
    if not user.is_authenticated:
        return Team.objects.none()
    return Team.objects.filter(memberships__user=user, memberships__role__in=SUBMIT_ROLES)


def can_submit(user: User, team: Team | None) -> bool:
    if team is None or not user.is_authenticated:
        return False
    return Membership.objects.filter(user=user, team=team, role__in=SUBMIT_ROLES).exists()


def require_submit(user: User, team: Team) -> None:
    if not can_submit(user, team):
        raise PermissionDenied("Viewers can look but not start, cancel or retry runs.")


def _shared_or_mine(user: User) -> Q:
    return Q(team__isnull=True) | Q(team__memberships__user=user)


def visible_base_models(user: User) -> QuerySet[BaseModel]:
    if not user.is_authenticated:
        return BaseModel.objects.none()
    return BaseModel.objects.filter(_shared_or_mine(user)).distinct().select_related("team")


def visible_datasets(user: User) -> QuerySet[Dataset]:
    if not user.is_authenticated:
        return Dataset.objects.none()
    return Dataset.objects.filter(_shared_or_mine(user)).distinct().select_related("team")


def visible_methods(user: User) -> QuerySet[Method]:
    if not user.is_authenticated:
        return Method.objects.none()
    return Method.objects.filter(_shared_or_mine(user)).distinct().select_related("team")


def visible_experiments(user: User) -> QuerySet[Experiment]:
    if not user.is_authenticated:
        return Experiment.objects.none()
    return Experiment.objects.filter(team__memberships__user=user)


def experiment_for(user: User, experiment_uuid: object) -> Experiment:
    experiment = (
        visible_experiments(user)
        .select_related("team", "base_model", "dataset", "created_by")
        .filter(uuid=experiment_uuid)
        .first()
    )
    if experiment is None:
        raise Http404("No such experiment.")
    return experiment


def run_for(user: User, run_uuid: object) -> Run:
    run = (
        Run.objects.filter(experiment__team__memberships__user=user, uuid=run_uuid)
        .select_related("experiment", "experiment__team", "method")
        .first()
        if user.is_authenticated
        else None
    )
    if run is None:
        raise Http404("No such run.")
    return run


def method_for(user: User, method_id: object) -> Method:
    """A shared method or one of the user's teams' methods; anything else is 404."""
    method = visible_methods(user).filter(pk=method_id).first()
    if method is None:
        raise Http404("No such method.")
    return method
