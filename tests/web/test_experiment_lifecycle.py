"""Issue 15, the experiment list's lifecycle: filter by method family and creation dates, archive and unarchive
(members and admins), delete (admins, never under an active run, in one transaction), and run again with changes
(the composer opened from an earlier experiment). Through the HTTP client, with the permission matrix: the author
(a member), a teammate (member), a viewer, an outsider and the team admin."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from experiments import lifecycle_services, rerun, selectors
from experiments.models import (
    Artifact,
    BaseModel,
    Dataset,
    Experiment,
    Measurement,
    Membership,
    Method,
    Run,
    RunAttempt,
    RunLogChunk,
    Team,
)
from gpu_workers.methods import validate
from tests.web.factories import login, make_experiment, make_user, method
from tests.web.helpers import QUERIES, composer_post, csrf_client, dashboard, form_values, names, post, token_client

PEOPLE = ("author", "teammate", "viewer", "outsider", "owner")
"""The experiment's author (a member), another member, a viewer, someone in another team, the team's admin."""


@pytest.fixture
def author(team: Team) -> Any:
    user = make_user("author")
    Membership.objects.create(user=user, team=team, role=Membership.Role.MEMBER)
    return user


@pytest.fixture
def zebra(team: Team, author: Any, owner: Any, teammate: Any, viewer: Any, outsider: Any, base_model: BaseModel,
          dataset: Dataset) -> Experiment:
    """The author's experiment (two PI runs measured at 256 and 512); everybody in the matrix exists."""
    return make_experiment(team, author, base_model, dataset, runs=2, name="Zebra question")


def api_names(user: Any, **query: Any) -> list[str]:
    response = token_client(user).get(reverse("api_experiments"), query)
    assert response.status_code == 200
    return sorted(row["name"] for row in response.json()["results"])


def set_created(experiment: Experiment, moment: datetime) -> None:
    Experiment.objects.filter(pk=experiment.pk).update(created=moment)


def archive(experiment: Experiment) -> None:
    Experiment.objects.filter(pk=experiment.pk).update(archived_at=timezone.now())


# --- filters: method family and creation dates ----------------------------------------------------------------


@pytest.fixture
def families(team: Team, owner: Any, base_model: BaseModel, dataset: Dataset) -> dict[str, Experiment]:
    """A PI experiment, a YaRN one, and one comparing both."""
    pi = make_experiment(team, owner, base_model, dataset, runs=1, name="PI only")
    yarn = make_experiment(team, owner, base_model, dataset, runs=0, name="YaRN only")
    Run.objects.create(experiment=yarn, method=method("yarn", 4.0))
    both = make_experiment(team, owner, base_model, dataset, runs=1, name="Both")
    Run.objects.create(experiment=both, method=method("yarn", 4.0), status=Run.Status.FAILED)
    return {"pi": pi, "yarn": yarn, "both": both}


def test_method_family_filter(owner: Any, families: dict[str, Experiment]) -> None:
    client = login(owner)
    assert sorted(names(dashboard(client, method_family="yarn"))) == ["Both", "YaRN only"]
    assert sorted(names(dashboard(client, method_family="pi"))) == ["Both", "PI only"]
    assert names(dashboard(client, method_family="longrope")) == []
    assert names(dashboard(client, method_family="yarn", status="failed")) == ["Both"]
    assert api_names(owner, method_family="yarn") == ["Both", "YaRN only"]
    html = dashboard(client)
    assert 'data-role="filter-method-family"' in html and '<option value="dynamic_ntk">' in html, \
        "every family of gpu_workers.methods is a choice"


def test_unknown_family_is_ignored_with_a_message(owner: Any, families: dict[str, Experiment]) -> None:
    html = dashboard(login(owner), method_family="warp_drive")
    assert len(names(html)) == 3 and "Unknown method family: ignored." in html
    body = token_client(owner).get(reverse("api_experiments"), {"method_family": "warp_drive"}).json()
    assert body["count"] == 3 and set(body["ignored_filters"]) == {"method_family"}


