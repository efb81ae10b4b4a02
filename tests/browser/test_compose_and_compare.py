"""A researcher composes an experiment in a real browser and reads the comparison chart."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from experiments.composer_forms import DEFAULT_SUITE
from experiments.models import Experiment
from gpu_workers.spec import EVALUATIONS
from tests.browser.conftest import log_in_as_demo
from tests.conftest import ARTIFACTS

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_compose_run_and_see_the_chart(page: Any, live_server: Any, celery_worker: Any, demo_assets: Any) -> None:
    log_in_as_demo(page, live_server)
    page.goto(f"{live_server.url}/experiments/new/")

    rows = page.locator("[data-row]")
    expect(rows).to_have_count(4)
    # Each row shows only its own family's parameters.
    pi_row = rows.nth(1)
    expect(pi_row.locator("div.family-params[data-family=pi]")).to_be_visible()
    expect(pi_row.locator("div.family-params[data-family=yarn]")).to_be_hidden()
    pi_row.locator("select").select_option("yarn")
    expect(pi_row.locator("div.family-params[data-family=yarn]")).to_be_visible()
    expect(pi_row.locator("div.family-params[data-family=pi]")).to_be_hidden()
    pi_row.locator("select").select_option("pi")

    page.fill("input[name$=name]", "Browser comparison")
    page.fill("input[name$=target_length]", "1024")
    page.fill("input[name$=eval_lengths]", "256, 1024")
    page.fill("input[name$=eval_documents]", "4")
    # The evaluation suite: everything but RULER (opt-in, the costliest) is ticked by default; fewer passkey
    # prompts and needles.
    suite = page.locator("input[name='eval-suite']")
    expect(suite).to_have_count(len(EVALUATIONS))
    for i in range(len(EVALUATIONS)):
        box = suite.nth(i)
        if box.get_attribute("value") in DEFAULT_SUITE:
            expect(box).to_be_checked()
        else:
            expect(box).not_to_be_checked()
    checked = suite.evaluate_all("boxes => boxes.filter(b => b.checked).map(b => b.value)")
    assert sorted(checked) == sorted(DEFAULT_SUITE)
    page.fill("input[name='eval-passkey_samples']", "10")
    page.fill("input[name='eval-needle_depths']", "0, 0.5, 1")
    page.fill("input[name='eval-needle_samples']", "1")
    submit = page.locator("#composer button[type=submit]")
    # A factor of 1 is not an extension: the form says so next to the field and saves nothing.
    pi_row.locator("div.family-params[data-family=pi] input").first.fill("1")
    submit.click()
    error = page.locator("[data-row]").nth(1).locator(".error")
    expect(error.first).to_contain_text("greater than 1")
    assert Experiment.objects.count() == 0
    expect(page.locator("input[name$=target_length]")).to_have_value("1024")  # what was typed is kept
    expect(page.locator("input[name='eval-passkey_samples']")).to_have_value("10")

    page.locator("[data-row]").nth(1).locator("div.family-params[data-family=pi] input").first.fill("4")
    submit.click()
    page.wait_for_url("**/experiments/*/")
    assert Experiment.objects.count() == 1

    runs = page.locator("#runs tbody tr")
    expect(runs).to_have_count(4)
    badges = page.locator("#runs [data-role=status]")
    for i in range(4):  # the page polls: badges change in place, no reload
        expect(badges.nth(i)).to_have_text("Succeeded", timeout=240_000)
        expect(page.locator("#runs [data-role=bar]").nth(i)).to_have_attribute("style", re.compile(r"width: 100%"))
    chart = page.locator("#ppl-chart")
    expect(chart.locator(".scatterlayer .trace")).to_have_count(4, timeout=30_000)
    traces = page.evaluate("() => document.getElementById('ppl-chart').data.map(t => [t.name, t.x])")
    assert len(traces) == 4 and all(list(x) == [256, 1024] for _, x in traces)
    shapes = page.evaluate("() => (document.getElementById('ppl-chart').layout.shapes || []).map(s => s.x0)")
    assert 256 in shapes, "the original context length is marked on the chart"
    # Every evaluation is drawn for every method.
    expect(page.locator("#passkey-chart .scatterlayer .trace")).to_have_count(4)
    passkey = page.evaluate("() => document.getElementById('passkey-chart').data.map(t => [t.name, t.x, t.y])")
    baseline = next(y for name, _, y in passkey if name == "None (baseline)")
    assert baseline[0] >= 0.9 and baseline[1] <= 0.1, passkey
    expect(page.locator("#needle-grid .chart")).to_have_count(4)
    expect(page.locator("#needle-grid .chart").first.locator(".heatmaplayer")).to_have_count(1)
    grid = page.evaluate("() => document.getElementById('needle-heatmap-0').data[0]")
    assert list(grid["x"]) == ["256", "1024"] and list(grid["y"]) == [0, 0.5, 1]
    expect(page.locator("#needle-ppl-chart .scatterlayer .trace")).to_have_count(4)
    expect(page.locator("#retention-table tbody tr")).to_have_count(4)
    expect(page.locator("#retention-table tbody tr").first.locator("td").nth(4)).to_have_text("1.000")
    expect(page.locator("#time-chart .scatterlayer .trace")).to_have_count(4)
    # Memory: the measured KV cache (markers) and the prediction (dashed) for every method.
    expect(page.locator("#memory-chart .scatterlayer .trace")).to_have_count(8)
    # Beside the measurements, the theory: how much each RoPE dimension every method stretches.
    expect(page.locator("#scaling-compare .scatterlayer .trace")).to_have_count(4)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "experiment-page.png"), full_page=True)

    page.goto(f"{live_server.url}/methods/")
    page.get_by_role("link", name="YaRN ×4").first.click()
    expect(page.locator("#scaling-chart .scatterlayer .trace").first).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "method-page.png"), full_page=True)
