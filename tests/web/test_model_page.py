"""The model page: facts from the config, the per-pair wavelength chart, the experiments that used the model.

Visible to the people who may see the model (shared, or one of their teams'); the experiment list is narrowed
to the visitor's teams even on a shared model, and costs the same number of queries whatever its length.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from django.contrib.staticfiles import finders
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from experiments.models import BaseModel, Dataset, Team
from tests.web.factories import login, make_experiment
from tests.web.helpers import LLAMA31_FACTS

PHI_FACTS: dict[str, Any] = {
    "architecture": "PhiForCausalLM", "model_type": "phi", "has_rope": True, "head_dim": 16,
    "head_dim_explicit": False, "partial_rotary_factor": 0.5, "rotary_dim": 8, "rope_theta": 10000.0,
    "rope_type": "default", "original_context": 2048, "max_position_embeddings": 2048,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
    "num_layers": 2, "num_heads": 4, "num_kv_heads": 4, "hidden_size": 64, "parameters": 123456,
}


def _model(name: str, facts: dict[str, Any], team: Team | None = None) -> BaseModel:
    model = BaseModel(team=team, name=name, source=f"/models/{name}")
    model.apply_facts(facts)
    model.save()
    return model


def _chart(response: Any) -> dict[str, Any]:
    """The chart data as the page embeds it for the script (json_script), not as the view built it."""
    match = re.search(r'<script id="model-wavelengths-data" type="application/json">(.*?)</script>',
                      response.content.decode(), re.S)
    assert match, "the chart data is embedded with json_script"
    return json.loads(match.group(1))


# --- who sees it ----------------------------------------------------------------------------------------------


def test_anonymous_is_sent_to_login(client: Client, base_model: BaseModel) -> None:
    url = reverse("model_detail", args=[base_model.pk])
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next={url}"


@pytest.mark.parametrize(("who", "status"), [("owner", 200), ("teammate", 200), ("outsider", 404)])
def test_team_model_is_visible_to_its_team_only(request: pytest.FixtureRequest, team: Team, who: str,
                                                status: int) -> None:
    model = _model("Team Phi", PHI_FACTS, team=team)
    response = login(request.getfixturevalue(who)).get(reverse("model_detail", args=[model.pk]))
    assert response.status_code == status


@pytest.mark.parametrize("who", ["owner", "teammate", "outsider"])
def test_shared_model_is_visible_to_everyone_logged_in(request: pytest.FixtureRequest, base_model: BaseModel,
                                                       who: str) -> None:
    response = login(request.getfixturevalue(who)).get(reverse("model_detail", args=[base_model.pk]))
    assert response.status_code == 200
    assert base_model.name in response.content.decode()


def test_unknown_model_is_404(owner: Any) -> None:
    assert login(owner).get(reverse("model_detail", args=[999_999])).status_code == 404


def test_post_is_refused(owner: Any, base_model: BaseModel) -> None:
    assert login(owner).post(reverse("model_detail", args=[base_model.pk])).status_code == 405


# --- facts and chart ------------------------------------------------------------------------------------------


def test_partial_rotary_model_shows_its_rotary_dims_and_charts_only_those(owner: Any) -> None:
    model = _model("Tiny Phi", PHI_FACTS)
    response = login(owner).get(reverse("model_detail", args=[model.pk]))
    html = response.content.decode()
    assert re.search(r'data-role="rotary-dim">8 \(4 pairs, rotary fraction 0.5 of the head\)', html)
    assert re.search(r'data-role="head-dim">16', html)
    assert "PhiForCausalLM" in html and "/models/Tiny Phi" in html
    assert 'data-role="ships-scaling"' not in html, "plain RoPE ships no scaling of its own"
    chart = _chart(response)
    axes = chart["axes"]
    assert axes["pairs"] == [0, 1, 2, 3] and axes["rotary_dim"] == 8
    expected = [2 * math.pi * 10000.0 ** (2 * i / 8) for i in range(4)]
    assert axes["wavelengths"] == pytest.approx(expected, rel=1e-5)
    assert axes["original_context"] == 2048
    assert 0 <= axes["critical_dimension"] <= 8 and axes["critical_pair"] == axes["critical_dimension"] // 2
    assert chart["shipped"] is None


def test_checkpoint_with_its_own_scaling_says_so_and_charts_the_shipped_wavelengths(owner: Any) -> None:
    model = _model("Tiny Llama 3.1", LLAMA31_FACTS)
    response = login(owner).get(reverse("model_detail", args=[model.pk]))
    html = response.content.decode()
    note = re.search(r'<p class="note" data-role="ships-scaling">(.*?)</p>', html, re.S)
    assert note, "a checkpoint with its own scaling says so"
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", note.group(1)))
    assert "ships its own RoPE scaling, llama3" in text
    assert "none means the checkpoint exactly as shipped, that scaling included" in text
    assert "relative to the original context of 8192 tokens" in text
    assert "LongRoPE on a LongRoPE checkpoint starts from its shipped factors" in text
    assert re.search(r'data-role="original-context">8192 tokens', html)
    assert re.search(r'data-role="max-positions">131072', html)
    assert "&quot;factor&quot;: 8.0" in html, "the shipped rope_parameters are shown as JSON, scaling included"

    chart = _chart(response)
    plain = chart["axes"]["wavelengths"]
    shipped = chart["shipped"]
    assert shipped["rope_type"] == "llama3" and len(shipped["wavelengths"]) == len(plain) == 32
    # Llama-3 scaling: short wavelengths (< original / high_freq_factor) kept, long ones (> original /
    # low_freq_factor) stretched by the factor, the band between smoothly interpolated.
    for old, new in zip(plain, shipped["wavelengths"], strict=True):
        if old < 8192 / 4:
            assert new == pytest.approx(old, rel=1e-4)
        elif old > 8192:
            assert new == pytest.approx(8 * old, rel=1e-4)
        else:
            assert old * (1 - 1e-4) <= new <= 8 * old * (1 + 1e-4)


def test_old_row_without_the_newer_keys_reads_with_defaults(owner: Any) -> None:
    old = {"architecture": "LlamaForCausalLM", "model_type": "llama", "has_rope": True, "head_dim": 32,
           "rope_theta": 10000.0, "original_context": 256, "rope_type": "default", "num_layers": 2}
    model = _model("Old row", old)
    response = login(owner).get(reverse("model_detail", args=[model.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert re.search(r'data-role="rotary-dim">32 \(16 pairs\)', html)
    assert re.search(r'data-role="max-positions">256', html)
    assert len(_chart(response)["axes"]["pairs"]) == 16


def test_model_without_rope_explains_instead_of_drawing(owner: Any, norope_model: BaseModel) -> None:
    response = login(owner).get(reverse("model_detail", args=[norope_model.pk]))
    assert response.status_code == 200
    assert 'data-role="chart-error"' in response.content.decode()
    assert "error" in _chart(response)


def test_the_chart_script_is_served_locally(owner: Any, base_model: BaseModel) -> None:
    html = login(owner).get(reverse("model_detail", args=[base_model.pk])).content.decode()
    assert "js/rope_scaling.js" in html and "vendor/plotly/plotly.min.js" in html
    assert "cdn" not in html.lower()
    assert finders.find("js/rope_scaling.js")


# --- experiments that used it ---------------------------------------------------------------------------------


def test_lists_only_experiments_of_the_visitors_teams(owner: Any, outsider: Any, team: Team, other_team: Team,
                                                      base_model: BaseModel, dataset: Dataset) -> None:
    mine = make_experiment(team, owner, base_model, dataset, name="Ours on tiny")
    theirs = make_experiment(other_team, outsider, base_model, dataset, name="Theirs on tiny")
    other_model = _model("Tiny Phi", PHI_FACTS)
    make_experiment(team, owner, other_model, dataset, name="Ours on phi")
    url = reverse("model_detail", args=[base_model.pk])

    html = login(owner).get(url).content.decode()
    assert reverse("experiment_detail", args=[mine.uuid]) in html and "Ours on tiny" in html
    assert "Theirs on tiny" not in html and "Ours on phi" not in html

    html = login(outsider).get(url).content.decode()
    assert reverse("experiment_detail", args=[theirs.uuid]) in html
    assert "Ours on tiny" not in html


def test_experiments_newest_first(owner: Any, team: Team, base_model: BaseModel, dataset: Dataset) -> None:
    for name in ("First", "Second", "Third"):
        make_experiment(team, owner, base_model, dataset, name=name)
    response = login(owner).get(reverse("model_detail", args=[base_model.pk]))
    names = re.findall(r'data-role="experiment-link">([^<]+)</a>', response.content.decode())
    assert names == ["Third", "Second", "First"]


def _queries(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured)


def test_query_count_does_not_grow_with_experiments(owner: Any, team: Team, base_model: BaseModel,
                                                    dataset: Dataset) -> None:
    client = login(owner)
    url = reverse("model_detail", args=[base_model.pk])
    make_experiment(team, owner, base_model, dataset, runs=1, name="E0")
    one = _queries(client, url)
    for i in range(1, 5):
        make_experiment(team, owner, base_model, dataset, runs=3, name=f"E{i}")
    five = _queries(client, url)
    assert five == one
    assert len(re.findall(r'data-role="experiment-link"', client.get(url).content.decode())) == 5


# --- links to it ----------------------------------------------------------------------------------------------


def test_model_list_links_each_model_to_its_page(owner: Any, base_model: BaseModel) -> None:
    phi = _model("Tiny Phi", PHI_FACTS)
    html = login(owner).get(reverse("model_list")).content.decode()
    for model in (base_model, phi):
        assert f'href="{reverse("model_detail", args=[model.pk])}"' in html


def test_experiment_page_links_its_base_model(owner: Any, experiment: Any) -> None:
    html = login(owner).get(reverse("experiment_detail", args=[experiment.uuid])).content.decode()
    assert f'href="{reverse("model_detail", args=[experiment.base_model_id])}" data-role="model-link"' in html
