"""The JSON API (/api/v1/): the same forms, services and selectors as the pages, in JSON.

An experiment is created through the page's composer (:mod:`experiments.api_body`), objects are written by
:mod:`experiments.api_json`; this module holds the endpoints.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse

from experiments import checkpoints, csv_export, experiment_filters, leaderboard, selectors, services
from experiments.access import (
    experiment_for,
    run_for,
    submit_teams_of,
    visible_base_models,
    visible_datasets,
    visible_methods,
)
from experiments.api_auth import api_view
from experiments.api_body import composer_for
from experiments.api_json import base_model_json, dataset_json, experiment_json, method_json, ref
from experiments.forms import BaseModelForm
from experiments.models import Run
from gpu_workers.methods import FAMILIES

# --- endpoints ---------------------------------------------------------------------------------------------


def _body(request: HttpRequest) -> dict[str, Any] | None:
    try:
        body = json.loads(request.body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def _experiment_list(request: HttpRequest) -> dict[str, Any]:
    """One page of the user's filtered experiments: ``{"count", "next", "previous", "results"}``.

    Same filters and page size as the dashboard (:mod:`experiments.experiment_filters`); ``next`` and
    ``previous`` are absolute URLs keeping the filters, null at the ends. ``experiments`` repeats
    ``results`` for clients of the unpaginated list (deprecated); ``ignored_filters`` names bad filter values.
    """
    form, page, _ = experiment_filters.experiment_page(request.user, request.GET)
    filters = form.params()

    def link(number: int) -> str:
        return request.build_absolute_uri(f"{request.path}?{urlencode({**filters, 'page': number})}")

    results = [
        {"id": str(e.uuid), "name": e.name, "team": ref(e.team), "base_model": ref(e.base_model),
         "dataset": ref(e.dataset), "created": e.created.isoformat(), "runs": e.n_runs,
         "archived_at": e.archived_at.isoformat() if e.archived_at else None,
         "run_statuses": {status: getattr(e, f"n_{status}") for status in Run.Status.values},
         "url": reverse("api_experiment", kwargs={"experiment_id": e.uuid})}
        for e in page.object_list
    ]
    body: dict[str, Any] = {
        "count": page.paginator.count,
        "next": link(page.next_page_number()) if page.has_next() else None,
        "previous": link(page.previous_page_number()) if page.has_previous() else None,
        "results": results,
        "experiments": results,
    }
    if form.errors:
        body["ignored_filters"] = {name: list(messages) for name, messages in form.errors.items()}
    return body


@api_view("GET", "POST")
def experiments(request: HttpRequest) -> JsonResponse:
    if request.method == "GET":
        return JsonResponse(_experiment_list(request))
    body = _body(request)
    if body is None:
        return JsonResponse({"errors": {"__all__": ["The body must be a JSON object."]}}, status=400)
    composer, errors = composer_for(request.user, body)
    if not composer.is_valid() or errors:
        merged = composer.errors()
        merged.update(errors)
        return JsonResponse({"errors": merged}, status=400)
    experiment = services.submit_experiment(request.user, composer.cleaned())
    return JsonResponse(experiment_json(experiment), status=201)


@api_view("GET")
def experiment(request: HttpRequest, experiment_id: str) -> JsonResponse:
    found = experiment_for(request.user, experiment_id)
    data = experiment_json(found)
    data["series"] = {name: [list(p) for p in points] for name, points in selectors.comparison_series(found).items()}
    return JsonResponse(data)


@api_view("GET")
def experiment_csv(request: HttpRequest, experiment_id: str) -> HttpResponse:
    found = experiment_for(request.user, experiment_id)
    return csv_export.csv_response(f"{found.name}-measurements", selectors.MEASUREMENT_COLUMNS,
                                   selectors.measurement_rows(found))


def _run_json(run: Run) -> dict[str, Any]:
    data = selectors.run_payload(run, log_lines=None)
    data["experiment"] = str(run.experiment.uuid)
    data["measurements"] = [selectors.measurement_payload(m) for m in run.measurements.order_by("id")]
    exported = selectors.checkpoint_artifact(run) is not None
    data["checkpoint"] = reverse("api_run_export_zip", kwargs={"run_id": run.uuid}) if exported else None
    return data


@api_view("GET")
def run(request: HttpRequest, run_id: str) -> JsonResponse:
    return JsonResponse(_run_json(run_for(request.user, run_id)))


@api_view("POST")
def run_cancel(request: HttpRequest, run_id: str) -> JsonResponse:
    return JsonResponse(_run_json(services.cancel_run(request.user, run_for(request.user, run_id))))


@api_view("POST")
def run_retry(request: HttpRequest, run_id: str) -> JsonResponse:
    return JsonResponse(_run_json(services.retry_run(request.user, run_for(request.user, run_id))))


@api_view("POST")
def run_export(request: HttpRequest, run_id: str) -> JsonResponse:
    """Export a succeeded run's checkpoint (members only): 201 with the download URL, 409 if it cannot be."""
    found = run_for(request.user, run_id)
    try:
        artifact = services.export_checkpoint(request.user, found)
    except services.ExportRefused as exc:
        return JsonResponse({"detail": str(exc)}, status=409)
    return JsonResponse({
        "run": str(found.uuid),
        "artifact": {"kind": artifact.kind, "created": artifact.created.isoformat()},
        "download": reverse("api_run_export_zip", kwargs={"run_id": found.uuid}),
    }, status=201)


