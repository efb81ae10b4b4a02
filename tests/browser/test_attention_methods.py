"""Issue 12's new families picked in the browser: Self-Extend, Leaky ReRoPE, Dynamic YaRN and YaRN + log-n."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from experiments.models import Experiment
from tests.browser.conftest import log_in_as_demo

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_the_new_families_are_composed_run_and_drawn(page: Any, live_server: Any, celery_worker: Any,
                                                     demo_assets: Any) -> None:
    log_in_as_demo(page, live_server)
    page.goto(f"{live_server.url}/experiments/new/")
    rows = page.locator("[data-row]")
    expect(rows).to_have_count(4)
    for i, family in enumerate(("self_extend", "leaky_rerope", "dynamic_yarn", "yarn")):
        rows.nth(i).locator("select").select_option(family)
        expect(rows.nth(i).locator(f"div.family-params[data-family={family}]")).to_be_visible()
    # Self-Extend's derived defaults are blank inputs; a window at the original context is refused on the field.
    self_extend = rows.nth(0).locator("div.family-params[data-family=self_extend]")
    self_extend.locator('input[name$="-self_extend__window"]').fill("256")
    rows.nth(3).locator('input[type=checkbox][name$="-yarn__log_n"]').check()
    page.fill("input[name$=name]", "Attention-level methods")
    page.fill("input[name$=target_length]", "1024")
    page.fill("input[name$=eval_lengths]", "256, 1024")
    page.fill("input[name$=eval_documents]", "2")
    suite = page.locator("input[name='eval-suite']")
    for i in range(suite.count()):
        if suite.nth(i).get_attribute("value") != "perplexity":
            suite.nth(i).uncheck()
    submit = page.locator("#composer button[type=submit]")
    submit.click()
    expect(page.locator("[data-row]").nth(0).locator(".error").first).to_contain_text(
        "shorter than the original context")
    assert Experiment.objects.count() == 0
    expect(page.locator("[data-row]").nth(3).locator('input[type=checkbox][name$="-yarn__log_n"]')).to_be_checked()

    page.locator("[data-row]").nth(0).locator('input[name$="-self_extend__window"]').fill("")
    submit.click()
    page.wait_for_url("**/experiments/*/")
    experiment = Experiment.objects.get()
    names = [run.method.name for run in experiment.runs.select_related("method").order_by("id")]
    assert names[3].endswith("+ log-n"), names
    badges = page.locator("#runs [data-role=status]")
    expect(badges).to_have_count(4)
    for i in range(4):
        expect(badges.nth(i)).to_have_text("Succeeded", timeout=240_000)
    expect(page.locator("#ppl-chart .scatterlayer .trace")).to_have_count(4, timeout=30_000)
    expect(page.locator("[data-role=attention-note]")).to_have_count(3)  # Self-Extend, Leaky ReRoPE, log-n