@pytest.fixture
def dated(team: Team, owner: Any, base_model: BaseModel, dataset: Dataset) -> None:
    for name, moment in (("January", datetime(2024, 1, 10, 12, tzinfo=UTC)),
                         ("February", datetime(2024, 2, 15, 0, 0, tzinfo=UTC)),
                         ("February late", datetime(2024, 2, 15, 23, 59, 59, tzinfo=UTC)),
                         ("March", datetime(2024, 3, 20, 12, tzinfo=UTC))):
        set_created(make_experiment(team, owner, base_model, dataset, runs=0, name=name), moment)


def test_date_range_is_inclusive(owner: Any, dated: None) -> None:
    client = login(owner)
    assert sorted(names(dashboard(client, created_from="2024-02-15"))) == ["February", "February late", "March"]
    assert sorted(names(dashboard(client, created_to="2024-02-15"))) == ["February", "February late", "January"]
    assert sorted(names(dashboard(client, created_from="2024-02-15", created_to="2024-02-15"))) == [
        "February", "February late"]
    assert names(dashboard(client, created_from="2025-01-01")) == []
    assert api_names(owner, created_from="2024-02-01", created_to="2024-02-29") == ["February", "February late"]
    assert len(names(dashboard(client, created_to="9999-12-31"))) == 4, "the last day there is"


@pytest.mark.parametrize("value", ["2024-13-01", "yesterday", "2024-02-30"])
def test_bad_date_is_ignored_with_a_message(owner: Any, dated: None, value: str) -> None:
    html = dashboard(login(owner), created_from=value, q="February")
    assert sorted(names(html)) == ["February", "February late"], "the other filters still apply"
    assert 'data-role="filter-error"' in html and "Not a date (use YYYY-MM-DD): ignored." in html
    body = token_client(owner).get(reverse("api_experiments"), {"created_to": value}).json()
    assert body["count"] == 4 and body["ignored_filters"] == {"created_to": ["Not a date (use YYYY-MM-DD): ignored."]}


def test_reversed_range_ignores_its_end(owner: Any, dated: None) -> None:
    html = dashboard(login(owner), created_from="2024-03-01", created_to="2024-01-31")
    assert names(html) == ["March"] and "Ends before “Created from”: ignored." in html


def test_links_keep_the_new_filters(owner: Any, team: Team, base_model: BaseModel, dataset: Dataset,
                                    settings: Any) -> None:
    settings.CONTEXTLAB_PAGE_SIZE = 2
    for i in range(3):
        make_experiment(team, owner, base_model, dataset, runs=1, name=f"Exp {i}")
    body = token_client(owner).get(reverse("api_experiments"), {
        "method_family": "pi", "created_from": "2000-01-01", "created_to": "2999-12-31", "archived": "include",
        "created": "ignored: not a filter"}).json()
    assert parse_qs(urlsplit(body["next"]).query) == {
        "method_family": ["pi"], "created_from": ["2000-01-01"], "created_to": ["2999-12-31"],
        "archived": ["include"], "page": ["2"]}


@pytest.mark.parametrize("url_name", ["dashboard", "api_experiments"])
def test_query_count_is_fixed_with_the_new_filters(owner: Any, team: Team, base_model: BaseModel, dataset: Dataset,
                                                   settings: Any, django_assert_num_queries: Any,
                                                   url_name: str) -> None:
    settings.CONTEXTLAB_PAGE_SIZE = 5
    client = login(owner) if url_name == "dashboard" else token_client(owner)
    query = {"method_family": "pi", "created_from": "2000-01-01", "created_to": "2999-12-31", "archived": "include",
             "page": "2"}
    for total in (3, 30):
        while Experiment.objects.count() < total:
            made = make_experiment(team, owner, base_model, dataset, runs=2, lengths=(256,),
                                   name=f"Exp {Experiment.objects.count()}")
            if Experiment.objects.count() % 3 == 0:
                archive(made)
        with django_assert_num_queries(QUERIES[url_name]):
            response = client.get(reverse(url_name), query)
        assert response.status_code == 200


