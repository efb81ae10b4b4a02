"""The only writer: every change to teams' experiments, runs and measurements happens here.

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

import json
import logging
import secrets
import shutil
import traceback
import uuid
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import F, Q, Subquery
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
    RunLogChunk,
    Team,
    params_hash,
)
from gpu_workers.methods import validate
from gpu_workers.reporter import Cancelled
from gpu_workers.reporter import Measurement as ReportedMeasurement
from gpu_workers.spec import EvalSpec, MethodSpec, RunSpec, TrainSpec

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

    *data* is the composer's cleaned data: team, name, base_model, dataset, target_length,
    eval_lengths, eval_documents and methods (a list of ``{"family", "params"}`` with canonical params).
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
            eval_lengths=list(data["eval_lengths"]),
            eval_documents=data["eval_documents"],
            training=dict(data.get("training") or {"mode": "none"}),
            evaluations=dict(data.get("evaluations") or {"suite": ["perplexity"]}),
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
    """Send the run's task; if the broker is unreachable, fail the run visibly instead of losing it."""
    from experiments.tasks import execute_run

    try:
        execute_run.apply_async(args=[run_uuid], task_id=run_uuid, queue="gpu")
    except Exception as exc:  # any broker error must end as a visible failed run
        logger.exception("could not enqueue run %s", run_uuid)
        Run.objects.filter(uuid=run_uuid, status=Status.QUEUED).update(
            status=Status.FAILED, finished_at=timezone.now(), error=f"could not reach the task queue: {exc}"
        )


# --- the worker side ---------------------------------------------------------------------------------


def claim_run(run_id: str, worker: str) -> bool:
    """queued → running, atomically; False when there was nothing to claim (duplicate, cancelled).

    A claim is an attempt: its RunAttempt row is written in the same transaction, so the history never misses
    a run that ran nor records one that did not.
    """
    now = timezone.now()
    with transaction.atomic():
        claimed = Run.objects.filter(uuid=run_id, status=Status.QUEUED, cancel_requested=False).update(
            status=Status.RUNNING, worker=worker[:200], started_at=now, heartbeat_at=now, progress=0.0
        )
        if claimed == 1:
            row = Run.objects.filter(uuid=run_id).values("pk", "attempt", "queued_at").get()
            RunAttempt.objects.create(run_id=row["pk"], number=row["attempt"], task_id=run_id, worker=worker[:200],
                                      queued_at=row["queued_at"], started_at=now)
    return claimed == 1


def run_work_dir(run: Run) -> Path:
    """Per Run row, not per attempt: a retry finds the previous attempt's checkpoints and search state."""
    return Path(settings.CONTEXTLAB_DATA_DIR) / "runs" / f"run-{run.pk}"


def eval_spec_for(experiment: Experiment) -> EvalSpec:
    settings_ = {k: tuple(v) if isinstance(v, list) else v for k, v in experiment.evaluations.items()}
    return EvalSpec(lengths=tuple(experiment.eval_lengths), documents=experiment.eval_documents, **settings_)


def run_spec_for(run: Run) -> RunSpec:
    """The plain-data description of a run that the ML side accepts."""
    experiment = run.experiment
    return RunSpec(
        run_id=str(run.uuid),
        model_source=experiment.base_model.source,
        dataset=replace(experiment.dataset.spec(), corpus_dir=settings.CONTEXTLAB_CORPUS_DIR),
        method=MethodSpec(family=run.method.family, params=dict(run.method.params)),
        target_length=experiment.target_length,
        eval=eval_spec_for(experiment),
        seed=0,
        device=settings.CONTEXTLAB_DEVICE,
        work_dir=str(run_work_dir(run)),
        train=TrainSpec(**experiment.training),
        train_processes=settings.CONTEXTLAB_TRAIN_PROCESSES,
        train_launcher=settings.CONTEXTLAB_TRAIN_LAUNCHER,
    )


def record_haystack_source(run_id: str, spec: RunSpec) -> None:
    """Note on the run which source fills its needle haystacks, taken from the very spec the pipeline reads,
    so the chart names what this attempt used even if the dataset's setting changes later."""
    if any(spec.eval.wants(e) for e in ("needle", "needle_perplexity")):
        Run.objects.filter(uuid=run_id, status=Status.RUNNING).update(haystack_source=spec.dataset.haystack[:100])


def finish_run(run_id: str, status: str, error: str = "", trace: str = "") -> bool:
    """running → a final status, closing the attempt (with the traceback of a failure, if any); False if the run
    was no longer running (e.g. swept)."""
    fields: dict[str, Any] = {"status": status, "finished_at": timezone.now(), "error": error}
    if status == Status.SUCCEEDED:
        fields["progress"] = 1.0
    with transaction.atomic():
        finished = Run.objects.filter(uuid=run_id, status=Status.RUNNING).update(**fields) == 1
        if finished:
            RunAttempt.objects.filter(task_id=run_id, finished_at__isnull=True).update(
                outcome=status, finished_at=fields["finished_at"], error=error, traceback=trace)
    return finished


