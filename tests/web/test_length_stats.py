"""A dataset's token lengths as a user meets them: measured on a worker when data or a model is registered,
shown with their progress on the dataset page, and what the composer checks an experiment against."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.urls import reverse
from django.utils import timezone

from experiments import length_stats, tasks
from experiments.composer import Composer
from experiments.models import BaseModel, Dataset, DatasetLengthStats, Experiment
from gpu_workers.tokenizer_files import tokenizer_key
from tests.web.factories import login
from tests.web.helpers import composer_post

Status = DatasetLengthStats.Status


def _row(dataset: Dataset, model: BaseModel) -> DatasetLengthStats:
    return DatasetLengthStats.objects.get(dataset=dataset, tokenizer_key=tokenizer_key(model.source))


def _unmeasured(team: Any, data_file: Path) -> Dataset:
    return Dataset.objects.create(team=team, name="Fresh docs", kind="local", path=str(data_file),
                                  facts={"documents": 14})


def test_registering_a_dataset_sends_one_task_per_tokenizer_to_the_control_queue(
    owner: Any, team: Any, base_model: BaseModel, model_dir: Path, data_file: Path, length_stats_broker: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    twin = BaseModel.objects.create(team=team, name="Same tokenizer", source=base_model.source,
                                    facts=base_model.facts, original_context=256)
    client = login(owner)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("dataset_new"), {
            "team": team.pk, "name": "Docs", "kind": "local", "path": str(data_file), "text_field": "text",
            "source_field": "source"})
    assert response.status_code == 302
    dataset = Dataset.objects.get(name="Docs")
    row = DatasetLengthStats.objects.get(dataset=dataset)  # one row: both models ship the same tokenizer files
    assert row.status == Status.QUEUED and row.tokenizer_key == tokenizer_key(twin.source)
    length_stats_broker.assert_called_once_with(args=[str(row.task_id)], task_id=str(row.task_id), queue="control")


def test_registering_a_model_measures_the_datasets_it_can_be_used_with(
    owner: Any, team: Any, other_team: Any, model_dir: Path, data_file: Path, length_stats_broker: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    mine = _unmeasured(team, data_file)
    theirs = Dataset.objects.create(team=other_team, name="Theirs", kind="local", path=str(data_file))
    with django_capture_on_commit_callbacks(execute=True):
        response = login(owner).post(reverse("model_new"), {"team": team.pk, "name": "Mine",
                                                            "source": str(model_dir)})
    assert response.status_code == 302
    assert list(DatasetLengthStats.objects.values_list("dataset", flat=True)) == [mine.pk]
    assert not DatasetLengthStats.objects.filter(dataset=theirs).exists()
    assert length_stats_broker.call_count == 1


def test_the_worker_stores_sorted_lengths_per_source_and_a_second_delivery_claims_nothing(
    team: Any, base_model: BaseModel, data_file: Path,
) -> None:
    dataset = _unmeasured(team, data_file)
    row = length_stats.request(dataset, [base_model], enqueue=False)[0]
    assert tasks.measure_dataset_lengths.run(str(row.task_id)) == Status.SUCCEEDED
    row.refresh_from_db()
    assert (row.status, row.progress, row.documents, row.error) == (Status.SUCCEEDED, 1.0, 14, "")
    assert set(row.lengths) == {"code", "prose"} and all(v == sorted(v) for v in row.lengths.values())
    assert row.tokens == sum(map(sum, row.lengths.values())) and row.longest == max(map(max, row.lengths.values()))
    assert tasks.measure_dataset_lengths.run(str(row.task_id)) == "", "a duplicate delivery measures nothing"


def test_measuring_again_ignores_the_old_attempts_late_writes(team: Any, base_model: BaseModel,
                                                              data_file: Path) -> None:
    dataset = _unmeasured(team, data_file)
    old = length_stats.request(dataset, [base_model], enqueue=False)[0]
    old_task = str(old.task_id)
    DatasetLengthStats.objects.filter(pk=old.pk).update(status=Status.RUNNING)  # the old worker is measuring
    fresh = length_stats.request(dataset, [base_model], force=True, enqueue=False)[0]
    assert str(fresh.task_id) != old_task and fresh.status == Status.QUEUED
    assert length_stats.measure(old_task) == "", "the old attempt can neither claim nor finish"
    assert length_stats.measure(str(fresh.task_id)) == Status.SUCCEEDED


def test_a_dataset_that_cannot_be_read_fails_on_the_dataset_field(owner: Any, team: Any, base_model: BaseModel,
                                                                  tmp_path: Path) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\nnot json\n')
    dataset = Dataset.objects.create(team=team, name="Broken", kind="local", path=str(broken))
    length_stats.compute_now(dataset, [base_model])
    row = _row(dataset, base_model)
    assert (row.status, row.error_field) == (Status.FAILED, "dataset") and "line 2 is not valid JSON" in row.error
    composer = Composer(owner, composer_post(team, base_model, dataset))
    assert not composer.is_valid()
    assert composer.form.errors["dataset"] == [
        f"Could not read Broken: {row.error} (fix it, then measure again on the dataset page)."]


def test_the_composer_checks_the_stored_numbers_without_tokenizing(owner: Any, team: Any, base_model: BaseModel,
                                                                   dataset: Dataset) -> None:
    """Same messages on the same fields as when the composer tokenized the corpus itself."""
    with mock.patch("gpu_workers.data.length_stats.measure", side_effect=AssertionError("tokenized")), \
         mock.patch("gpu_workers.data.length_stats.load_tokenizer", side_effect=AssertionError("loaded")):
        composer = Composer(owner, composer_post(team, base_model, dataset, eval_documents=11))
        assert not composer.is_valid()
        assert composer.form.errors["dataset"] == [
            "Small docs has only 10 documents of at least 1024 tokens, but 11 are needed. Lower the longest "
            "evaluation length or the number of documents."]
        assert Composer(owner, composer_post(team, base_model, dataset, eval_documents=10)).is_valid()
    row = _row(dataset, base_model)
    row.lengths = {"prose": [100, 200], "code": [2000] * 10}
    row.save()
    dataset.haystack_source = "prose"
    dataset.save()
    composer = Composer(owner, composer_post(team, base_model, dataset, eval_documents=10))
    assert not composer.is_valid()
    assert composer.form.errors["dataset"] == [
        "Small docs holds only 300 tokens in all, too few for a 1024-token needle haystack."]


@pytest.mark.parametrize(("status", "progress", "shown"), [
    (Status.QUEUED, 0.0, "(queued)"), (Status.RUNNING, 0.42, "(measuring, 42% done)")])
def test_the_composer_refuses_until_the_lengths_are_stored_and_says_why(
    owner: Any, team: Any, base_model: BaseModel, dataset: Dataset, status: str, progress: float, shown: str,
) -> None:
    DatasetLengthStats.objects.filter(dataset=dataset).update(status=status, progress=progress,
                                                              updated_at=timezone.now())
    response = login(owner).post(reverse("experiment_new"), composer_post(team, base_model, dataset))
    assert response.status_code == 200 and not Experiment.objects.exists()
    assert response.context["composer"].form.errors["dataset"] == [
        f"The token lengths of Small docs in Tiny Llama's tokens are being measured on a worker {shown}; the "
        "length checks need them. Submit again in a moment — the dataset page shows the progress."]


def test_lengths_never_requested_are_requested_by_the_first_submit(
    owner: Any, team: Any, base_model: BaseModel, data_file: Path, length_stats_broker: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    """A dataset registered before lengths were stored: the composer asks a worker instead of passing."""
    dataset = _unmeasured(team, data_file)
    with django_capture_on_commit_callbacks(execute=True):
        composer = Composer(owner, composer_post(team, base_model, dataset))
        assert not composer.is_valid()
    assert "being measured on a worker (queued)" in composer.form.errors["dataset"][0]
    row = _row(dataset, base_model)
    length_stats_broker.assert_called_once_with(args=[str(row.task_id)], task_id=str(row.task_id), queue="control")
    length_stats.measure(str(row.task_id))
    assert Composer(owner, composer_post(team, base_model, dataset)).is_valid()


def test_a_measurement_whose_worker_went_silent_is_queued_again(owner: Any, team: Any, base_model: BaseModel,
                                                                dataset: Dataset, settings: Any) -> None:
    row = _row(dataset, base_model)
    stale = timezone.now() - timedelta(seconds=settings.CONTEXTLAB_HEARTBEAT_TIMEOUT + 5)
    DatasetLengthStats.objects.filter(pk=row.pk).update(status=Status.RUNNING, updated_at=stale)
    assert not Composer(owner, composer_post(team, base_model, dataset)).is_valid()
    fresh = _row(dataset, base_model)
    assert fresh.status == Status.QUEUED and fresh.task_id != row.task_id


def test_a_model_without_tokenizer_files_is_named_on_its_field(owner: Any, team: Any, dataset: Dataset,
                                                               base_model: BaseModel, tmp_path: Path) -> None:
    bare = BaseModel.objects.create(team=None, name="Bare", source=str(tmp_path), facts=base_model.facts,
                                    original_context=256)
    composer = Composer(owner, composer_post(team, bare, dataset))
    assert not composer.is_valid()
    assert composer.form.errors["base_model"][0].startswith("Could not load Bare's tokenizer: No tokenizer in")


def test_the_dataset_page_shows_the_lengths_and_their_progress(owner: Any, viewer: Any, outsider: Any,
                                                               base_model: BaseModel, dataset: Dataset) -> None:
    row = _row(dataset, base_model)
    url = reverse("dataset_detail", args=[dataset.pk])
    page = login(owner).get(url).content.decode()
    assert 'id="length-stats"' in page and "data-pending" not in page
    assert f'data-key="{row.tokenizer_key}"' in page and f'data-role="tokens">{row.tokens:,}<' in page
    DatasetLengthStats.objects.filter(pk=row.pk).update(status=Status.RUNNING, progress=0.42)
    page = login(viewer).get(url).content.decode()
    assert "data-pending" in page and "Measuring 42%" in page and "Measure again" not in page, "viewers only look"
    poll = login(owner).get(reverse("dataset_length_stats", args=[dataset.pk])).json()
    assert poll["pending"] is True
    assert [(r["models"], r["status_text"], r["tokens"]) for r in poll["rows"]] == [
        (["Tiny Llama"], "Measuring 42%", None)]
    assert login(outsider).get(reverse("dataset_length_stats", args=[dataset.pk])).status_code == 404


def test_members_measure_again_and_viewers_cannot(owner: Any, viewer: Any, base_model: BaseModel,
                                                  dataset: Dataset, length_stats_broker: Any,
                                                  django_capture_on_commit_callbacks: Any) -> None:
    row = _row(dataset, base_model)
    post = reverse("dataset_length_stats_measure", args=[dataset.pk])
    assert login(viewer).post(post, {"tokenizer_key": row.tokenizer_key}).status_code == 403
    assert login(owner).get(post).status_code == 405
    with django_capture_on_commit_callbacks(execute=True):
        response = login(owner).post(post, {"tokenizer_key": row.tokenizer_key})
    assert response.status_code == 302
    fresh = _row(dataset, base_model)
    assert fresh.status == Status.QUEUED and fresh.task_id != row.task_id and fresh.tokens == row.tokens
    length_stats_broker.assert_called_once()


def test_a_broker_that_cannot_be_reached_fails_the_row_visibly(team: Any, base_model: BaseModel,
                                                               data_file: Path, length_stats_broker: Any,
                                                               django_capture_on_commit_callbacks: Any) -> None:
    length_stats_broker.side_effect = ConnectionError("no broker")
    with django_capture_on_commit_callbacks(execute=True):
        rows = length_stats.request_for_dataset(_unmeasured(team, data_file))
    row = DatasetLengthStats.objects.get(pk=rows[0].pk)
    assert row.status == Status.FAILED and "could not reach the task queue" in row.error


def test_seed_demo_measures_the_demo_corpus_in_the_demo_models_tokens(db: None, model_dir: Path) -> None:
    import io

    from django.core.management import call_command

    out = io.StringIO()
    call_command("seed_demo", "--model-source", str(model_dir), stdout=out, stderr=io.StringIO())
    row = DatasetLengthStats.objects.get()
    assert row.status == Status.SUCCEEDED and row.documents > 700 and set(row.lengths) == {"code", "prose"}
    assert f"length statistics: {row.documents} documents, {row.tokens:,} tokens" in out.getvalue()
    call_command("seed_demo", "--model-source", str(model_dir), stdout=io.StringIO(), stderr=io.StringIO())
    assert DatasetLengthStats.objects.get().task_id == row.task_id, "idempotent: measured once"