# --- archive and unarchive: who may -----------------------------------------------------------------------------


ARCHIVE_STATUS = {"author": 302, "teammate": 302, "owner": 302, "viewer": 403, "outsider": 404}


@pytest.mark.parametrize("who", PEOPLE)
def test_archive_permissions(request: pytest.FixtureRequest, zebra: Experiment, who: str) -> None:
    client, token = csrf_client(request.getfixturevalue(who))
    response = post(client, token, reverse("experiment_archive", args=[zebra.uuid]))
    assert response.status_code == ARCHIVE_STATUS[who]
    zebra.refresh_from_db()
    assert (zebra.archived_at is not None) == (ARCHIVE_STATUS[who] == 302)
    if response.status_code == 302:
        assert response["Location"] == reverse("experiment_detail", args=[zebra.uuid])
        page = client.get(response["Location"]).content.decode()
        assert "Archived “Zebra question”" in page and 'data-role="archived-badge"' in page


@pytest.mark.parametrize("who", PEOPLE)
def test_unarchive_permissions(request: pytest.FixtureRequest, zebra: Experiment, who: str) -> None:
    archive(zebra)
    client, token = csrf_client(request.getfixturevalue(who))
    response = post(client, token, reverse("experiment_unarchive", args=[zebra.uuid]))
    assert response.status_code == ARCHIVE_STATUS[who]
    zebra.refresh_from_db()
    assert (zebra.archived_at is None) == (ARCHIVE_STATUS[who] == 302)
    if response.status_code == 302:
        page = client.get(response["Location"]).content.decode()
        assert "Unarchived “Zebra question”" in page and 'data-role="archived-badge"' not in page


def test_archiving_twice_says_so(author: Any, zebra: Experiment) -> None:
    client, token = csrf_client(author)
    post(client, token, reverse("experiment_archive", args=[zebra.uuid]))
    first = Experiment.objects.get(pk=zebra.pk).archived_at
    page = client.get(post(client, token, reverse("experiment_archive", args=[zebra.uuid]))["Location"])
    assert "was already archived" in page.content.decode()
    assert Experiment.objects.get(pk=zebra.pk).archived_at == first, "the first date stays"
    page = client.get(post(client, token, reverse("experiment_unarchive", args=[zebra.uuid]))["Location"])
    page = client.get(post(client, token, reverse("experiment_unarchive", args=[zebra.uuid]))["Location"])
    assert "was not archived" in page.content.decode()


@pytest.mark.parametrize("name", ["experiment_archive", "experiment_unarchive"])
def test_archive_is_post_only_with_csrf(owner: Any, zebra: Experiment, name: str) -> None:
    url = reverse(name, args=[zebra.uuid])
    assert login(owner).get(url).status_code == 405
    assert login(owner, enforce_csrf=True).post(url).status_code == 403, "no CSRF token"
    assert Client().post(url).status_code == 302, "anonymous: to the login page"
    zebra.refresh_from_db()
    assert zebra.archived_at is None


def test_unknown_experiment_is_404(owner: Any, zebra: Experiment) -> None:
    client, token = csrf_client(owner)
    for name in ("experiment_archive", "experiment_unarchive", "experiment_delete"):
        assert post(client, token, reverse(name, args=["00000000-0000-0000-0000-000000000000"])).status_code == 404


# --- archived experiments: hidden from lists and the leaderboard, reachable and exported ------------------------


