"""The experiment list at scale: the dashboard and ``GET /api/v1/experiments/`` paginate, filter and search,
ignore bad filter values, never show another team's experiments, and cost the same queries at 3 or 60."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client
from django.urls import reverse

from experiments.models import BaseModel, Dataset, Experiment, Run, Team
from tests.web.factories import login
from tests.web.helpers import QUERIES, dashboard, names, token_client


def bulk_experiments(team: Team, user: Any, base_model: BaseModel, dataset: Dataset, n: int,
                     name: str = "Exp") -> list[Experiment]:
    """*n* experiments without runs, created in one query (newest last)."""
    return Experiment.objects.bulk_create([
        Experiment(team=team, created_by=user, name=f"{name} {i:03d}", base_model=base_model, dataset=dataset,
                   target_length=1024, eval_lengths=[256], training={"mode": "none"},
                   evaluations={"suite": ["perplexity"]})
        for i in range(n)
    ])


@pytest.fixture
def small_pages(settings: Any) -> int:
    settings.CONTEXTLAB_PAGE_SIZE = 5
    return 5


@pytest.fixture
def other_model(db: None, base_model: BaseModel) -> BaseModel:
    model = BaseModel(team=None, name="Other Llama", source=base_model.source)
    model.apply_facts(base_model.facts)
    model.save()
    return model


@pytest.fixture
def other_dataset(team: Team, dataset: Dataset) -> Dataset:
    return Dataset.objects.create(team=team, name="Other docs", kind="local", path=dataset.path, facts={})


@pytest.fixture
def mixed(team: Team, owner: Any, base_model: BaseModel, dataset: Dataset, other_model: BaseModel,
          other_dataset: Dataset) -> dict[str, Experiment]:
    """Four experiments differing in one thing each."""
    from tests.web.factories import make_experiment

    return {
        "plain": make_experiment(team, owner, base_model, dataset, runs=1, name="Plain question"),
        "model": make_experiment(team, owner, other_model, dataset, runs=1, name="Model question"),
        "data": make_experiment(team, owner, base_model, other_dataset, runs=1, name="Data question"),
        "failed": make_experiment(team, owner, base_model, dataset, runs=2, name="Failing YaRN",
                                  status=Run.Status.FAILED),
    }


# --- pagination -----------------------------------------------------------------------------------------------


def test_dashboard_pages_with_the_setting(owner: Any, team: Team, base_model: BaseModel, dataset: Dataset,
                                          small_pages: int) -> None:
    bulk_experiments(team, owner, base_model, dataset, 12)
    client = login(owner)
    first = dashboard(client)
    assert len(names(first)) == 5
    assert "page 1 of 3" in first and "12 experiments" in first
    assert 'href="?page=2"' in first
    third = names(dashboard(client, page=3))
    assert len(third) == 2
    seen = names(first) + names(dashboard(client, page=2)) + third
    assert sorted(seen) == [f"Exp {i:03d}" for i in range(12)], "every experiment exactly once"


@pytest.mark.parametrize("page", ["99", "-1", "0"])
def test_page_out_of_range_is_the_last(owner: Any, team: Team, base_model: BaseModel, dataset: Dataset,
                                       small_pages: int, page: str) -> None:
    bulk_experiments(team, owner, base_model, dataset, 7)
    html = dashboard(login(owner), page=page)
    assert "page 2 of 2" in html and len(names(html)) == 2


def test_malformed_page_is_the_first(owner: Any, team: Team, base_model: BaseModel, dataset: Dataset,
                                     small_pages: int) -> None:
    bulk_experiments(team, owner, base_model, dataset, 7)
    assert "page 1 of 2" in dashboard(login(owner), page="two")


def test_page_size_default_is_fifty() -> None:
    import os

    from django.conf import settings

    if os.environ.get("CONTEXTLAB_PAGE_SIZE"):
        pytest.skip("CONTEXTLAB_PAGE_SIZE is set in this environment")
    assert settings.CONTEXTLAB_PAGE_SIZE == 50


# --- filters and search ----------------------------------------------------------------------------------------


def test_each_filter(owner: Any, team: Team, mixed: dict[str, Experiment], base_model: BaseModel,
                     other_model: BaseModel, other_dataset: Dataset) -> None:
    client = login(owner)
    assert names(dashboard(client, base_model=other_model.pk)) == ["Model question"]
    assert names(dashboard(client, dataset=other_dataset.pk)) == ["Data question"]
    assert names(dashboard(client, status="failed")) == ["Failing YaRN"]
    assert set(names(dashboard(client, status="succeeded"))) == {"Plain question", "Model question", "Data question"}
    assert names(dashboard(client, status="running")) == []
    assert len(names(dashboard(client, team=team.pk))) == 4
    assert set(names(dashboard(client, base_model=base_model.pk, status="succeeded"))) == {"Plain question",
                                                                                        "Data question"}


def test_status_filter_matches_any_run_and_lists_once(owner: Any, team: Team, base_model: BaseModel,
                                                     dataset: Dataset) -> None:
    from tests.web.factories import make_experiment

    experiment = make_experiment(team, owner, base_model, dataset, runs=3, name="Mixed runs")
    Run.objects.filter(pk=experiment.runs.order_by("id").first().pk).update(status=Run.Status.FAILED)
    client = login(owner)
    assert names(dashboard(client, status="failed")) == ["Mixed runs"]
    assert names(dashboard(client, status="succeeded")) == ["Mixed runs"], "no duplicate row per run"
    html = dashboard(client, status="failed")
    assert "1 failed" in html and "2 done" in html, "the counts are the experiment's, not the filter's"


def test_name_search(owner: Any, mixed: dict[str, Experiment]) -> None:
    client = login(owner)
    assert set(names(dashboard(client, q="QUESTION"))) == {"Plain question", "Model question", "Data question"}
    assert names(dashboard(client, q="yarn")) == ["Failing YaRN"]
    assert names(dashboard(client, q="nothing like it")) == []
    assert "No experiments match these filters." in dashboard(client, q="nothing like it")


@pytest.mark.parametrize("field", ["team", "base_model", "dataset"])
@pytest.mark.parametrize("value", ["999999", "abc", "-3"])
def test_unknown_ids_are_ignored_with_a_message(owner: Any, mixed: dict[str, Experiment], field: str,
                                                value: str) -> None:
    html = dashboard(login(owner), **{field: value})
    assert len(names(html)) == 4, "the bad filter is ignored"
    assert 'data-role="filter-error"' in html and "ignored" in html


def test_unknown_status_is_ignored(owner: Any, mixed: dict[str, Experiment]) -> None:
    html = dashboard(login(owner), status="exploded")
    assert len(names(html)) == 4 and "Unknown run status: ignored." in html


def test_another_teams_id_is_unknown(owner: Any, outsider: Any, other_team: Team, mixed: dict[str, Experiment],
                                     base_model: BaseModel) -> None:
    html = dashboard(login(owner), team=other_team.pk)
    assert len(names(html)) == 4 and "Unknown team: ignored." in html
    private = Dataset.objects.create(team=other_team, name="Their docs", kind="local", path="/x", facts={})
    html = dashboard(login(owner), dataset=private.pk)
    assert "Unknown dataset: ignored." in html and "Their docs" not in html


def test_pagination_links_keep_the_filters(owner: Any, team: Team, base_model: BaseModel, dataset: Dataset,
                                           small_pages: int) -> None:
    bulk_experiments(team, owner, base_model, dataset, 8, name="Alpha")
    bulk_experiments(team, owner, base_model, dataset, 8, name="Beta")
    html = dashboard(login(owner), q="alpha", team=team.pk, page=1)
    assert "page 1 of 2" in html and "8 experiments" in html
    link = re.search(r'rel="next" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    query = parse_qs(urlsplit(link).query)
    assert query == {"page": ["2"], "q": ["alpha"], "team": [str(team.pk)]}
    second = names(dashboard(login(owner), **{k: v[0] for k, v in query.items()}))
    assert len(second) == 3 and all(name.startswith("Alpha") for name in second)


def test_bad_filters_are_not_kept_in_links(owner: Any, team: Team, base_model: BaseModel, dataset: Dataset,
                                           small_pages: int) -> None:
    bulk_experiments(team, owner, base_model, dataset, 8)
    html = dashboard(login(owner), base_model="999999", q="exp")
    link = re.search(r'rel="next" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    assert parse_qs(urlsplit(link).query) == {"page": ["2"], "q": ["exp"]}


# --- the row content ------------------------------------------------------------------------------------------


def test_rows_show_what_they_showed(owner: Any, mixed: dict[str, Experiment]) -> None:
    html = dashboard(login(owner), q="Failing")
    experiment = mixed["failed"]
    links = (reverse("experiment_csv", args=[experiment.uuid]), reverse("experiment_detail", args=[experiment.uuid]))
    for text in ("Failing YaRN", "Lab", "Tiny Llama", str(experiment.target_length), "2 failed", *links):
        assert text in html, text


# --- query counts -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("query", [{}, {"status": "succeeded", "q": "exp", "page": "2"}])
@pytest.mark.parametrize("url_name", ["dashboard", "api_experiments"])
def test_query_count_is_fixed(owner: Any, team: Team, base_model: BaseModel, dataset: Dataset, small_pages: int,
                              django_assert_num_queries: Any, query: dict[str, Any], url_name: str) -> None:
    from tests.web.factories import make_experiment

    client = login(owner) if url_name == "dashboard" else token_client(owner)
    for total in (3, 60):
        while Experiment.objects.count() < total:
            make_experiment(team, owner, base_model, dataset, runs=2, name=f"Exp {Experiment.objects.count()}",
                            lengths=(256,))
        with django_assert_num_queries(QUERIES[url_name]):
            response = client.get(reverse(url_name), query)
        assert response.status_code == 200


# --- the API ------------------------------------------------------------------------------------------------


def test_api_pages_with_links(owner: Any, team: Team, base_model: BaseModel, dataset: Dataset,
                              small_pages: int) -> None:
    bulk_experiments(team, owner, base_model, dataset, 12)
    client = token_client(owner)
    first = client.get(reverse("api_experiments")).json()
    assert first["count"] == 12 and len(first["results"]) == 5 and first["previous"] is None
    assert first["next"] == "http://testserver/api/v1/experiments/?page=2"
    assert first["experiments"] == first["results"], "the old key still lists the page"
    row = first["results"][0]
    assert set(row) >= {"id", "name", "team", "base_model", "dataset", "created", "runs", "url", "run_statuses"}
    seen = [r["name"] for r in first["results"]]
    page = first
    while page["next"]:
        page = client.get(page["next"]).json()
        seen += [r["name"] for r in page["results"]]
    assert sorted(seen) == [f"Exp {i:03d}" for i in range(12)]
    assert page["next"] is None and page["previous"] == "http://testserver/api/v1/experiments/?page=2"
    last = client.get(reverse("api_experiments"), {"page": "99"}).json()
    assert [r["name"] for r in last["results"]] == [r["name"] for r in page["results"]]


def test_api_filters_kept_in_links(owner: Any, team: Team, base_model: BaseModel, dataset: Dataset,
                                   small_pages: int) -> None:
    bulk_experiments(team, owner, base_model, dataset, 7, name="Alpha")
    bulk_experiments(team, owner, base_model, dataset, 7, name="Beta")
    client = token_client(owner)
    first = client.get(reverse("api_experiments"), {"q": "alph", "base_model": base_model.pk}).json()
    assert first["count"] == 7
    assert parse_qs(urlsplit(first["next"]).query) == {"q": ["alph"], "base_model": [str(base_model.pk)],
                                                       "page": ["2"]}
    second = client.get(first["next"]).json()
    assert [r["name"][:5] for r in second["results"]] == ["Alpha", "Alpha"]
    assert second["next"] is None
    assert parse_qs(urlsplit(second["previous"]).query) == {"q": ["alph"], "base_model": [str(base_model.pk)],
                                                            "page": ["1"]}


def test_api_each_filter(owner: Any, team: Team, mixed: dict[str, Experiment], other_model: BaseModel,
                         other_dataset: Dataset) -> None:
    client = token_client(owner)

    def listed(**query: Any) -> list[str]:
        response = client.get(reverse("api_experiments"), query)
        assert response.status_code == 200
        return sorted(r["name"] for r in response.json()["results"])

    assert listed(base_model=other_model.pk) == ["Model question"]
    assert listed(dataset=other_dataset.pk) == ["Data question"]
    assert listed(status="failed") == ["Failing YaRN"]
    assert listed(q="yarn") == ["Failing YaRN"]
    assert len(listed(team=team.pk)) == 4


def test_api_bad_filters_are_ignored_and_named(owner: Any, mixed: dict[str, Experiment]) -> None:
    response = token_client(owner).get(reverse("api_experiments"), {"team": "nope", "dataset": "999999",
                                                                     "status": "bad", "page": "x"})
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 4 and set(body["ignored_filters"]) == {"team", "dataset", "status"}
    assert "ignored_filters" not in token_client(owner).get(reverse("api_experiments")).json()


# --- permissions ----------------------------------------------------------------------------------------------


def test_outsider_never_sees_another_teams_experiments(owner: Any, outsider: Any, team: Team, other_team: Team,
                                                       base_model: BaseModel, dataset: Dataset,
                                                       small_pages: int) -> None:
    bulk_experiments(team, owner, base_model, dataset, 6, name="Secret")
    bulk_experiments(other_team, outsider, base_model, dataset, 2, name="Theirs")
    client = login(outsider)
    for query in ({}, {"q": "secret"}, {"team": team.pk}, {"base_model": base_model.pk}, {"page": "2"}):
        html = dashboard(client, **query)
        assert "Secret" not in html, query
    assert sorted(names(dashboard(client))) == ["Theirs 000", "Theirs 001"]
    api = token_client(outsider)
    for query in ({}, {"q": "secret"}, {"team": team.pk}, {"dataset": dataset.pk}, {"page": "2"}):
        body = api.get(reverse("api_experiments"), query).json()
        assert all(not r["name"].startswith("Secret") for r in body["results"]), query
        assert body["count"] <= 2, query
    mine = token_client(owner).get(reverse("api_experiments")).json()
    assert mine["count"] == 6 and all(r["name"].startswith("Secret") for r in mine["results"])


def test_anonymous_list_is_refused(client: Client, db: None) -> None:
    assert client.get(reverse("dashboard")).status_code == 302
    assert client.get(reverse("api_experiments")).status_code == 401
