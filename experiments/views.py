"""Server-rendered pages. Reads go through selectors, writes through services.

Every view is login-required and scoped to the user's teams (others' objects are 404); views that
change state are POST-only; viewers may look but get 403 on anything that writes.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from experiments import (
    checkpoints,
    composer_defaults,
    csv_export,
    experiment_filters,
    leaderboard,
    lifecycle_selectors,
    rerun,
    rope_charts,
    selectors,
    services,
)
from experiments.access import (
    can_submit,
    experiment_for,
    method_for,
    run_for,
    submit_teams_of,
    teams_of,
    visible_base_models,
    visible_datasets,
    visible_methods,
)
from experiments.composer import Composer
from experiments.composer_forms import TRAINING_PRESETS
from experiments.forms import BaseModelForm, DatasetForm, HaystackSourceForm, MixturePreviewForm, ScalingChartForm
from experiments.models import ApiToken, BaseModel
from gpu_workers import catalog
from gpu_workers.data.mixture_preview import preview
from gpu_workers.methods import FAMILIES
from gpu_workers.methods.longrope_files import format_factors
from gpu_workers.protocol import default_short_window
from gpu_workers.spec import SEARCH_MODES


def _require_some_submit_team(request: HttpRequest) -> None:
    if not submit_teams_of(request.user).exists():
        raise PermissionDenied("You are a viewer in all your teams.")


@login_required
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    """The user's teams' experiments, filtered and paginated (experiments.experiment_filters): fixed queries."""
    form, page, _ = experiment_filters.experiment_page(request.user, request.GET)
    filters = urlencode(form.params())
    return render(request, "experiments/dashboard.html", {
        "experiments": page.object_list,
        "page": page,
        "filter_form": form,
        "filtered": bool(filters),
        "filter_query": f"&{filters}" if filters else "",
        "teams": teams_of(request.user),
        "can_submit": submit_teams_of(request.user).exists(),
    })


@login_required
@require_http_methods(["GET", "POST"])
def experiment_new(request: HttpRequest) -> HttpResponse:
    _require_some_submit_team(request)
    composer = Composer(request.user, request.POST if request.method == "POST" else None)
    if request.method == "POST" and composer.is_valid():
        experiment = services.submit_experiment(request.user, composer.cleaned())
        messages.success(request, f"Queued {experiment.runs.count()} runs.")
        return redirect("experiment_detail", experiment_id=experiment.uuid)
    # ?from=<uuid>: run an experiment the visitor can see again, with changes (experiments.rerun); a posted
    # composer keeps what was posted either way
    wanted = request.GET.get("from")
    source = rerun.source_experiment(request.user, wanted) if wanted else None
    if source is not None:
        rerun.apply(composer, request.user, source)
    else:
        if wanted and request.method == "GET":
            messages.warning(request, "There is no experiment of yours to run again at that address; "
                                      "here is a new one instead.")
        composer_defaults.apply(composer, request.user)  # an unbound composer opens ready to run
    return render(request, "experiments/composer.html", {
        "composer": composer,
        "rerun_of": source,
        "families": list(FAMILIES.values()),
        "training_presets": TRAINING_PRESETS,
        **composer_defaults.page_context(request.user, composer),
    })


@login_required
@require_GET
def experiment_detail(request: HttpRequest, experiment_id: str) -> HttpResponse:
    experiment = experiment_for(request.user, experiment_id)
    detail = selectors.experiment_detail(experiment)
    base, target = experiment.base_model, experiment.target_length
    limits = rope_charts.scaling_limits(detail.runs, base, target)
    suite = experiment.evaluations.get("suite", ["perplexity"])
    settings = experiment.evaluations
    longppl_window = min(base.original_context, max(experiment.eval_lengths))
    return render(request, "experiments/experiment_detail.html", {
        "experiment": experiment,
        "detail": detail,
        "can_submit": can_submit(request.user, experiment.team),
        "lifecycle": lifecycle_selectors.actions_for(request.user, experiment),
        "suite": suite,
        "has_search": any(run.method.family in SEARCH_MODES for run in detail.runs),
        "training_on": experiment.training.get("mode", "none") != "none",
        "train_length": experiment.training.get("train_length") or (
            experiment.base_model.rope_facts().original_context if experiment.training.get("pose")
            else experiment.target_length),
        "suite_labels": [catalog.EVALUATIONS[name].label for name in suite if name in catalog.EVALUATIONS],
        "settings": experiment.evaluations,
        "device_note": "the worker's device (CUDA when it has one, else the CPU)",
        "chart": {
            "charts": detail.charts,
            "protocols": detail.protocols,
            "original_context": base.original_context,
            "limits": [asdict(limit) for limit in limits if limit.length is not None],
        },
        "protocols": detail.protocols,
        # LongPPL's key-token criteria from the settings, its windows as gpu_workers.protocol derives them (the
        # protocol line under the chart states what each run actually used).
        "longppl": {"long_window": longppl_window, "gain": settings.get("longppl_gain", 2.0),
                    "short_window": settings.get("longppl_short_window") or default_short_window(longppl_window),
                    "bound": settings.get("longppl_bound", 2.0)},
        "ruler_threshold": detail.charts["ruler_threshold"],
        "limits": limits,
        "scaling_compare": rope_charts.compare_chart(detail.runs, base, target),
        "status_url_active": any(run.is_active for run in detail.runs),
    })


@login_required
@require_GET
def experiment_status(request: HttpRequest, experiment_id: str) -> JsonResponse:
    experiment = experiment_for(request.user, experiment_id)
    return JsonResponse(selectors.run_status_payload(experiment))


@login_required
@require_GET
def experiment_csv(request: HttpRequest, experiment_id: str) -> StreamingHttpResponse:
    experiment = experiment_for(request.user, experiment_id)
    return csv_export.csv_response(
        f"{experiment.name}-measurements", selectors.MEASUREMENT_COLUMNS, selectors.measurement_rows(experiment)
    )


@login_required
@require_POST
def run_cancel(request: HttpRequest, run_id: str) -> HttpResponse:
    run = services.cancel_run(request.user, run_for(request.user, run_id))
    if run.status == run.Status.CANCELLED:
        word = "cancelled"
    else:
        word = "asked to stop" if run.cancel_requested else run.status
    messages.info(request, f"{run.method.name}: {word}.")
    return redirect("experiment_detail", experiment_id=run.experiment.uuid)


@login_required
@require_POST
def run_retry(request: HttpRequest, run_id: str) -> HttpResponse:
    run = services.retry_run(request.user, run_for(request.user, run_id))
    messages.info(request, f"{run.method.name}: attempt {run.attempt} is {run.status}.")
    return redirect("experiment_detail", experiment_id=run.experiment.uuid)


@login_required
@require_POST
def run_export(request: HttpRequest, run_id: str) -> HttpResponse:
    """Export a succeeded run's checkpoint (members only); see ``services.export_checkpoint``."""
    run = run_for(request.user, run_id)
    try:
        services.export_checkpoint(request.user, run)
    except services.ExportRefused as exc:
        messages.error(request, f"{run.method.name}: {exc}")
    else:
        messages.success(request, f"{run.method.name}: checkpoint exported; download it from the run's row.")
    return redirect("experiment_detail", experiment_id=run.experiment.uuid)