def test_archived_hidden_from_lists_by_default(author: Any, zebra: Experiment, team: Team, base_model: BaseModel,
                                               dataset: Dataset) -> None:
    make_experiment(team, author, base_model, dataset, runs=1, name="Kept question")
    archive(zebra)
    client = login(author)
    assert names(dashboard(client)) == ["Kept question"]
    assert api_names(author) == ["Kept question"]
    assert sorted(names(dashboard(client, archived="include"))) == ["Kept question", "Zebra question"]
    assert names(dashboard(client, archived="only")) == ["Zebra question"]
    assert api_names(author, archived="include") == ["Kept question", "Zebra question"]
    assert api_names(author, archived="only") == ["Zebra question"]
    html = dashboard(client, archived="include")
    assert html.count('data-role="archived-badge"') == 1 and 'data-role="filter-archived"' in html
    rows = token_client(author).get(reverse("api_experiments"), {"archived": "include"}).json()["results"]
    assert {row["name"]: row["archived_at"] is not None for row in rows} == {"Kept question": False,
                                                                             "Zebra question": True}
    bad = dashboard(client, archived="everything")
    assert names(bad) == ["Kept question"] and "Unknown archived choice" in bad


def test_archived_stays_reachable_and_exported(author: Any, zebra: Experiment) -> None:
    archive(zebra)
    client = login(author)
    page = client.get(reverse("experiment_detail", args=[zebra.uuid]))
    assert page.status_code == 200 and 'data-role="archived-badge"' in page.content.decode()
    csv = b"".join(client.get(reverse("experiment_csv", args=[zebra.uuid])).streaming_content).decode()
    assert csv.count("Zebra question") == 4, "two runs × two lengths"
    api = token_client(author)
    detail = api.get(reverse("api_experiment", args=[zebra.uuid])).json()
    assert detail["name"] == "Zebra question" and detail["archived_at"] and len(detail["runs"]) == 2
    api_csv = b"".join(api.get(reverse("api_experiment_csv", args=[zebra.uuid])).streaming_content).decode()
    assert api_csv.count("Zebra question") == 4


def test_archived_left_out_of_the_leaderboard(owner: Any, team: Team, zebra: Experiment, base_model: BaseModel,
                                              dataset: Dataset) -> None:
    kept = make_experiment(team, owner, base_model, dataset, runs=2, name="Kept", lengths=(256, 1024))
    client = login(owner)

    def board(length: int) -> Any:
        response = client.get(reverse("leaderboard"), {"base_model": base_model.pk, "context_length": length})
        assert response.status_code == 200
        return response.context["query"]

    before = board(256)
    assert before.lengths == [256, 512, 1024] and [row.runs for row in before.rows] == [2, 2]
    archive(zebra)
    after = board(256)
    assert after.lengths == [256, 1024], "512 was measured only by the archived experiment"
    assert [row.runs for row in after.rows] == [1, 1]
    assert {name for row in after.rows for _, name in row.experiments} == {kept.name}
    assert board(512).rows == []
    teams = Team.objects.filter(pk=team.pk)
    assert selectors.leaderboard_lengths(teams, base_model) == [256, 1024]
    assert [p.runs for p in selectors.leaderboard_protocols(teams, base_model, 256, "perplexity")] == [2]


# --- delete ------------------------------------------------------------------------------------------------------


DELETE_STATUS = {"author": 403, "teammate": 403, "viewer": 403, "outsider": 404, "owner": 302}


def with_everything(experiment: Experiment) -> Run:
    """An artifact, an attempt and log chunks on the experiment's first run."""
    run = experiment.runs.order_by("id").first()
    Artifact.objects.create(run=run, kind="figure", path="/tmp/figure.png")
    RunAttempt.objects.create(run=run, number=1, task_id=run.uuid, started_at=timezone.now(),
                              outcome=Run.Status.SUCCEEDED)
    RunLogChunk.objects.create(run=run, attempt=1, text="loading\nevaluating\n")
    RunLogChunk.objects.create(run=run, attempt=1, text="done\n")
    return run


