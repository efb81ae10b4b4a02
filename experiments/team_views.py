"""The teams pages: your teams, a team's members, and the POST-only actions that change them.

Reads go through ``team_selectors``, writes through ``team_services``. A team you are not in is 404; a member
or viewer who tries an admin's action gets 403; a refused change (the last admin, an unknown username) goes
back to the page with the reason as a message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from experiments import team_selectors, team_services
from experiments.models import Membership, Team
from experiments.team_forms import AddMemberForm, RoleForm, TeamForm


def _list_page(request: HttpRequest, form: TeamForm, status: int = 200) -> HttpResponse:
    return render(request, "experiments/team_list.html",
                  {"teams": team_selectors.my_teams(request.user), "form": form}, status=status)


@login_required
@require_GET
def team_list(request: HttpRequest) -> HttpResponse:
    return _list_page(request, TeamForm())


@login_required
@require_POST
def team_create(request: HttpRequest) -> HttpResponse:
    form = TeamForm(request.POST)
    if form.is_valid():
        try:
            team = team_services.create_team(request.user, form.cleaned_data["name"])
        except team_services.TeamChangeRefused as exc:
            form.add_error("name", str(exc))
        else:
            messages.success(request, f"Created {team.name}; you are its admin.")
            return redirect("team_detail", team_id=team.pk)
    return _list_page(request, form, status=400)


@login_required
@require_GET
def team_detail(request: HttpRequest, team_id: int) -> HttpResponse:
    page = team_selectors.team_page(request.user, team_id)
    return render(request, "experiments/team_detail.html", {
        "page": page,
        "add_form": AddMemberForm(),
        "roles": Membership.Role.choices,
    })


def _change(request: HttpRequest, team: Team, form: forms.Form, invalid: str,
            change: Callable[[dict[str, Any]], Membership], done: Callable[[Membership], str]) -> HttpResponse:
    """Validate *form*, apply *change* to its data, and say how it went on the team page (refusals included)."""
    if not form.is_valid():
        messages.error(request, invalid)
    else:
        try:
            changed = change(form.cleaned_data)
        except team_services.TeamChangeRefused as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, done(changed))
    return redirect("team_detail", team_id=team.pk)


@login_required
@require_POST
def team_add_member(request: HttpRequest, team_id: int) -> HttpResponse:
    team = team_selectors.my_membership(request.user, team_id).team
    team_services.require_team_admin(request.user, team)
    return _change(request, team, AddMemberForm(request.POST), "Give a username and a role.",
                   lambda data: team_services.add_member(request.user, team, data["username"], data["role"]),
                   lambda added: f"Added {added.user.get_username()} as {added.get_role_display().lower()}.")


@login_required
@require_POST
def team_set_role(request: HttpRequest, team_id: int, membership_id: int) -> HttpResponse:
    team = team_selectors.my_membership(request.user, team_id).team
    team_services.require_team_admin(request.user, team)
    membership = team_selectors.membership_in(team, membership_id)
    return _change(request, team, RoleForm(request.POST), "Choose viewer, member or admin.",
                   lambda data: team_services.set_role(request.user, membership, data["role"]),
                   lambda changed: f"{changed.user.get_username()} is now {changed.get_role_display().lower()}.")


@login_required
@require_POST
def team_remove_member(request: HttpRequest, team_id: int, membership_id: int) -> HttpResponse:
    team = team_selectors.my_membership(request.user, team_id).team
    team_services.require_team_admin(request.user, team)
    membership = team_selectors.membership_in(team, membership_id)
    try:
        team_services.remove_member(request.user, membership)
    except team_services.TeamChangeRefused as exc:
        messages.error(request, str(exc))
        return redirect("team_detail", team_id=team.pk)
    if membership.user_id == request.user.pk:
        messages.success(request, f"You left {team.name}.")
        return redirect("team_list")
    messages.success(request, f"Removed {membership.user.get_username()} from {team.name}.")
    return redirect("team_detail", team_id=team.pk)


@login_required
@require_POST
def team_leave(request: HttpRequest, team_id: int) -> HttpResponse:
    team = team_selectors.my_membership(request.user, team_id).team
    try:
        team_services.leave_team(request.user, team)
    except team_services.TeamChangeRefused as exc:
        messages.error(request, str(exc))
        return redirect("team_detail", team_id=team.pk)
    messages.success(request, f"You left {team.name}.")
    return redirect("team_list")
