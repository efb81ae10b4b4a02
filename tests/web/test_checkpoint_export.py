"""Checkpoint export: members export succeeded runs, the team downloads a zip that plain transformers loads.

The model here has real (random) weights, so the downloaded checkpoint is checked the way a user would
use it: unzip, ``AutoModelForCausalLM.from_pretrained``, and the same logits as the run's own loading.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from django.test import Client
from django.urls import reverse

from experiments import services
from experiments.checkpoints import CHECKPOINT, export_dir
from experiments.models import Artifact, BaseModel, Dataset, Experiment, Method, Run, Team
from gpu_workers.device import place
from gpu_workers.export import METADATA_FILE
from gpu_workers.loading import load
from gpu_workers.methods import validate
from gpu_workers.spec import MethodSpec
from tests.web.factories import login, make_experiment
from tests.web.helpers import csrf_token, token_client

TARGET = 1024


@pytest.fixture(autouse=True)
def data_dir(settings: Any, tmp_path: Path) -> Path:
    settings.CONTEXTLAB_DATA_DIR = tmp_path
    return tmp_path


@pytest.fixture
def real_model(db: None, weights_dir: Path) -> BaseModel:
    from gpu_workers.model_facts import inspect_model

    model = BaseModel(team=None, name="Tiny Llama with weights", source=str(weights_dir))
    model.apply_facts(inspect_model(str(weights_dir)).to_json())
    model.save()
    return model


def run_with(team: Team, owner: Any, model: BaseModel, dataset: Dataset, family: str, params: dict[str, Any],
             status: str = Run.Status.SUCCEEDED) -> Run:
    experiment = make_experiment(team, owner, model, dataset, runs=0, lengths=(256, TARGET), name="Export me")
    clean = validate(family, params, model.rope_facts(), TARGET)
    method = Method.objects.create(team=team, family=family, params=clean, name=f"{family} for export")
    return Run.objects.create(experiment=experiment, method=method, status=status)


@pytest.fixture
def run(team: Team, owner: Any, real_model: BaseModel, dataset: Dataset) -> Run:
    return run_with(team, owner, real_model, dataset, "yarn", {"factor": 4})


def streamed(response: Any) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def unzip(data: bytes, into: Path) -> Path:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        tops = {name.split("/", 1)[0] for name in archive.namelist()}
        assert len(tops) == 1, "one top-level folder"
        archive.extractall(into)
    return into / tops.pop()


def assert_same_logits(folder: Path, run: Run) -> None:
    from transformers import AutoModelForCausalLM

    method = MethodSpec(run.method.family, dict(run.method.params))
    want_model = load(run.experiment.base_model.source, method, run.experiment.target_length, place("cpu")).model
    got_model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.randint(0, 4096, (1, 300), generator=torch.Generator().manual_seed(0))  # past the original 256
    with torch.no_grad():
        want, got = want_model(input_ids=ids).logits, got_model(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert got_model.config.rope_parameters == want_model.config.rope_parameters


# --- the page's POST and GET ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("who", "status"), [("owner", 302), ("teammate", 302), ("viewer", 403), ("outsider", 404)])
def test_export_needs_a_member(request: pytest.FixtureRequest, run: Run, who: str, status: int) -> None:
    client = login(request.getfixturevalue(who), enforce_csrf=True)
    token = csrf_token(client, reverse("dashboard"))
    response = client.post(reverse("run_export", args=[run.uuid]), {"csrfmiddlewaretoken": token})
    assert response.status_code == status
    exported = Artifact.objects.filter(run=run, kind=CHECKPOINT)
    assert exported.count() == (1 if status == 302 else 0)
    if status == 302:
        assert response["Location"] == reverse("experiment_detail", args=[run.experiment.uuid])
        assert exported.get().path == str(export_dir(run.uuid))
        assert (export_dir(run.uuid) / "config.json").exists()


def test_export_needs_post_csrf_and_login(client: Client, owner: Any, run: Run) -> None:
    url = reverse("run_export", args=[run.uuid])
    anonymous = client.post(url)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith(reverse("login"))
    member = login(owner, enforce_csrf=True)
    assert member.get(url).status_code == 405
    assert member.post(url).status_code == 403, "no CSRF token"
    assert not Artifact.objects.exists()


def test_download_zip_loads_with_plain_transformers(owner: Any, viewer: Any, run: Run, tmp_path: Path) -> None:
    client = login(owner, enforce_csrf=True)
    token = csrf_token(client, reverse("dashboard"))
    client.post(reverse("run_export", args=[run.uuid]), {"csrfmiddlewaretoken": token})
    page = client.get(reverse("experiment_detail", args=[run.experiment.uuid])).content.decode()
    assert f'href="{reverse("run_export_zip", args=[run.uuid])}"' in page and "Export again" in page

    response = login(viewer).get(reverse("run_export_zip", args=[run.uuid]))
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"] == 'attachment; filename="Export-me-yarn-for-export.zip"'
    folder = unzip(streamed(response), tmp_path / "unzipped")
    assert json.loads((folder / METADATA_FILE).read_text())["params"] == run.method.params
    assert_same_logits(folder, run)


@pytest.mark.parametrize(("who", "status"), [("owner", 200), ("teammate", 200), ("viewer", 200), ("outsider", 404)])
def test_download_is_scoped_to_the_team(request: pytest.FixtureRequest, owner: Any, run: Run, who: str,
                                        status: int) -> None:
    services.export_checkpoint(owner, run)
    response = login(request.getfixturevalue(who)).get(reverse("run_export_zip", args=[run.uuid]))
    assert response.status_code == status


def test_download_before_export_is_404_and_anonymous_goes_to_login(client: Client, owner: Any, run: Run) -> None:
    url = reverse("run_export_zip", args=[run.uuid])
    assert login(owner).get(url).status_code == 404
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_only_succeeded_runs_export(owner: Any, team: Team, real_model: BaseModel, dataset: Dataset) -> None:
    running = run_with(team, owner, real_model, dataset, "pi", {}, status=Run.Status.RUNNING)
    client = login(owner)
    response = client.post(reverse("run_export", args=[running.uuid]), follow=True)
    assert "Only a succeeded run can be exported; this one is running." in response.content.decode()
    assert not Artifact.objects.exists() and not export_dir(running.uuid).exists()


@pytest.mark.parametrize(("family", "params", "words"), [
    ("self_extend", {}, "Self-Extend changes the attention layers"),
    ("dynamic_yarn", {}, "transformers has no dynamic YaRN rope type"),
    ("yarn", {"log_n": True}, "log-n attention scales the queries"),
])
def test_methods_a_config_cannot_hold_are_refused_with_the_reason(owner: Any, team: Team, real_model: BaseModel,
                                                                 dataset: Dataset, family: str, params: dict,
                                                                 words: str) -> None:
    done = run_with(team, owner, real_model, dataset, family, params)
    response = login(owner).post(reverse("run_export", args=[done.uuid]), follow=True)
    assert f"This method cannot be exported: {words}" in response.content.decode()
    assert not Artifact.objects.exists() and not export_dir(done.uuid).exists()


def test_a_failing_export_is_reported_and_leaves_nothing(owner: Any, team: Team, base_model: BaseModel,
                                                         dataset: Dataset, data_dir: Path) -> None:
    config_only = run_with(team, owner, base_model, dataset, "pi", {})  # no weights to load
    with pytest.raises(services.ExportRefused, match="Export failed"):
        services.export_checkpoint(owner, config_only)
    assert not Artifact.objects.exists()
    assert list((data_dir / "exports").iterdir()) == [], "no staging folder left behind"


def test_export_again_replaces_and_retry_removes_it(owner: Any, run: Run, django_capture_on_commit_callbacks: Any
                                                    ) -> None:
    services.export_checkpoint(owner, run)
    services.export_checkpoint(owner, run)
    assert Artifact.objects.filter(run=run, kind=CHECKPOINT).count() == 1
    Run.objects.filter(pk=run.pk).update(status=Run.Status.FAILED)
    run.refresh_from_db()
    old = export_dir(run.uuid)
    with django_capture_on_commit_callbacks(execute=True):
        services.retry_run(owner, run)
    assert not old.exists() and not Artifact.objects.exists()


def test_export_button_only_for_members_on_succeeded_runs(owner: Any, viewer: Any, experiment: Experiment) -> None:
    url = reverse("experiment_detail", args=[experiment.uuid])
    assert "Export checkpoint</button>" in login(owner).get(url).content.decode()
    assert "Export checkpoint</button>" not in login(viewer).get(url).content.decode()
    Run.objects.filter(experiment=experiment).update(status=Run.Status.FAILED)
    html = login(owner).get(url).content.decode()
    assert html.count('data-role="export" hidden') == 2


# --- the JSON API ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("who", "status"), [("owner", 201), ("teammate", 201), ("viewer", 403), ("outsider", 404)])
def test_api_export_needs_a_member(request: pytest.FixtureRequest, run: Run, who: str, status: int) -> None:
    client = token_client(request.getfixturevalue(who))
    assert client.get(reverse("api_run_export", args=[run.uuid])).status_code == 405
    response = client.post(reverse("api_run_export", args=[run.uuid]))
    assert response.status_code == status
    assert Artifact.objects.filter(run=run).count() == (1 if status == 201 else 0)
    if status == 201:
        assert response.json()["download"] == reverse("api_run_export_zip", args=[run.uuid])
        detail = client.get(reverse("api_run", args=[run.uuid])).json()
        assert detail["checkpoint"] == reverse("api_run_export_zip", args=[run.uuid])


def test_api_session_export_needs_csrf(owner: Any, run: Run) -> None:
    client = login(owner, enforce_csrf=True)
    response = client.post(reverse("api_run_export", args=[run.uuid]))
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]
    token = csrf_token(client, reverse("dashboard"))
    assert client.post(reverse("api_run_export", args=[run.uuid]), HTTP_X_CSRFTOKEN=token).status_code == 201


def test_api_export_of_an_unfinished_run_is_409(owner: Any, team: Team, real_model: BaseModel,
                                                dataset: Dataset) -> None:
    queued = run_with(team, owner, real_model, dataset, "pi", {}, status=Run.Status.QUEUED)
    response = token_client(owner).post(reverse("api_run_export", args=[queued.uuid]))
    assert response.status_code == 409 and "succeeded" in response.json()["detail"]


def test_api_download_round_trip(owner: Any, viewer: Any, outsider: Any, client: Client, team: Team,
                                 real_model: BaseModel, dataset: Dataset, tmp_path: Path) -> None:
    abf = run_with(team, owner, real_model, dataset, "base_change", {"extrapolation_length": 4096})
    url = reverse("api_run_export_zip", args=[abf.uuid])
    assert token_client(viewer).get(url).status_code == 404, "not exported yet"
    assert token_client(owner).post(reverse("api_run_export", args=[abf.uuid])).status_code == 201
    assert client.get(url).status_code == 401
    assert token_client(outsider).get(url).status_code == 404
    response = token_client(viewer).get(url)
    assert response.status_code == 200
    assert_same_logits(unzip(streamed(response), tmp_path / "api"), abf)
