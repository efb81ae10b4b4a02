"""Every page with an anonymous visitor, the owner, a teammate, a viewer and an outsider.

Outsiders get 404 for another team's objects, viewers 403 on writes, anonymous visitors the login
page; state-changing views are POST-only and pass Django's CSRF check only with a token.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.staticfiles import finders
from django.test import Client
from django.urls import reverse

from experiments.models import ApiToken, BaseModel, Dataset, Experiment, Measurement, Run
from tests.web.factories import login, make_experiment
from tests.web.helpers import composer_post, csrf_token

EXPERIMENT_PAGES = ("experiment_detail", "experiment_status", "experiment_csv")
OPEN_PAGES = ("dashboard", "model_list", "dataset_list", "method_list", "leaderboard", "leaderboard_csv", "token_list")
SUBMIT_PAGES = ("experiment_new", "model_new", "dataset_new")


def people(request: pytest.FixtureRequest, who: str) -> Any:
    return request.getfixturevalue(who)


# --- anonymous ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPEN_PAGES + SUBMIT_PAGES)
def test_anonymous_is_sent_to_login(client: Client, db: None, name: str) -> None:
    url = reverse(name)
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next={url}"


@pytest.mark.parametrize("name", EXPERIMENT_PAGES)
def test_anonymous_experiment_pages_redirect(client: Client, experiment: Experiment, name: str) -> None:
    response = client.get(reverse(name, args=[experiment.uuid]))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


@pytest.mark.parametrize("name", ("run_cancel", "run_retry", "token_revoke", "experiment_new", "model_new",
                                  "dataset_new", "token_list"))
def test_anonymous_cannot_post(client: Client, experiment: Experiment, owner: Any, name: str) -> None:
    if name == "token_revoke":
        url = reverse(name, args=[ApiToken.objects.create(user=owner, name="t", key_hash="x" * 64, prefix="x").pk])
    elif name.startswith("run_"):
        url = reverse(name, args=[experiment.runs.first().uuid])
    else:
        url = reverse(name)
    response = client.post(url)
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert Run.objects.filter(status=Run.Status.SUCCEEDED).count() == 2
    assert ApiToken.objects.count() == (1 if name == "token_revoke" else 0)


def test_login_page_renders(client: Client, db: None) -> None:
    assert client.get(reverse("login")).status_code == 200


# --- reading ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("who", "status"), [("owner", 200), ("teammate", 200), ("viewer", 200), ("outsider", 404)])
@pytest.mark.parametrize("name", EXPERIMENT_PAGES)
def test_experiment_pages_scoped_to_team(request: pytest.FixtureRequest, experiment: Experiment, who: str,
                                         status: int, name: str) -> None:
    response = login(people(request, who)).get(reverse(name, args=[experiment.uuid]))
    assert response.status_code == status


@pytest.mark.parametrize("who", ["owner", "teammate", "viewer", "outsider"])
@pytest.mark.parametrize("name", OPEN_PAGES)
def test_open_pages_render_for_everyone_logged_in(request: pytest.FixtureRequest, experiment: Experiment, who: str,
                                                  name: str) -> None:
    response = login(people(request, who)).get(reverse(name))
    assert response.status_code == 200
    body = b"".join(response.streaming_content) if response.streaming else response.content
    assert (experiment.name.encode() in body) == (who != "outsider" and name in ("dashboard", "leaderboard",
                                                                                  "leaderboard_csv"))


@pytest.mark.parametrize(("who", "status"), [("owner", 200), ("teammate", 200), ("viewer", 403), ("outsider", 200)])
@pytest.mark.parametrize("name", SUBMIT_PAGES)
def test_submit_pages_refuse_viewers(request: pytest.FixtureRequest, base_model: BaseModel, who: str, status: int,
                                     name: str) -> None:
    assert login(people(request, who)).get(reverse(name)).status_code == status


def test_experiment_page_has_chart_runs_and_local_plotly(owner: Any, experiment: Experiment) -> None:
    response = login(owner).get(reverse("experiment_detail", args=[experiment.uuid]))
    html = response.content.decode()
    assert 'id="ppl-chart"' in html
    assert "/static/vendor/plotly/plotly.min.js" in html
    assert "cdn" not in html.lower()
    for run in experiment.runs.all():
        assert f'data-run="{run.uuid}"' in html
    assert response.context["chart"]["original_context"] == 256
    assert set(response.context["chart"]["charts"]["series"]["perplexity"]) == {
        run.method.name for run in experiment.runs.all()}
    assert "series" not in response.context["chart"], "the perplexity series is embedded once, inside charts"


def test_plotly_is_served_locally(settings: Any, db: None) -> None:
    assert finders.find("vendor/plotly/plotly.min.js")
    settings.WHITENOISE_USE_FINDERS = True
    response = Client().get("/static/vendor/plotly/plotly.min.js")
    assert response.status_code == 200


def test_status_endpoint_payload(owner: Any, experiment: Experiment) -> None:
    data = login(owner).get(reverse("experiment_status", args=[experiment.uuid])).json()
    assert data["experiment"] == str(experiment.uuid)
    assert data["active"] is False and data["original_context"] == 256
    assert [r["status"] for r in data["runs"]] == ["succeeded", "succeeded"]
    name = experiment.runs.first().method.name
    assert data["charts"]["series"]["perplexity"][name][0][:2] == [256, 10.256]


def test_status_payload_sends_perplexity_series_once(owner: Any, experiment: Experiment) -> None:
    """The poll carries each perplexity point once: in ``charts.series.perplexity``, no top-level ``series``."""
    data = login(owner).get(reverse("experiment_status", args=[experiment.uuid])).json()
    assert "series" not in data

    def lists(value: Any) -> Any:
        if isinstance(value, list):
            yield value
            for item in value:
                yield from lists(item)
        elif isinstance(value, dict):
            for item in value.values():
                yield from lists(item)

    found = list(lists(data))
    points = [[m.context_length, m.value, m.ci_low, m.ci_high]
              for m in Measurement.objects.filter(run__experiment=experiment, metric="perplexity")]
    assert len(points) == 4
    for point in points:
        assert found.count(point) == 1, point
    by_run = data["charts"]["series"]["perplexity"]
    assert sorted(p for series in by_run.values() for p in series) == sorted(points)


def test_cancel_button_only_for_those_who_may(owner: Any, viewer: Any, experiment: Experiment) -> None:
    Run.objects.filter(experiment=experiment).update(status=Run.Status.RUNNING)
    url = reverse("experiment_detail", args=[experiment.uuid])
    assert "Cancel</button>" in login(owner).get(url).content.decode()
    assert "Cancel</button>" not in login(viewer).get(url).content.decode()


def test_leaderboard_team_filter_is_scoped(outsider: Any, owner: Any, team: Any, experiment: Experiment) -> None:
    assert login(outsider).get(reverse("leaderboard"), {"team": team.pk}).status_code == 404
    page = login(owner).get(reverse("leaderboard"), {"team": team.pk, "context_length": 512})
    assert page.status_code == 200
    assert [row.method.name for row in page.context["query"].rows] == ["pi ×2.0", "pi ×3.0"]


# --- writing ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("who", "status"), [("owner", 302), ("teammate", 302), ("viewer", 403), ("outsider", 404)])
def test_cancel(request: pytest.FixtureRequest, experiment: Experiment, who: str, status: int) -> None:
    run = experiment.runs.first()
    Run.objects.filter(pk=run.pk).update(status=Run.Status.QUEUED)
    client = login(people(request, who), enforce_csrf=True)
    token = csrf_token(client, reverse("dashboard"))
    response = client.post(reverse("run_cancel", args=[run.uuid]), {"csrfmiddlewaretoken": token})
    assert response.status_code == status
    run.refresh_from_db()
    assert run.status == (Run.Status.CANCELLED if status == 302 else Run.Status.QUEUED)
    if status == 302:
        assert response["Location"] == reverse("experiment_detail", args=[experiment.uuid])


@pytest.mark.parametrize(("who", "status"), [("owner", 302), ("teammate", 302), ("viewer", 403), ("outsider", 404)])
def test_retry(request: pytest.FixtureRequest, experiment: Experiment, who: str, status: int) -> None:
    run = experiment.runs.first()
    Run.objects.filter(pk=run.pk).update(status=Run.Status.FAILED, error="boom")
    client = login(people(request, who), enforce_csrf=True)
    token = csrf_token(client, reverse("dashboard"))
    response = client.post(reverse("run_retry", args=[run.uuid]), {"csrfmiddlewaretoken": token})
    assert response.status_code == status
    run.refresh_from_db()
    assert run.status == (Run.Status.QUEUED if status == 302 else Run.Status.FAILED)


@pytest.mark.parametrize("name", ("run_cancel", "run_retry"))
def test_state_changes_need_post_and_csrf(owner: Any, experiment: Experiment, name: str) -> None:
    run = experiment.runs.first()
    client = login(owner, enforce_csrf=True)
    url = reverse(name, args=[run.uuid])
    assert client.get(url).status_code == 405
    assert client.post(url).status_code == 403, "no CSRF token"


def test_composer_post_creates_and_enqueues(owner: Any, team: Any, base_model: BaseModel, dataset: Dataset,
                                           no_broker: Any, django_capture_on_commit_callbacks: Any) -> None:
    client = login(owner, enforce_csrf=True)
    token = csrf_token(client, reverse("experiment_new"))
    data = composer_post(team, base_model, dataset, rows=[{"family": "none"}, {"family": "yarn"}])
    assert client.post(reverse("experiment_new"), data).status_code == 403, "no CSRF token"
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("experiment_new"), {**data, "csrfmiddlewaretoken": token})
    experiment = Experiment.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("experiment_detail", args=[experiment.uuid])
    assert experiment.created_by == owner and experiment.runs.count() == 2
    assert no_broker.call_count == 2


def test_composer_post_errors_rerender_with_field_errors(owner: Any, team: Any, base_model: BaseModel,
                                                        dataset: Dataset) -> None:
    client = login(owner, enforce_csrf=True)
    token = csrf_token(client, reverse("experiment_new"))
    data = composer_post(team, base_model, dataset, rows=[{"family": "pi", "pi__factor": "0.5"}], eval_lengths="8")
    response = client.post(reverse("experiment_new"), {**data, "csrfmiddlewaretoken": token})
    assert response.status_code == 200
    html = response.content.decode()
    assert "Evaluation lengths must be at least 16 tokens (got 8)." in html
    assert 'data-field="pi__factor">Factor must be greater than 1' in html
    below = client.post(reverse("experiment_new"), {**data, "eval_lengths": "", "target_length": 100,
                                                    "csrfmiddlewaretoken": token})
    assert "Target length must be at least the model&#x27;s original context of 256 tokens." in below.content.decode()
    assert Experiment.objects.count() == 0


def test_composer_shows_family_param_inputs(owner: Any, base_model: BaseModel) -> None:
    html = login(owner).get(reverse("experiment_new")).content.decode()
    assert len(re.findall(r'<fieldset class="method-row', html)) == 5, "4 rows + the template row"
    assert 'name="methods-3-yarn__beta_fast"' in html
    assert 'data-family="dynamic_ntk"' in html
    assert "js/composer.js" in html


def test_model_registration(owner: Any, team: Any, model_dir: Any, tmp_path: Any) -> None:
    client = login(owner, enforce_csrf=True)
    token = csrf_token(client, reverse("model_new"))
    bad = client.post(reverse("model_new"), {"team": team.pk, "name": "X", "source": str(tmp_path / "missing"),
                                             "csrfmiddlewaretoken": token})
    assert bad.status_code == 200 and "No model directory at" in bad.content.decode()
    assert BaseModel.objects.count() == 0
    good = client.post(reverse("model_new"), {"team": team.pk, "name": "X", "source": str(model_dir),
                                              "csrfmiddlewaretoken": token})
    assert good.status_code == 302
    model = BaseModel.objects.get()
    assert (model.team, model.original_context, model.head_dim, model.rope_theta) == (team, 256, 32, 10000.0)


def test_dataset_registration(owner: Any, team: Any, data_file: Any) -> None:
    client = login(owner, enforce_csrf=True)
    token = csrf_token(client, reverse("dataset_new"))
    response = client.post(reverse("dataset_new"), {
        "team": team.pk, "name": "Docs", "kind": "local", "path": str(data_file), "text_field": "text",
        "source_field": "source", "csrfmiddlewaretoken": token,
    })
    assert response.status_code == 302
    assert Dataset.objects.get().facts["documents"] == 14


def test_viewer_cannot_register(viewer: Any, team: Any, model_dir: Any) -> None:
    response = login(viewer).post(reverse("model_new"), {"team": team.pk, "name": "X", "source": str(model_dir)})
    assert response.status_code == 403
    assert BaseModel.objects.count() == 0


def test_tokens_page_creates_shows_once_and_revokes(owner: Any, outsider: Any) -> None:
    client = login(owner, enforce_csrf=True)
    token = csrf_token(client, reverse("token_list"))
    response = client.post(reverse("token_list"), {"name": "laptop", "csrfmiddlewaretoken": token})
    key = response.context["new_key"]
    stored = ApiToken.objects.get()
    assert stored.key_hash == ApiToken.hash_key(key) and key not in stored.key_hash
    assert key not in client.get(reverse("token_list")).content.decode(), "shown once"
    assert login(outsider).post(reverse("token_revoke", args=[stored.pk])).status_code == 404, "tokens are personal"
    assert client.post(reverse("token_revoke", args=[stored.pk]), {"csrfmiddlewaretoken": token}).status_code == 302
    assert ApiToken.objects.count() == 0


def test_dashboard_counts_runs(owner: Any, team: Any, base_model: BaseModel, dataset: Dataset) -> None:
    make_experiment(team, owner, base_model, dataset, runs=3, name="Three", status=Run.Status.FAILED)
    html = login(owner).get(reverse("dashboard")).content.decode()
    assert "Three" in html and "3 failed" in html
