"""The web side's writer: every change to teams' experiments, runs and catalogue that a person (page, API,
``manage.py``) asks for happens here — submitting, cancelling, retrying, exporting, registering. A worker's own
writes to a run (its claim, what it reports, how it ends) happen in ``experiments.worker``, which imports this
module and never the other way round: a run is sent by its Celery task *name*, so nothing here imports the code
that executes it.

Run state moves only by conditional UPDATEs keyed on the run's current ``uuid`` and status
(queued → running → succeeded | failed | cancelled), so duplicate task deliveries, late writes from
a worker the sweeper gave up on, and a retry racing an old message all find nothing to change.

Retry policy: a failed or cancelled run is retried **in place** as a new attempt: the same Run
row (one row per method in an experiment) gets a fresh ``uuid`` (the new Celery task id),
``attempt + 1``, cleared progress/log/error, and its previous measurements and artifacts are deleted
(an exported checkpoint's folder too, once the retry commits).
The old attempt's uuid then matches no row, so anything still carrying it is ignored. What each attempt
was stays: its ``RunAttempt`` row (worker, timings, outcome, traceback) and its whole log (``RunLogChunk``).
"""

from __future__ import annotations

import logging
import secrets
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from experiments import checkpoints, length_stats
from experiments.access import require_submit
from experiments.method_labels import method_label
from experiments.models import (
    ApiToken,
    Artifact,
    BaseModel,
    Dataset,
    Experiment,
    Measurement,
    Method,
    Run,
    RunAttempt,
    Team,
    params_hash,
)
from gpu_workers.spec import MethodSpec, RunSpec, TrainSpec
from webapp.celery import RUN_TASK
from webapp.celery import app as celery_app

logger = logging.getLogger(__name__)
Status = Run.Status


# --- submitting --------------------------------------------------------------------------------------


def get_or_create_method(team: Team, family: str, params: dict[str, Any], name: str) -> Method:
    """A shared Method with these canonical parameters if one exists, else the team's own."""
    digest = params_hash(params)
    shared = Method.objects.filter(team__isnull=True, family=family, params_hash=digest).first()
    if shared is not None:
        return shared
    method, _ = Method.objects.get_or_create(
        team=team, family=family, params_hash=digest, defaults={"params": params, "name": name}
    )
    return method


def submit_experiment(user: Any, data: dict[str, Any]) -> Experiment:
    """Write an Experiment, its Methods and one queued Run per method; enqueue the runs on commit.

    *data* is the composer's cleaned data: team, name, base_model, dataset, target_length, the ``evaluation``
    and ``training`` specs and methods (a list of ``{"family", "params"}`` with canonical params).
    """
    team: Team = data["team"]
    require_submit(user, team)
    base_model: BaseModel = data["base_model"]
    now = timezone.now()
    with transaction.atomic():
        experiment = Experiment.objects.create(
            team=team,
            created_by=user,
            name=data["name"],
            base_model=base_model,
            dataset=data["dataset"],
            target_length=data["target_length"],
            **Experiment.recipe_fields(data["evaluation"], data.get("training") or TrainSpec()),
        )
        for row in data["methods"]:
            name = method_label(row["family"], row["params"], base_model.rope_facts(), data["target_length"])
            method = get_or_create_method(team, row["family"], row["params"], name)
            run = Run.objects.create(experiment=experiment, method=method, status=Status.QUEUED, queued_at=now)
            _enqueue_on_commit(run.uuid)
    return experiment


def _enqueue_on_commit(run_uuid: uuid.UUID) -> None:
    transaction.on_commit(lambda: enqueue_run(str(run_uuid)))


def enqueue_run(run_uuid: str) -> None:
    """Send the run's task, by name (nothing here imports what executes it), under the run's uuid as its task id;
    if the broker is unreachable, fail the run visibly instead of losing it."""
    try:
        celery_app.send_task(RUN_TASK, args=[run_uuid], task_id=run_uuid, queue="gpu")
    except Exception as exc:  # any broker error must end as a visible failed run
        logger.exception("could not enqueue run %s", run_uuid)
        Run.objects.filter(uuid=run_uuid, status=Status.QUEUED).update(
            status=Status.FAILED, finished_at=timezone.now(), error=f"could not reach the task queue: {exc}"
        )


# --- the run's spec --------------------------------------------------------------------------------
# Built here, not in experiments.worker, because the web shows and downloads it as the worker builds it
# (the run page, spec.json); the worker imports it.