def rows_of(experiment: Experiment) -> dict[str, int]:
    return {
        "runs": Run.objects.filter(experiment=experiment).count(),
        "measurements": Measurement.objects.filter(run__experiment=experiment).count(),
        "artifacts": Artifact.objects.filter(run__experiment=experiment).count(),
        "attempts": RunAttempt.objects.filter(run__experiment=experiment).count(),
        "log_chunks": RunLogChunk.objects.filter(run__experiment=experiment).count(),
    }


@pytest.mark.parametrize("who", PEOPLE)
def test_delete_confirmation_page(request: pytest.FixtureRequest, zebra: Experiment, who: str) -> None:
    response = login(request.getfixturevalue(who)).get(reverse("experiment_delete", args=[zebra.uuid]))
    assert response.status_code == {**DELETE_STATUS, "owner": 200}[who]
    if who == "owner":
        html = response.content.decode()
        assert '<span data-role="delete-runs">2</span> runs' in html
        assert '<span data-role="delete-measurements">4</span> measurements' in html
        assert 'data-role="confirm-delete"' in html and 'data-role="cancel-delete"' in html
        assert 'data-role="delete-blocked"' not in html
    assert Experiment.objects.filter(pk=zebra.pk).exists(), "a GET deletes nothing"


@pytest.mark.parametrize("who", PEOPLE)
def test_delete_permissions(request: pytest.FixtureRequest, zebra: Experiment, who: str) -> None:
    with_everything(zebra)
    client, token = csrf_client(request.getfixturevalue(who))
    response = post(client, token, reverse("experiment_delete", args=[zebra.uuid]))
    assert response.status_code == DELETE_STATUS[who]
    assert Experiment.objects.filter(pk=zebra.pk).exists() == (who != "owner")
    if who == "owner":
        assert response["Location"] == reverse("dashboard")
        page = client.get(response["Location"]).content.decode()
        assert "Deleted “Zebra question” with its 2 runs and 4 measurements." in page
        assert "Zebra question</a>" not in page


def test_delete_removes_everything_of_the_experiment_only(owner: Any, team: Team, zebra: Experiment,
                                                          base_model: BaseModel, dataset: Dataset) -> None:
    other = make_experiment(team, owner, base_model, dataset, runs=2, name="Other")
    with_everything(zebra)
    with_everything(other)
    methods = Method.objects.count()
    untouched = rows_of(other)
    assert rows_of(zebra) == {"runs": 2, "measurements": 4, "artifacts": 1, "attempts": 1, "log_chunks": 2}
    deleted = lifecycle_services.delete_experiment(owner, zebra)
    assert deleted == lifecycle_services.Deleted(runs=2, measurements=4, artifacts=1, attempts=1, log_chunks=2)
    assert not Experiment.objects.filter(pk=zebra.pk).exists()
    assert rows_of(zebra) == dict.fromkeys(untouched, 0)
    assert rows_of(other) == untouched and Method.objects.count() == methods, "methods stay"


def test_delete_is_one_transaction(owner: Any, zebra: Experiment) -> None:
    """A failure after the measurements went (here: building the summary) puts everything back."""
    with_everything(zebra)
    before = rows_of(zebra)
    with (
        mock.patch.object(lifecycle_services, "Deleted", side_effect=RuntimeError("disk on fire")),
        pytest.raises(RuntimeError),
    ):
        lifecycle_services.delete_experiment(owner, zebra)
    assert rows_of(zebra) == before and Experiment.objects.filter(pk=zebra.pk).exists()