@api_view("GET")
def run_export_zip(request: HttpRequest, run_id: str) -> HttpResponse:
    found = run_for(request.user, run_id)
    return checkpoints.download(found, selectors.checkpoint_artifact(found))


@api_view("GET")
def leaderboard_csv(request: HttpRequest) -> HttpResponse:
    missing = {key: ["This parameter is required."] for key in ("base_model", "context_length")
               if not request.GET.get(key)}
    if missing:
        return JsonResponse({"errors": missing}, status=400)
    return leaderboard.csv_response(leaderboard.resolve(request.user, request.GET))


@api_view("GET", "POST")
def models(request: HttpRequest) -> JsonResponse:
    """GET: the models the user can see. POST {team, name, source}: register one (a directory or a .gguf file)."""
    if request.method == "GET":
        return JsonResponse({"models": [base_model_json(m) for m in visible_base_models(request.user)]})
    body = _body(request)
    if body is None:
        return JsonResponse({"errors": {"__all__": ["The body must be a JSON object."]}}, status=400)
    if not submit_teams_of(request.user).exists():
        raise PermissionDenied("Registering a model needs the member or admin role in a team.")
    form = BaseModelForm({key: body.get(key) for key in ("team", "name", "source")}, user=request.user)
    if not form.is_valid():
        return JsonResponse({"errors": {field: list(msgs) for field, msgs in form.errors.items()}}, status=400)
    data = form.cleaned_data
    model = services.register_base_model(request.user, data["team"], data["name"], data["source"], form.facts)
    return JsonResponse(base_model_json(model), status=201)


@api_view("GET")
def datasets(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"datasets": [dataset_json(d) for d in visible_datasets(request.user)]})


def families_json() -> list[dict[str, Any]]:
    """Every method family's schema: its parameters with their defaults (a search row's are
    :data:`gpu_workers.catalog.SEARCH_DEFAULTS`), what a posted method row without them gets."""
    return [
        {
            "name": family.name, "label": family.label, "help": family.help, "needs_rope": family.needs_rope,
            "length_dependent": family.length_dependent, "acts_on_attention": family.acts_on_attention,
            "exportable": not family.export_refusal,
            "params": [
                {"name": p.name, "label": p.label, "type": p.kind.__name__, "default": p.default, "help": p.help,
                 "minimum": p.minimum, "exclusive_minimum": p.exclusive_minimum, "maximum": p.maximum}
                for p in family.params
            ],
        }
        for family in FAMILIES.values()
    ]


@api_view("GET")
def methods(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"families": families_json(),
                         "methods": [method_json(m) for m in visible_methods(request.user)]})
