"""The pivot leaderboard's page and its CSV (the same table, :mod:`experiments.pivot`)."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from experiments import pivot


@login_required
@require_GET
def pivot_page(request: HttpRequest) -> HttpResponse:
    query = pivot.resolve(request.user, request.GET)
    return render(request, "experiments/leaderboard_pivot.html", {
        "query": query, "metrics": pivot.PIVOT_METRICS, "views": pivot.VIEWS,
        "query_string": urlencode(query.params()),
    })


@login_required
@require_GET
def pivot_csv(request: HttpRequest) -> StreamingHttpResponse:
    return pivot.csv_response(pivot.resolve(request.user, request.GET))
