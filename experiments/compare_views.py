"""The compare page: runs picked on any experiment page (the compare basket), side by side.

``/compare/?runs=<uuid>,<uuid>[&diff=1]``: the URL is the whole state, so it can be shared; ``diff=1`` opens
the parameter table on the rows that differ. Read-only and login-required; the reader is
:mod:`experiments.compare`.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from experiments import compare
from gpu_workers import catalog


@login_required
@require_GET
def run_compare(request: HttpRequest) -> HttpResponse:
    comparison = compare.compare(request.user, request.GET.getlist("runs"))
    charts = comparison.chart["charts"]
    return render(request, "experiments/compare.html", {
        "comparison": comparison,
        "diff_only": request.GET.get("diff") in ("1", "true", "on", "yes"),
        # What was asked for, kept as asked: a colleague who sees more runs sees them from the same link.
        "run_ids": ",".join(value for value in request.GET.getlist("runs") if value.strip()),
        "share_url": request.build_absolute_uri(),
        "shown": {name: comparison.shows(name) for name in catalog.EVALUATIONS},
        "suite_labels": [catalog.evaluation_label(name) for name in comparison.suite],
        "has_search": bool(charts["search"]),
        "has_training": bool(charts["train_loss"]),
    })
