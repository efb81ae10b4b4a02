"""LongPPL and RULER on the experiment page: the chart data, the protocol lines, the page and its poll.

Measurements are written directly, shaped as the worker reports them (``gpu_workers.evaluate.ruler`` and
``longppl``); protocols come from :func:`gpu_workers.protocol.build` on the run's own spec.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from experiments import evaluation_charts, selectors
from experiments.evaluation_charts import Row
from experiments.models import BaseModel, Dataset, Experiment, Measurement, Run, Team
from gpu_workers import protocol
from tests.web.factories import login, make_experiment
from tests.web.helpers import LENGTHS, SETTINGS, SUITE, TASK_SCORES, longppl_rows, ruler_rows, run_protocol


def measured_experiment(team: Team, owner: Any, base_model: BaseModel, dataset: Dataset, runs: int = 2,
                        name: str = "Ruler", protocols: bool = True) -> Experiment:
    experiment = make_experiment(team, owner, base_model, dataset, runs=runs, name=name, lengths=LENGTHS)
    experiment.evaluations = dict(SETTINGS)
    experiment.save()
    rows: list[Measurement] = []
    for i, run in enumerate(experiment.runs.order_by("id")):
        rows += ruler_rows(run, scale=1.0 - 0.1 * i) + longppl_rows(run, offset=i)
        if protocols:
            run.protocol = run_protocol(run)
            run.save(update_fields=["protocol"])
    Measurement.objects.bulk_create(rows)
    return experiment


# --- the chart data (pure) ------------------------------------------------------------------------------


def _rows(runs: list[Run]) -> list[Row]:
    return [Row(run.method.name, m.metric, m.context_length, m.depth, m.value, m.ci_low, m.ci_high, m.step, m.samples)
            for run in runs for m in Measurement.objects.filter(run=run).order_by("metric", "context_length", "id")]


def test_build_lays_ruler_out_as_a_task_by_length_table(owner: Any, team: Team, base_model: BaseModel,
                                                        dataset: Dataset) -> None:
    experiment = measured_experiment(team, owner, base_model, dataset)
    runs = list(experiment.runs.select_related("method").order_by("id"))
    names = [run.method.name for run in runs]
    charts = evaluation_charts.build(reversed(_rows(runs)), names, ruler_threshold=0.8)
    assert charts["ruler_threshold"] == 0.8
    assert [r["name"] for r in charts["ruler"]] == names, "in run order, whatever the row order"
    first = charts["ruler"][0]
    assert first["lengths"] == [256, 512, 1024]
    assert [t["task"] for t in first["tasks"]] == ["niah_single_1", "niah_multikey_1", "vt", "cwe"]
    table = {t["task"]: t["scores"] for t in first["tasks"]}
    assert table == {task: list(scores) for task, scores in TASK_SCORES.items()}
    assert table["vt"][2] is None, "a missing cell stays None"
    vt = next(t for t in first["tasks"] if t["task"] == "vt")
    assert vt["group"] == "multi_hop" and vt["samples"] == [4, 4, None]
    assert vt["description"].startswith("variable tracking")
    assert list(first["groups"]) == ["retrieval", "multi_hop", "aggregation"]
    assert first["groups"]["retrieval"] == [1.0, 0.875, 0.5]
    assert first["groups"]["multi_hop"] == [0.5, 0.5, None]
    assert first["average"] == pytest.approx([0.85, 0.6375, 1.1 / 3])
    assert (first["reference"], first["reference_length"], first["effective_length"]) == (0.85, 256, 512)
    assert first["effective_by_group"] == {"retrieval": 1024, "multi_hop": 512, "aggregation": None}
    assert first["reference_by_group"]["aggregation"] == 0.9
    second = charts["ruler"][1]
    assert second["tasks"][0]["scores"] == pytest.approx([0.9, 0.9, 0.675])
    # The series charts: LongPPL, its key-token counts and the RULER average, by length.
    assert charts["series"]["longppl"][names[1]] == [[256, 9.0, 8.5, 9.5], [512, 10.5, 10.0, 11.0],
                                                     [1024, 15.0, 14.5, 15.5]]
    assert charts["series"]["longppl_key_tokens"][names[0]] == [[256, 31.0, None, None], [512, 67.0, None, None],
                                                                [1024, 140.0, None, None]]
    assert [p[0] for p in charts["series"]["ruler_average"][names[0]]] == [256, 512, 1024]


def test_build_without_ruler_measurements_and_unknown_ruler_metrics() -> None:
    rows = [Row("a", "perplexity", 256, None, 5.0, None, None), Row("a", "ruler_mystery", 256, None, 1.0, None, None),
            Row("b", "ruler_reference", 256, None, 0.4, None, None)]
    charts = evaluation_charts.build(rows, ["a", "b"])
    assert charts["ruler_threshold"] == evaluation_charts.DEFAULT_RULER_THRESHOLD == 0.85
    assert [r["name"] for r in charts["ruler"]] == ["b"], "an unknown ruler_* name is no RULER data"
    b = charts["ruler"][0]
    assert b["lengths"] == [] and b["tasks"] == [] and (b["reference"], b["effective_length"]) == (0.4, None)


# --- protocol lines (pure) ------------------------------------------------------------------------------


def test_protocol_lines_share_one_line_split_on_different_keys_and_name_unrecorded_runs(
    owner: Any, team: Team, base_model: BaseModel, dataset: Dataset,
) -> None:
    experiment = measured_experiment(team, owner, base_model, dataset, runs=3, protocols=False)
    runs = list(experiment.runs.select_related("method").order_by("id"))
    names = [run.method.name for run in runs]
    same = run_protocol(runs[0])
    shared = evaluation_charts.protocol_lines([(names[0], same), (names[1], run_protocol(runs[1]))], SUITE)
    assert list(shared) == SUITE
    assert shared["ruler"] == [{"runs": names[:2], "key": same["keys"]["ruler"],
                                "text": protocol.describe(same, "ruler")}]
    ruler_text = shared["ruler"][0]["text"]
    assert "threshold 0.8" in ruler_text and "samples per task and length 4" in ruler_text
    assert "short window 32" in shared["longppl"][0]["text"], "an eighth of the evaluator's 256-token window"

    other = run_protocol(runs[1], dtype="bfloat16")
    split = evaluation_charts.protocol_lines([(names[0], same), (names[1], other), (names[2], {})], SUITE)
    for evaluation in SUITE:
        entries = split[evaluation]
        assert [e["runs"] for e in entries] == [[names[0]], [names[1]], [names[2]]]
        assert entries[0]["key"] != entries[1]["key"] and "dtype bfloat16" in entries[1]["text"]
        assert entries[2] == {"runs": [names[2]], "key": "", "text": "not recorded"}
    # A protocol without the evaluation (recorded by a run that did not do it) is not recorded for it either.
    assert evaluation_charts.protocol_lines([("a", same)], ["passkey"]) == {
        "passkey": [{"runs": ["a"], "key": "", "text": "not recorded"}]}


# --- the page and its poll ------------------------------------------------------------------------------


def test_page_has_the_longppl_and_ruler_sections_and_a_protocol_line_under_each_evaluation(
    owner: Any, team: Team, base_model: BaseModel, dataset: Dataset,
) -> None:
    experiment = measured_experiment(team, owner, base_model, dataset)
    response = login(owner).get(reverse("experiment_detail", args=[experiment.uuid]))
    html = response.content.decode()
    for present in ('id="ppl-chart"', 'id="longppl-chart"', 'data-role="longppl-section"', 'id="ruler-chart"',
                    'data-role="ruler-section"', 'data-role="ruler-summary"', 'data-role="ruler-tables"',
                    "Key-token perplexity (LongPPL)", "Perplexity against length, Key-token perplexity (LongPPL), "
                    "RULER task set (effective length)"):
        assert present in html, present
    # Key tokens as the settings define them: 1.5 nats saved from a 32-token window to the 256-token context.
    assert "more than 1.5 nats from a 32-token window to the 256-token original context" in html
    assert "below 2.5 nats" in html and "0.8 × its reference score" in html
    for evaluation in SUITE:
        assert f'<p class="protocol small muted" data-role="protocol-{evaluation}"></p>' in html
    for absent in ('data-role="protocol-passkey"', 'id="passkey-chart"', 'id="memory-chart"'):
        assert absent not in html
    chart = response.context["chart"]
    assert [r["name"] for r in chart["charts"]["ruler"]] == [run.method.name for run in experiment.runs.order_by("id")]
    assert chart["charts"]["ruler_threshold"] == 0.8
    assert list(chart["protocols"]) == SUITE and len(chart["protocols"]["perplexity"]) == 1
    assert "protocol truncate" in chart["protocols"]["perplexity"][0]["text"]
    assert '"protocols": {"perplexity": [{"runs": [' in html, "the lines travel with the page's chart data"


def test_an_experiment_without_the_new_settings_reads_the_defaults(owner: Any, team: Team, base_model: BaseModel,
                                                                   dataset: Dataset) -> None:
    experiment = measured_experiment(team, owner, base_model, dataset, runs=1, protocols=False)
    experiment.evaluations = {"suite": SUITE}
    experiment.save()
    response = login(owner).get(reverse("experiment_detail", args=[experiment.uuid]))
    html = response.content.decode()
    assert "0.85 × its reference score" in html and "more than 2.0 nats from a 32-token window" in html
    assert response.context["chart"]["protocols"]["ruler"] == [
        {"runs": [experiment.runs.get().method.name], "key": "", "text": "not recorded"}]


def test_status_poll_carries_the_ruler_chart_and_the_protocols_as_runs_report_them(
    owner: Any, team: Team, base_model: BaseModel, dataset: Dataset,
) -> None:
    experiment = measured_experiment(team, owner, base_model, dataset, protocols=False)
    client = login(owner)
    url = reverse("experiment_status", args=[experiment.uuid])
    payload = client.get(url).json()
    assert payload["charts"]["ruler"][0]["effective_by_group"] == {"retrieval": 1024, "multi_hop": 512,
                                                                   "aggregation": None}
    assert payload["charts"]["ruler_threshold"] == 0.8
    assert payload["charts"]["series"]["longppl"] and payload["charts"]["series"]["ruler_average"]
    names = [run.method.name for run in experiment.runs.order_by("id")]
    assert payload["protocols"]["ruler"] == [{"runs": names, "key": "", "text": "not recorded"}]
    first = experiment.runs.order_by("id").first()
    first.protocol = run_protocol(first)
    first.save(update_fields=["protocol"])
    payload = client.get(url).json()
    assert [e["runs"] for e in payload["protocols"]["longppl"]] == [[names[0]], [names[1]]]
    assert payload["protocols"]["longppl"][0]["key"] == first.protocol["keys"]["longppl"]
    assert payload["protocols"]["longppl"][1]["text"] == "not recorded"
    detail = selectors.experiment_detail(experiment)
    assert detail.protocols == payload["protocols"]
    assert detail.charts == selectors.evaluation_chart_data(experiment, list(experiment.runs.select_related("method")))


@pytest.mark.parametrize("runs", [1, 5])
def test_query_counts_stay_fixed_with_ruler_measurements_and_protocols(
    runs: int, owner: Any, team: Team, base_model: BaseModel, dataset: Dataset, django_assert_num_queries: Any,
) -> None:
    made = measured_experiment(team, owner, base_model, dataset, runs=runs)
    experiment = Experiment.objects.select_related("base_model").get(pk=made.pk)
    with django_assert_num_queries(2):
        detail = selectors.experiment_detail(experiment)
    assert len(detail.charts["ruler"]) == runs and len(detail.protocols["ruler"]) == 1
    with django_assert_num_queries(2):
        payload = selectors.run_status_payload(experiment)
    assert len(payload["charts"]["ruler"]) == runs and payload["protocols"]["ruler"][0]["runs"] == [
        run.method.name for run in detail.runs]
