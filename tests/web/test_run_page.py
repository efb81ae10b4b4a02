"""The run page: whole log, attempts, artifacts, spec, and the traceback for members only.

The worker side is driven through the same code the Celery task uses (``experiments.worker``: claim, log,
finish; ``services``: retry, sweep), so what the page shows is what a real attempt records.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from experiments import services
from experiments.models import Artifact, Experiment, Run, RunAttempt, RunLogChunk
from experiments.worker import DbReporter, claim_run, finish_run, write_log
from tests.web.factories import login

PAGES = ("run_detail", "run_log_text", "run_log_json")


def queued_run(experiment: Experiment) -> Run:
    run = experiment.runs.first()
    Run.objects.filter(pk=run.pk).update(status=Run.Status.QUEUED, started_at=None, finished_at=None)
    run.refresh_from_db()
    return run


def fail_an_attempt(run: Run, worker: str = "gpu-box-1") -> Run:
    """Claim, log past the tail, and fail with a traceback, as ``experiments.worker.execute_run`` does."""
    assert claim_run(str(run.uuid), worker)
    reporter = DbReporter(str(run.uuid), tail_lines=3)
    for i in range(6):
        reporter.log(f"line {i}")
    reporter.progress(0.5, "perplexity: 1/8 documents")
    reporter.progress(0.6, "perplexity: 2/8 documents")
    reporter.log("about to fail")
    try:
        raise RuntimeError("CUDA out of memory in /srv/secret/path.py")
    except RuntimeError:
        import traceback

        finish_run(str(run.uuid), Run.Status.FAILED, error="RuntimeError: CUDA out of memory",
                   trace=traceback.format_exc())
    run.refresh_from_db()
    return run


# --- who sees what ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("who", "status"), [("owner", 200), ("teammate", 200), ("viewer", 200), ("outsider", 404)])
@pytest.mark.parametrize("name", PAGES)
def test_run_pages_scoped_to_team(request: pytest.FixtureRequest, experiment: Experiment, who: str, status: int,
                                  name: str) -> None:
    run = experiment.runs.first()
    response = login(request.getfixturevalue(who)).get(reverse(name, args=[run.uuid]))
    assert response.status_code == status


@pytest.mark.parametrize("name", PAGES)
def test_anonymous_goes_to_login(client: Client, experiment: Experiment, name: str) -> None:
    response = client.get(reverse(name, args=[experiment.runs.first().uuid]))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


@pytest.mark.parametrize("name", PAGES)
def test_run_pages_are_read_only(owner: Any, experiment: Experiment, name: str) -> None:
    response = login(owner).post(reverse(name, args=[experiment.runs.first().uuid]))
    assert response.status_code == 405


@pytest.mark.parametrize(("who", "sees_traceback"), [("owner", True), ("teammate", True), ("viewer", False)])
def test_traceback_for_members_only(request: pytest.FixtureRequest, experiment: Experiment, who: str,
                                    sees_traceback: bool) -> None:
    """Viewers see what went wrong, not the worker's code and paths (members debug; viewers read results)."""
    run = fail_an_attempt(queued_run(experiment))
    page = login(request.getfixturevalue(who)).get(reverse("run_detail", args=[run.uuid])).content.decode()
    assert "RuntimeError: CUDA out of memory" in page
    assert ("Traceback (most recent call last)" in page) == sees_traceback
    assert ("/srv/secret/path.py" in page) == sees_traceback
    assert ('data-role="traceback-hidden"' in page) == (not sees_traceback)


# --- the whole log ----------------------------------------------------------------------------------------------


def test_whole_log_kept_while_the_tail_stays_short(owner: Any, experiment: Experiment) -> None:
    run = fail_an_attempt(queued_run(experiment))
    assert run.log_lines == ["line 5", "perplexity: 2/8 documents", "about to fail"], "the tail keeps 3 lines"
    expected = [f"line {i}" for i in range(6)] + ["perplexity: 2/8 documents", "about to fail"]
    client = login(owner)
    page = client.get(reverse("run_detail", args=[run.uuid]))
    assert page.context["page"].log_text.splitlines() == expected, "progress messages settle like a terminal's"
    text = b"".join(client.get(reverse("run_log_text", args=[run.uuid])).streaming_content).decode()
    assert text.splitlines() == expected
    polled = client.get(reverse("run_log_json", args=[run.uuid]), {"after": 0}).json()
    assert "\n".join(polled["text"]).splitlines() == expected and polled["active"] is False
    assert client.get(reverse("run_log_json", args=[run.uuid]), {"after": polled["last"]}).json()["text"] == []


