"""The training recipe in the composer and the API: presets, validation on the field, the run's TrainSpec."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.urls import reverse

from experiments import services
from experiments.forms import TRAINING_PRESETS, Composer
from experiments.models import BaseModel, Dataset, Experiment
from gpu_workers.spec import TrainSpec
from tests.web.factories import login
from tests.web.test_api import body, post_json, token_client
from tests.web.test_forms import composer_post


def test_every_preset_is_a_valid_training_spec() -> None:
    for key, preset in TRAINING_PRESETS.items():
        assert TrainSpec(**preset["settings"]).mode == preset["settings"]["mode"], key


def test_the_composer_page_offers_the_recipes(owner: Any) -> None:
    response = login(owner).get(reverse("experiment_new"))
    html = response.content.decode()
    assert 'id="id_train-preset"' in html and 'id="training-presets"' in html
    presets = json.loads(html.split('id="training-presets" type="application/json">')[1].split("</script>")[0])
    assert presets["longlora"]["settings"]["lora_rank"] == 8 and presets["longlora"]["settings"]["s2_attn"]


def test_a_finetune_recipe_reaches_the_run_spec(owner: Any, team: Any, base_model: BaseModel,
                                                dataset: Dataset) -> None:
    data = composer_post(team, base_model, dataset, **{"train-mode": "finetune", "train-steps": 40,
                                                       "train-lora": "on", "train-upsample_sources": "code, prose",
                                                       "train-data_strategy": "upsample_sources"})
    composer = Composer(owner, data)
    assert composer.is_valid(), composer.errors()
    experiment = services.submit_experiment(owner, composer.cleaned())
    spec = services.run_spec_for(experiment.runs.first())
    assert (spec.train.mode, spec.train.steps, spec.train.lora) == ("finetune", 40, True)
    assert spec.train.upsample_sources == ("code", "prose") and spec.train.train_length == 0
    assert spec.work_dir.endswith(f"runs/run-{experiment.runs.first().pk}")


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"train-mode": "finetune", "train-warmup_steps": 500}, "warmup_steps", "between 0 and the steps"),
        ({"train-mode": "finetune", "train-data_strategy": "upsample_sources"}, "upsample_sources",
         "Name the sources to upsample."),
        ({"train-mode": "finetune", "train-keep_short_p": 2}, "keep_short_p", "between 0 and 1"),
        ({"train-mode": "finetune", "train-steps": 0}, "steps", "greater than or equal to 1"),
    ],
)
def test_bad_training_settings_show_beside_their_field(owner: Any, team: Any, base_model: BaseModel, dataset: Dataset,
                                                       fields: dict[str, Any], field: str, message: str) -> None:
    response = login(owner).post(reverse("experiment_new"), composer_post(team, base_model, dataset, **fields))
    assert response.status_code == 200
    errors = response.context["composer"].training.errors
    assert any(message in e for e in errors[field]), errors
    assert f'data-field="{field}"' in response.content.decode()
    assert Experiment.objects.count() == 0


def test_api_training_object_defaults_to_none_and_names_bad_keys(owner: Any, team: Any, base_model: BaseModel,
                                                                 dataset: Dataset) -> None:
    client, url = token_client(owner), reverse("api_experiments")
    plain = post_json(client, url, body(team, base_model, dataset))
    assert plain.json()["training"] == {"mode": "none"}
    tuned = post_json(client, url, body(team, base_model, dataset,
                                        training={"mode": "finetune", "steps": 30, "s2_attn": True}))
    assert tuned.status_code == 201, tuned.content
    assert tuned.json()["training"]["steps"] == 30 and tuned.json()["training"]["s2_attn"] is True
    bad = post_json(client, url, body(team, base_model, dataset, training={"mode": "finetune", "stepz": 3,
                                                                           "learning_rate": 5}))
    assert bad.status_code == 400
    errors = bad.json()["errors"]
    assert errors["training"] == ["Unknown training settings: stepz."]
    assert any("learning rate" in m for m in errors["training.learning_rate"])


def test_the_dataset_page_previews_a_strategy_on_the_mixture(owner: Any, base_model: BaseModel,
                                                             dataset: Dataset) -> None:
    client = login(owner)
    url = reverse("dataset_detail", args=[dataset.pk])
    page = client.get(url)
    assert page.status_code == 200
    rows = {r["source"]: r for r in page.context["mixture_rows"]}
    assert set(rows) == {"code", "prose"}
    assert sum(r["share_before"] for r in rows.values()) == pytest.approx(1.0)
    assert 'id="length-chart"' in page.content.decode()
    # Upsampling one source raises its token share; a source name that does not exist is named.
    boosted = client.get(url, {"base_model": base_model.pk, "strategy": "upsample_sources", "sources": "code",
                               "multiplier": 3, "keep_short_p": 0.15})
    after = {r["source"]: r for r in boosted.context["mixture_rows"]}
    assert after["code"]["share_after"] > after["code"]["share_before"]
    unknown = client.get(url, {"base_model": base_model.pk, "strategy": "upsample_sources", "sources": "books",
                               "multiplier": 3, "keep_short_p": 0.15})
    assert "books" in unknown.context["error"] and unknown.context["mixture"] is None
    bad = client.get(url, {"base_model": base_model.pk, "strategy": "per_source", "keep_short_p": 3,
                           "multiplier": 2})
    assert bad.context["form"].errors["keep_short_p"]


def test_datasets_of_other_teams_are_not_found(outsider: Any, dataset: Dataset) -> None:
    assert login(outsider).get(reverse("dataset_detail", args=[dataset.pk])).status_code == 404