@pytest.mark.parametrize("status", [Run.Status.QUEUED, Run.Status.RUNNING])
def test_delete_refused_while_a_run_is_active(owner: Any, zebra: Experiment, status: str) -> None:
    Run.objects.filter(pk=zebra.runs.order_by("id").first().pk).update(status=status)
    before = rows_of(zebra)
    client, token = csrf_client(owner)
    confirm = client.get(reverse("experiment_delete", args=[zebra.uuid])).content.decode()
    assert 'data-role="delete-blocked"' in confirm and "cancel it first" in confirm
    assert 'data-role="confirm-delete"' not in confirm
    response = post(client, token, reverse("experiment_delete", args=[zebra.uuid]))
    assert response.status_code == 302 and response["Location"] == reverse("experiment_detail", args=[zebra.uuid])
    page = client.get(response["Location"]).content.decode()
    assert "was not deleted: 1 run is queued or running: cancel them first" in page
    assert rows_of(zebra) == before and Experiment.objects.filter(pk=zebra.pk).exists()
    with pytest.raises(lifecycle_services.LifecycleRefused, match="cancel them first"):
        lifecycle_services.delete_experiment(owner, zebra)


def test_delete_other_methods_are_refused(owner: Any, zebra: Experiment) -> None:
    response = login(owner).put(reverse("experiment_delete", args=[zebra.uuid]))
    assert response.status_code == 405
    assert login(owner, enforce_csrf=True).post(reverse("experiment_delete", args=[zebra.uuid])).status_code == 403
    assert Experiment.objects.filter(pk=zebra.pk).exists()


# --- the experiment page's buttons -------------------------------------------------------------------------------


BUTTONS = {
    "author": {"archive", "rerun"},
    "teammate": {"archive", "rerun"},
    "viewer": set(),
    "owner": {"archive", "rerun", "delete"},
}


@pytest.mark.parametrize("who", ["author", "teammate", "viewer", "owner"])
@pytest.mark.parametrize("archived", [False, True])
def test_buttons_only_for_those_allowed(request: pytest.FixtureRequest, zebra: Experiment, who: str,
                                        archived: bool) -> None:
    if archived:
        archive(zebra)
    html = login(request.getfixturevalue(who)).get(reverse("experiment_detail", args=[zebra.uuid])).content.decode()
    shown = {role for role in ("archive", "unarchive", "delete", "rerun") if f'data-role="{role}"' in html}
    expected = set(BUTTONS[who])
    if archived and "archive" in expected:
        expected = expected - {"archive"} | {"unarchive"}
    assert shown == expected
    if "rerun" in shown:
        assert f'href="{reverse("experiment_new")}?from={zebra.uuid}"' in html
    if "delete" in shown:
        assert f'href="{reverse("experiment_delete", args=[zebra.uuid])}"' in html


def test_a_viewer_who_submits_elsewhere_may_rerun_there(viewer: Any, other_team: Team, zebra: Experiment) -> None:
    Membership.objects.create(user=viewer, team=other_team, role=Membership.Role.MEMBER)
    client = login(viewer)
    html = client.get(reverse("experiment_detail", args=[zebra.uuid])).content.decode()
    assert 'data-role="rerun"' in html and 'data-role="archive"' not in html
    page = client.get(reverse("experiment_new"), {"from": str(zebra.uuid)})
    assert page.status_code == 200
    assert form_values(page.content.decode())["team"] == str(other_team.pk), "a team they may submit to"


# --- run again with changes --------------------------------------------------------------------------------------


ROWS = [
    {"family": "none"},
    {"family": "pi", "pi__factor": "3"},
    {"family": "yarn", "yarn__factor": "3", "yarn__beta_fast": "16"},
    {"family": "dynamic_ntk", "dynamic_ntk__log_n": "on"},
]
TRAINING = {"train-mode": "finetune", "train-steps": 30, "train-lora": "on", "train-learning_rate": 0.001,
            "train-data_strategy": "global", "train-keep_short_p": 1.0, "train-upsample_sources": "code, prose"}


