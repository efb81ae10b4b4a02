"""The JSON API: token and session auth, scoping, the same validation as the composer, CSV."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from experiments.models import BaseModel, Dataset, Experiment, Run
from tests.web.factories import login
from tests.web.helpers import body, post_json, token_client

# --- auth -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url_name", ["api_models", "api_datasets", "api_methods", "api_experiments"])
def test_anonymous_gets_401(client: Client, db: None, url_name: str) -> None:
    response = client.get(reverse(url_name))
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Token")
    assert "detail" in response.json()


def test_anonymous_gets_401_everywhere(client: Client, experiment: Experiment) -> None:
    run = experiment.runs.first()
    for url in (
        reverse("api_experiment", args=[experiment.uuid]), reverse("api_experiment_csv", args=[experiment.uuid]),
        reverse("api_run", args=[run.uuid]), reverse("api_leaderboard_csv") + "?base_model=1&context_length=256",
    ):
        assert client.get(url).status_code == 401, url
    for url in (reverse("api_run_cancel", args=[run.uuid]), reverse("api_run_retry", args=[run.uuid]),
                reverse("api_experiments")):
        assert client.post(url).status_code == 401, url


def test_bad_token_is_401(owner: Any) -> None:
    assert Client(HTTP_AUTHORIZATION="Token nope").get(reverse("api_models")).status_code == 401
    assert Client(HTTP_AUTHORIZATION="Bearer x").get(reverse("api_models")).status_code == 401


def test_token_auth_and_last_used(owner: Any, base_model: BaseModel) -> None:
    client = token_client(owner)
    response = client.get(reverse("api_models"))
    assert response.status_code == 200
    assert [m["name"] for m in response.json()["models"]] == ["Tiny Llama"]
    assert owner.api_tokens.get().last_used is not None


def test_create_api_token_command_prints_key_once(owner: Any) -> None:
    out = io.StringIO()
    call_command("create_api_token", "owner", stdout=out)
    key = out.getvalue().strip()
    assert Client(HTTP_AUTHORIZATION=f"Token {key}").get(reverse("api_models")).status_code == 200
    assert owner.api_tokens.get().key_hash != key


def test_session_post_needs_csrf(owner: Any, team: Any, base_model: BaseModel, dataset: Dataset) -> None:
    client = login(owner, enforce_csrf=True)
    response = post_json(client, reverse("api_experiments"), body(team, base_model, dataset))
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]
    assert Experiment.objects.count() == 0
    client.get(reverse("dashboard"))
    token = client.cookies["csrftoken"].value
    response = client.post(reverse("api_experiments"), json.dumps(body(team, base_model, dataset)),
                           content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 201, response.content


def test_token_post_is_csrf_exempt(owner: Any, team: Any, base_model: BaseModel, dataset: Dataset) -> None:
    client = token_client(owner)
    client.handler.enforce_csrf_checks = True
    assert post_json(client, reverse("api_experiments"), body(team, base_model, dataset)).status_code == 201


# --- creating experiments -----------------------------------------------------------------------------------------


def test_create_experiment(owner: Any, team: Any, base_model: BaseModel, dataset: Dataset, no_broker: Any,
                           django_capture_on_commit_callbacks: Any) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = post_json(token_client(owner), reverse("api_experiments"), body(team, base_model, dataset))
    assert response.status_code == 201, response.content
    data = response.json()
    experiment = Experiment.objects.get()
    assert data["id"] == str(experiment.uuid)
    assert data["eval_lengths"] == [256, 1024] and data["team"] == {"id": team.pk, "name": "Lab"}
    assert [r["method"]["family"] for r in data["runs"]] == ["none", "yarn"]
    assert data["runs"][1]["method"]["params"]["beta_fast"] == 16.0
    assert {call.kwargs["task_id"] for call in no_broker.call_args_list} == {r["id"] for r in data["runs"]}


def test_team_is_optional_with_one_team(owner: Any, team: Any, base_model: BaseModel, dataset: Dataset) -> None:
    data = body(team, base_model, dataset)
    del data["team"]
    assert post_json(token_client(owner), reverse("api_experiments"), data).status_code == 201


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"target_length": 100}, "target_length", "original context of 256 tokens"),
        ({"base_model": "Nope"}, "base_model", "Unknown base model 'Nope'"),
        ({"team": "Elsewhere"}, "team", "Unknown team"),
        ({"eval_lengths": "256"}, "eval_lengths", "list of whole numbers"),
        ({"eval_lengths": [8, 256]}, "eval_lengths", "at least 16 tokens"),
        ({"methods": []}, "methods", "at least one method"),
        ({"methods": [{"family": "pi", "params": {"factor": 1}}]}, "methods.0.factor", "greater than 1"),
        ({"methods": [{"family": "none"}, {"family": "yarn", "params": {"beta_fast": 0.5}}]}, "methods.1.beta_fast",
         "β fast must be greater than β slow"),
        ({"methods": [{"family": "pi", "params": {"factr": 2}}]}, "methods.0.factr", "takes no parameter 'factr'"),
        ({"methods": [{"family": "warp"}]}, "methods.0.family", "Unknown method family 'warp'"),
        ({"methods": [{"family": "pi", "params": [2]}]}, "methods.0.params", "JSON object"),
        ({"methods": [{"family": "pi"}, {"family": "pi", "params": {"factor": 4}}]}, "methods", "same configuration"),
        ({"eval_documents": 11}, "dataset", "has only 10 documents of at least 1024 tokens, but 11 are needed"),
    ],
)
def test_create_experiment_errors_name_the_field(owner: Any, team: Any, base_model: BaseModel, dataset: Dataset,
                                                 overrides: dict[str, Any], field: str, message: str) -> None:
    data = {**body(team, base_model, dataset), **overrides}
    response = post_json(token_client(owner), reverse("api_experiments"), data)
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert field in errors, errors
    assert any(message in m for m in errors[field]), errors[field]
    assert Experiment.objects.count() == 0 and Run.objects.count() == 0


def test_no_rope_model_refuses_rope_methods(owner: Any, team: Any, norope_model: BaseModel, dataset: Dataset
                                            ) -> None:
    response = post_json(token_client(owner), reverse("api_experiments"), body(team, norope_model, dataset))
    errors = response.json()["errors"]
    assert response.status_code == 400 and list(errors) == ["methods.1.family"]


def test_malformed_body(owner: Any) -> None:
    response = token_client(owner).post(reverse("api_experiments"), "not json", content_type="application/json")
    assert response.status_code == 400 and "__all__" in response.json()["errors"]


def test_viewer_gets_403_on_create(viewer: Any, team: Any, base_model: BaseModel, dataset: Dataset) -> None:
    response = post_json(token_client(viewer), reverse("api_experiments"), body(team, base_model, dataset))
    assert response.status_code == 403
    assert Experiment.objects.count() == 0


# --- reading and controlling ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("who", "status"), [("owner", 200), ("teammate", 200), ("viewer", 200), ("outsider", 404)])
def test_experiment_and_run_detail_scoped(request: pytest.FixtureRequest, experiment: Experiment, who: str,
                                          status: int) -> None:
    client = token_client(request.getfixturevalue(who))
    run = experiment.runs.first()
    response = client.get(reverse("api_experiment", args=[experiment.uuid]))
    assert response.status_code == status
    assert client.get(reverse("api_run", args=[run.uuid])).status_code == status
    assert client.get(reverse("api_experiment_csv", args=[experiment.uuid])).status_code == status
    if status == 200:
        data = response.json()
        assert len(data["runs"]) == 2 and data["series"]


def test_run_detail_has_measurements_and_log(owner: Any, experiment: Experiment) -> None:
    run = experiment.runs.first()
    Run.objects.filter(pk=run.pk).update(log_tail="\n".join(f"l{i}" for i in range(20)))
    data = token_client(owner).get(reverse("api_run", args=[run.uuid])).json()
    assert data["status"] == "succeeded" and data["experiment"] == str(experiment.uuid)
    assert len(data["log"]) == 20, "the API returns the whole tail"
    assert [m["context_length"] for m in data["measurements"]] == [256, 512]
    assert data["measurements"][0]["ci_low"] == pytest.approx(data["measurements"][0]["value"] - 1)


@pytest.mark.parametrize(("who", "status"), [("owner", 200), ("teammate", 200), ("viewer", 403), ("outsider", 404)])
def test_cancel_via_api(request: pytest.FixtureRequest, experiment: Experiment, who: str, status: int) -> None:
    run = experiment.runs.first()
    Run.objects.filter(pk=run.pk).update(status=Run.Status.RUNNING)
    client = token_client(request.getfixturevalue(who))
    assert client.get(reverse("api_run_cancel", args=[run.uuid])).status_code == 405
    response = client.post(reverse("api_run_cancel", args=[run.uuid]))
    assert response.status_code == status
    run.refresh_from_db()
    assert run.cancel_requested is (status == 200)
    if status == 200:
        assert response.json()["cancel_requested"] is True


def test_methods_lists_family_schemas(owner: Any) -> None:
    data = token_client(owner).get(reverse("api_methods")).json()
    yarn = next(f for f in data["families"] if f["name"] == "yarn")
    assert [p["name"] for p in yarn["params"]] == ["factor", "beta_fast", "beta_slow", "attention_factor", "log_n"]
    assert yarn["params"][1] == {
        "name": "beta_fast", "label": "β fast", "type": "float", "default": 32.0,
        "help": yarn["params"][1]["help"], "minimum": 0.0, "exclusive_minimum": True, "maximum": None,
    }
    assert (yarn["params"][4]["type"], yarn["params"][4]["default"]) == ("bool", False)
    assert (yarn["acts_on_attention"], yarn["exportable"]) == (False, True)
    self_extend = next(f for f in data["families"] if f["name"] == "self_extend")
    assert (self_extend["acts_on_attention"], self_extend["exportable"]) == (True, False)


def test_datasets_scoped(owner: Any, outsider: Any, dataset: Dataset) -> None:
    assert [d["name"] for d in token_client(owner).get(reverse("api_datasets")).json()["datasets"]] == ["Small docs"]
    assert token_client(outsider).get(reverse("api_datasets")).json()["datasets"] == []


def test_leaderboard_csv(owner: Any, outsider: Any, experiment: Experiment, base_model: BaseModel) -> None:
    client = token_client(owner)
    assert client.get(reverse("api_leaderboard_csv")).status_code == 400
    response = client.get(reverse("api_leaderboard_csv"), {"base_model": base_model.pk, "context_length": 512})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [(r["rank"], r["method"], r["best"]) for r in rows] == [("1", "pi ×2.0", "10.512"), ("2", "pi ×3.0",
                                                                                               "11.512")]
    assert rows[0]["best_experiment_id"] == str(experiment.uuid)
    other = token_client(outsider).get(reverse("api_leaderboard_csv"), {"base_model": base_model.name,
                                                                        "context_length": 512})
    assert b"".join(other.streaming_content).decode().count("\r\n") == 1, "header only: not the outsider's team"
