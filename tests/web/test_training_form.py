"""The training recipe in the composer and the API: presets, validation on the field, the run's TrainSpec."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.urls import reverse

from experiments import services
from experiments.composer import Composer
from experiments.composer_forms import TRAINING_PRESETS
from experiments.models import BaseModel, Dataset, Experiment
from gpu_workers.spec import TrainSpec
from tests.web.factories import login
from tests.web.helpers import body, composer_post, post_json, token_client


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
        ({"train-mode": "finetune", "train-pose": "on", "train-s2_attn": "on"}, "s2_attn",
         "S2-Attn cannot be combined with PoSE"),
        ({"train-mode": "finetune", "train-pose": "on", "train-mixed_windows": "on"}, "mixed_windows",
         "Mixed context windows cannot be combined with PoSE"),
        ({"train-mode": "finetune", "train-pose": "on", "train-pose_chunks": 17}, "pose_chunks",
         "PoSE chunks must be between 1 and 16."),
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


# --- PoSE ---------------------------------------------------------------------------------------------------


def test_a_pose_recipe_is_saved_and_reaches_the_run_spec(owner: Any, team: Any, base_model: BaseModel,
                                                         dataset: Dataset) -> None:
    response = login(owner).post(reverse("experiment_new"), composer_post(
        team, base_model, dataset, **{"train-mode": "finetune", "train-pose": "on", "train-pose_chunks": 3}))
    assert response.status_code == 302, response.context["composer"].errors()
    experiment = Experiment.objects.get()
    assert experiment.training["pose"] is True and experiment.training["pose_chunks"] == 3
    spec = services.run_spec_for(experiment.runs.first())
    assert (spec.train.pose, spec.train.pose_chunks, spec.train.train_length) == (True, 3, 0)
    assert spec.train.length_for(spec.target_length, base_model.original_context) == 256  # the original context
    page = login(owner).get(reverse("experiment_detail", args=[experiment.uuid])).content.decode()
    assert "steps at 256 tokens" in page, "the experiment page states PoSE's window, not the target"


def test_pose_chunks_left_blank_are_two(owner: Any, team: Any, base_model: BaseModel, dataset: Dataset) -> None:
    composer = Composer(owner, composer_post(team, base_model, dataset, **{
        "train-mode": "finetune", "train-pose": "on", "train-pose_chunks": ""}))
    assert composer.is_valid(), composer.errors()
    assert composer.cleaned()["training"].pose_chunks == 2


@pytest.mark.parametrize(("fields", "field", "message"), [
    ({"train-train_length": 1024}, "train_length", "the training length (1024 tokens) is not shorter than the target"),
    ({"target_length": 256}, "pose", "the model's original context (256 tokens) is not shorter than the target"),
])
def test_pose_needs_a_window_shorter_than_the_target(owner: Any, team: Any, base_model: BaseModel, dataset: Dataset,
                                                     fields: dict[str, Any], field: str, message: str) -> None:
    rows = [{"family": "none"}]  # valid at any target, also at the original context
    response = login(owner).post(reverse("experiment_new"), composer_post(
        team, base_model, dataset, rows=rows, **{"train-mode": "finetune", "train-pose": "on", **fields}))
    assert response.status_code == 200
    errors = response.context["composer"].training.errors
    assert any(message in e for e in errors[field]), errors
    assert Experiment.objects.count() == 0


def test_the_api_takes_pose_like_every_training_setting(owner: Any, team: Any, base_model: BaseModel,
                                                        dataset: Dataset) -> None:
    client, url = token_client(owner), reverse("api_experiments")
    tuned = post_json(client, url, body(team, base_model, dataset,
                                        training={"mode": "finetune", "pose": True, "pose_chunks": 4}))
    assert tuned.status_code == 201, tuned.content
    assert tuned.json()["training"]["pose"] is True and tuned.json()["training"]["pose_chunks"] == 4
    bad = post_json(client, url, body(team, base_model, dataset,
                                      training={"mode": "finetune", "pose": True, "s2_attn": True}))
    assert bad.status_code == 400
    assert any("combined with PoSE" in m for m in bad.json()["errors"]["training.s2_attn"])


# --- mixed context windows against the methods ----------------------------------------------------------------


def test_mixed_windows_are_refused_for_methods_whose_rope_does_not_change_with_length(
        owner: Any, team: Any, base_model: BaseModel, dataset: Dataset) -> None:
    rows = [{"family": "none"}, {"family": "pi"}, {"family": "dynamic_ntk"}, {"family": "yarn"}]
    response = login(owner).post(reverse("experiment_new"), composer_post(
        team, base_model, dataset, rows=rows, **TRAINING_PRESET_FIELDS))
    assert response.status_code == 200
    errors = response.context["composer"].training.errors["mixed_windows"]
    assert len(errors) == 1
    message = errors[0]
    assert ("Mixed context windows change nothing for None (baseline) (row 1), PI (linear) (row 2), YaRN (row 4)"
            in message)
    assert "Dynamic NTK" not in message and "default RoPE" in message
    assert 'data-field="mixed_windows"' in response.content.decode()
    assert Experiment.objects.count() == 0


def test_mixed_windows_with_length_dependent_methods_are_saved(owner: Any, team: Any, base_model: BaseModel,
                                                               dataset: Dataset) -> None:
    rows = [{"family": "longrope"}, {"family": "dynamic_ntk"}]
    response = login(owner).post(reverse("experiment_new"), composer_post(
        team, base_model, dataset, rows=rows, **TRAINING_PRESET_FIELDS))
    assert response.status_code == 302, response.context["composer"].errors()
    assert Experiment.objects.get().training["mixed_windows"] is True


def test_the_api_names_the_method_mixed_windows_cannot_change(owner: Any, team: Any, base_model: BaseModel,
                                                             dataset: Dataset) -> None:
    bad = post_json(token_client(owner), reverse("api_experiments"), body(
        team, base_model, dataset, training=TRAINING_PRESETS["longrope2"]["settings"]))
    assert bad.status_code == 400
    [message] = bad.json()["errors"]["training.mixed_windows"]
    assert "None (baseline) (row 1), YaRN (row 2)" in message and Experiment.objects.count() == 0


TRAINING_PRESET_FIELDS = {f"train-{key}": ("on" if value is True else value)
                          for key, value in TRAINING_PRESETS["longrope2"]["settings"].items()}
"""The LongRoPE2 recipe as the composer posts it once the preset filled the fields."""
