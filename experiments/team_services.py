"""The writer of teams and memberships: create a team, add a member, change a role, remove, leave.

Only a team's admins manage its members; anyone signed in may create a team and becomes its first admin.
A team always keeps at least one admin: every change that could take the last one away (demote, remove,
leave) locks the team's row first (``SELECT … FOR UPDATE``) and counts the other admins under that lock, so
two admins demoting each other at the same moment cannot both succeed and leave a team nobody can manage.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction

from experiments.models import Membership, Team

Role = Membership.Role


class TeamChangeRefused(Exception):
    """A change that would break a rule (last admin, duplicate member, unknown user); the message says which."""


def is_team_admin(user: Any, team: Team) -> bool:
    return bool(user.is_authenticated) and Membership.objects.filter(user=user, team=team, role=Role.ADMIN).exists()


def require_team_admin(user: Any, team: Team) -> None:
    if not is_team_admin(user, team):
        raise PermissionDenied("Only the team's admins manage its members.")


def create_team(user: Any, name: str) -> Team:
    """A new team with *user* as its admin."""
    if not user.is_authenticated:
        raise PermissionDenied("Sign in to create a team.")
    name = name.strip()
    if not name:
        raise TeamChangeRefused("Give the team a name.")
    if Team.objects.filter(name__iexact=name).exists():
        raise TeamChangeRefused(f"A team named “{name}” already exists.")
    try:
        with transaction.atomic():
            team = Team.objects.create(name=name)
            Membership.objects.create(user=user, team=team, role=Role.ADMIN)
    except IntegrityError:  # created by someone else between the check and the insert
        raise TeamChangeRefused(f"A team named “{name}” already exists.") from None
    return team


def add_member(user: Any, team: Team, username: str, role: str) -> Membership:
    """Add the user called *username* to *team* with *role* (team admins only)."""
    require_team_admin(user, team)
    _check_role(role)
    User = get_user_model()
    person = User.objects.filter(**{User.USERNAME_FIELD: username.strip()}).first()
    if person is None:
        raise TeamChangeRefused(f"There is no user named “{username.strip()}”.")
    try:
        with transaction.atomic():
            return Membership.objects.create(user=person, team=team, role=role)
    except IntegrityError:
        raise TeamChangeRefused(f"{person.get_username()} is already in {team.name}.") from None


def set_role(user: Any, membership: Membership, role: str) -> Membership:
    """Change a member's role (team admins only); the last admin cannot be demoted."""
    require_team_admin(user, membership.team)
    _check_role(role)
    with transaction.atomic():
        current = _lock(membership)
        if current.role == Role.ADMIN and role != Role.ADMIN:
            _keep_an_admin(current, f"{current.user.get_username()} is the last admin of {current.team.name}: "
                                    f"make someone else an admin first.")
        current.role = role
        current.save(update_fields=["role"])
    return current


def remove_member(user: Any, membership: Membership) -> None:
    """Take a member out of the team (team admins only); the last admin cannot be removed."""
    require_team_admin(user, membership.team)
    with transaction.atomic():
        current = _lock(membership)
        if current.role == Role.ADMIN:
            _keep_an_admin(current, f"{current.user.get_username()} is the last admin of {current.team.name}: "
                                    f"make someone else an admin first.")
        current.delete()


def leave_team(user: Any, team: Team) -> None:
    """*user* leaves *team*; its last admin cannot (the team would be left with nobody to manage it)."""
    membership = Membership.objects.filter(user=user, team=team).first() if user.is_authenticated else None
    if membership is None:
        raise TeamChangeRefused(f"You are not in {team.name}.")
    with transaction.atomic():
        current = _lock(membership)
        if current.role == Role.ADMIN:
            _keep_an_admin(current, f"You are the last admin of {team.name}: make someone else an admin before "
                                    f"you leave.")
        current.delete()


def _check_role(role: str) -> None:
    if role not in Role.values:
        raise TeamChangeRefused(f"“{role}” is not a role; choose viewer, member or admin.")


def _lock(membership: Membership) -> Membership:
    """Lock the team's row, then re-read the membership: the checks below see every concurrent change."""
    Team.objects.select_for_update().filter(pk=membership.team_id).first()
    current = Membership.objects.select_related("user", "team").filter(pk=membership.pk).first()
    if current is None:
        raise TeamChangeRefused("That membership no longer exists.")
    return current


def _keep_an_admin(membership: Membership, message: str) -> None:
    others = Membership.objects.filter(team_id=membership.team_id, role=Role.ADMIN).exclude(pk=membership.pk)
    if not others.exists():
        raise TeamChangeRefused(message)
