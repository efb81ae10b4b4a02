"""The writers (``services`` on the web side, ``worker`` on the worker side): submitting, claiming, reporting,
finishing, cancelling, retrying and sweeping runs."""

from __future__ import annotations

import sys
import time
import types
from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied
from django.utils import timezone

import gpu_workers
from experiments import services, worker
from experiments.models import Experiment, Measurement, Method, Run
from experiments.worker import DbReporter
from gpu_workers.reporter import Cancelled
from gpu_workers.reporter import Measurement as Reported
from gpu_workers.spec import EvalSpec

Status = Run.Status


def submit(owner: Any, team: Any, base_model: Any, dataset: Any, methods: list[dict[str, Any]] | None = None
           ) -> Experiment:
    return services.submit_experiment(owner, {
        "team": team, "name": "Question", "base_model": base_model, "dataset": dataset, "target_length": 1024,
        "evaluation": EvalSpec(lengths=(256, 512, 1024), documents=2),
        "methods": methods or [{"family": "none", "params": {}}, {"family": "pi", "params": {"factor": 4.0}}],
    })


@pytest.fixture
def queued(owner: Any, team: Any, base_model: Any, dataset: Any) -> Experiment:
    return submit(owner, team, base_model, dataset)


def fake_pipeline(monkeypatch: pytest.MonkeyPatch, run: Any) -> None:
    """Stand in for gpu_workers.pipeline (which imports torch) with *run*."""
    module = types.ModuleType("gpu_workers.pipeline")
    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gpu_workers.pipeline", module)
    monkeypatch.setattr(gpu_workers, "pipeline", module, raising=False)


# --- submit ---------------------------------------------------------------------------------------------


