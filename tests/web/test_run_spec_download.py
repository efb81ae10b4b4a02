"""The run's spec as a download: exactly what the worker builds, for the team only, replayable by the CLI."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from experiments import services
from experiments.models import Experiment, Run
from gpu_workers.cli import load_spec
from gpu_workers.spec import RunSpec
from tests.web.factories import login


def _run(experiment: Experiment) -> Run:
    return experiment.runs.select_related("method").order_by("id").first()


@pytest.mark.parametrize("who", ["owner", "teammate", "viewer"])
def test_team_downloads_the_spec_the_worker_would_receive(request: pytest.FixtureRequest, who: str,
                                                          experiment: Experiment) -> None:
    run = _run(experiment)
    response = login(request.getfixturevalue(who)).get(reverse("run_spec", args=[run.uuid]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["Content-Disposition"] == f'attachment; filename="run-{run.uuid}-spec.json"'
    data = json.loads(response.content)
    assert data == services.run_spec_for(run).to_json()
    spec = RunSpec.from_json(data)
    assert spec == services.run_spec_for(run)
    assert (spec.run_id, spec.method.family, spec.method.params) == (str(run.uuid), "pi", {"factor": 2.0})


def test_the_downloaded_file_is_what_the_cli_accepts(owner: Any, experiment: Experiment, tmp_path: Any) -> None:
    run = _run(experiment)
    path = tmp_path / "spec.json"
    path.write_bytes(login(owner).get(reverse("run_spec", args=[run.uuid])).content)
    assert load_spec(path) == services.run_spec_for(run)


def test_outsiders_get_404_and_anonymous_goes_to_login(client: Client, outsider: Any, experiment: Experiment) -> None:
    url = reverse("run_spec", args=[_run(experiment).uuid])
    assert login(outsider).get(url).status_code == 404
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_unknown_run_is_404_and_writes_are_refused(owner: Any, experiment: Experiment) -> None:
    client = login(owner)
    assert client.get(reverse("run_spec", args=["00000000-0000-0000-0000-000000000000"])).status_code == 404
    assert client.post(reverse("run_spec", args=[_run(experiment).uuid])).status_code == 405


def test_the_run_table_links_each_run_to_its_spec(viewer: Any, experiment: Experiment) -> None:
    html = login(viewer).get(reverse("experiment_detail", args=[experiment.uuid])).content.decode()
    for run in experiment.runs.all():
        assert f'href="{reverse("run_spec", args=[run.uuid])}"' in html
