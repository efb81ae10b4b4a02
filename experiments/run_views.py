"""The run page: one run's whole log, its spec, artifacts, attempt history and error.

Anyone in the run's team sees the page; the traceback of a failure is shown to members and admins only
(``can_submit``): viewers see the error line. Outsiders get 404, as for every object of another team.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET

from experiments import run_selectors
from experiments.access import can_submit, run_for
from experiments.models import Run


def _attempt(request: HttpRequest, run: Run) -> int:
    """The ``?attempt=`` asked for (1 … the run's current attempt), else the current one."""
    try:
        number = int(request.GET.get("attempt") or run.attempt)
    except ValueError:
        return run.attempt
    return number if 1 <= number <= run.attempt else run.attempt


def _run_view(view: Callable[[HttpRequest, Run], HttpResponse]) -> Callable[[HttpRequest, str], HttpResponse]:
    """Give *view* the run; a task id of one of its earlier attempts redirects to the run's own address with
    ``?attempt=`` (old links in logs and the API keep working)."""

    @functools.wraps(view)
    def wrapped(request: HttpRequest, run_id: str) -> HttpResponse:
        try:
            run = run_for(request.user, run_id)
        except Http404:
            earlier = run_selectors.run_of_attempt(request.user, run_id)
            if earlier is None:
                raise
            return redirect(f"{reverse(view.__name__, args=[earlier.run.uuid])}?attempt={earlier.number}")
        return view(request, run)

    return wrapped


@login_required
@require_GET
@_run_view
def run_detail(request: HttpRequest, run: Run) -> HttpResponse:
    page = run_selectors.run_page(run, _attempt(request, run))
    return render(request, "experiments/run_detail.html", {
        "page": page,
        "run": run,
        "experiment": run.experiment,
        "can_submit": can_submit(request.user, run.experiment.team),
        "show_traceback": can_submit(request.user, run.experiment.team),
    })


@login_required
@require_GET
@_run_view
def run_log_text(request: HttpRequest, run: Run) -> HttpResponse:
    """One attempt's whole log as plain text, streamed."""
    attempt = _attempt(request, run)
    response = StreamingHttpResponse(run_selectors.log_lines(run, attempt), content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'inline; filename="run-{run.uuid}-attempt-{attempt}.log"'
    return response


@login_required
@require_GET
def run_log_json(request: HttpRequest, run_id: str) -> JsonResponse:
    """What the run page polls while the run is active: the log written since ``?after=`` and the state."""
    run = run_for(request.user, run_id)
    attempt = _attempt(request, run)
    try:
        after = max(int(request.GET.get("after") or 0), 0)
    except ValueError:
        after = 0
    chunks = run_selectors.log_after(run, attempt, after)
    return JsonResponse({
        "status": run.status,
        "status_label": run.get_status_display(),
        "active": run.is_active,
        "attempt": run.attempt,
        "progress": round(run.progress, 4),
        "progress_message": run.progress_message,
        "text": [text for _, text in chunks],
        "last": chunks[-1][0] if chunks else after,
    })