def run_work_dir(run: Run) -> Path:
    """Per Run row, not per attempt: a retry finds the previous attempt's checkpoints and search state."""
    return Path(settings.CONTEXTLAB_DATA_DIR) / "runs" / f"run-{run.pk}"


def run_spec_for(run: Run) -> RunSpec:
    """The plain-data description of a run that the ML side accepts."""
    experiment = run.experiment
    return RunSpec(
        run_id=str(run.uuid),
        model_source=experiment.base_model.source,
        dataset=replace(experiment.dataset.spec(), corpus_dir=settings.CONTEXTLAB_CORPUS_DIR),
        method=MethodSpec(family=run.method.family, params=dict(run.method.params)),
        target_length=experiment.target_length,
        eval=experiment.eval_spec(),
        seed=0,
        device=settings.CONTEXTLAB_DEVICE,
        work_dir=str(run_work_dir(run)),
        train=experiment.train_spec(),
        train_processes=settings.CONTEXTLAB_TRAIN_PROCESSES,
        train_launcher=settings.CONTEXTLAB_TRAIN_LAUNCHER,
    )


# --- controlling runs --------------------------------------------------------------------------------


def cancel_run(user: Any, run: Run) -> Run:
    """Queued: cancelled at once. Running: flag it; the pipeline stops at its next check."""
    require_submit(user, run.experiment.team)
    now = timezone.now()
    cancelled = Run.objects.filter(pk=run.pk, status=Status.QUEUED).update(
        status=Status.CANCELLED, cancel_requested=True, finished_at=now
    )
    if not cancelled:
        Run.objects.filter(pk=run.pk, status=Status.RUNNING).update(cancel_requested=True)
    run.refresh_from_db()
    return run


def retry_run(user: Any, run: Run) -> Run:
    """A failed or cancelled run becomes a new queued attempt (see the module docstring)."""
    require_submit(user, run.experiment.team)
    new_uuid = uuid.uuid4()
    with transaction.atomic():
        retried = Run.objects.filter(pk=run.pk, status__in=Run.RETRYABLE).update(
            uuid=new_uuid,
            status=Status.QUEUED,
            cancel_requested=False,
            progress=0.0,
            progress_message="",
            log_tail="",
            worker="",
            heartbeat_at=None,
            queued_at=timezone.now(),
            started_at=None,
            finished_at=None,
            error="",
            haystack_source="",
            protocol={},
            attempt=F("attempt") + 1,
        )
        if retried:
            Measurement.objects.filter(run_id=run.pk).delete()
            Artifact.objects.filter(run_id=run.pk).delete()
            old_export = checkpoints.export_dir(run.uuid)
            transaction.on_commit(lambda: shutil.rmtree(old_export, ignore_errors=True))
            _enqueue_on_commit(new_uuid)
    run.refresh_from_db()
    return run


