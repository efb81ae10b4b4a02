"""A team's admin manages the team in a real browser: add a member, change their role, try to leave as last admin."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from experiments.models import Membership, Team
from tests.web.factories import PASSWORD, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_admin_adds_a_member_sets_a_role_and_cannot_leave_last(page: Any, live_server: Any) -> None:
    boss = make_user("boss")
    colleague = make_user("colleague")
    team = Team.objects.create(name="Long context")
    Membership.objects.create(user=boss, team=team, role=Membership.Role.ADMIN)

    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", "boss")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.get_by_role("link", name="Teams").click()
    page.locator("[data-role=team-link]", has_text="Long context").click()

    page.fill("#add-member input[name=username]", "colleague")
    page.select_option("#add-member select[name=role]", "member")
    page.click("#add-member button[type=submit]")
    row = page.locator("tr[data-member=colleague]")
    expect(row).to_be_visible()
    expect(page.locator(".message.success")).to_have_text("Added colleague as member.")

    row.locator("select[name=role]").select_option("viewer")
    row.locator("[data-role=set-role] button").click()
    expect(page.locator(".message.success")).to_have_text("colleague is now viewer.")
    assert Membership.objects.get(user=colleague, team=team).role == Membership.Role.VIEWER

    page.click("#leave-team button")
    expect(page.locator(".message.error")).to_contain_text("You are the last admin of Long context")
    expect(page.locator("tr[data-member=boss]")).to_be_visible()
    assert Membership.objects.filter(user=boss, team=team, role=Membership.Role.ADMIN).exists()
