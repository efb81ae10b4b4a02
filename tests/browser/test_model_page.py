"""A researcher opens a model page in a real browser and sees the wavelength chart drawn by Plotly.

No worker and no demo seeding: a user, a team and a Phi-like row with partial rotary are enough, so this is
the cheap browser check that the page's script, its embedded data and the locally served Plotly fit together.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from experiments.models import BaseModel, Membership, Team
from tests.web.factories import PASSWORD, make_user
from tests.web.helpers import LLAMA31_FACTS

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_model_page_draws_the_wavelength_chart(page: Any, live_server: Any) -> None:
    user = make_user("modeller")
    Membership.objects.create(user=user, team=Team.objects.create(name="Lab"), role=Membership.Role.MEMBER)
    model = BaseModel(name="Tiny Llama 3.1", source="/models/tiny-llama-3.1")
    model.apply_facts(LLAMA31_FACTS)
    model.save()

    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", "modeller")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.goto(f"{live_server.url}/models/")
    page.locator("[data-role=model-link]", has_text="Tiny Llama 3.1").click()
    page.wait_for_url(f"**/models/{model.pk}/")

    chart = page.locator("#model-wavelengths")
    expect(chart.locator(".main-svg").first).to_be_attached(timeout=30_000)
    expect(chart.locator(".scatterlayer .trace")).to_have_count(2)  # plain RoPE and as shipped (llama3)
    traces = page.evaluate("() => document.getElementById('model-wavelengths').data.map(t => [t.name, t.x.length])")
    assert [n for _, n in traces] == [32, 32], traces
    layout = page.evaluate("() => document.getElementById('model-wavelengths').layout.yaxis.type")
    assert layout == "log"
    expect(page.locator("[data-role=ships-scaling]")).to_contain_text("llama3")