@pytest.fixture
def source(author: Any, team: Team, base_model: BaseModel, dataset: Dataset, no_broker: Any) -> Experiment:
    """An experiment made through the composer, with settings off the defaults everywhere."""
    data = composer_post(team, base_model, dataset, rows=ROWS, name="Does YaRN beat PI?", eval_lengths="256, 1024",
                         eval_documents=3, **{"eval-suite": ["perplexity", "passkey"], "eval-passkey_samples": 7,
                                              "eval-passkey_depth": "0.5", "eval-needle_depths": "0, 0.5, 1"},
                         **TRAINING)
    response = login(author).post(reverse("experiment_new"), data)
    assert response.status_code == 302, response.context and response.context["composer"].errors()
    return Experiment.objects.get(name="Does YaRN beat PI?")


def test_rerun_prefills_the_composer(author: Any, team: Team, source: Experiment, base_model: BaseModel,
                                     dataset: Dataset) -> None:
    page = login(author).get(reverse("experiment_new"), {"from": str(source.uuid)})
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-role="rerun-of"' in html and "Does YaRN beat PI?" in html
    values = form_values(html)
    assert {k: values[k] for k in ("team", "name", "base_model", "dataset", "target_length", "eval_lengths",
                                   "eval_documents")} == {
        "team": str(team.pk), "name": "Does YaRN beat PI? (rerun)", "base_model": str(base_model.pk),
        "dataset": str(dataset.pk), "target_length": "1024", "eval_lengths": "256, 1024", "eval_documents": "3"}
    assert values["eval-suite"] == ["perplexity", "passkey"]
    assert values["eval-passkey_samples"] == "7" and values["eval-passkey_depth"] == "0.5"
    assert values["eval-needle_depths"] == "0, 0.5, 1"
    assert {k: values.get(k) for k in ("train-mode", "train-steps", "train-lora", "train-learning_rate",
                                       "train-data_strategy", "train-upsample_sources")} == {
        "train-mode": "finetune", "train-steps": "30", "train-lora": "on", "train-learning_rate": "0.001",
        "train-data_strategy": "global", "train-upsample_sources": "code, prose"}
    # The method rows: the source's families in run order, the parameters typed in as they were.
    composer = page.context["composer"]
    assert values["methods-TOTAL_FORMS"] == "4"
    assert [values[f"methods-{i}-family"] for i in range(4)] == ["none", "pi", "yarn", "dynamic_ntk"]
    assert values["methods-1-pi__factor"] == "3"
    assert values["methods-2-yarn__factor"] == "3" and values["methods-2-yarn__beta_fast"] == "16"
    assert values["methods-2-yarn__attention_factor"] == "", "derived from the factor: left to derive again"
    assert values["methods-3-dynamic_ntk__log_n"] == "on"
    facts = base_model.rope_facts()
    runs = list(source.runs.select_related("method").order_by("id"))
    for row, run in zip(composer.methods.forms, runs, strict=True):
        family = row.initial["family"]
        typed = {key.split("__", 1)[1]: value for key, value in row.initial.items() if "__" in key}
        assert family == run.method.family
        assert validate(family, typed, facts, source.target_length) == run.method.params, family


def test_rerun_posted_as_opened_is_a_new_experiment(author: Any, source: Experiment, no_broker: Any) -> None:
    client = login(author, enforce_csrf=True)
    data = form_values(client.get(reverse("experiment_new"), {"from": str(source.uuid)}).content.decode())
    response = client.post(f"{reverse('experiment_new')}?from={source.uuid}", data)
    assert response.status_code == 302, response.context and response.context["composer"].errors()
    copy = Experiment.objects.exclude(pk=source.pk).get()
    assert response["Location"] == reverse("experiment_detail", args=[copy.uuid])
    assert copy.name == "Does YaRN beat PI? (rerun)" and copy.created_by == author
    for attribute in ("team_id", "base_model_id", "dataset_id", "target_length", "eval_lengths", "eval_documents",
                      "training", "evaluations"):
        assert getattr(copy, attribute) == getattr(source, attribute), attribute

    def methods(experiment: Experiment) -> list[int]:
        return list(experiment.runs.order_by("id").values_list("method_id", flat=True))

    assert methods(copy) == methods(source), "the same Method rows, in the same order"
    source.refresh_from_db()
    assert source.name == "Does YaRN beat PI?" and source.runs.count() == 4, "the source is untouched"


