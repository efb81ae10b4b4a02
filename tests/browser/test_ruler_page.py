"""A researcher reads RULER and LongPPL on the experiment page: the task table, effective lengths, key tokens.

The measurements are written directly (no worker), shaped as the worker reports them: this is about what the
page shows of them.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from experiments.models import BaseModel, Dataset, Experiment, Measurement, Method, Run, Team
from tests.browser.conftest import log_in_as_demo
from tests.conftest import ARTIFACTS
from tests.web.helpers import LENGTHS, SETTINGS, longppl_rows, ruler_rows, run_protocol

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _experiment() -> Experiment:
    from django.contrib.auth import get_user_model

    team = Team.objects.get(name="Demo team")
    base = BaseModel.objects.filter(team__isnull=True).first() or BaseModel.objects.create(
        name="Demo", source="/nowhere", original_context=256, head_dim=32, rope_theta=10000.0)
    experiment = Experiment.objects.create(
        team=team, created_by=get_user_model().objects.get(username="demo"), name="Ruler", base_model=base,
        dataset=Dataset.objects.get(team__isnull=True), target_length=max(LENGTHS), eval_lengths=list(LENGTHS),
        eval_documents=2, training={"mode": "none"}, evaluations=dict(SETTINGS),
    )
    now = timezone.now()
    methods = [Method.objects.get(team__isnull=True, family="none"), Method.objects.get(team__isnull=True,
                                                                                         family="yarn")]
    rows: list[Measurement] = []
    for i, method in enumerate(methods):
        run = Run.objects.create(experiment=experiment, method=method, status=Run.Status.SUCCEEDED, queued_at=now,
                                 started_at=now, finished_at=now)
        run.protocol = run_protocol(run)
        run.save(update_fields=["protocol"])
        rows += ruler_rows(run, scale=1.0 - 0.1 * i, effective=512 if i == 0 else None) + longppl_rows(run, i)
        rows += [Measurement(run=run, metric="perplexity", value=6.0 + i + n / 1000, context_length=n, samples=2)
                 for n in LENGTHS]
    Measurement.objects.bulk_create(rows)
    return experiment


def test_ruler_table_effective_lengths_longppl_chart_and_protocol_lines(page: Any, live_server: Any) -> None:
    log_in_as_demo(page, live_server)
    experiment = _experiment()
    baseline, yarn = [run.method.name for run in experiment.runs.select_related("method").order_by("id")]
    page.goto(f"{live_server.url}/experiments/{experiment.uuid}/")

    # One task × length table per run, cells on the heatmaps' colour scale, blank where nothing was measured.
    tables = page.locator("[data-role='ruler-table']")
    expect(tables).to_have_count(2)
    first = page.locator(f"[data-role='ruler-table'][data-method='{baseline}']")
    expect(first.locator("thead th")).to_have_text(["Task", "256", "512", "1024"])
    expect(first.locator("tr[data-task='niah_multikey_1'] td")).to_have_text(["1.00", "0.75", "0.25"])
    expect(first.locator("tr[data-task='vt'] td")).to_have_text(["0.50", "0.50", ""])
    expect(first.locator("tr[data-group='retrieval'] td")).to_have_text(["1.00", "0.88", "0.50"])
    expect(first.locator("[data-role='ruler-average-row'] td")).to_have_text(["0.85", "0.64", "0.37"])
    expect(first.locator("tr[data-task='vt'] td").first).to_have_attribute("title", "4 samples")
    rows = first.locator("tbody tr")
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.group || r.dataset.task || r.dataset.role)") == [
        "retrieval", "niah_single_1", "niah_multikey_1", "multi_hop", "vt", "aggregation", "cwe",
        "ruler-average-row"], "tasks under their group, the average last"
    green = first.locator("tr[data-task='niah_single_1'] td").first.evaluate("td => td.style.backgroundColor")
    red = first.locator("tr[data-task='cwe'] td").last.evaluate("td => td.style.backgroundColor")
    assert (green, red) == ("rgba(21, 128, 61, 0.45)", "rgba(198, 63, 27, 0.45)"), "1.00 green, 0.10 nearly red"
    second = page.locator(f"[data-role='ruler-table'][data-method='{yarn}']")
    expect(second.locator("tr[data-task='niah_single_1'] td")).to_have_text(["0.90", "0.90", "0.68"])

    # The summary: reference at its length, effective length overall and per group.
    summary = page.locator("[data-role='ruler-summary']")
    expect(summary.locator("thead th")).to_have_text([
        "Method", "Reference (at length)", "Effective length", "Retrieval effective length",
        "Multi-hop tracing effective length", "Aggregation effective length"])
    expect(summary.locator(f"tr[data-method='{baseline}'] td")).to_have_text(
        [baseline, "0.85 (at 256)", "512", "1,024", "512", "< shortest length"])
    expect(summary.locator(f"tr[data-method='{yarn}'] [data-role='ruler-effective']")).to_have_text(
        "< shortest length")

    # The RULER chart: each run's average, its threshold line and (where defined) its effective-length star.
    ruler = page.evaluate("() => document.getElementById('ruler-chart').data.map(t => [t.name, t.x, t.y])")
    names = [t[0] for t in ruler]
    assert names == [baseline, f"{baseline} threshold", f"{baseline} effective length", yarn, f"{yarn} threshold"]
    assert ruler[1][2] == [pytest.approx(0.8 * 0.85)] * 2 and ruler[2][1] == [512]

    # LongPPL: solid key-token perplexity and dashed ordinary perplexity per run, key-token counts on hover.
    longppl = page.evaluate("() => document.getElementById('longppl-chart').data"
                            ".map(t => [t.name, t.y, (t.line || {}).dash || 'solid', t.customdata || null])")
    assert [t[0] for t in longppl] == [f"{baseline} LongPPL", f"{baseline} perplexity", f"{yarn} LongPPL",
                                       f"{yarn} perplexity"]
    assert longppl[0][1] == [8.0, 9.5, 14.0] and longppl[0][2] == "solid" and longppl[1][2] == "dash"
    assert longppl[2][3] == [31, 67, 140]
    hover = page.evaluate("() => document.getElementById('longppl-chart').data[0].hovertemplate")
    assert "key tokens %{customdata}" in hover
    expect(page.locator("#longppl-chart .scatterlayer .trace")).to_have_count(4)

    # A protocol line under each evaluation: both runs share one, with its key.
    line = page.locator("[data-role='protocol-perplexity'] [data-role='protocol-entry']")
    expect(line).to_have_count(1)
    expect(line).to_contain_text("Protocol: ")
    expect(line).to_contain_text("protocol truncate")
    expect(line).to_contain_text("key " + experiment.runs.first().protocol["keys"]["perplexity"])
    expect(page.locator("[data-role='protocol-ruler']")).to_contain_text("threshold 0.8")
    expect(page.locator("[data-role='protocol-longppl']")).to_contain_text("short window")
    expect(page.locator("[data-role='protocol-differ']")).to_have_count(0)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ruler-page.png"), full_page=True)


def test_runs_with_different_protocols_are_said_to_differ(page: Any, live_server: Any) -> None:
    log_in_as_demo(page, live_server)
    experiment = _experiment()
    runs = list(experiment.runs.select_related("method").order_by("id"))
    runs[1].protocol = run_protocol(runs[1], dtype="bfloat16")
    runs[1].save(update_fields=["protocol"])
    page.goto(f"{live_server.url}/experiments/{experiment.uuid}/")
    target = page.locator("[data-role='protocol-perplexity']")
    expect(target.locator("[data-role='protocol-differ']")).to_contain_text("not ranked against each other")
    entries = target.locator("[data-role='protocol-entry']")
    expect(entries).to_have_count(2)
    expect(entries.nth(0).locator("strong")).to_have_text(runs[0].method.name)
    expect(entries.nth(1)).to_contain_text("dtype bfloat16")


def test_the_poll_redraws_protocol_lines_and_the_ruler_table_as_a_run_reports(page: Any, live_server: Any) -> None:
    log_in_as_demo(page, live_server)
    experiment = _experiment()
    runs = list(experiment.runs.select_related("method").order_by("id"))
    Run.objects.filter(pk=runs[1].pk).update(status=Run.Status.RUNNING, protocol={})
    Measurement.objects.filter(run=runs[1], metric="ruler_niah_single_1", context_length=1024).delete()
    page.goto(f"{live_server.url}/experiments/{experiment.uuid}/")
    target = page.locator("[data-role='protocol-ruler']")
    expect(target.locator("[data-role='protocol-entry']").nth(1)).to_have_text(f"{runs[1].method.name}: not recorded")
    cell = page.locator(f"[data-role='ruler-table'][data-method='{runs[1].method.name}'] "
                        "tr[data-task='niah_single_1'] td[data-length='1024']")
    expect(cell).to_have_text("")
    # The worker reports its protocol and the missing cell: the next polls show both.
    Run.objects.filter(pk=runs[1].pk).update(protocol=run_protocol(runs[1]))
    Measurement.objects.create(run=runs[1], metric="ruler_niah_single_1", value=0.5, context_length=1024, samples=4)
    expect(target.locator("[data-role='protocol-entry']")).to_have_count(1, timeout=10_000)
    expect(target).to_contain_text("Protocol: ")
    expect(cell).to_have_text("0.50", timeout=10_000)