def test_submit_writes_experiment_methods_runs_and_enqueues_on_commit(
    owner: Any, team: Any, base_model: Any, dataset: Any, no_broker: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        experiment = submit(owner, team, base_model, dataset)
    runs = list(experiment.runs.order_by("id"))
    assert [r.status for r in runs] == [Status.QUEUED, Status.QUEUED]
    assert [r.method.family for r in runs] == ["none", "pi"]
    assert experiment.training == {"mode": "none"} and experiment.evaluations["suite"] == ["perplexity"]
    assert experiment.eval_spec() == EvalSpec(lengths=(256, 512, 1024), documents=2)
    assert (experiment.eval_lengths, experiment.eval_documents) == ([256, 512, 1024], 2)
    assert no_broker.call_count == 0, "nothing is sent before the transaction commits"
    assert len(callbacks) == 2
    for callback in callbacks:
        callback()
    sent = {call.kwargs["task_id"]: call.kwargs for call in no_broker.call_args_list}
    assert set(sent) == {str(r.uuid) for r in runs}
    for run in runs:
        assert sent[str(run.uuid)]["args"] == [str(run.uuid)]
        assert sent[str(run.uuid)]["queue"] == "gpu"


def test_submit_reuses_shared_methods_and_names_new_ones(owner: Any, team: Any, base_model: Any, dataset: Any) -> None:
    shared = Method.objects.create(team=None, family="pi", params={"factor": 4.0}, name="PI ×4 (shared)")
    experiment = submit(owner, team, base_model, dataset, [
        {"family": "pi", "params": {"factor": 4.0}},
        {"family": "yarn", "params": {"factor": 4.0, "beta_fast": 16.0, "beta_slow": 1.0,
                                      "attention_factor": 1.1386294361119891}},
    ])
    methods = [run.method for run in experiment.runs.order_by("id")]
    assert methods[0] == shared
    assert methods[1].team == team
    assert methods[1].name == "YaRN ×4 (β fast 16)"
    again = submit(owner, team, base_model, dataset, [{"family": "yarn", "params": methods[1].params}])
    assert again.runs.get().method == methods[1], "one Method row per (team, family, canonical params)"


def test_viewer_cannot_submit(viewer: Any, team: Any, base_model: Any, dataset: Any) -> None:
    with pytest.raises(PermissionDenied):
        submit(viewer, team, base_model, dataset)
    assert Experiment.objects.count() == 0


def test_broker_failure_fails_the_run_visibly(queued: Experiment, no_broker: Any) -> None:
    no_broker.side_effect = ConnectionError("redis is down")
    run = queued.runs.first()
    services.enqueue_run(str(run.uuid))
    run.refresh_from_db()
    assert run.status == Status.FAILED
    assert "could not reach the task queue" in run.error


# --- claim and execute ----------------------------------------------------------------------------------


def test_claim_is_idempotent(queued: Experiment) -> None:
    run = queued.runs.first()
    assert worker.claim_run(str(run.uuid), "w1") is True
    assert worker.claim_run(str(run.uuid), "w2") is False
    run.refresh_from_db()
    assert run.status == Status.RUNNING and run.worker == "w1"
    assert run.started_at is not None and run.heartbeat_at is not None


def test_duplicate_delivery_does_not_rerun(queued: Experiment, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    fake_pipeline(monkeypatch, lambda spec, reporter: calls.append(spec.run_id))
    run = queued.runs.first()
    assert worker.execute_run(str(run.uuid), "w1") == Status.SUCCEEDED
    assert worker.execute_run(str(run.uuid), "w1") == "skipped"
    assert calls == [str(run.uuid)]


def test_execute_run_records_progress_measurements_and_success(
    queued: Experiment, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = {}

    def pipeline(spec: Any, reporter: Any) -> None:
        seen["spec"] = spec
        reporter.progress(0.0, "loading")
        reporter.log("method pi")
        for done in range(1, 4):
            reporter.progress(0.1 + 0.3 * done, f"perplexity: {done}/3 windows")
        assert reporter.should_stop() is False
        reporter.measurement(Reported("perplexity", 12.5, context_length=512, samples=2, ci_low=11.0, ci_high=14.0))
        reporter.artifact("figure", "/tmp/fig.png")

    fake_pipeline(monkeypatch, pipeline)
    run = queued.runs.order_by("id").last()
    assert worker.execute_run(str(run.uuid), "gpu-1") == Status.SUCCEEDED
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED and run.progress == 1.0 and run.finished_at is not None
    assert run.log_lines == ["attempt 1 on gpu-1", "loading", "method pi", "perplexity: 3/3 windows"]
    m = run.measurements.get()
    assert (m.metric, m.value, m.context_length, m.ci_low, m.ci_high, m.samples) == ("perplexity", 12.5, 512, 11.0,
                                                                                      14.0, 2)
    assert run.artifacts.get().path == "/tmp/fig.png"
    spec = seen["spec"]
    assert spec.run_id == str(run.uuid)
    assert spec.method.family == "pi" and spec.method.params == {"factor": 4.0}
    assert spec.eval.lengths == (256, 512, 1024) and spec.eval.documents == 2
    assert spec.dataset.kind == "local" and spec.model_source == queued.base_model.source
    assert type(spec).from_json(spec.to_json()) == spec


def test_failing_pipeline_fails_only_its_run(queued: Experiment, monkeypatch: pytest.MonkeyPatch) -> None:
    def pipeline(spec: Any, reporter: Any) -> None:
        if spec.method.family == "pi":
            raise RuntimeError("CUDA out of memory")

    fake_pipeline(monkeypatch, pipeline)
    baseline, pi = queued.runs.order_by("id")
    assert worker.execute_run(str(pi.uuid), "w") == Status.FAILED
    assert worker.execute_run(str(baseline.uuid), "w") == Status.SUCCEEDED
    pi.refresh_from_db()
    baseline.refresh_from_db()
    assert pi.status == Status.FAILED and pi.error == "RuntimeError: CUDA out of memory"
    assert "RuntimeError: CUDA out of memory at" in pi.log_lines[-1]
    assert baseline.status == Status.SUCCEEDED and baseline.error == ""


@pytest.mark.django_db(transaction=True)
def test_cancelled_pipeline_ends_cancelled(monkeypatch: pytest.MonkeyPatch, owner: Any, team: Any, base_model: Any,
                                           dataset: Any, settings: Any) -> None:
    settings.CONTEXTLAB_CANCEL_POLL_INTERVAL = 0.05
    run = submit(owner, team, base_model, dataset).runs.first()

    def pipeline(spec: Any, reporter: Any) -> None:
        services.cancel_run(owner, Run.objects.get(uuid=spec.run_id))  # a user clicks Cancel mid-run
        deadline = time.monotonic() + 5  # the heartbeat thread reads the flag every poll interval
        while time.monotonic() < deadline:
            if reporter.should_stop():
                raise Cancelled()
            time.sleep(0.01)

    fake_pipeline(monkeypatch, pipeline)
    assert worker.execute_run(str(run.uuid), "w") == Status.CANCELLED
    run.refresh_from_db()
    assert run.status == Status.CANCELLED and run.finished_at is not None


# --- cancel, retry ----------------------------------------------------------------------------------------


def test_cancel_queued_is_immediate_and_blocks_the_claim(queued: Experiment, owner: Any) -> None:
    run = services.cancel_run(owner, queued.runs.first())
    assert run.status == Status.CANCELLED and run.finished_at is not None
    assert worker.claim_run(str(run.uuid), "w") is False


def test_cancel_running_sets_the_flag_the_reporter_reads(queued: Experiment, teammate: Any) -> None:
    run = queued.runs.first()
    worker.claim_run(str(run.uuid), "w")
    reporter = DbReporter(str(run.uuid))
    assert reporter.should_stop() is False
    run = services.cancel_run(teammate, run)
    assert run.status == Status.RUNNING and run.cancel_requested is True
    assert reporter.should_stop() is True


def test_viewer_cannot_cancel(queued: Experiment, viewer: Any) -> None:
    with pytest.raises(PermissionDenied):
        services.cancel_run(viewer, queued.runs.first())
    assert queued.runs.first().status == Status.QUEUED


def test_retry_makes_a_new_attempt_with_a_fresh_task_id(
    queued: Experiment, owner: Any, monkeypatch: pytest.MonkeyPatch, no_broker: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    def pipeline(spec: Any, reporter: Any) -> None:
        reporter.measurement(Reported("perplexity", 99.0, context_length=256))
        raise ValueError("boom")

    fake_pipeline(monkeypatch, pipeline)
    run = queued.runs.first()
    old_uuid = str(run.uuid)
    worker.execute_run(old_uuid, "w")
    run.refresh_from_db()
    assert run.status == Status.FAILED and run.measurements.count() == 1
    with django_capture_on_commit_callbacks(execute=True):
        run = services.retry_run(owner, run)
    assert run.status == Status.QUEUED and run.attempt == 2
    assert str(run.uuid) != old_uuid
    assert run.error == "" and run.log_tail == "" and run.measurements.count() == 0
    assert no_broker.call_args.kwargs["task_id"] == str(run.uuid)
    assert worker.claim_run(old_uuid, "late duplicate") is False, "the old attempt's message finds nothing"
    # Retrying something that is not failed or cancelled changes nothing.
    assert services.retry_run(owner, run).attempt == 2


# --- reporter -------------------------------------------------------------------------------------------


def test_reporter_keeps_a_bounded_tail_and_ignores_writes_after_the_run_ended(queued: Experiment) -> None:
    run = queued.runs.first()
    worker.claim_run(str(run.uuid), "w")
    reporter = DbReporter(str(run.uuid), tail_lines=5)
    for i in range(12):
        reporter.log(f"line {i}")
    run.refresh_from_db()
    assert run.log_lines == [f"line {i}" for i in range(7, 12)]
    worker.finish_run(str(run.uuid), Status.FAILED, "swept")
    reporter.log("late line")
    reporter.measurement(Reported("perplexity", 1.0, context_length=256))
    run.refresh_from_db()
    assert "late line" not in run.log_tail and run.measurements.count() == 0
    assert reporter.should_stop() is True, "a run that is no longer running must stop"


@pytest.mark.django_db(transaction=True)
def test_heartbeat_thread_beats_while_running(owner: Any, team: Any, base_model: Any, dataset: Any) -> None:
    run = submit(owner, team, base_model, dataset).runs.first()
    worker.claim_run(str(run.uuid), "w")
    Run.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    reporter = DbReporter(str(run.uuid))
    with reporter.heartbeat(interval=0.05):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            run.refresh_from_db()
            if run.heartbeat_at > timezone.now() - timedelta(minutes=1):
                break
            time.sleep(0.05)
    assert run.heartbeat_at > timezone.now() - timedelta(minutes=1)


# --- sweeper ----------------------------------------------------------------------------------------------


def test_sweeper_fails_stale_runs_and_leaves_fresh_ones(queued: Experiment, settings: Any) -> None:
    settings.CONTEXTLAB_HEARTBEAT_TIMEOUT = 120
    stale, fresh = queued.runs.order_by("id")
    for run in (stale, fresh):
        worker.claim_run(str(run.uuid), "w")
    now = timezone.now()
    Run.objects.filter(pk=stale.pk).update(heartbeat_at=now - timedelta(seconds=121))
    Run.objects.filter(pk=fresh.pk).update(heartbeat_at=now - timedelta(seconds=30))
    assert services.sweep_stale_runs(now) == 1
    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert stale.status == Status.FAILED
    assert stale.error.startswith("worker lost (no heartbeat since ")
    assert fresh.status == Status.RUNNING
    # The lost worker's late success does not overwrite the verdict.
    assert worker.finish_run(str(stale.uuid), Status.SUCCEEDED) is False
    assert services.sweep_stale_runs(now) == 0


def test_sweeper_task_shim(queued: Experiment) -> None:
    from experiments.tasks import sweep_stale_runs

    assert sweep_stale_runs() == 0


def test_measurements_for_finished_runs_are_dropped(queued: Experiment) -> None:
    run = queued.runs.first()
    assert worker.record_measurement(str(run.uuid), Reported("perplexity", 3.0)) is None, "queued, not running"
    assert Measurement.objects.count() == 0


def test_a_steps_measurements_cost_two_queries_whatever_their_number(
    queued: Experiment, django_assert_num_queries: Any
) -> None:
    run = queued.runs.first()
    worker.claim_run(str(run.uuid), "w")
    reporter = DbReporter(str(run.uuid))
    with django_assert_num_queries(0):
        for i in range(200):
            reporter.measurement(Reported("perplexity", float(i), context_length=256 + i))
    with django_assert_num_queries(2):  # the attempt still runs? one bulk insert
        reporter.flush()
    assert run.measurements.count() == 200
    with django_assert_num_queries(0):
        reporter.flush()


@pytest.mark.django_db(transaction=True)
def test_while_the_heartbeat_runs_the_cancel_flag_costs_the_pipeline_no_query(
    owner: Any, team: Any, base_model: Any, dataset: Any, settings: Any
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    settings.CONTEXTLAB_CANCEL_POLL_INTERVAL = 0.05
    run = submit(owner, team, base_model, dataset).runs.first()
    worker.claim_run(str(run.uuid), "w")
    reporter = DbReporter(str(run.uuid))
    with reporter.heartbeat(interval=5):
        with CaptureQueriesContext(connection) as queries:
            assert not any(reporter.should_stop() for _ in range(1000))
        assert len(queries) == 0, "the heartbeat thread reads the flag on its own connection"
        services.cancel_run(owner, run)
        deadline = time.monotonic() + 5
        while not reporter.should_stop() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert reporter.should_stop(), "the cancel is seen within a poll interval"
    assert reporter.should_stop() is True, "after the block it asks the database again"
