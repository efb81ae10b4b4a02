"""The reader of the teams pages: the user's teams with their role, and one team's members. Fixed queries.

A team the user is not in does not exist for them (404), as with experiments (``experiments.access``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.http import Http404

from experiments.models import Membership, Team

ROLE_ORDER = {Membership.Role.ADMIN: 0, Membership.Role.MEMBER: 1, Membership.Role.VIEWER: 2}


def my_teams(user: Any) -> QuerySet[Team]:
    """The user's teams with ``my_role``, ``n_members`` and ``n_admins``: one query."""
    mine = Membership.objects.filter(team=OuterRef("pk"), user=user).values("role")[:1]
    return (
        Team.objects.filter(memberships__user=user)
        .annotate(my_role=Subquery(mine),
                  n_members=Count("memberships", distinct=True),
                  n_admins=Count("memberships", filter=Q(memberships__role=Membership.Role.ADMIN), distinct=True))
        .order_by("name")
    )


@dataclass
class TeamPage:
    team: Team
    me: Membership
    members: list[Membership]

    @property
    def is_admin(self) -> bool:
        return self.me.role == Membership.Role.ADMIN

    @property
    def admins(self) -> int:
        return sum(1 for m in self.members if m.role == Membership.Role.ADMIN)


def my_membership(user: Any, team_id: int) -> Membership:
    """The user's membership of team *team_id*, with its team; 404 when they are not in it: one query."""
    membership = (
        Membership.objects.select_related("team").filter(user=user, team_id=team_id).first()
        if user.is_authenticated else None
    )
    if membership is None:
        raise Http404("No such team.")
    return membership


def team_page(user: Any, team_id: int) -> TeamPage:
    """The team and its members, admins first: two queries."""
    me = my_membership(user, team_id)
    members = sorted(
        Membership.objects.select_related("user").filter(team_id=team_id),
        key=lambda m: (ROLE_ORDER.get(m.role, 9), m.user.get_username().lower()),
    )
    return TeamPage(me.team, me, members)


def membership_in(team: Team, membership_id: int) -> Membership:
    """A membership of *team* (404 for one of another team, so ids cannot be probed across teams)."""
    membership = Membership.objects.select_related("user", "team").filter(team=team, pk=membership_id).first()
    if membership is None:
        raise Http404("No such member.")
    return membership
