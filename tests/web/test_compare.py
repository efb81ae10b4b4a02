"""The compare page (issue 15): runs picked on any experiment page, side by side, shareable by URL.

Who sees what (the team's owner, members and viewers see its runs; an outsider sees none and only a count),
labels, the parameter table's difference flags and its server-side "differences only", malformed ids, more
than W&B's ten runs, and a query count that does not grow with the number of runs.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from experiments import compare
from experiments.models import BaseModel, Dataset, Experiment, Measurement, Run, Team
from tests.web.factories import login, make_experiment, method

URL = reverse("run_compare")


def ids(*runs: Run) -> list[str]:
    return [str(run.uuid) for run in runs]


def row_tag(html: str, key: str) -> str:
    """The opening ``<tr …>`` tag of the parameter row *key*."""
    found = re.search(rf'<tr data-key="{re.escape(key)}"[^>]*>', html)
    assert found, f"no row {key}"
    return found.group(0)


@pytest.fixture
def other_experiment(team: Team, owner: Any, base_model: BaseModel, dataset: Dataset) -> Experiment:
    """A second experiment of the same team on the same data, whose one run is YaRN ×4."""
    made = make_experiment(team, owner, base_model, dataset, runs=1, name="Yak question")
    made.runs.update(method=method("yarn", 4.0))
    return made


# --- who sees what ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["owner", "teammate", "viewer"])
def test_team_sees_the_runs(request: pytest.FixtureRequest, experiment: Experiment, who: str) -> None:
    runs = list(experiment.runs.all())
    response = login(request.getfixturevalue(who)).get(URL, {"runs": ids(*runs)})
    assert response.status_code == 200
    comparison = response.context["comparison"]
    assert [c.run for c in comparison.columns] == runs and comparison.not_found == 0
    html = response.content.decode()
    assert "pi ×2.0 · Zebra question" in html and "pi ×3.0 · Zebra question" in html
    assert 'data-role="not-found"' not in html


def test_outsider_sees_no_run_only_a_count(outsider: Any, experiment: Experiment) -> None:
    response = login(outsider).get(URL, {"runs": ",".join(ids(*experiment.runs.all()))})
    assert response.status_code == 200
    assert response.context["comparison"].columns == []
    html = response.content.decode()
    assert "2 runs not found or not visible" in html
    assert "Zebra question" not in html and "pi ×2.0" not in html
    assert 'id="compare-params"' not in html and 'data-role="compare-empty"' in html


def test_invisible_and_unknown_runs_read_the_same(outsider: Any, experiment: Experiment) -> None:
    """An outsider cannot tell another team's run from an id that never existed."""
    client = login(outsider)
    real = client.get(URL, {"runs": ids(experiment.runs.first())}).context["comparison"]
    made_up = client.get(URL, {"runs": [str(uuid.uuid4())]}).context["comparison"]
    assert (real.not_found, real.columns) == (made_up.not_found, made_up.columns) == (1, [])


def test_anonymous_goes_to_login(client: Client, experiment: Experiment) -> None:
    response = client.get(URL, {"runs": ids(experiment.runs.first())})
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_read_only(owner: Any, experiment: Experiment) -> None:
    assert login(owner).post(URL, {"runs": ids(experiment.runs.first())}).status_code == 405


def test_mixed_visibility_counts_only_the_hidden(owner: Any, outsider: Any, experiment: Experiment,
                                                 other_team: Team, base_model: BaseModel, dataset: Dataset) -> None:
    theirs = make_experiment(other_team, outsider, base_model, dataset, runs=1, name="Secret question")
    response = login(owner).get(URL, {"runs": ids(experiment.runs.first(), theirs.runs.first())})
    comparison = response.context["comparison"]
    assert [c.run for c in comparison.columns] == [experiment.runs.first()] and comparison.not_found == 1
    html = response.content.decode()
    assert "1 run not found or not visible" in html and "Secret question" not in html


# --- side by side -----------------------------------------------------------------------------------------------


def test_runs_of_two_experiments_side_by_side(owner: Any, experiment: Experiment,
                                              other_experiment: Experiment) -> None:
    first, yarn = experiment.runs.first(), other_experiment.runs.first()
    response = login(owner).get(URL, {"runs": ",".join(ids(first, yarn))})
    comparison = response.context["comparison"]
    labels = ["pi ×2.0 · Zebra question", "yarn ×4.0 · Yak question"]
    assert [c.label for c in comparison.columns] == labels
    assert list(comparison.chart["charts"]["series"]["perplexity"]) == labels, "both experiments' curves overlaid"
    assert "series" not in comparison.chart, "the perplexity series is sent once, inside charts"
    html = response.content.decode()
    for run, label in zip((first, yarn), labels, strict=True):
        assert label in html
        assert reverse("run_detail", args=[run.uuid]) in html
        assert reverse("experiment_detail", args=[run.experiment.uuid]) in html
        assert f'data-compare-run="{run.uuid}"' in html
    assert 'id="ppl-chart"' in html and 'id="chart-data"' in html and "js/evaluation_charts.js" in html


