"""The JSON API (/api/v1/): the same forms, services and selectors as the pages, in JSON.

Creating an experiment translates the JSON body into the composer's form data and validates it
with the very same :class:`~experiments.forms.Composer`, so the API cannot accept what the page
would refuse; errors come back as ``{"errors": {field: [messages]}}`` with method rows named
``methods.<index>.<param>``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any
from urllib.parse import urlencode

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse

from experiments import checkpoints, csv_export, experiment_filters, leaderboard, selectors, services
from experiments.access import (
    can_submit,
    experiment_for,
    run_for,
    submit_teams_of,
    teams_of,
    visible_base_models,
    visible_datasets,
    visible_methods,
)
from experiments.api_auth import api_view
from experiments.forms import MAX_METHOD_ROWS, BaseModelForm, Composer, EvaluationForm, TrainingForm
from experiments.models import BaseModel, Dataset, Experiment, Method, Run, Team
from gpu_workers.methods import FAMILIES
from gpu_workers.spec import EvalSpec, TrainSpec

# --- representations ------------------------------------------------------------------------------------


def _ref(obj: Any) -> dict[str, Any] | None:
    return {"id": obj.pk, "name": obj.name} if obj is not None else None


def base_model_json(model: BaseModel) -> dict[str, Any]:
    return {
        "id": model.pk, "name": model.name, "source": model.source, "team": _ref(model.team),
        "original_context": model.original_context, "head_dim": model.head_dim, "rope_theta": model.rope_theta,
        "has_rope": model.has_rope, "parameters": model.parameters, "facts": model.facts,
    }


def dataset_json(dataset: Dataset) -> dict[str, Any]:
    return {
        "id": dataset.pk, "name": dataset.name, "team": _ref(dataset.team), "kind": dataset.kind,
        "path": dataset.path, "text_field": dataset.text_field, "source_field": dataset.source_field,
        "haystack_source": dataset.haystack_source, "haystack": dataset.haystack,
        "facts": dataset.facts,
    }


def method_json(method: Method) -> dict[str, Any]:
    return {"id": method.pk, "name": method.name, "family": method.family, "params": method.params,
            "team": _ref(method.team)}


def experiment_json(experiment: Experiment, runs: list[Run] | None = None) -> dict[str, Any]:
    runs = runs if runs is not None else list(experiment.runs.select_related("method").order_by("id"))
    return {
        "id": str(experiment.uuid),
        "name": experiment.name,
        "team": _ref(experiment.team),
        "created_by": experiment.created_by.get_username() if experiment.created_by else None,
        "created": experiment.created.isoformat(),
        "archived_at": experiment.archived_at.isoformat() if experiment.archived_at else None,
        "base_model": _ref(experiment.base_model),
        "dataset": _ref(experiment.dataset),
        "target_length": experiment.target_length,
        "eval_lengths": experiment.eval_lengths,
        "eval_documents": experiment.eval_documents,
        "training": experiment.training,
        "evaluations": experiment.evaluations,
        "url": reverse("experiment_detail", kwargs={"experiment_id": experiment.uuid}),
        "measurements_csv": reverse("api_experiment_csv", kwargs={"experiment_id": experiment.uuid}),
        "runs": [selectors.run_payload(run) for run in runs],
    }


# --- translating a JSON body into composer form data -----------------------------------------------------


def _pick(queryset: QuerySet[Any], ref: Any, team: Team | None, what: str) -> tuple[Any | None, str | None]:
    """Resolve an id or a name among *queryset*; a name shared by several prefers *team*'s own."""
    if ref is None or ref == "":
        return None, None
    if isinstance(ref, bool) or not isinstance(ref, int | str):
        return None, f"Give the {what} as an id or a name."
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        found = queryset.filter(pk=int(ref)).first()
        if found is not None:
            return found, None
    matches = [obj for obj in queryset.filter(name=str(ref))]
    if len(matches) > 1 and team is not None:
        matches = [obj for obj in matches if getattr(obj, "team_id", None) == team.pk] or matches
    if len(matches) == 1:
        return matches[0], None
    if not matches:
        return None, f"Unknown {what} {ref!r}."
    return None, f"Several {what}s are called {ref!r}; give its id."


EVALUATION_DEFAULTS: dict[str, Any] = {
    **{f.name: list(f.default) if isinstance(f.default, tuple) else f.default
       for f in dataclasses.fields(EvalSpec) if f.name not in ("lengths", "documents")},
    "stride": None,  # blank: half the model's original context, as in the composer
}
"""What an API body's ``evaluations`` falls back to per key: :class:`EvalSpec`'s defaults (the suite: perplexity
only), whose choices (protocols, needle formats and variants) are :mod:`gpu_workers.catalog`'s."""


def _evaluation_data(raw: Any, data: dict[str, Any], errors: dict[str, list[str]]) -> None:
    """``evaluations``: a list of evaluation names, or an object of EvalSpec settings with a ``suite`` list."""
    if raw is None:
        raw = {}
    if isinstance(raw, list):
        raw = {"suite": raw}
    if not isinstance(raw, dict):
        errors["evaluations"] = ["Give evaluations as a list of names or an object of settings with a suite list."]
        raw = {}
    unknown = sorted(set(raw) - set(EVALUATION_DEFAULTS))
    if unknown:
        errors["evaluations"] = [f"Unknown evaluation settings: {', '.join(unknown)}."]
    settings = {**EVALUATION_DEFAULTS, **{k: v for k, v in raw.items() if k in EVALUATION_DEFAULTS}}
    prefix = EvaluationForm.prefix
    suite = settings["suite"]
    data[f"{prefix}-suite"] = suite if isinstance(suite, list) else [suite]
    depths = settings["needle_depths"]
    data[f"{prefix}-needle_depths"] = ",".join(map(str, depths)) if isinstance(depths, list) else str(depths)
    tasks = settings["ruler_tasks"]
    data[f"{prefix}-ruler_tasks"] = tasks if isinstance(tasks, list) else [tasks]
    for key in ("protocol", "stride", "passkey_samples", "passkey_depth", "needle_samples", "needle_format",
                "needle_variant", "needle_count", "ruler_samples", "ruler_threshold", "ruler_max_new_tokens",
                "longppl_short_window", "longppl_gain", "longppl_bound"):
        data[f"{prefix}-{key}"] = "" if settings[key] is None else settings[key]


