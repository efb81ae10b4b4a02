"""The one writer of :class:`~experiments.models.DatasetLengthStats`: asking a worker to measure a dataset's
token lengths, and the worker's side of it.

Why: the composer must know whether a dataset has enough long documents and haystack tokens for an
experiment, in the base model's tokens. Tokenizing the corpus per submit took 5.5–8 s and put torch in
the web process, so the lengths are measured once per (dataset, tokenizer) on a worker and stored.

* Registering a dataset (form, ``seed_demo``, admin) asks for its lengths under the tokenizer of every base
  model it can be combined with; registering a model asks for every dataset it can be combined with
  (:func:`request_for_dataset`, :func:`request_for_model`). One row per distinct tokenizer, queued, its task
  sent to the ``control`` queue on commit (GPU workers hold one long run at a time; this is seconds of CPU).
* The worker claims the row (queued → running, conditional on its ``task_id``), measures with progress,
  and writes the numbers or the error (:func:`measure`). Every write is conditional on the ``task_id``, so
  after a recompute (:func:`request` with ``force``: a fresh ``task_id``) a late write of the old attempt
  changes nothing, and a duplicate delivery claims nothing.
* The composer asks :func:`stats_for_composer`: the stored row, requested first if missing (a dataset
  registered before the statistics existed) or if its worker went silent. It refuses to submit until the row
  is ready and says so — it never silently passes nor tokenizes in the web process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from experiments.models import BaseModel, Dataset, DatasetLengthStats
from gpu_workers.tokenizer_files import tokenizer_key
from webapp.celery import LENGTH_STATS_TASK
from webapp.celery import app as celery_app

logger = logging.getLogger(__name__)
# Any: without django-stubs mypy reads a TextChoices member as its (value, label) tuple; it is a str.
Status: Any = DatasetLengthStats.Status
QUEUE = "control"
PROGRESS_EVERY_S = 0.5
"""At most two progress writes a second: the dataset page polls, the worker should not hammer the row."""


def data_key(dataset: Dataset) -> str:
    """Digest of what picks a dataset's evaluation documents (not its haystack source: stats are per source)."""
    picked = [dataset.kind, dataset.path, dataset.text_field, dataset.source_field]
    return hashlib.sha256(json.dumps(picked).encode()).hexdigest()


def _models_by_tokenizer(models: Iterable[BaseModel]) -> dict[str, BaseModel]:
    """Tokenizer key → the first model with that tokenizer; a model whose tokenizer files cannot be read is
    skipped (the composer names the problem when that model is picked)."""
    keyed: dict[str, BaseModel] = {}
    for model in models:
        try:
            keyed.setdefault(tokenizer_key(model.source), model)
        except OSError as exc:
            logger.info("no length statistics for model %s: %s", model.pk, exc)
    return keyed


def request(dataset: Dataset, models: Iterable[BaseModel], *, force: bool = False, enqueue: bool = True
            ) -> list[DatasetLengthStats]:
    """A row per distinct tokenizer of *models* for *dataset*, created queued and sent to a worker on commit.

    Rows already there are left alone, unless *force*: then each is queued again under a fresh task id
    (the dataset page's "Measure again", a worker gone silent). *enqueue* False leaves sending to the caller
    (:func:`compute_now`)."""
    rows = []
    key = data_key(dataset)
    for tokenizer, model in _models_by_tokenizer(models).items():
        with transaction.atomic():
            row, created = DatasetLengthStats.objects.select_for_update().get_or_create(
                dataset=dataset, tokenizer_key=tokenizer, data_key=key,
                defaults={"tokenizer_source": model.source},
            )
            if not created and not force:
                rows.append(row)
                continue
            if not created:
                _requeue(row, model.source)
            if enqueue:
                task_id = str(row.task_id)
                transaction.on_commit(lambda task_id=task_id: send(task_id))
        rows.append(row)
    return rows


def _requeue(row: DatasetLengthStats, source: str) -> None:
    """Queue *row* again under a fresh task id: whatever the previous attempt still writes is ignored."""
    row.task_id, row.status, row.progress = uuid.uuid4(), Status.QUEUED, 0.0
    row.tokenizer_source, row.error, row.error_field, row.worker = source, "", "", ""
    row.started_at = row.updated_at = row.finished_at = None
    row.save()


def combinable_models(dataset: Dataset) -> list[BaseModel]:
    """The models a composer can pair with *dataset*: shared ones and its team's (all, for a shared dataset)."""
    models = BaseModel.objects.all()
    if dataset.team_id is not None:
        models = models.filter(Q(team__isnull=True) | Q(team_id=dataset.team_id))
    return list(models)


def combinable_datasets(model: BaseModel) -> list[Dataset]:
    datasets = Dataset.objects.all()
    if model.team_id is not None:
        datasets = datasets.filter(Q(team__isnull=True) | Q(team_id=model.team_id))
    return list(datasets)


def request_for_dataset(dataset: Dataset) -> list[DatasetLengthStats]:
    """A dataset was registered (or changed): measure it in the tokenizers of the models it can be used with."""
    return request(dataset, combinable_models(dataset))


def request_for_model(model: BaseModel) -> list[DatasetLengthStats]:
    """A model was registered (or re-read): measure every dataset it can be used with in its tokenizer."""
    return [row for dataset in combinable_datasets(model) for row in request(dataset, [model])]


