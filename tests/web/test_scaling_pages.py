"""The method page's per-dimension scaling chart, and the experiment page's scaling comparison and limits."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from experiments.models import BaseModel, Experiment, Method, Run, Team
from gpu_workers import rope_theory
from gpu_workers.methods import frequencies, validate
from tests.web.factories import login, make_experiment


def json_script(html: str, element_id: str) -> Any:
    found = re.search(rf'<script id="{element_id}" type="application/json">(.*?)</script>', html, re.S)
    assert found, f"no #{element_id}"
    return json.loads(found.group(1))


def team_method(team: Team | None, base_model: BaseModel, family: str, params: dict[str, Any],
                target: int = 1024) -> Method:
    clean = validate(family, params, base_model.rope_facts(), target)
    return Method.objects.create(team=team, family=family, params=clean, name=f"{family} (team)")


# --- the method page --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("who", "status"), [("owner", 200), ("teammate", 200), ("viewer", 200), ("outsider", 404)])
def test_method_page_is_scoped_to_the_team(request: pytest.FixtureRequest, team: Team, base_model: BaseModel,
                                           who: str, status: int) -> None:
    chosen = team_method(team, base_model, "yarn", {})
    response = login(request.getfixturevalue(who)).get(reverse("method_detail", args=[chosen.pk]))
    assert response.status_code == status


def test_method_page_anonymous_goes_to_login(client: Client, base_model: BaseModel) -> None:
    chosen = team_method(None, base_model, "pi", {})
    url = reverse("method_detail", args=[chosen.pk])
    response = client.get(url)
    assert response.status_code == 302 and response["Location"] == f"{reverse('login')}?next={url}"


def test_shared_methods_are_visible_to_every_team(outsider: Any, base_model: BaseModel) -> None:
    chosen = team_method(None, base_model, "pi", {})
    assert login(outsider).get(reverse("method_detail", args=[chosen.pk])).status_code == 200


def test_method_page_draws_the_scaling_chart(owner: Any, team: Team, base_model: BaseModel) -> None:
    chosen = team_method(team, base_model, "yarn", {"factor": 4})
    response = login(owner).get(reverse("method_detail", args=[chosen.pk]),
                                {"base_model": base_model.pk, "target_length": 1024})
    html = response.content.decode()
    assert 'id="scaling-chart"' in html
    assert "/static/vendor/plotly/plotly.min.js" in html and "js/rope_scaling.js" in html
    data = json_script(html, "scaling-chart-data")
    want = frequencies.effective_scaling("yarn", chosen.params, base_model.rope_facts(), 1024)
    assert data["curve"]["scaling"] == pytest.approx(want, rel=1e-5)
    assert data["axes"]["wavelengths"] == pytest.approx(rope_theory.wavelengths(32, 10000.0), rel=1e-5)
    assert (data["axes"]["original_context"], data["axes"]["critical_dimension"]) == (256, 14)
    assert 'data-role="critical-dimension">14 of 32' in html
    assert 'data-role="length-note"' not in html, "YaRN does not depend on the input length"


@pytest.mark.parametrize("family", ["dynamic_ntk", "longrope"])
def test_length_dependent_families_say_they_are_drawn_at_the_target(owner: Any, team: Team, base_model: BaseModel,
                                                                    family: str) -> None:
    chosen = team_method(team, base_model, family, {})
    html = login(owner).get(reverse("method_detail", args=[chosen.pk]),
                            {"base_model": base_model.pk, "target_length": 2048}).content.decode()
    assert "drawn at the target length of 2048 tokens" in html
    data = json_script(html, "scaling-chart-data")
    assert data["curve"]["drawn_at"] == 2048
    want = frequencies.effective_scaling(family, chosen.params, base_model.rope_facts(), 1024, seq_len=2048)
    assert data["curve"]["scaling"] == pytest.approx(want, rel=1e-5)


def test_fixed_base_methods_show_their_limit(owner: Any, team: Team, base_model: BaseModel) -> None:
    chosen = team_method(team, base_model, "base_change", {"extrapolation_length": 4096})
    html = login(owner).get(reverse("method_detail", args=[chosen.pk])).content.decode()
    assert re.search(r'data-role="method-limit">4,096 tokens', html), html


def test_defaults_come_from_the_latest_experiment_with_the_method(owner: Any, team: Team, base_model: BaseModel,
                                                                   dataset: Any) -> None:
    experiment = make_experiment(team, owner, base_model, dataset, runs=1, lengths=(256, 2048), name="Latest")
    chosen = experiment.runs.get().method
    response = login(owner).get(reverse("method_detail", args=[chosen.pk]))
    form = response.context["form"]
    assert (form["base_model"].value(), form["target_length"].value()) == (base_model.pk, 2048)
    assert response.context["target_length"] == 2048 and "Latest" in response.content.decode()


def test_without_an_experiment_the_first_model_and_the_methods_factor(owner: Any, team: Team,
                                                                      base_model: BaseModel) -> None:
    chosen = team_method(team, base_model, "pi", {"factor": 8})
    response = login(owner).get(reverse("method_detail", args=[chosen.pk]))
    assert response.context["base_model"] == base_model and response.context["target_length"] == 2048


def test_base_model_select_is_scoped_and_validated(owner: Any, outsider: Any, team: Team, other_team: Team,
                                                   base_model: BaseModel, model_dir: Any) -> None:
    theirs = BaseModel.objects.create(team=other_team, name="Theirs", source=str(model_dir), head_dim=32,
                                      rope_theta=10000.0, original_context=256, has_rope=True)
    chosen = team_method(None, base_model, "pi", {})
    client = login(owner)
    page = client.get(reverse("method_detail", args=[chosen.pk]), {"base_model": theirs.pk, "target_length": 1024})
    assert page.status_code == 200 and page.context["chart"] is None
    assert 'data-field="base_model"' in page.content.decode()
    assert "Theirs" not in page.content.decode(), "another team's model is not offered"
    short = client.get(reverse("method_detail", args=[chosen.pk]), {"base_model": base_model.pk,
                                                                    "target_length": 128})
    assert "at least the model&#x27;s original context of 256 tokens" in short.content.decode()
    assert short.context["chart"] is None


def test_parameters_that_do_not_fit_the_chosen_model_say_so(owner: Any, team: Team, base_model: BaseModel) -> None:
    wide = BaseModel(team=team, name="Wide", source="x")
    wide.apply_facts({"has_rope": True, "head_dim": 64, "rope_theta": 10000.0, "original_context": 256})
    wide.save()
    chosen = team_method(team, base_model, "longrope", {"long_factor": [2.0] * 16})
    html = login(owner).get(reverse("method_detail", args=[chosen.pk]), {"base_model": wide.pk,
                                                                        "target_length": 1024}).content.decode()
    assert 'data-role="curve-error"' in html and "need 32 numbers" in html
    assert 'id="scaling-chart"' not in html


def test_methods_list_links_to_method_pages(owner: Any, team: Team, base_model: BaseModel) -> None:
    chosen = team_method(team, base_model, "yarn", {})
    html = login(owner).get(reverse("method_list")).content.decode()
    assert f'href="{reverse("method_detail", args=[chosen.pk])}"' in html


# --- the experiment page --------------------------------------------------------------------------------------


def test_run_rows_link_to_the_method_page_for_this_experiment(owner: Any, experiment: Experiment) -> None:
    html = login(owner).get(reverse("experiment_detail", args=[experiment.uuid])).content.decode()
    for run in experiment.runs.all():
        url = reverse("method_detail", args=[run.method_id])
        query = f"base_model={experiment.base_model_id}&amp;target_length={experiment.target_length}"
        assert f'href="{url}?{query}"' in html


def test_experiment_page_compares_scaling_curves(owner: Any, experiment: Experiment) -> None:
    html = login(owner).get(reverse("experiment_detail", args=[experiment.uuid])).content.decode()
    assert 'id="scaling-compare"' in html and "js/rope_scaling.js" in html
    data = json_script(html, "scaling-compare-data")
    names = [run.method.name for run in experiment.runs.order_by("id")]
    assert [c["name"] for c in data["curves"]] == names
    assert [c["scaling"][0] for c in data["curves"]] == [2.0, 3.0]


def test_scaling_law_limits_on_the_perplexity_chart(owner: Any, team: Team, base_model: BaseModel,
                                                    dataset: Any) -> None:
    experiment = make_experiment(team, owner, base_model, dataset, runs=1, lengths=(256, 1024))
    abf = team_method(team, base_model, "base_change", {"extrapolation_length": 4096})
    abf.name = "ABF to 4k"
    abf.save()
    ntk = team_method(team, base_model, "ntk", {"factor": 4})
    for chosen in (abf, ntk):
        Run.objects.create(experiment=experiment, method=chosen, status=Run.Status.SUCCEEDED)
    response = login(owner).get(reverse("experiment_detail", args=[experiment.uuid]))
    limits = response.context["chart"]["limits"]
    assert [limit["name"] for limit in limits] == ["ABF to 4k", ntk.name], "PI draws no limit"
    assert limits[0]["length"] == pytest.approx(4096, rel=1e-5)
    ntk_theta = 10000.0 * 4 ** (32 / 30)
    assert limits[1]["length"] == pytest.approx(rope_theory.extrapolation_bound(32, 10000.0, 256, ntk_theta),
                                                rel=1e-5)
    html = response.content.decode()
    assert json_script(html, "chart-data")["limits"] == limits
    facts = re.search(r'data-role="scaling-limits">(.*?)</dd>', html, re.S).group(1)
    assert "ABF to 4k: 4,096 tokens" in facts and f"{ntk.name}: 675 tokens" in facts


def test_no_limits_without_fixed_base_runs(owner: Any, experiment: Experiment) -> None:
    response = login(owner).get(reverse("experiment_detail", args=[experiment.uuid]))
    assert response.context["chart"]["limits"] == []
    assert 'data-role="scaling-limits"' not in response.content.decode()
