"""Issue 15's acceptance journey in Chromium, on a real worker: compose → rerun with a change → compare the two
experiments' runs → pivot leaderboard → its CSV equals the table → archive."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from experiments.models import Experiment, Run
from tests.browser.conftest import log_in_as_demo

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _perplexity_only(page: Any) -> None:
    """A quick suite: perplexity at two lengths on two documents (the journey is about the pages, not the runs)."""
    for box in page.locator("input[name='eval-suite']").all():
        if box.get_attribute("value") == "perplexity":
            box.check()
        else:
            box.uncheck()
    page.fill("input[name$=eval_lengths]", "256, 512")
    page.fill("input[name$=eval_documents]", "2")


def _wait_for_runs(experiment: Experiment, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = set(experiment.runs.values_list("status", flat=True))
        if statuses and statuses <= {Run.Status.SUCCEEDED, Run.Status.FAILED, Run.Status.CANCELLED}:
            assert statuses == {Run.Status.SUCCEEDED}, list(experiment.runs.values("method__name", "status",
                                                                                    "error"))
            return
        time.sleep(1)
    raise AssertionError(f"runs still {sorted(experiment.runs.values_list('status', flat=True))}")


def _pivot_cells(page: Any) -> list[list[str]]:
    """The pivot table as a person reads it (header first), without the links column."""
    rows = page.evaluate("""() => Array.from(document.querySelectorAll('#pivot-table tr')).map(tr =>
        Array.from(tr.querySelectorAll('th, td')).map(c => c.textContent.trim().replace(/\\s+/g, ' ')))""")
    width = len(rows[0]) - 1  # the last header is the links column
    return [row[:width] for row in rows]


def test_compose_rerun_compare_pivot_csv_archive(page: Any, live_server: Any, celery_worker: Any,
                                                 demo_assets: Any) -> None:
    log_in_as_demo(page, live_server)
    base = live_server.url

    # 1. Compose: the defaults (none / PI / dynamic NTK / YaRN at 4× the context), a quick suite.
    page.goto(f"{base}/experiments/new/")
    _perplexity_only(page)
    page.click("#run-button")
    page.wait_for_url("**/experiments/*/")
    first = Experiment.objects.get()
    _wait_for_runs(first)

    # 2. Run again with one change: PI's factor 4 → 3. The composer opens filled in from the first experiment.
    page.goto(f"{base}/experiments/{first.uuid}/")
    page.click("[data-role=rerun]")
    page.wait_for_url("**/experiments/new/?from=*")
    expect(page.locator("input[name=name]")).to_have_value(f"{first.name} (rerun)")
    expect(page.locator("input[name$=eval_lengths]")).to_have_value("256, 512")
    rows = page.locator("[data-row]")
    expect(rows).to_have_count(first.runs.count())
    pi_factor = rows.nth(1).locator("div.family-params[data-family=pi] input").first
    pi_factor.fill("3")
    page.fill("input[name=name]", "PI at 3 instead of 4")
    page.click("#run-button")
    page.wait_for_url("**/experiments/*/")
    second = Experiment.objects.exclude(pk=first.pk).get()
    assert second.name == "PI at 3 instead of 4"
    assert first.runs.count() == 4, "the first experiment is untouched"
    _wait_for_runs(second)

    # 3. Compare PI runs across the two experiments: tick one on each page, the basket keeps both.
    pi_runs = {e.pk: e.runs.get(method__family="pi") for e in (first, second)}
    page.goto(f"{base}/experiments/{first.uuid}/")
    page.check(f"[data-compare-run='{pi_runs[first.pk].uuid}']")
    page.goto(f"{base}/experiments/{second.uuid}/")
    page.check(f"[data-compare-run='{pi_runs[second.pk].uuid}']")
    expect(page.locator("[data-role=compare-bar]")).to_contain_text("2")
    page.click("[data-role=compare-link]")
    page.wait_for_url("**/compare/?*")
    table = page.locator("#compare-params")
    expect(table.locator("thead th")).to_have_count(3)  # the row label + one column per run
    factor_row = table.locator("tr[data-key='method.params.factor']")
    expect(factor_row).to_have_attribute("data-differs", "1")
    expect(table.locator("tr[data-key=dataset]")).to_have_attribute("data-differs", "0")
    page.check("[data-role=diff-only]")
    expect(table.locator("tr[data-key=dataset]")).to_be_hidden()
    expect(factor_row).to_be_visible()
    expect(page.locator("#ppl-chart .scatterlayer .trace")).to_have_count(2, timeout=30_000)
    shared_url = page.url
    assert shared_url.count("runs=") >= 1 and str(pi_runs[first.pk].uuid) in shared_url

    # 4. The pivot leaderboard: configurations × lengths; none / dynamic NTK / YaRN ran twice, PI once per factor.
    page.goto(f"{base}/leaderboard/pivot/")
    shown = _pivot_cells(page)
    assert shown[0] == ["method", "family", "parameters", "runs", "256", "512"]
    by_family: dict[str, list[str]] = {}
    for row in shown[1:]:
        by_family.setdefault(row[1], []).append(row[3])
    assert by_family["pi"] == ["1", "1"] and by_family["none"] == ["2"], shown
    expect(page.locator("#pivot-chart .scatterlayer .trace")).to_have_count(len(shown) - 1)
    # The best (lowest) perplexity per length is bold; ties share it (inside the original context dynamic NTK is
    # the baseline exactly).
    best = page.evaluate("""() => Array.from(document.querySelectorAll('#pivot-table tbody tr')).flatMap(tr =>
        Array.from(tr.querySelectorAll('td')).map((td, i) => [i, td.classList.contains('best'), td.textContent.trim()]))
        .filter(c => c[0] >= 4 && c[2] !== '' && !c[2].startsWith('compare'))""")
    for column in (4, 5):
        cells = [(flag, float(text.split()[0])) for i, flag, text in best if i == column]
        lowest = min(value for _, value in cells)
        assert [value for flag, value in cells if flag] and all((value == lowest) == flag for flag, value in cells)

    # 5. Its CSV is exactly that table.
    with page.expect_download() as download:
        page.click("[data-role=pivot-csv]")
    downloaded = list(csv.reader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
    assert downloaded == shown

    # 6. Archive the first experiment: gone from the list and the leaderboard, still at its address.
    page.goto(f"{base}/experiments/{first.uuid}/")
    page.click("[data-role=archive]")
    expect(page.locator("[data-role=archived-badge]")).to_be_visible()
    page.goto(f"{base}/")
    expect(page.get_by_role("link", name=second.name)).to_be_visible()
    expect(page.get_by_role("link", name=first.name, exact=True)).to_have_count(0)
    page.goto(f"{base}/leaderboard/pivot/")
    after = _pivot_cells(page)
    assert {row[1]: row[3] for row in after[1:]}["none"] == "1", after
    assert [row[0] for row in after[1:] if row[1] == "pi"] == [pi_runs[second.pk].method.name]
