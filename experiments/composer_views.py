"""The composer's helpers behind the page: the run-time estimate its script asks for as the choices change."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from experiments import composer_defaults
from experiments.access import visible_base_models


@login_required
@require_GET
def estimate(request: HttpRequest) -> JsonResponse:
    """``{"seconds", "text", …}`` for the composer's current choices (a model the visitor cannot see counts as
    none chosen). Reads only; the numbers come from earlier runs' measurements (``experiments.run_estimate``)."""
    model_id = request.GET.get("base_model") or ""
    model = visible_base_models(request.user).filter(pk=model_id).first() if model_id.isdigit() else None
    params = {key: request.GET.get(key) for key in request.GET}
    params["eval-suite"] = request.GET.getlist("eval-suite")
    params["family"] = request.GET.getlist("family")
    return JsonResponse(composer_defaults.estimate_for(model, params).to_json())