@login_required
@require_GET
def run_export_zip(request: HttpRequest, run_id: str) -> StreamingHttpResponse:
    """The exported checkpoint as a zip; anyone in the team may download it."""
    run = run_for(request.user, run_id)
    return checkpoints.download(run, selectors.checkpoint_artifact(run))


@login_required
@require_GET
def run_spec(request: HttpRequest, run_id: str) -> HttpResponse:
    """The run's ``RunSpec.to_json()``, built as the worker builds it, so ``python -m gpu_workers run`` replays it."""
    run = run_for(request.user, run_id)
    response = HttpResponse(json.dumps(services.run_spec_for(run).to_json(), indent=2) + "\n",
                            content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="run-{run.uuid}-spec.json"'
    return response


# --- catalogue ------------------------------------------------------------------------------------------


@login_required
@require_GET
def model_list(request: HttpRequest) -> HttpResponse:
    return render(request, "experiments/model_list.html", {
        "models": visible_base_models(request.user),
        "can_submit": submit_teams_of(request.user).exists(),
    })


@login_required
@require_http_methods(["GET", "POST"])
def model_new(request: HttpRequest) -> HttpResponse:
    _require_some_submit_team(request)
    form = BaseModelForm(request.POST if request.method == "POST" else None, user=request.user)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        model = services.register_base_model(request.user, data["team"], data["name"], data["source"], form.facts)
        messages.success(request, f"Registered {model.name} (original context {model.original_context}).")
        return redirect("model_list")
    return render(request, "experiments/model_form.html", {"form": form})


@login_required
@require_GET
def dataset_list(request: HttpRequest) -> HttpResponse:
    return render(request, "experiments/dataset_list.html", {
        "datasets": visible_datasets(request.user),
        "can_submit": submit_teams_of(request.user).exists(),
    })


@login_required
@require_GET
def dataset_detail(request: HttpRequest, dataset_id: int) -> HttpResponse:
    dataset = get_object_or_404(visible_datasets(request.user), pk=dataset_id)
    query = request.GET.copy()
    form = MixturePreviewForm(query if query else None, user=request.user)
    mixture, error = None, ""
    if not form.is_bound:
        initial = {name: field.initial for name, field in form.fields.items() if field.initial is not None}
        form = MixturePreviewForm(initial, user=request.user)
    if form.is_valid():
        data = form.cleaned_data
        base = data["base_model"]
        threshold = data.get("threshold") or 4 * max(base.original_context, 1)
        try:
            mixture = preview(dataset.spec(), base.source, strategy=data["strategy"], threshold=threshold,
                              keep_short_p=data["keep_short_p"], sources=data["sources"],
                              multiplier=data["multiplier"], original_length=base.original_context)
        except (ValueError, OSError) as exc:
            error = str(exc)
    rows = []
    if mixture:
        before, after = mixture["before"]["sources"], mixture["after"]["sources"]
        rows = [{"source": name, "share_before": before[name]["token_share"],
                 "share_after": after.get(name, {}).get("token_share", 0.0),
                 "long_before": before[name]["long_token_share"],
                 "long_after": after.get(name, {}).get("long_token_share", 0.0)} for name in sorted(before)]
    return render(request, "experiments/dataset_detail.html", {
        "dataset": dataset, "form": form, "mixture": mixture, "mixture_rows": rows, "error": error,
        "haystack_form": HaystackSourceForm(dataset=dataset), "can_edit": _can_edit_dataset(request.user, dataset),
    })


def _can_edit_dataset(user: object, dataset: object) -> bool:
    """A team's members and admins change its datasets; staff change the shared ones (as services enforces)."""
    team = getattr(dataset, "team", None)
    return can_submit(user, team) if team is not None else bool(getattr(user, "is_staff", False))


@login_required
@require_POST
def dataset_haystack(request: HttpRequest, dataset_id: int) -> HttpResponse:
    """Choose which source fills the dataset's needle haystacks; a bad choice re-renders the page with its error."""
    dataset = get_object_or_404(visible_datasets(request.user), pk=dataset_id)
    if not _can_edit_dataset(request.user, dataset):
        raise PermissionDenied("You cannot change this dataset.")
    haystack_form = HaystackSourceForm(request.POST, dataset=dataset)
    if haystack_form.is_valid():
        services.set_dataset_haystack_source(request.user, dataset, haystack_form.cleaned_data["haystack_source"])
        messages.success(request, f"Needle haystacks of {dataset.name} now come from “{dataset.haystack}” documents.")
        return redirect("dataset_detail", dataset_id=dataset.pk)
    return render(request, "experiments/dataset_detail.html", {
        "dataset": dataset, "form": MixturePreviewForm(user=request.user), "mixture": None, "mixture_rows": [],
        "error": "", "haystack_form": haystack_form, "can_edit": True,
    }, status=400)


@login_required
@require_http_methods(["GET", "POST"])
def dataset_new(request: HttpRequest) -> HttpResponse:
    _require_some_submit_team(request)
    form = DatasetForm(request.POST if request.method == "POST" else None, user=request.user)
    if request.method == "POST" and form.is_valid():
        dataset = services.register_dataset(request.user, form.cleaned_data["team"], form.dataset_fields(),
                                            form.facts)
        messages.success(request, f"Registered {dataset.name} ({dataset.facts.get('documents')} documents).")
        return redirect("dataset_list")
    return render(request, "experiments/dataset_form.html", {"form": form})


@login_required
@require_GET
def method_list(request: HttpRequest) -> HttpResponse:
    return render(request, "experiments/method_list.html", {
        "methods": visible_methods(request.user),
        "families": list(FAMILIES.values()),
    })


@login_required
@require_GET
def method_detail(request: HttpRequest, method_id: int) -> HttpResponse:
    """One method's per-dimension scaling, drawn for a base model and target length the visitor picks.

    Without a choice: the model and target of the visitor's latest experiment with this method, else the
    first visible model with RoPE at the method's own factor (see ``selectors.scaling_defaults``).
    """
    method = method_for(request.user, method_id)
    defaults = selectors.scaling_defaults(request.user, method)
    chosen = "base_model" in request.GET or "target_length" in request.GET
    form = ScalingChartForm(
        request.GET if chosen else None, user=request.user,
        initial={"base_model": defaults.base_model, "target_length": defaults.target_length},
    )
    base, target = defaults.base_model, defaults.target_length
    if chosen:
        valid = form.is_valid()
        base, target = (form.cleaned_data["base_model"], form.cleaned_data["target_length"]) if valid else (None, None)
    return render(request, "experiments/method_detail.html", {
        "method": method,
        "family": FAMILIES.get(method.family),
        "form": form,
        "defaults": defaults if not chosen else None,
        "base_model": base,
        "target_length": target,
        "chart": rope_charts.method_chart(method, base, target) if base is not None and target else None,
    })


@login_required
@require_GET
def method_factors(request: HttpRequest, method_id: int, which: str) -> HttpResponse:
    """A LongRoPE method's factors in the file format microsoft/LongRoPE's search writes and reads."""
    method = method_for(request.user, method_id)
    factors = method.params.get(f"{which}_factor") if method.family == "longrope" else None
    if which not in ("long", "short") or not factors:
        raise Http404("This method has no such factors.")
    response = HttpResponse(format_factors(factors), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="method-{method.pk}-{which}_factor.csv"'
    return response


# --- leaderboard ----------------------------------------------------------------------------------------


@login_required
@require_GET
def leaderboard_page(request: HttpRequest) -> HttpResponse:
    query = leaderboard.resolve(request.user, request.GET)
    return render(request, "experiments/leaderboard.html", {"query": query, "metrics": leaderboard.METRICS,
                                                            "query_string": urlencode(query.params())})


@login_required
@require_GET
def leaderboard_csv(request: HttpRequest) -> StreamingHttpResponse:
    return leaderboard.csv_response(leaderboard.resolve(request.user, request.GET))


# --- API tokens -----------------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def token_list(request: HttpRequest) -> HttpResponse:
    new_key = None
    if request.method == "POST":
        name = (request.POST.get("name") or "").strip() or "API token"
        _, new_key = services.create_api_token(request.user, name)
    return render(request, "experiments/token_list.html", {
        "tokens": ApiToken.objects.filter(user=request.user),
        "new_key": new_key,
    })


@login_required
@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    token = get_object_or_404(ApiToken, pk=token_id, user=request.user)
    services.revoke_api_tokens(request.user, [token.pk])
    messages.info(request, f"Revoked {token.name}.")
    return redirect("token_list")


# --- model page -----------------------------------------------------------------------------------------


def _model_facts(base_model: BaseModel) -> dict[str, object]:
    """The stored facts with every key the page shows: rows registered before issue 10 lack the newer ones.

    Missing keys are filled from ``RopeFacts`` (which already reads old rows with defaults), so an old plain-RoPE
    row shows rotary dim = head dim and rope type "default" rather than blanks.
    """
    stored = dict(base_model.facts or {})
    rope = base_model.rope_facts()
    return {
        **stored,
        "head_dim": stored.get("head_dim") or rope.head_dim,
        "head_dim_explicit": bool(stored.get("head_dim_explicit")),
        "partial_rotary_factor": float(stored.get("partial_rotary_factor") or rope.partial_rotary_factor),
        "rotary_dim": stored.get("rotary_dim") or rope.rotary_dim,
        "rotary_pairs": int(stored.get("rotary_dim") or rope.rotary_dim) // 2,
        "rope_type": stored.get("rope_type") or rope.rope_type,
        "rope_parameters": json.dumps(stored.get("rope_parameters") or (rope.shipped if rope.has_rope else {}),
                                      sort_keys=True),
        "original_context": stored.get("original_context") or rope.original_context,
        "max_position_embeddings": stored.get("max_position_embeddings") or rope.shipped_max_position_embeddings,
    }


@login_required
@require_GET
def model_detail(request: HttpRequest, model_id: int) -> HttpResponse:
    """One base model: the facts read from its config, its per-pair wavelengths and the experiments that used it.

    Shared models and the user's teams' models only (others are 404); the experiment list is narrowed to the
    user's teams, so a shared model never shows who else ran what on it.
    """
    base_model = get_object_or_404(visible_base_models(request.user), pk=model_id)
    rope = base_model.rope_facts()
    return render(request, "experiments/model_detail.html", {
        "model": base_model,
        "facts": _model_facts(base_model),
        "ships_scaling": rope.has_scaling,
        "chart": rope_charts.model_chart(base_model),
        "experiments": selectors.experiments_using_model(request.user, base_model),
    })
