"""A factor search as the web side sees it: composer rows, the saved method, the search charts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse

from experiments import selectors, worker
from experiments.models import Artifact, BaseModel, Dataset, Experiment, Measurement, Method, Run
from tests.web.factories import login, make_experiment, method
from tests.web.helpers import composer_post


def _search_run(team: Any, owner: Any, base_model: BaseModel, dataset: Dataset) -> Run:
    experiment = make_experiment(team, owner, base_model, dataset, runs=1)
    run = experiment.runs.get()
    run.method = method("longrope_search", 4.0, team=team, name="LongRoPE search ×4")
    run.save()
    for g, (best, median) in enumerate([(50.0, 60.0), (45.0, 52.0)]):
        Measurement.objects.create(run=run, metric="search_best", value=best, context_length=1024, step=g)
        Measurement.objects.create(run=run, metric="search_median", value=median, context_length=1024, step=g)
        for pair in range(8):
            Measurement.objects.create(run=run, metric="search_factor", value=1.0 + pair * (g + 1) / 4, depth=pair,
                                       step=g)
    Measurement.objects.create(run=run, metric="search_critical_dim", value=3)
    return run


def test_a_finished_search_is_saved_as_a_longrope_method_of_the_team(team: Any, owner: Any, base_model: BaseModel,
                                                                     dataset: Dataset, tmp_path: Path) -> None:
    run = _search_run(team, owner, base_model, dataset)
    factors = [1.0 + i / 5 for i in range(16)]
    summary = tmp_path / "search_result.json"
    summary.write_text(json.dumps({"method_params": {"factor": 4.0, "long_factor": factors, "attention_factor": 1.1}}))
    Artifact.objects.create(run=run, kind="search_result", path=str(summary))
    saved = worker.save_searched_method(run)
    assert saved is not None and saved.family == "longrope" and saved.team == team
    assert saved.params["long_factor"] == factors and "searched in “Exp”" in saved.name
    run.refresh_from_db()
    assert run.produced_method == saved
    assert worker.save_searched_method(run) == saved, "saving twice finds the same method"
    assert Method.objects.filter(family="longrope").count() == 1
    page = login(owner).get(reverse("experiment_detail", args=[run.experiment.uuid])).content.decode()
    assert reverse("method_detail", args=[saved.pk]) in page and "Saved as a LongRoPE method" in page


def test_a_search_without_a_result_file_saves_nothing(team: Any, owner: Any, base_model: BaseModel,
                                                      dataset: Dataset, tmp_path: Path) -> None:
    run = _search_run(team, owner, base_model, dataset)
    assert worker.save_searched_method(run) is None
    Artifact.objects.create(run=run, kind="search_result", path=str(tmp_path / "gone.json"))
    assert worker.save_searched_method(run) is None


def test_search_progress_is_charted(team: Any, owner: Any, base_model: BaseModel, dataset: Dataset) -> None:
    run = _search_run(team, owner, base_model, dataset)
    charts = selectors.experiment_detail(run.experiment).charts
    (found,) = charts["search"]
    assert found["generations"] == [0, 1] and found["best"] == [50.0, 45.0] and found["median"] == [60.0, 52.0]
    assert found["factors_generation"] == 1 and found["factors"][:3] == [1.0, 1.5, 2.0]
    assert found["critical_dim"] == 3
    page = login(owner).get(reverse("experiment_detail", args=[run.experiment.uuid])).content.decode()
    assert 'id="search-fitness-chart"' in page and 'id="search-factors-chart"' in page


def test_the_composer_offers_both_searches_with_their_settings(owner: Any) -> None:
    html = login(owner).get(reverse("experiment_new")).content.decode()
    for name in ("longrope_search__population", "longrope_search__generations", "longrope_search__crossover_rate",
                 "longrope2_search__search_attention", "longrope2_search__search_documents"):
        assert f'name="methods-0-{name}"' in html, name


@pytest.mark.parametrize("family", ["longrope_search", "longrope2_search"])
@pytest.mark.parametrize("length", ["256", "200"])
def test_a_search_length_within_the_original_context_is_refused_beside_the_field(
        owner: Any, team: Any, base_model: BaseModel, dataset: Dataset, family: str, length: str) -> None:
    assert base_model.original_context == 256
    before = (Experiment.objects.count(), Run.objects.count(), Method.objects.count())
    rows = [{"family": "none"}, {"family": family, f"{family}__factor": "4", f"{family}__search_length": length}]
    response = login(owner).post(reverse("experiment_new"), composer_post(team, base_model, dataset, rows=rows))
    assert response.status_code == 200, "the composer is shown again, not a redirect to a saved experiment"
    field = f"{family}__search_length"
    errors = response.context["composer"].methods.forms[1].errors
    assert any("must exceed the original context of 256 tokens" in e for e in errors[field]), errors
    html = response.content.decode()
    assert f'data-field="{field}">The search length' in html
    assert (Experiment.objects.count(), Run.objects.count(), Method.objects.count()) == before