def send(task_id: str) -> None:
    """Send the measuring task by name (the Celery shims in ``experiments.tasks`` import this module, not the
    other way round); if the broker is unreachable, fail the row visibly instead of losing it."""
    try:
        celery_app.send_task(LENGTH_STATS_TASK, args=[task_id], task_id=task_id, queue=QUEUE)
    except Exception as exc:  # any broker error must end as a visible failure, as for runs
        logger.exception("could not enqueue length statistics %s", task_id)
        DatasetLengthStats.objects.filter(task_id=task_id, status=Status.QUEUED).update(
            status=Status.FAILED, finished_at=timezone.now(), error_field="dataset",
            error=f"could not reach the task queue to measure it: {exc}")


def _stale(row: DatasetLengthStats) -> bool:
    """A running row whose worker stopped writing for longer than a run's heartbeat timeout: the worker died."""
    if row.status != Status.RUNNING:
        return False
    last = row.updated_at or row.started_at or row.requested_at
    return timezone.now() - last > timedelta(seconds=settings.CONTEXTLAB_HEARTBEAT_TIMEOUT)


def stats_for_composer(dataset: Dataset, model: BaseModel) -> DatasetLengthStats:
    """The row the composer checks *dataset* × *model* against, requested now if there is none yet (or its
    worker went silent). Raises ``OSError`` when the model's tokenizer files cannot be read."""
    key = tokenizer_key(model.source)
    row = DatasetLengthStats.objects.filter(dataset=dataset, tokenizer_key=key, data_key=data_key(dataset)).first()
    if row is not None and not _stale(row):
        return row
    requested = request(dataset, [model], force=row is not None)
    return requested[0]


# --- the worker side ----------------------------------------------------------------------------------


def _claim(task_id: str, worker: str) -> DatasetLengthStats | None:
    now = timezone.now()
    claimed = DatasetLengthStats.objects.filter(task_id=task_id, status=Status.QUEUED).update(
        status=Status.RUNNING, worker=worker[:200], started_at=now, updated_at=now, progress=0.0)
    if not claimed:
        return None
    return DatasetLengthStats.objects.select_related("dataset").get(task_id=task_id)


def _fail(task_id: str, field: str, message: str) -> None:
    DatasetLengthStats.objects.filter(task_id=task_id, status=Status.RUNNING).update(
        status=Status.FAILED, error=message, error_field=field, finished_at=timezone.now(),
        updated_at=timezone.now())


def measure(task_id: str, worker: str = "") -> str:
    """The Celery task's body: claim the row, tokenize the dataset with the tokenizer runs use, store it.

    Returns the final status ("" when there was nothing to claim: a duplicate delivery or a row measured
    again since). A dataset that cannot be read fails on the dataset field, a tokenizer that cannot be
    loaded on the base model field, as the composer used to report them."""
    from gpu_workers.data.documents import DatasetError
    from gpu_workers.data.length_stats import load_tokenizer
    from gpu_workers.data.length_stats import measure as measure_lengths

    row = _claim(task_id, worker)
    if row is None:
        return ""
    last = [time.monotonic()]

    def progress(fraction: float) -> None:
        if time.monotonic() - last[0] < PROGRESS_EVERY_S:
            return
        last[0] = time.monotonic()
        DatasetLengthStats.objects.filter(task_id=task_id, status=Status.RUNNING).update(
            progress=round(fraction, 4), updated_at=timezone.now())

    try:
        tokenizer = load_tokenizer(row.tokenizer_source)
    except OSError as exc:
        _fail(task_id, "base_model", str(exc))
        return Status.FAILED
    try:
        stats = measure_lengths(row.dataset.spec(), tokenizer, progress)
    except (DatasetError, ValueError, OSError) as exc:
        _fail(task_id, "dataset", str(exc))
        return Status.FAILED
    except Exception as exc:  # anything else is still this row's failure, visible on the dataset page
        logger.exception("measuring length statistics %s failed", task_id)
        _fail(task_id, "dataset", f"{type(exc).__name__}: {exc}")
        return Status.FAILED
    now = timezone.now()
    done = DatasetLengthStats.objects.filter(task_id=task_id, status=Status.RUNNING).update(
        status=Status.SUCCEEDED, progress=1.0, lengths=stats.to_json(), documents=stats.documents,
        tokens=stats.tokens, longest=stats.longest, error="", error_field="", finished_at=now, updated_at=now)
    return Status.SUCCEEDED if done else ""


def compute_now(dataset: Dataset, models: Iterable[BaseModel]) -> list[DatasetLengthStats]:
    """Measure in this process what is not ready yet (``seed_demo``, tests): the worker's code path without the
    queue. Ready rows are kept; a queued one is claimed here (a worker that gets its message later finds
    nothing to claim), a failed or running one is queued afresh first."""
    rows = request(dataset, models, enqueue=False)
    for row in rows:
        if row.status == Status.SUCCEEDED:
            continue
        if row.status != Status.QUEUED:
            with transaction.atomic():
                _requeue(row, row.tokenizer_source)
        measure(str(row.task_id), worker="in-process")
    return list(DatasetLengthStats.objects.filter(pk__in=[r.pk for r in rows]).order_by("pk"))