def test_late_writes_from_a_finished_attempt_are_dropped(experiment: Experiment) -> None:
    run = fail_an_attempt(queued_run(experiment))
    before = RunLogChunk.objects.filter(run=run).count()
    write_log(str(run.uuid), "tail", ["too late"])
    assert RunLogChunk.objects.filter(run=run).count() == before


def test_last_progress_message_settles_when_the_block_ends(experiment: Experiment, settings: Any) -> None:
    settings.CONTEXTLAB_HEARTBEAT_INTERVAL = 60
    run = queued_run(experiment)
    assert claim_run(str(run.uuid), "w")
    reporter = DbReporter(str(run.uuid))
    with reporter.heartbeat():
        reporter.log("start")
        reporter.progress(0.5, "half")
        reporter.progress(1.0, "done")
    assert [c.text for c in RunLogChunk.objects.filter(run=run)] == ["start", "done"]


# --- attempts ---------------------------------------------------------------------------------------------------


def test_each_claim_is_an_attempt_and_a_retry_keeps_the_history(owner: Any, experiment: Experiment,
                                                               django_capture_on_commit_callbacks: Any) -> None:
    run = fail_an_attempt(queued_run(experiment), worker="gpu-box-1")
    first_uuid = run.uuid
    with django_capture_on_commit_callbacks(execute=False):
        run = services.retry_run(owner, run)
    assert claim_run(str(run.uuid), "gpu-box-2")
    assert not claim_run(str(run.uuid), "gpu-box-3"), "a duplicate delivery is not an attempt"
    DbReporter(str(run.uuid)).log("second attempt's line")
    finish_run(str(run.uuid), Run.Status.SUCCEEDED)

    attempts = list(RunAttempt.objects.filter(run=run))
    assert [(a.number, a.worker, a.outcome) for a in attempts] == [(1, "gpu-box-1", "failed"),
                                                                   (2, "gpu-box-2", "succeeded")]
    assert attempts[0].task_id == first_uuid and attempts[1].task_id == run.uuid
    assert all(a.finished_at and a.duration_s is not None and a.wait_s is not None for a in attempts)
    assert "Traceback" in attempts[0].traceback and attempts[1].traceback == ""

    client = login(owner)
    page = client.get(reverse("run_detail", args=[run.uuid]))
    assert page.context["page"].log_text == "second attempt's line"
    html = page.content.decode()
    assert 'data-attempt="1"' in html and 'data-attempt="2"' in html and "gpu-box-1" in html
    earlier = client.get(reverse("run_detail", args=[run.uuid]), {"attempt": 1}).context["page"]
    assert earlier.log_text.startswith("line 0") and earlier.log_attempt == 1
    # A link from before the retry (the first attempt's uuid) still finds the run, at that attempt.
    response = client.get(reverse("run_detail", args=[first_uuid]))
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('run_detail', args=[run.uuid])}?attempt=1"


def test_a_swept_attempt_is_closed(experiment: Experiment, settings: Any) -> None:
    run = queued_run(experiment)
    assert claim_run(str(run.uuid), "w")
    Run.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    assert services.sweep_stale_runs() == 1
    attempt = RunAttempt.objects.get(run=run)
    assert attempt.outcome == Run.Status.FAILED and attempt.error.startswith("worker lost")


# --- the rest of the page ---------------------------------------------------------------------------------------


def test_page_has_spec_artifacts_and_is_linked_from_the_experiment(owner: Any, experiment: Experiment) -> None:
    run = experiment.runs.first()
    Artifact.objects.create(run=run, kind="search_result", path="/data/runs/run-1/search.json")
    client = login(owner)
    page = client.get(reverse("run_detail", args=[run.uuid]))
    html = page.content.decode()
    spec = json.loads(page.context["page"].spec_json)
    assert spec["run_id"] == str(run.uuid) and spec["method"]["family"] == run.method.family
    assert f'href="{reverse("run_spec", args=[run.uuid])}"' in html
    assert "/data/runs/run-1/search.json" in html
    experiment_page = client.get(reverse("experiment_detail", args=[experiment.uuid])).content.decode()
    assert f'href="{reverse("run_detail", args=[run.uuid])}"' in experiment_page


def test_run_page_fixed_queries(owner: Any, experiment: Experiment, django_assert_max_num_queries: Any) -> None:
    run = queued_run(experiment)
    for _ in range(3):
        fail_an_attempt(run)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("experiments.services._enqueue_on_commit", lambda *_: None)
            run = services.retry_run(owner, run)
    client = login(owner)
    with django_assert_max_num_queries(14):
        assert client.get(reverse("run_detail", args=[run.uuid]), {"attempt": 2}).status_code == 200