def execute_run(run_id: str, worker: str = "") -> str:
    """Claim, run the pipeline with a database reporter, and record how it ended. Returns the status."""
    from experiments.reporter import DbReporter

    if not claim_run(run_id, worker):
        logger.info("run %s: nothing to claim (duplicate delivery, cancelled or retried)", run_id)
        return "skipped"
    run = Run.objects.select_related("experiment__base_model", "experiment__dataset", "method").get(uuid=run_id)
    reporter = DbReporter(run_id)
    try:
        with reporter.heartbeat():
            reporter.log(f"attempt {run.attempt} on {worker or 'unknown worker'}")
            spec = run_spec_for(run)
            record_haystack_source(run_id, spec)
            from gpu_workers import pipeline

            pipeline.run(spec, reporter)
    except Cancelled:
        reporter.log("cancelled")
        finish_run(run_id, Status.CANCELLED)
        return Status.CANCELLED
    except Exception as exc:  # any pipeline error fails this run only
        logger.exception("run %s failed", run_id)
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
        message = f"{type(exc).__name__}: {exc}"
        reporter.log(f"{message}{where}")
        finish_run(run_id, Status.FAILED, error=message, trace=traceback.format_exc())
        return Status.FAILED
    try:
        # One transaction, so nobody sees a succeeded search run whose method is not saved yet.
        with transaction.atomic():
            if finish_run(run_id, Status.SUCCEEDED):
                save_searched_method(run)
    except Exception as exc:  # the search result could not become a method: the run did not deliver
        logger.exception("run %s: saving its searched method failed", run_id)
        message = f"saving the searched method failed: {type(exc).__name__}: {exc}"
        reporter.log(message)
        finish_run(run_id, Status.FAILED, error=message, trace=traceback.format_exc())
        return Status.FAILED
    return Status.SUCCEEDED


def save_searched_method(run: Run) -> Method | None:
    """A finished factor search becomes a reusable LongRoPE method of the run's team."""
    artifact = Artifact.objects.filter(run=run, kind="search_result").order_by("-id").first()
    if artifact is None:
        return None
    try:
        summary = json.loads(Path(artifact.path).read_text())
    except (OSError, ValueError):
        logger.exception("run %s: could not read the search result %s", run.uuid, artifact.path)
        return None
    params = summary["method_params"]
    experiment = run.experiment
    base = experiment.base_model.rope_facts()
    canonical = validate("longrope", params, base, experiment.target_length)
    name = f"LongRoPE ×{canonical['factor']:g} searched in “{experiment.name}” ({run.method.name})"[:200]
    method = get_or_create_method(experiment.team, "longrope", canonical, name)
    Run.objects.filter(pk=run.pk).update(produced_method=method)
    return method


def write_progress(run_id: str, fraction: float, message: str, log_tail: str) -> None:
    Run.objects.filter(uuid=run_id, status=Status.RUNNING).update(
        progress=min(max(float(fraction), 0.0), 1.0), progress_message=message[:300], log_tail=log_tail
    )


def write_log(run_id: str, log_tail: str, lines: Iterable[str] = ()) -> None:
    """Replace the tail and append *lines* to the attempt's whole log (``RunLogChunk``): two statements.

    The chunk's run and attempt are subqueries in the INSERT, and the UPDATE before it holds the run's row lock
    until commit, so a write from an attempt that stopped running changes neither the tail nor the log.
    """
    text = "\n".join(lines)
    if not text:
        Run.objects.filter(uuid=run_id, status=Status.RUNNING).update(log_tail=log_tail)
        return
    with transaction.atomic():
        if Run.objects.filter(uuid=run_id, status=Status.RUNNING).update(log_tail=log_tail):
            this_run = Run.objects.filter(uuid=run_id)
            RunLogChunk.objects.create(run_id=Subquery(this_run.values("pk")[:1]),
                                       attempt=Subquery(this_run.values("attempt")[:1]), text=text)


def beat(run_id: str) -> None:
    Run.objects.filter(uuid=run_id, status=Status.RUNNING).update(heartbeat_at=timezone.now())


def should_stop(run_id: str) -> bool:
    """True when cancel was asked for, or the run is no longer this attempt's to run."""
    row = Run.objects.filter(uuid=run_id).values("status", "cancel_requested").first()
    return row is None or row["cancel_requested"] or row["status"] != Status.RUNNING


def record_measurement(run_id: str, measurement: ReportedMeasurement) -> Measurement | None:
    """Store one reported number, if the run is still running as this attempt."""
    stored = record_measurements(run_id, [measurement])
    return stored[0] if stored else None


def record_measurements(run_id: str, measurements: Iterable[ReportedMeasurement]) -> list[Measurement]:
    """Store reported numbers in one insert, if the run is still running as this attempt: two queries."""
    run_pk = Run.objects.filter(uuid=run_id, status=Status.RUNNING).values_list("pk", flat=True).first()
    if run_pk is None:
        return []
    return Measurement.objects.bulk_create([
        Measurement(run_id=run_pk, metric=m.metric, value=float(m.value), context_length=m.context_length,
                    depth=m.depth, samples=m.samples, ci_low=m.ci_low, ci_high=m.ci_high, step=m.step,
                    protocol_key=(m.protocol_key or "")[:16])
        for m in measurements
    ])


def record_protocol(run_id: str, facts: dict[str, Any]) -> bool:
    """Store the attempt's evaluation protocol on its run (the worker reports it once, after loading)."""
    return Run.objects.filter(uuid=run_id, status=Status.RUNNING).update(protocol=facts) == 1


def record_artifact(run_id: str, kind: str, path: str) -> Artifact | None:
    run = Run.objects.filter(uuid=run_id, status=Status.RUNNING).only("id").first()
    if run is None:
        return None
    return Artifact.objects.create(run=run, kind=kind[:60], path=path[:1000])


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
