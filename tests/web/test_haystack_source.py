"""The needle haystack source as a user meets it: the dataset form and page, the API, the run and the chart."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from django.utils import timezone

from experiments import selectors, services, worker
from experiments.composer import Composer
from experiments.models import BaseModel, Dataset, Measurement, Run
from tests.web.factories import login, make_experiment
from tests.web.helpers import composer_post, csrf_token, token_client


def _register(client: Any, team: Any, data_file: Any, **fields: Any) -> Any:
    token = csrf_token(client, reverse("dataset_new"))
    return client.post(reverse("dataset_new"), {
        "team": team.pk, "name": "Docs", "kind": "local", "path": str(data_file), "text_field": "text",
        "source_field": "source", "csrfmiddlewaretoken": token, **fields,
    })


def test_a_source_the_data_lacks_is_refused_on_its_field_and_nothing_is_saved(owner: Any, team: Any,
                                                                              data_file: Any) -> None:
    client = login(owner, enforce_csrf=True)
    page = client.get(reverse("dataset_new")).content.decode()
    assert 'name="haystack_source"' in page and '<option value="prose">' in page, "the demo corpus's sources offered"
    response = _register(client, team, data_file, haystack_source="poetry")
    assert response.status_code == 200
    assert response.context["form"].errors["haystack_source"] == [
        "The data has no documents from source “poetry”. Its sources: “code”, “prose”; or “all”."]
    assert 'data-field="haystack_source"' in response.content.decode()
    assert Dataset.objects.count() == 0
    assert _register(client, team, data_file, haystack_source=" prose ").status_code == 302
    dataset = Dataset.objects.get()
    assert dataset.haystack_source == "prose" and dataset.spec().haystack == "prose"


def test_blank_means_every_document_for_a_users_data(owner: Any, team: Any, data_file: Any) -> None:
    assert _register(login(owner, enforce_csrf=True), team, data_file).status_code == 302
    dataset = Dataset.objects.get()
    assert dataset.haystack_source == "" and dataset.haystack == "all"
    assert Dataset(kind=Dataset.Kind.BUILTIN).haystack == "prose"


def test_the_dataset_page_shows_the_source_and_members_change_it(owner: Any, viewer: Any, outsider: Any,
                                                                 dataset: Dataset) -> None:
    dataset.facts = {"documents": 14, "docs_by_source": {"code": 7, "prose": 7}}
    dataset.save()
    client = login(owner, enforce_csrf=True)
    url = reverse("dataset_detail", args=[dataset.pk])
    page = client.get(url).content.decode()
    assert 'data-role="haystack-source">all' in page and 'value="prose"' in page and 'value="code"' in page
    token = client.cookies["csrftoken"].value
    post = reverse("dataset_haystack", args=[dataset.pk])
    bad = client.post(post, {"haystack_source": "poetry", "csrfmiddlewaretoken": token})
    assert bad.status_code == 400 and 'data-field="haystack_source"' in bad.content.decode()
    assert "Select a valid choice" in bad.content.decode()
    dataset.refresh_from_db()
    assert dataset.haystack_source == ""
    assert client.post(post, {"haystack_source": "prose", "csrfmiddlewaretoken": token}).status_code == 302
    dataset.refresh_from_db()
    assert dataset.haystack_source == "prose"
    assert 'data-role="haystack-source">prose' in client.get(url).content.decode()
    assert login(viewer).post(post, {"haystack_source": "code"}).status_code == 403
    assert 'id="haystack-form"' not in login(viewer).get(url).content.decode()
    assert login(outsider).post(post, {"haystack_source": "code"}).status_code == 404
    assert login(owner).get(post).status_code == 405
    dataset.refresh_from_db()
    assert dataset.haystack_source == "prose"


def test_a_shared_dataset_is_changed_by_staff_only(owner: Any, db: None) -> None:
    shared = Dataset.objects.create(name="Demo corpus", kind=Dataset.Kind.BUILTIN,
                                    facts={"docs_by_source": {"code": 18, "prose": 693}})
    post = reverse("dataset_haystack", args=[shared.pk])
    assert login(owner).post(post, {"haystack_source": "code"}).status_code == 403
    owner.is_staff = True
    owner.save()
    assert login(owner).post(post, {"haystack_source": "code"}).status_code == 302
    shared.refresh_from_db()
    assert shared.haystack_source == "code"


def test_the_api_lists_the_haystack_source(owner: Any, dataset: Dataset) -> None:
    dataset.haystack_source = "prose"
    dataset.save()
    rows = token_client(owner).get(reverse("api_datasets")).json()["datasets"]
    assert [(d["haystack_source"], d["haystack"]) for d in rows] == [("prose", "prose")]


def test_the_composer_counts_only_the_haystack_sources_tokens(owner: Any, team: Any, base_model: BaseModel,
                                                              dataset: Dataset) -> None:
    dataset.haystack_source = "poetry"  # e.g. set before the data changed
    dataset.save()
    composer = Composer(owner, composer_post(team, base_model, dataset))
    assert not composer.is_valid()
    assert any("no documents from source 'poetry'" in e for e in composer.form.errors["dataset"])


def test_a_run_records_the_source_it_read_and_the_heatmap_says_so(owner: Any, team: Any, base_model: BaseModel,
                                                                  dataset: Dataset) -> None:
    dataset.haystack_source = "prose"
    dataset.save()
    experiment = make_experiment(team, owner, base_model, dataset, runs=2, status=Run.Status.RUNNING)
    experiment.evaluations = {"suite": ["needle"]}
    experiment.save()
    first, second = experiment.runs.order_by("id")
    spec = services.run_spec_for(first)
    assert spec.dataset.haystack_source == "prose"
    worker.record_haystack_source(str(first.uuid), spec)
    first.refresh_from_db()
    assert first.haystack_source == "prose"
    dataset.haystack_source = "code"  # a later change does not rewrite what the first run used
    dataset.save()
    worker.record_haystack_source(str(second.uuid), services.run_spec_for(second))
    for run, exact in ((first, 1.0), (second, 0.5)):
        Measurement.objects.create(run=run, metric="needle_exact", value=exact, context_length=256, depth=0.5,
                                   samples=3)
        Measurement.objects.create(run=run, metric="needle_partial", value=0.8, context_length=256, depth=0.5,
                                   samples=3)
    Run.objects.filter(experiment=experiment).update(status=Run.Status.SUCCEEDED, finished_at=timezone.now())
    grids = selectors.experiment_detail(experiment).charts["needle"]
    assert [(g["haystack"], g["exact"], g["partial"], g["samples"]) for g in grids] == [
        ("prose", [[1.0]], [[0.8]], [[3]]), ("code", [[0.5]], [[0.8]], [[3]])]
    payload = login(owner).get(reverse("experiment_status", args=[experiment.uuid])).json()
    assert payload["charts"]["needle"] == grids, "the poll draws the same"
    assert [r["haystack_source"] for r in payload["runs"]] == ["prose", "code"]
    api = token_client(owner).get(reverse("api_experiment", args=[experiment.uuid])).json()
    assert [r["haystack_source"] for r in api["runs"]] == ["prose", "code"]
    page = login(owner).get(reverse("experiment_detail", args=[experiment.uuid])).content.decode()
    assert 'name="needle-metric"' in page and 'id="needle-diff-a"' in page and 'id="needle-diff-b"' in page
    Run.objects.filter(pk=first.pk).update(status=Run.Status.FAILED)
    services.retry_run(owner, Run.objects.get(pk=first.pk))
    first.refresh_from_db()
    assert first.haystack_source == "", "a new attempt records its own source when it starts"


def test_runs_without_a_needle_evaluation_record_no_source(owner: Any, team: Any, base_model: BaseModel,
                                                           dataset: Dataset) -> None:
    experiment = make_experiment(team, owner, base_model, dataset, status=Run.Status.RUNNING)
    run = experiment.runs.get()
    worker.record_haystack_source(str(run.uuid), services.run_spec_for(run))
    run.refresh_from_db()
    assert run.haystack_source == ""
