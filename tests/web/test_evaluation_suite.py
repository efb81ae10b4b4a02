"""The evaluation suite as a user meets it: composer fields, API settings, the experiment page and its poll."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from experiments import evaluation_charts, selectors, services
from experiments.composer import Composer
from experiments.models import BaseModel, Dataset, Experiment, Measurement
from tests.web.factories import login, make_experiment
from tests.web.helpers import body, composer_post, post_json, token_client


def test_composer_stores_the_suite_with_a_derived_stride(owner: Any, team: Any, base_model: BaseModel,
                                                         dataset: Dataset) -> None:
    data = composer_post(team, base_model, dataset, **{"eval-protocol": "sliding", "eval-passkey_depth": "0.25",
                                                       "eval-needle_depths": "0, 50%, 1"})
    composer = Composer(owner, data)
    assert composer.is_valid(), composer.errors()
    settings = composer.cleaned()["evaluation"]
    assert settings.suite == ("perplexity", "passkey", "needle")
    assert settings.stride == 128, "half the original context of 256"
    assert settings.passkey_depth == 0.25 and settings.needle_depths == (0.0, 0.5, 1.0)
    experiment = services.submit_experiment(owner, composer.cleaned())
    spec = experiment.eval_spec()
    assert (spec.protocol, spec.stride, spec.suite) == ("sliding", 128, ("perplexity", "passkey", "needle"))


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"eval-suite": []}, "suite", "Pick at least one evaluation."),
        ({"eval-needle_depths": "0, deep"}, "needle_depths", "“deep” is not a depth"),
        ({"eval-needle_depths": "0, 1.5"}, "needle_depths", "between 0 and 1"),
        ({"eval-protocol": "sliding", "eval-stride": 300}, "stride", "shortest length (256 tokens)"),
        ({"eval-needle_variant": "multikey"}, "needle_format", "use the magic-number format"),
        ({"eval-passkey_samples": 0}, "passkey_samples", "greater than or equal to 1"),
    ],
)
def test_bad_suite_settings_are_reported_on_their_field_and_nothing_is_saved(
    owner: Any, team: Any, base_model: BaseModel, dataset: Dataset, fields: dict[str, Any], field: str, message: str,
) -> None:
    client = login(owner)
    response = client.post(reverse("experiment_new"), composer_post(team, base_model, dataset, **fields))
    assert response.status_code == 200
    errors = response.context["composer"].evaluation.errors
    assert any(message in e for e in errors[field]), errors
    assert f'data-field="{field}"' in response.content.decode()
    assert Experiment.objects.count() == 0


def test_prompt_evaluations_refuse_lengths_too_short_for_a_prompt(owner: Any, team: Any, base_model: BaseModel,
                                                                  dataset: Dataset) -> None:
    composer = Composer(owner, composer_post(team, base_model, dataset, eval_lengths="64, 1024"))
    assert not composer.is_valid()
    assert composer.form.errors["eval_lengths"] == ["Passkey and needle prompts need lengths of at least 128 tokens."]
    only_ppl = composer_post(team, base_model, dataset, eval_lengths="64, 1024", **{"eval-suite": ["perplexity"]})
    assert Composer(owner, only_ppl).is_valid()


def test_the_composer_page_offers_every_evaluation(owner: Any) -> None:
    html = login(owner).get(reverse("experiment_new")).content.decode()
    for name in ("perplexity", "passkey", "needle", "needle_perplexity", "retention", "memory"):
        assert f'name="eval-suite" value="{name}"' in html
    assert 'id="id_eval-protocol"' in html and 'value="0, 0.25, 0.5, 0.75, 1"' in html


def test_api_accepts_a_suite_list_or_settings_and_names_bad_ones(owner: Any, team: Any, base_model: BaseModel,
                                                                 dataset: Dataset) -> None:
    client = token_client(owner)
    url = reverse("api_experiments")
    made = post_json(client, url, body(team, base_model, dataset, evaluations=["passkey", "memory"]))
    assert made.status_code == 201, made.content
    assert made.json()["evaluations"]["suite"] == ["passkey", "memory"]
    settings = {"suite": ["perplexity"], "protocol": "sliding", "stride": 64}
    made = post_json(client, url, body(team, base_model, dataset, evaluations=settings))
    assert made.json()["evaluations"]["protocol"] == "sliding" and made.json()["evaluations"]["stride"] == 64
    default = post_json(client, url, body(team, base_model, dataset))
    assert default.json()["evaluations"]["suite"] == ["perplexity"]
    bad = post_json(client, url, body(team, base_model, dataset, evaluations={"suite": ["needle"], "depth": 2,
                                                                              "needle_depths": [0, 2]}))
    errors = bad.json()["errors"]
    assert bad.status_code == 400
    assert "Unknown evaluation settings: depth." in errors["evaluations"]
    assert any("between 0 and 1" in m for m in errors["evaluations.needle_depths"])
    assert Experiment.objects.count() == 3


def _measure(experiment: Experiment) -> None:
    for i, run in enumerate(experiment.runs.order_by("id")):
        rows = [
            Measurement(run=run, metric="passkey_accuracy", value=1.0 - i * 0.5, context_length=256, samples=20,
                        ci_low=0.8, ci_high=1.0),
            Measurement(run=run, metric="passkey_accuracy", value=0.0, context_length=512, samples=20, ci_low=0.0,
                        ci_high=0.16),
            Measurement(run=run, metric="needle_exact", value=1.0, context_length=256, depth=0.0, samples=2),
            Measurement(run=run, metric="needle_exact", value=0.5, context_length=512, depth=1.0, samples=2),
            Measurement(run=run, metric="needle_partial", value=0.7, context_length=512, depth=1.0, samples=2),
            Measurement(run=run, metric="needle_perplexity", value=3.0, context_length=512, depth=0.5, samples=2),
            Measurement(run=run, metric="needle_perplexity", value=4.0, context_length=512, samples=6),
            Measurement(run=run, metric="retention_perplexity", value=0.95, context_length=256, samples=2),
            Measurement(run=run, metric="kv_cache_mb", value=1.0, context_length=256),
        ]
        Measurement.objects.bulk_create(rows)


def test_chart_data_groups_every_evaluation(owner: Any, team: Any, base_model: BaseModel, dataset: Dataset) -> None:
    experiment = make_experiment(team, owner, base_model, dataset, runs=2)
    _measure(experiment)
    charts = selectors.experiment_detail(experiment).charts
    assert charts == selectors.evaluation_chart_data(experiment, list(experiment.runs.select_related("method")))
    names = [run.method.name for run in experiment.runs.order_by("id")]
    assert charts["series"]["passkey"][names[1]] == [[256, 0.5, 0.8, 1.0], [512, 0.0, 0.0, 0.16]]
    assert charts["series"]["needle_perplexity"][names[0]] == [[512, 4.0, None, None]], "per-depth rows stay out"
    grid = charts["needle"][0]
    assert grid["name"] == names[0] and grid["lengths"] == [256, 512] and grid["depths"] == [0.0, 1.0]
    assert grid["exact"] == [[1.0, None], [None, 0.5]] and grid["partial"] == [[None, None], [None, 0.7]]
    assert charts["retention"][1] == {"name": names[1], "retention_perplexity": 0.95, "length": 256}


def test_experiment_page_draws_the_chosen_evaluations(owner: Any, team: Any, base_model: BaseModel,
                                                      dataset: Dataset) -> None:
    experiment = make_experiment(team, owner, base_model, dataset, runs=2)
    experiment.evaluations = {"suite": ["passkey", "needle", "retention"], "passkey_samples": 20,
                              "needle_samples": 2, "needle_format": "passkey", "needle_variant": "single"}
    experiment.save()
    _measure(experiment)
    client = login(owner)
    html = client.get(reverse("experiment_detail", args=[experiment.uuid])).content.decode()
    for present in ('id="passkey-chart"', 'id="needle-grid"', 'id="retention-table"', "Wilson 95% interval",
                    "Passkey retrieval, Needle-in-a-haystack grid, Short-context retention"):
        assert present in html
    for absent in ('id="ppl-chart"', 'id="needle-ppl-chart"', 'id="memory-chart"'):
        assert absent not in html
    payload = client.get(reverse("experiment_status", args=[experiment.uuid])).json()
    assert payload["charts"]["series"]["passkey"] and payload["charts"]["needle"]


def test_leaderboard_ranks_by_passkey_accuracy_highest_first(owner: Any, team: Any, base_model: BaseModel,
                                                             dataset: Dataset) -> None:
    experiment = make_experiment(team, owner, base_model, dataset, runs=2)
    _measure(experiment)
    response = login(owner).get(reverse("leaderboard"), {"metric": "passkey_accuracy", "context_length": 256})
    rows = response.context["query"].rows
    assert [row.best for row in rows] == [1.0, 0.5]
    assert "best (highest) passkey accuracy" in response.content.decode()
    needle = login(owner).get(reverse("leaderboard"), {"metric": "needle_perplexity", "context_length": 512})
    assert [row.runs for row in needle.context["query"].rows] == [1, 1], "only the over-all-depths rows count"


def test_chart_builder_orders_methods_as_the_runs() -> None:
    rows = [evaluation_charts.Row("b", "needle_exact", 256, 0.0, 1.0, None, None),
            evaluation_charts.Row("a", "needle_exact", 256, 0.0, 0.0, None, None)]
    assert [g["name"] for g in evaluation_charts.build(rows, ["b", "a"])["needle"]] == ["b", "a"]
