"""A researcher fine-tunes PI, YaRN and the baseline at 4× from the browser and reads the recovery."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from experiments.models import Experiment, Measurement
from tests.browser.conftest import log_in_as_demo
from tests.conftest import ARTIFACTS

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

STEPS = "100"
"""The PI preset's own length: 100 steps of 4 × 1024 tokens."""


def test_fine_tune_at_four_times_and_see_pi_recover(page: Any, live_server: Any, celery_worker: Any,
                                                     demo_assets: Any) -> None:
    log_in_as_demo(page, live_server)
    page.goto(f"{live_server.url}/experiments/new/")

    rows = page.locator("[data-row]")
    rows.nth(2).locator("select").first.select_option("")  # drop dynamic NTK: baseline, PI, YaRN remain
    page.fill("input[name$=name]", "Fine-tuned at 4x")
    page.fill("input[name$=target_length]", "1024")
    page.fill("input[name$=eval_lengths]", "256, 1024")
    page.fill("input[name$=eval_documents]", "8")
    for name in ("passkey", "needle", "needle_perplexity", "memory"):
        page.locator(f"input[name='eval-suite'][value={name}]").uncheck()

    # The recipe fills the training fields with the paper's settings, scaled down; then shorten it.
    expect(page.locator("#id_train-mode")).to_have_value("none")
    page.select_option("#id_train-preset", "pi")
    expect(page.locator("#id_train-mode")).to_have_value("finetune")
    expect(page.locator("#id_train-steps")).to_have_value(STEPS)
    expect(page.locator("#id_train-batch_size")).to_have_value("4")
    expect(page.locator("[data-role='preset-paper']")).to_contain_text("Chen et al. 2023")
    page.locator("#composer button[type=submit]").click()
    page.wait_for_url("**/experiments/*/")
    experiment = Experiment.objects.get()
    assert experiment.training["mode"] == "finetune" and experiment.training["steps"] == int(STEPS)

    badges = page.locator("#runs [data-role=status]")
    expect(badges).to_have_count(3)
    for i in range(3):
        expect(badges.nth(i)).to_have_text("Succeeded", timeout=600_000)
    expect(page.locator("#train-loss-chart .scatterlayer .trace")).to_have_count(3, timeout=30_000)
    loss = page.evaluate("() => document.getElementById('train-loss-chart').data.map(t => t.x.length)")
    assert loss == [int(STEPS)] * 3
    expect(page.locator("#retention-table tbody tr")).to_have_count(3)
    for unticked in ("#passkey-chart", "#needle-grid", "#needle-ppl-chart", "#memory-chart"):
        expect(page.locator(unticked)).to_have_count(0)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "training-page.png"), full_page=True)

    def value(family: str, metric: str, length: int) -> float:
        return Measurement.objects.get(run__experiment=experiment, run__method__family=family, metric=metric,
                                       context_length=length, depth__isnull=True).value

    base_in_window = value("none", "short_perplexity_base", 256)
    pi_at_4x = value("pi", "perplexity", 1024)
    # Measured on these 8 documents (docs/training.md): PI ×4 without fine-tuning 60.6 at 1024, the base model
    # in its window 34.1; this recipe brought PI to 45.0. Loose: within 1.6× of the base model's in-window
    # number, for PI and for YaRN.
    assert pi_at_4x < 1.6 * base_in_window, (pi_at_4x, base_in_window)
    assert value("yarn", "perplexity", 1024) < 1.6 * base_in_window
