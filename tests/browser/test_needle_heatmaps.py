"""A researcher reads the needle heatmaps: exact or partial match, A − B for two runs, samples on hover.

The measurements are written directly (no worker): this is about what the page shows of them.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from experiments.models import BaseModel, Dataset, Experiment, Measurement, Method, Run, Team
from tests.browser.conftest import log_in_as_demo
from tests.conftest import ARTIFACTS

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

LENGTHS = (256, 512)
DEPTHS = (0.0, 0.5, 1.0)


def _experiment() -> Experiment:
    from django.contrib.auth import get_user_model

    team = Team.objects.get(name="Demo team")
    base = BaseModel.objects.filter(team__isnull=True).first() or BaseModel.objects.create(
        name="Demo", source="/nowhere", original_context=256, head_dim=32, rope_theta=10000.0)
    experiment = Experiment.objects.create(
        team=team, created_by=get_user_model().objects.get(username="demo"), name="Needles", base_model=base,
        dataset=Dataset.objects.get(team__isnull=True), target_length=512, eval_lengths=list(LENGTHS),
        eval_documents=2, training={"mode": "none"},
        evaluations={"suite": ["needle"], "needle_samples": 3, "needle_format": "passkey", "needle_variant": "single"},
    )
    now = timezone.now()
    methods = [Method.objects.get(team__isnull=True, family="none"), Method.objects.get(team__isnull=True,
                                                                                         family="yarn")]
    for method, found in zip(methods, (1.0, 2 / 3), strict=True):
        run = Run.objects.create(experiment=experiment, method=method, status=Run.Status.SUCCEEDED, queued_at=now,
                                 started_at=now, finished_at=now, haystack_source="prose")
        for length in LENGTHS:
            for depth in DEPTHS:
                exact = found if length == 256 else 0.0
                Measurement.objects.create(run=run, metric="needle_exact", value=exact, context_length=length,
                                           depth=depth, samples=3)
                Measurement.objects.create(run=run, metric="needle_partial", value=min(1.0, exact + 0.2),
                                           context_length=length, depth=depth, samples=3)
    return experiment


def test_toggle_exact_and_partial_open_the_difference_and_hover_a_cell(page: Any, live_server: Any) -> None:
    log_in_as_demo(page, live_server)
    experiment = _experiment()
    page.goto(f"{live_server.url}/experiments/{experiment.uuid}/")
    heatmaps = page.locator("#needle-grid .chart")
    expect(heatmaps).to_have_count(2)
    expect(heatmaps.first.locator(".heatmaplayer")).to_have_count(1)
    # Which text filled the haystack, under each heatmap's title.
    expect(page.locator("#needle-heatmap-0 .gtitle")).to_contain_text("haystack: prose documents")

    def z(element: str) -> list[list[float | None]]:
        return page.evaluate(f"() => document.getElementById('{element}').data[0].z")

    assert z("needle-heatmap-1") == [[pytest.approx(2 / 3), 0.0]] * 3, "exact match by default"
    page.check("input[name='needle-metric'][value=partial]")
    assert z("needle-heatmap-1") == [[pytest.approx(2 / 3 + 0.2), pytest.approx(0.2)]] * 3
    page.check("input[name='needle-metric'][value=exact]")
    assert z("needle-heatmap-1")[0][0] == pytest.approx(2 / 3)

    # Hover the top-left cell (256 tokens, depth 0): both scores and the needles behind them.
    box = page.locator("#needle-heatmap-0 .nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] / 6)
    hover = page.locator("#needle-heatmap-0 .hoverlayer .hovertext")
    expect(hover).to_contain_text("samples 3")
    expect(hover).to_contain_text("exact 1.00")
    expect(hover).to_contain_text("partial 1.00")

    # The difference view: hidden until asked for, then A − B for the two chosen runs.
    diff = page.locator("#needle-diff")
    expect(diff).to_be_hidden()
    page.check("#needle-diff-on")
    expect(diff).to_be_visible()
    expect(diff.locator(".heatmaplayer")).to_have_count(1)
    baseline, yarn = page.evaluate("() => Array.from(document.querySelectorAll('#needle-diff-a option'))"
                                   ".map(o => o.value)")
    page.select_option("#needle-diff-a", yarn)
    page.select_option("#needle-diff-b", baseline)
    expect(diff).to_have_attribute("data-a", yarn)
    assert z("needle-diff") == [[pytest.approx(2 / 3 - 1.0), 0.0]] * 3
    expect(diff.locator(".gtitle")).to_contain_text("(exact match)")
    page.check("input[name='needle-metric'][value=partial]")
    expect(diff).to_have_attribute("data-metric", "partial")
    assert z("needle-diff")[0][0] == pytest.approx((2 / 3 + 0.2) - 1.0)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "needle-heatmaps.png"), full_page=True)
    page.uncheck("#needle-diff-on")
    expect(diff).to_be_hidden()
