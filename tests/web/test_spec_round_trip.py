"""One spec round trip (issue 14): the page's form fields and the API's JSON objects become the same EvalSpec and
TrainSpec, stored the same way, and a bad value in either lands on the field that holds it."""

from __future__ import annotations

from typing import Any

from django.urls import reverse

from experiments.models import BaseModel, Dataset, Experiment
from tests.web.factories import login
from tests.web.helpers import body, composer_post, post_json, token_client

PAGE_EVALUATION = {"eval-suite": ["perplexity", "passkey", "needle"], "eval-protocol": "sliding", "eval-stride": 64,
                   "eval-passkey_samples": 7, "eval-passkey_depth": "0.5", "eval-needle_depths": "0, 0.5, 1",
                   "eval-needle_samples": 3}
API_EVALUATION = {"suite": ["perplexity", "passkey", "needle"], "protocol": "sliding", "stride": 64,
                  "passkey_samples": 7, "passkey_depth": 0.5, "needle_depths": [0, 0.5, 1], "needle_samples": 3}
PAGE_TRAINING = {"train-mode": "finetune", "train-steps": 30, "train-lora": "on", "train-learning_rate": 0.001,
                 "train-data_strategy": "upsample_sources", "train-upsample_sources": "code, prose",
                 "train-seed": 5, "train-train_embeddings_and_norms": "on"}  # ticked on the page by default
API_TRAINING = {"mode": "finetune", "steps": 30, "lora": True, "learning_rate": 0.001,
                "data_strategy": "upsample_sources", "upsample_sources": ["code", "prose"], "seed": 5}


def _stored(experiment: Experiment) -> dict[str, Any]:
    return {"eval_lengths": experiment.eval_lengths, "eval_documents": experiment.eval_documents,
            "evaluations": experiment.evaluations, "training": experiment.training,
            "methods": list(experiment.runs.order_by("id").values_list("method_id", flat=True))}


def test_the_page_and_the_api_store_the_same_experiment(owner: Any, team: Any, base_model: BaseModel,
                                                        dataset: Dataset, no_broker: Any) -> None:
    rows = [{"family": "none"}, {"family": "yarn", "yarn__factor": "4", "yarn__beta_fast": "16"}]
    page = login(owner).post(reverse("experiment_new"), composer_post(
        team, base_model, dataset, rows=rows, name="From the page", eval_lengths="256, 1024", eval_documents=4,
        **PAGE_EVALUATION, **PAGE_TRAINING))
    assert page.status_code == 302, page.context and page.context["composer"].errors()
    api = post_json(token_client(owner), reverse("api_experiments"), body(
        team, base_model, dataset, name="From the API", evaluations=API_EVALUATION, training=API_TRAINING))
    assert api.status_code == 201, api.content
    from_page, from_api = Experiment.objects.get(name="From the page"), Experiment.objects.get(name="From the API")
    assert _stored(from_page) == _stored(from_api)
    # And the stored columns read back as the specs they came from.
    assert from_api.eval_spec().to_json() == {**from_api.evaluations, "lengths": [256, 1024], "documents": 4}
    assert from_api.train_spec().upsample_sources == ("code", "prose") and from_api.train_spec().lora is True
    assert api.json()["evaluations"]["needle_depths"] == [0.0, 0.5, 1.0]


def test_an_api_value_of_the_wrong_type_lands_on_its_field(owner: Any, team: Any, base_model: BaseModel,
                                                           dataset: Dataset) -> None:
    response = post_json(token_client(owner), reverse("api_experiments"), body(
        team, base_model, dataset, evaluations={"suite": ["passkey"], "passkey_samples": "7"},
        training={"mode": "finetune", "lora": "on"}))
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert errors["evaluations.passkey_samples"] == ["Passkey_samples must be a whole number, not '7'."]
    assert errors["training.lora"] == ["Lora must be true or false, not 'on'."]
    assert Experiment.objects.count() == 0


def test_a_page_spec_error_lands_beside_the_input(owner: Any, team: Any, base_model: BaseModel,
                                                  dataset: Dataset) -> None:
    response = login(owner).post(reverse("experiment_new"), composer_post(
        team, base_model, dataset, **{"eval-suite": ["needle"], "eval-needle_depths": "0, 2"},
        **{"train-mode": "finetune", "train-pose": "on", "train-s2_attn": "on"}))
    assert response.status_code == 200
    composer = response.context["composer"]
    assert any("between 0 and 1" in m for m in composer.evaluation.errors["needle_depths"])
    assert any("S2-Attn cannot be combined with PoSE" in m for m in composer.training.errors["s2_attn"])
    assert Experiment.objects.count() == 0