def test_rerun_with_changes(author: Any, source: Experiment, no_broker: Any) -> None:
    """A changed target re-derives what was derived (PI stays ×3 as typed, YaRN's attention factor follows)."""
    client = login(author)
    data = form_values(client.get(reverse("experiment_new"), {"from": str(source.uuid)}).content.decode())
    data.update({"target_length": "2048", "eval_lengths": "256, 512", "name": "Longer"})
    response = client.post(reverse("experiment_new"), data)
    assert response.status_code == 302, response.context and response.context["composer"].errors()
    copy = Experiment.objects.get(name="Longer")
    params = {run.method.family: run.method.params for run in copy.runs.select_related("method")}
    assert params["pi"] == {"factor": 3.0}
    assert params["yarn"]["factor"] == 3.0 and params["yarn"]["beta_fast"] == 16.0
    assert Experiment.objects.filter(pk=source.pk, target_length=1024).exists()


@pytest.mark.parametrize("which", ["unknown", "malformed", "another team's"])
def test_rerun_of_nothing_visible_opens_the_plain_composer(author: Any, outsider: Any, other_team: Team,
                                                           base_model: BaseModel, dataset: Dataset,
                                                           which: str) -> None:
    theirs = make_experiment(other_team, outsider, base_model, dataset, runs=1, name="Their secret")
    wanted = {"unknown": "00000000-0000-0000-0000-000000000000", "malformed": "not-a-uuid",
              "another team's": str(theirs.uuid)}[which]
    page = login(author).get(reverse("experiment_new"), {"from": wanted})
    assert page.status_code == 200
    html = page.content.decode()
    assert "There is no experiment of yours to run again at that address" in html
    assert "Their secret" not in html and 'data-role="rerun-of"' not in html
    assert form_values(html)["name"] == "none vs PI vs Dynamic NTK vs YaRN @ 1,024", "the usual defaults"


def test_rerun_of_a_factory_experiment_and_archived_one(author: Any, zebra: Experiment) -> None:
    """Experiments not made by the composer (no suite stored, shared methods) and archived ones open too."""
    archive(zebra)
    page = login(author).get(reverse("experiment_new"), {"from": str(zebra.uuid)})
    assert page.status_code == 200
    values = form_values(page.content.decode())
    assert values["name"] == "Zebra question (rerun)" and values["eval-suite"] == ["perplexity"]
    assert [values[f"methods-{i}-family"] for i in range(2)] == ["pi", "pi"]
    assert [values["methods-0-pi__factor"], values["methods-1-pi__factor"]] == ["", "3"], \
        "×2 is what a blank factor derives at a 512-token target; ×3 is typed"
    assert values["train-mode"] == "none"


def test_viewer_only_cannot_open_the_composer(viewer: Any, zebra: Experiment) -> None:
    assert login(viewer).get(reverse("experiment_new"), {"from": str(zebra.uuid)}).status_code == 403


def test_rerun_helpers(base_model: BaseModel) -> None:
    facts = base_model.rope_facts()
    yarn = validate("yarn", {"factor": 3, "beta_fast": 16}, facts, 1024)
    assert rerun.typed_params("yarn", yarn, facts, 1024) == {"factor": 3.0, "beta_fast": 16.0}
    assert rerun.typed_params("pi", validate("pi", {}, facts, 1024), facts, 1024) == {}
    assert rerun.typed_params("pi", {"factor": 3.0, "nonsense": 1}, facts, 1024) == {"factor": 3.0, "nonsense": 1}
    assert rerun.rerun_name("x" * 200) == "x" * 192 + " (rerun)"