TRAINING_KEYS = tuple(f.name for f in dataclasses.fields(TrainSpec))


def _training_data(raw: Any, data: dict[str, Any], errors: dict[str, list[str]]) -> None:
    """``training``: an object of TrainSpec settings (``mode`` none / finetune / continual_pretrain)."""
    if raw is None:
        raw = {"mode": "none"}
    if not isinstance(raw, dict):
        errors["training"] = ["Give training as an object of settings, e.g. {\"mode\": \"finetune\", \"steps\": 100}."]
        raw = {"mode": "none"}
    unknown = sorted(set(raw) - set(TRAINING_KEYS))
    if unknown:
        errors["training"] = [f"Unknown training settings: {', '.join(unknown)}."]
    settings = {**dataclasses.asdict(TrainSpec()), **{k: v for k, v in raw.items() if k in TRAINING_KEYS}}
    prefix = TrainingForm.prefix
    for key, value in settings.items():
        if isinstance(value, bool):
            if value:
                data[f"{prefix}-{key}"] = "on"
        elif isinstance(value, list | tuple):
            data[f"{prefix}-{key}"] = ",".join(map(str, value))
        elif key in ("train_length", "long_threshold") and not value:
            data[f"{prefix}-{key}"] = ""
        else:
            data[f"{prefix}-{key}"] = "" if value is None else value


def _team_data(user: Any, body: dict[str, Any], data: dict[str, Any], errors: dict[str, list[str]]) -> Any:
    """The team the body names (or the user's only submittable team), into ``data``; returns it (or None)."""
    team, problem = _pick(teams_of(user), body.get("team"), None, "team")
    if body.get("team") in (None, ""):
        only = list(submit_teams_of(user)[:2])
        team = only[0] if len(only) == 1 else None
        if team is None:
            problem = "Name the team (you can submit to several, or to none)."
    if problem:
        errors["team"] = [problem]
    elif team is not None and not can_submit(user, team):
        raise PermissionDenied("Viewers can look but not start runs.")
    data["team"] = team.pk if team else ""
    return team


def _settings_data(body: dict[str, Any], data: dict[str, Any], errors: dict[str, list[str]]) -> None:
    """The experiment's plain fields: name, target length, evaluation documents and lengths."""
    for key in ("name", "target_length", "eval_documents"):
        value = body.get(key)
        data[key] = "" if value is None else value
    if body.get("eval_documents") is None:
        data["eval_documents"] = 8
    lengths = body.get("eval_lengths")
    if lengths is None:
        data["eval_lengths"] = ""
    elif isinstance(lengths, list) and all(isinstance(n, int) and not isinstance(n, bool) for n in lengths):
        data["eval_lengths"] = ",".join(str(n) for n in lengths)
    else:
        errors["eval_lengths"] = ["Give eval_lengths as a list of whole numbers of tokens."]
        data["eval_lengths"] = ""


def _methods_data(methods: Any, data: dict[str, Any], errors: dict[str, list[str]]) -> None:
    """The method rows as the :class:`Composer` formset's management form plus one form per method."""
    if not isinstance(methods, list) or not all(isinstance(m, dict) for m in methods):
        errors["methods"] = ['Give methods as a list of {"family": ..., "params": {...}} objects.']
        methods = []
    prefix = Composer.prefix
    data.update({f"{prefix}-TOTAL_FORMS": len(methods), f"{prefix}-INITIAL_FORMS": 0,
                 f"{prefix}-MIN_NUM_FORMS": 0, f"{prefix}-MAX_NUM_FORMS": MAX_METHOD_ROWS})
    for i, method in enumerate(methods):
        family = method.get("family")
        if family not in FAMILIES:
            errors[f"methods.{i}.family"] = [f"Unknown method family {family!r}; choose one of {', '.join(FAMILIES)}."]
        params = method.get("params") or {}
        data[f"{prefix}-{i}-family"] = family if isinstance(family, str) else ""
        data[f"{prefix}-{i}-params_json"] = json.dumps(params)


def composer_data(user: Any, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Form data for :class:`Composer` from the API body, plus errors the translation itself found."""
    errors: dict[str, list[str]] = {}
    data: dict[str, Any] = {}
    team = _team_data(user, body, data, errors)
    for key, queryset, what in (
        ("base_model", visible_base_models(user), "base model"),
        ("dataset", visible_datasets(user), "dataset"),
    ):
        obj, problem = _pick(queryset, body.get(key), team, what)
        if problem:
            errors[key] = [problem]
        data[key] = obj.pk if obj else ""
    _settings_data(body, data, errors)
    _evaluation_data(body.get("evaluations"), data, errors)
    _training_data(body.get("training"), data, errors)
    _methods_data(body.get("methods"), data, errors)
    return data, errors


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
        {"id": str(e.uuid), "name": e.name, "team": _ref(e.team), "base_model": _ref(e.base_model),
         "dataset": _ref(e.dataset), "created": e.created.isoformat(), "runs": e.n_runs,
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
    data, errors = composer_data(request.user, body)
    composer = Composer(request.user, data)
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