def test_order_follows_the_link_and_repeats_collapse(owner: Any, experiment: Experiment,
                                                    other_experiment: Experiment) -> None:
    first, yarn = experiment.runs.first(), other_experiment.runs.first()
    query = f"?runs={yarn.uuid}&runs={first.uuid},{yarn.uuid}"
    comparison = login(owner).get(URL + query).context["comparison"]
    assert [c.run for c in comparison.columns] == [yarn, first] and comparison.not_found == 0


def test_every_evaluation_is_overlaid(owner: Any, experiment: Experiment, other_experiment: Experiment) -> None:
    first, yarn = experiment.runs.first(), other_experiment.runs.first()
    for run, value in ((first, 0.5), (yarn, 1.0)):
        Measurement.objects.create(run=run, metric="passkey_accuracy", value=value, context_length=512, samples=4)
    Measurement.objects.create(run=yarn, metric="needle_exact", value=1.0, context_length=512, depth=0.5, samples=2)
    other_experiment.evaluations = {"suite": ["perplexity", "passkey", "needle"]}
    other_experiment.save(update_fields=["evaluations"])
    response = login(owner).get(URL, {"runs": ids(first, yarn)})
    charts = response.context["comparison"].chart["charts"]
    assert list(charts["series"]["passkey"]) == ["pi ×2.0 · Zebra question", "yarn ×4.0 · Yak question"]
    assert [grid["name"] for grid in charts["needle"]] == ["yarn ×4.0 · Yak question"]
    html = response.content.decode()
    assert 'id="passkey-chart"' in html and 'id="needle-grid"' in html and 'id="ruler-chart"' not in html


def test_colliding_labels_get_a_short_uuid(owner: Any, team: Team, base_model: BaseModel, dataset: Dataset) -> None:
    one = make_experiment(team, owner, base_model, dataset, runs=1, name="Same name")
    two = make_experiment(team, owner, base_model, dataset, runs=1, name="Same name")
    runs = [one.runs.first(), two.runs.first()]
    comparison = login(owner).get(URL, {"runs": ids(*runs)}).context["comparison"]
    assert [c.label for c in comparison.columns] == [f"pi ×2.0 · Same name #{str(r.uuid)[:8]}" for r in runs]


# --- the parameter table ----------------------------------------------------------------------------------------


def test_difference_flags(owner: Any, experiment: Experiment, other_experiment: Experiment) -> None:
    other_experiment.training = {"mode": "finetune", "steps": 20}
    other_experiment.evaluations = {"suite": ["perplexity"], "ruler": {"samples": 4}}
    other_experiment.save(update_fields=["training", "evaluations"])
    yarn = other_experiment.runs.first()
    yarn.protocol = {"keys": {"perplexity": "abc123"}}
    yarn.save(update_fields=["protocol"])
    response = login(owner).get(URL, {"runs": ids(experiment.runs.first(), yarn)})
    rows = {row.key: row for row in response.context["comparison"].rows}
    same = ("dataset", "team", "base_model", "target_length", "eval_lengths", "eval_documents", "evaluations.suite",
            "status")
    differ = ("experiment", "method", "method.family", "method.params.factor", "training.mode", "training.steps",
              "evaluations.ruler.samples", "protocol.perplexity")
    assert {key: rows[key].differs for key in same + differ} == {**dict.fromkeys(same, False),
                                                                  **dict.fromkeys(differ, True)}
    assert [cell.text for cell in rows["training.mode"].cells] == ["none", "finetune"]
    assert [cell.text for cell in rows["evaluations.ruler.samples"].cells] == ["—", "4"]
    html = response.content.decode()
    assert 'data-differs="0"' in row_tag(html, "dataset") and "hidden" not in row_tag(html, "dataset")
    assert 'data-differs="1"' in row_tag(html, "method.family")
    assert 'data-role="diff-only"' in html and "checked" not in re.search(r'<input[^>]*data-role="diff-only"[^>]*>',
                                                                          html).group(0)


def test_differences_only_is_kept_in_the_url(owner: Any, experiment: Experiment,
                                             other_experiment: Experiment) -> None:
    response = login(owner).get(URL, {"runs": ",".join(ids(experiment.runs.first(), other_experiment.runs.first())),
                                      "diff": "1"})
    html = response.content.decode()
    assert "hidden" in row_tag(html, "dataset") and "hidden" in row_tag(html, "base_model")
    assert "hidden" not in row_tag(html, "method.family") and "hidden" not in row_tag(html, "experiment")
    assert re.search(r'<input[^>]*data-role="diff-only"[^>]*checked', html)
    assert "diff=1" in response.context["share_url"]


