"""The composer opens ready to run on the demo: defaults, the model's facts beside the selector, and one click.

No worker: the runs' tasks are not sent (the Celery app's ``send_task`` is mocked); this checks that the page as
it opens is a valid experiment (the README's "press *Run*") and that its script keeps target, name and facts in
step.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from playwright.sync_api import expect

from experiments.management.commands.seed_demo import MODEL_NAME
from experiments.models import BaseModel, Experiment
from tests.browser.conftest import log_in_as_demo

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_composer_defaults_and_one_click_run(page: Any, live_server: Any) -> None:
    log_in_as_demo(page, live_server)
    demo = BaseModel.objects.get(name=MODEL_NAME)
    wider = BaseModel(name="Zeta Llama (512)", source=demo.source)
    wider.apply_facts({**demo.facts, "original_context": 512, "rope_theta": 500000.0})
    wider.save()

    page.goto(f"{live_server.url}/experiments/new/")
    name, target = page.locator("input[name=name]"), page.locator("input[name=target_length]")
    facts = page.locator("#model-facts")
    expect(name).to_have_value("none vs PI vs Dynamic NTK vs YaRN @ 1,024")
    expect(target).to_have_value("1024")
    expect(facts.locator("[data-fact=original_context]")).to_have_text("256")
    expect(facts.locator("[data-fact=rotary_dim]")).to_have_text("32")
    expect(facts.locator("[data-fact=shipped_scaling]")).to_have_text("none (plain RoPE)")
    expect(page.locator("#run-estimate")).to_contain_text("No estimate yet")

    # Another model: target 4× its context, the name follows, its facts show.
    page.select_option("select[name=base_model]", str(wider.pk))
    expect(target).to_have_value("2048")
    expect(name).to_have_value("none vs PI vs Dynamic NTK vs YaRN @ 2,048")
    expect(facts.locator("[data-fact=original_context]")).to_have_text("512")
    expect(facts.locator("[data-fact=rope_theta]")).to_have_text("500000")
    page.select_option("select[name=base_model]", str(demo.pk))
    expect(target).to_have_value("1024")

    with mock.patch("webapp.celery.app.send_task") as sent:
        page.click("#run-button")
        page.wait_for_url("**/experiments/*/", timeout=60_000)
    experiment = Experiment.objects.get()
    assert experiment.name == "none vs PI vs Dynamic NTK vs YaRN @ 1,024" and experiment.base_model == demo
    assert experiment.runs.count() == 4 and sent.call_count == 4
    expect(page.locator("#runs tbody tr")).to_have_count(4)
    page.locator("[data-role=run-link]").first.click()
    page.wait_for_url("**/runs/*/")
    expect(page.locator("#run-spec")).to_contain_text('"target_length": 1024')

    # A target the visitor typed is theirs: changing the model keeps it.
    page.goto(f"{live_server.url}/experiments/new/")
    target.fill("1500")
    page.select_option("select[name=base_model]", str(wider.pk))
    expect(facts.locator("[data-fact=original_context]")).to_have_text("512")
    expect(target).to_have_value("1500")