def sweep_stale_runs(now: datetime | None = None) -> int:
    """Fail running runs whose worker stopped writing heartbeats; returns how many."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.CONTEXTLAB_HEARTBEAT_TIMEOUT)
    stale = Run.objects.filter(
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff), status=Status.RUNNING
    ).values_list("pk", "heartbeat_at")
    swept = 0
    for pk, heartbeat_at in stale:
        since = heartbeat_at.isoformat(timespec="seconds") if heartbeat_at else "start"
        error = f"worker lost (no heartbeat since {since})"
        with transaction.atomic():
            lost = Run.objects.filter(pk=pk, status=Status.RUNNING, heartbeat_at=heartbeat_at).update(
                status=Status.FAILED, finished_at=now, error=error
            )
            if lost:
                RunAttempt.objects.filter(run_id=pk, finished_at__isnull=True).update(
                    outcome=Status.FAILED, finished_at=now, error=error)
        swept += lost
    if swept:
        logger.warning("swept %d run(s) whose worker stopped sending heartbeats", swept)
    return swept


# --- exporting checkpoints ---------------------------------------------------------------------------


class ExportRefused(Exception):
    """A checkpoint export that cannot happen; the message says why (the page shows it, the API answers 409)."""


def export_checkpoint(user: Any, run: Run) -> Artifact:
    """Save a succeeded run's model, with its method applied, as a plain transformers checkpoint.

    The folder is ``<CONTEXTLAB_DATA_DIR>/exports/<run uuid>/`` (``gpu_workers.export.export_checkpoint``
    writes it: ``AutoModelForCausalLM.from_pretrained`` opens it with no Context Lab code), recorded as the
    run's one ``Artifact(kind="checkpoint")``; exporting again replaces both. It is written to a staging
    folder first and renamed into place, so a download never sees half a checkpoint.

    This runs synchronously, in the web request: the tiny demo model exports in about a second. Large models
    need the weights loaded and written again, which belongs on a worker — a later change will send this
    to the ``gpu`` queue as a task that reports the artifact, and keep this function as its body.
    """
    require_submit(user, run.experiment.team)
    if run.status != Status.SUCCEEDED:
        raise ExportRefused(f"Only a succeeded run can be exported; this one is {run.get_status_display().lower()}.")
    from gpu_workers import methods

    refusal = methods.export_refusal(run.method.family, run.method.params)
    if refusal:
        raise ExportRefused(f"This method cannot be exported: {refusal}.")
    from gpu_workers.export import export_checkpoint as write_checkpoint  # imports torch: only when exporting

    experiment = Experiment.objects.select_related("base_model").get(pk=run.experiment_id)
    target = checkpoints.export_dir(run.uuid)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{secrets.token_hex(4)}.partial"
    method = MethodSpec(family=run.method.family, params=dict(run.method.params))
    try:
        write_checkpoint(experiment.base_model.source, method, experiment.target_length, staging)
    except Exception as exc:  # any loading or writing error is this export's failure, shown to the user
        logger.exception("exporting run %s failed", run.uuid)
        shutil.rmtree(staging, ignore_errors=True)
        raise ExportRefused(f"Export failed: {type(exc).__name__}: {exc}") from exc
    with transaction.atomic():
        current = Run.objects.select_for_update().filter(pk=run.pk, uuid=run.uuid, status=Status.SUCCEEDED).first()
        if current is None:
            shutil.rmtree(staging, ignore_errors=True)
            raise ExportRefused("The run was retried while it was being exported; export the new attempt.")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        Artifact.objects.filter(run=current, kind=checkpoints.CHECKPOINT).delete()
        return Artifact.objects.create(run=current, kind=checkpoints.CHECKPOINT, path=str(target))


# --- catalogue -----------------------------------------------------------------------------------------


def register_base_model(user: Any, team: Team | None, name: str, source: str, facts: dict[str, Any]) -> BaseModel:
    """Save a model whose facts were read by ``model_sources.prepare_source``; ``user`` None = the operator
    at the shell (``manage.py register_model``), who may register for any team or for everyone."""
    if team is not None and user is not None:
        require_submit(user, team)
    model = BaseModel(team=team, name=name, source=source)
    model.apply_facts(facts)
    model.save()
    length_stats.request_for_model(model)
    return model


def update_base_model(model: BaseModel, source: str, facts: dict[str, Any]) -> BaseModel:
    """Re-read a model's facts (the operator re-registered it); experiments keep pointing at the row."""
    model.source = source
    model.apply_facts(facts)
    model.save()
    length_stats.request_for_model(model)  # its tokenizer files may be new
    return model


def register_dataset(user: Any, team: Team | None, fields: dict[str, Any], facts: dict[str, Any]) -> Dataset:
    """Save a dataset read by ``DatasetForm`` and ask a worker to measure its token lengths (the composer's
    checks read them; see ``experiments.length_stats``)."""
    if team is not None:
        require_submit(user, team)
    dataset = Dataset.objects.create(team=team, facts=facts, **fields)
    length_stats.request_for_dataset(dataset)
    return dataset


def set_dataset_haystack_source(user: Any, dataset: Dataset, haystack_source: str) -> Dataset:
    """Change which source fills the dataset's needle haystacks (later runs; a run records what it used).

    A team's dataset is changed by its members and admins; a shared one, seen by every team, by staff only.
    """
    if dataset.team is not None:
        require_submit(user, dataset.team)
    elif not getattr(user, "is_staff", False):
        raise PermissionDenied("Shared datasets are changed by staff.")
    dataset.haystack_source = haystack_source
    dataset.save(update_fields=["haystack_source"])
    return dataset


# --- API tokens ----------------------------------------------------------------------------------------


def create_api_token(user: Any, name: str) -> tuple[ApiToken, str]:
    """A new token and its key; the key is returned once and never stored."""
    key = secrets.token_urlsafe(32)
    token = ApiToken.objects.create(user=user, name=name[:100] or "token", key_hash=ApiToken.hash_key(key),
                                    prefix=key[:8])
    return token, key


def revoke_api_tokens(user: Any, token_ids: Iterable[int]) -> int:
    deleted, _ = ApiToken.objects.filter(user=user, pk__in=list(token_ids)).delete()
    return deleted


def touch_api_token(token: ApiToken) -> None:
    ApiToken.objects.filter(pk=token.pk).update(last_used=timezone.now())