# --- what the link may hold -------------------------------------------------------------------------------------


@pytest.mark.parametrize("junk", ["not-a-uuid", "' or 1=1 --", "1234", "%00", "<script>x</script>"])
def test_malformed_ids_are_counted_not_500(owner: Any, experiment: Experiment, junk: str) -> None:
    run = experiment.runs.first()
    response = login(owner).get(URL, {"runs": [junk, f"{run.uuid},{junk},,"]})
    assert response.status_code == 200
    comparison = response.context["comparison"]
    assert [c.run for c in comparison.columns] == [run] and comparison.not_found == 2
    assert "<script>x</script>" not in response.content.decode()


def test_no_runs_asked(owner: Any) -> None:
    response = login(owner).get(URL)
    assert response.status_code == 200 and 'data-role="compare-empty"' in response.content.decode()
    assert response.context["comparison"].not_found == 0


def test_more_than_ten_runs(owner: Any, team: Team, base_model: BaseModel, dataset: Dataset) -> None:
    big = make_experiment(team, owner, base_model, dataset, runs=12, name="Big")
    runs = list(big.runs.order_by("id"))
    response = login(owner).get(URL, {"runs": ",".join(ids(*runs))})
    comparison = response.context["comparison"]
    assert len(comparison.columns) == 12 and len({c.label for c in comparison.columns}) == 12
    assert len(comparison.chart["charts"]["series"]["perplexity"]) == 12
    assert response.content.decode().count('data-role="run-label"') == 12


def test_safety_cap(owner: Any, team: Team, base_model: BaseModel, dataset: Dataset, settings: Any) -> None:
    settings.CONTEXTLAB_COMPARE_MAX_RUNS = 3
    runs = list(make_experiment(team, owner, base_model, dataset, runs=5, name="Capped").runs.order_by("id"))
    response = login(owner).get(URL, {"runs": ids(*runs)})
    comparison = response.context["comparison"]
    assert [c.run for c in comparison.columns] == runs[:3] and comparison.over_limit == 2
    assert 'data-role="over-limit"' in response.content.decode()


def test_default_cap_is_far_above_ten() -> None:
    assert compare.DEFAULT_MAX_RUNS >= 100


def test_parse_run_ids() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    asked = compare.parse_run_ids([f"{a}, {b}", "", "nope", str(a).upper()])
    assert asked.ids == [a, b] and asked.malformed == 1


# --- a fixed number of queries ----------------------------------------------------------------------------------


def _queries(client: Client, runs: list[Run]) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(URL, {"runs": ",".join(ids(*runs))})
    assert response.status_code == 200 and len(response.context["comparison"].columns) == len(runs)
    return len(captured)


def test_query_count_does_not_grow_with_runs(owner: Any, team: Team, base_model: BaseModel, dataset: Dataset,
                                             django_assert_num_queries: Any) -> None:
    small = list(make_experiment(team, owner, base_model, dataset, runs=2, name="Small").runs.all())
    big = list(make_experiment(team, owner, base_model, dataset, runs=12, name="Big").runs.all())
    for run in big[:3]:
        Measurement.objects.create(run=run, metric="needle_exact", value=1.0, context_length=256, depth=0.5)
        Run.objects.filter(pk=run.pk).update(protocol={"keys": {"perplexity": "k"}})
    client = login(owner)
    client.get(URL)  # warm the session
    assert _queries(client, small) == _queries(client, big + small[:1])
    with django_assert_num_queries(2):
        compare.compare(owner, [",".join(ids(*big))])


# --- picking runs -----------------------------------------------------------------------------------------------


def test_experiment_page_offers_each_run_for_comparison(owner: Any, experiment: Experiment) -> None:
    html = login(owner).get(reverse("experiment_detail", args=[experiment.uuid])).content.decode()
    assert "<th>Compare</th>" in html
    assert f'<form method="get" action="{URL}" id="compare-form" data-role="compare-form">' in html
    assert 'data-role="compare-selected"' in html
    for run in experiment.runs.all():
        assert re.search(rf'<input type="checkbox" name="runs" value="{run.uuid}" form="compare-form" '
                         rf'data-compare-run="{run.uuid}"', html)
    assert "js/compare_basket.js" in html and f'data-compare-url="{URL}"' in html


def test_basket_script_only_for_people_logged_in(client: Client) -> None:
    assert "compare_basket.js" not in client.get(reverse("login")).content.decode()
