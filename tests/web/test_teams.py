"""The teams pages with the owner (admin), a teammate (member), a viewer and an outsider, through a client that
enforces CSRF: outsiders get 404, members and viewers 403 on an admin's action, and a team keeps an admin."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from experiments.models import Membership, Team
from tests.web.factories import login, make_user
from tests.web.helpers import csrf_client, post

PEOPLE = ("owner", "teammate", "viewer", "outsider")
Role = Membership.Role


def role_of(user: Any, team: Team) -> str | None:
    return Membership.objects.filter(user=user, team=team).values_list("role", flat=True).first()


def membership(user: Any, team: Team) -> Membership:
    return Membership.objects.get(user=user, team=team)


# --- reading ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", PEOPLE)
def test_team_list_shows_only_my_teams(request: pytest.FixtureRequest, team: Team, other_team: Team, who: str) -> None:
    user = request.getfixturevalue(who)
    response = login(user).get(reverse("team_list"))
    assert response.status_code == 200
    names = [t.name for t in response.context["teams"]]
    assert names == (["Elsewhere"] if who == "outsider" else ["Lab"])
    assert response.context["teams"][0].my_role == role_of(user, Team.objects.get(name=names[0]))


@pytest.mark.parametrize(("who", "status"), [("owner", 200), ("teammate", 200), ("viewer", 200), ("outsider", 404)])
def test_team_page_scoped(request: pytest.FixtureRequest, team: Team, owner: Any, teammate: Any, viewer: Any,
                          who: str, status: int) -> None:
    response = login(request.getfixturevalue(who)).get(reverse("team_detail", args=[team.pk]))
    assert response.status_code == status
    if status == 200:
        assert [m.user.username for m in response.context["page"].members] == ["owner", "teammate", "viewer"]
        admin_controls = b'id="add-member"' in response.content
        assert admin_controls == (who == "owner")


def test_anonymous_goes_to_login(client: Client, team: Team) -> None:
    for url in (reverse("team_list"), reverse("team_detail", args=[team.pk])):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    response = client.post(reverse("team_create"), {"name": "Sneaky"})
    assert response.status_code == 302 and not Team.objects.filter(name="Sneaky").exists()


# --- the rules of POST ------------------------------------------------------------------------------------------


def _action_urls(team: Team, target: Membership) -> dict[str, str]:
    return {
        "team_create": reverse("team_create"),
        "team_add_member": reverse("team_add_member", args=[team.pk]),
        "team_set_role": reverse("team_set_role", args=[team.pk, target.pk]),
        "team_remove_member": reverse("team_remove_member", args=[team.pk, target.pk]),
        "team_leave": reverse("team_leave", args=[team.pk]),
    }


@pytest.mark.parametrize("name", ("team_create", "team_add_member", "team_set_role", "team_remove_member",
                                  "team_leave"))
def test_actions_are_post_only_and_need_csrf(team: Team, owner: Any, teammate: Any, name: str) -> None:
    url = _action_urls(team, membership(teammate, team))[name]
    client = login(owner, enforce_csrf=True)
    assert client.get(url).status_code == 405
    assert client.post(url, {"name": "New", "username": "teammate", "role": "viewer"}).status_code == 403
    assert role_of(teammate, team) == Role.MEMBER and role_of(owner, team) == Role.ADMIN
    assert not Team.objects.filter(name="New").exists()


# --- creating ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", PEOPLE)
def test_anyone_signed_in_creates_a_team_and_is_its_admin(request: pytest.FixtureRequest, team: Team, who: str
                                                          ) -> None:
    user = request.getfixturevalue(who)
    client, token = csrf_client(user)
    response = post(client, token, reverse("team_create"), {"name": f"{who}'s team"})
    created = Team.objects.get(name=f"{who}'s team")
    assert response.status_code == 302 and response["Location"] == reverse("team_detail", args=[created.pk])
    assert role_of(user, created) == Role.ADMIN and created.memberships.count() == 1


def test_create_refuses_a_taken_name(owner: Any, team: Team) -> None:
    client, token = csrf_client(owner)
    response = post(client, token, reverse("team_create"), {"name": "lab"})
    assert response.status_code == 400
    assert "already exists" in response.content.decode()
    assert Team.objects.count() == 1


# --- adding, roles, removing: admins only -----------------------------------------------------------------------


@pytest.mark.parametrize(("who", "status"), [("owner", 302), ("teammate", 403), ("viewer", 403), ("outsider", 404)])
def test_add_member(request: pytest.FixtureRequest, team: Team, owner: Any, teammate: Any, viewer: Any, who: str,
                    status: int) -> None:
    newcomer = make_user("newcomer")
    client, token = csrf_client(request.getfixturevalue(who))
    response = post(client, token, reverse("team_add_member", args=[team.pk]),
                    {"username": "newcomer", "role": "viewer"})
    assert response.status_code == status
    assert role_of(newcomer, team) == (Role.VIEWER if status == 302 else None)


def test_add_member_refusals_are_messages(team: Team, owner: Any, teammate: Any) -> None:
    client, token = csrf_client(owner)
    url = reverse("team_add_member", args=[team.pk])
    response = post(client, token, url, {"username": "nobody", "role": "member"})
    assert response.status_code == 302
    page = client.get(reverse("team_detail", args=[team.pk])).content.decode()
    assert "There is no user named “nobody”." in page
    post(client, token, url, {"username": "teammate", "role": "admin"})
    page = client.get(reverse("team_detail", args=[team.pk])).content.decode()
    assert "teammate is already in Lab." in page
    assert role_of(teammate, team) == Role.MEMBER
    post(client, token, url, {"username": "teammate", "role": "overlord"})
    assert Membership.objects.filter(team=team).count() == 2


@pytest.mark.parametrize(("who", "status"), [("owner", 302), ("teammate", 403), ("viewer", 403), ("outsider", 404)])
def test_set_role(request: pytest.FixtureRequest, team: Team, owner: Any, teammate: Any, viewer: Any, who: str,
                  status: int) -> None:
    client, token = csrf_client(request.getfixturevalue(who))
    response = post(client, token, reverse("team_set_role", args=[team.pk, membership(viewer, team).pk]),
                    {"role": "admin"})
    assert response.status_code == status
    assert role_of(viewer, team) == (Role.ADMIN if status == 302 else Role.VIEWER)


@pytest.mark.parametrize(("who", "status"), [("owner", 302), ("teammate", 403), ("viewer", 403), ("outsider", 404)])
def test_remove_member(request: pytest.FixtureRequest, team: Team, owner: Any, teammate: Any, viewer: Any, who: str,
                       status: int) -> None:
    client, token = csrf_client(request.getfixturevalue(who))
    response = post(client, token, reverse("team_remove_member", args=[team.pk, membership(teammate, team).pk]))
    assert response.status_code == status
    assert role_of(teammate, team) == (None if status == 302 else Role.MEMBER)


def test_memberships_of_another_team_are_404(team: Team, other_team: Team, owner: Any, outsider: Any) -> None:
    """An admin of Lab cannot reach Elsewhere's memberships through Lab's URLs."""
    client, token = csrf_client(owner)
    theirs = membership(outsider, other_team)
    assert post(client, token, reverse("team_set_role", args=[team.pk, theirs.pk]), {"role": "viewer"}
                ).status_code == 404
    assert post(client, token, reverse("team_remove_member", args=[team.pk, theirs.pk])).status_code == 404
    assert role_of(outsider, other_team) == Role.ADMIN


# --- leaving and the last admin ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("who", "status"), [("teammate", 302), ("viewer", 302), ("outsider", 404)])
def test_leave(request: pytest.FixtureRequest, team: Team, owner: Any, teammate: Any, viewer: Any, who: str,
               status: int) -> None:
    user = request.getfixturevalue(who)
    client, token = csrf_client(user)
    response = post(client, token, reverse("team_leave", args=[team.pk]))
    assert response.status_code == status
    assert role_of(user, team) is None
    if status == 302:
        assert response["Location"] == reverse("team_list")
        assert client.get(reverse("team_detail", args=[team.pk])).status_code == 404


def test_last_admin_cannot_leave_be_demoted_or_removed(team: Team, owner: Any, teammate: Any) -> None:
    client, token = csrf_client(owner)
    mine = membership(owner, team)
    detail = reverse("team_detail", args=[team.pk])
    response = post(client, token, reverse("team_leave", args=[team.pk]))
    assert response.status_code == 302 and response["Location"] == detail
    refusal = "You are the last admin of Lab: make someone else an admin before you leave."
    assert refusal in client.get(detail).content.decode()
    post(client, token, reverse("team_set_role", args=[team.pk, mine.pk]), {"role": "member"})
    assert "owner is the last admin of Lab" in client.get(detail).content.decode()
    post(client, token, reverse("team_remove_member", args=[team.pk, mine.pk]))
    assert role_of(owner, team) == Role.ADMIN

    # With a second admin, the first may go.
    post(client, token, reverse("team_set_role", args=[team.pk, membership(teammate, team).pk]), {"role": "admin"})
    response = post(client, token, reverse("team_leave", args=[team.pk]))
    assert response["Location"] == reverse("team_list") and role_of(owner, team) is None
    client, token = csrf_client(teammate)
    post(client, token, reverse("team_leave", args=[team.pk]))
    assert role_of(teammate, team) == Role.ADMIN, "now the teammate is the last admin"


def test_team_pages_fixed_queries(team: Team, owner: Any, django_assert_max_num_queries: Any) -> None:
    for i in range(20):
        Membership.objects.create(user=make_user(f"person{i}"), team=team, role=Role.VIEWER)
    client = login(owner)
    with django_assert_max_num_queries(8):
        assert client.get(reverse("team_detail", args=[team.pk])).status_code == 200
    with django_assert_max_num_queries(6):
        assert client.get(reverse("team_list")).status_code == 200


def test_navigation_links_teams(owner: Any) -> None:
    assert f'href="{reverse("team_list")}"' in login(owner).get(reverse("dashboard")).content.decode()
