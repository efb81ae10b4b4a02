"""The dataset page's token-length statistics: their progress as JSON (polled while a worker measures) and
"Measure again". The rows are read by ``selectors.dataset_length_stats`` and written by
``experiments.length_stats``; the page draws them with ``{% dataset_length_stats %}``.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_GET, require_POST

from experiments import length_stats, selectors
from experiments.access import submit_teams_of, visible_base_models, visible_datasets
from gpu_workers.tokenizer_files import tokenizer_key


@login_required
@require_GET
def dataset_length_stats(request: HttpRequest, dataset_id: int) -> JsonResponse:
    dataset = get_object_or_404(visible_datasets(request.user), pk=dataset_id)
    rows = selectors.dataset_length_stats(dataset, request.user)
    return JsonResponse({"rows": [row.to_json() for row in rows], "pending": any(row.pending for row in rows)})


@login_required
@require_POST
def dataset_length_stats_measure(request: HttpRequest, dataset_id: int) -> HttpResponse:
    """Measure the dataset again in one tokenizer (``tokenizer_key``), or in every visible model's if blank.

    Anyone who may submit experiments may ask: it changes no data, only the stored counts the composer
    checks against (e.g. after the files on disk changed, or a measurement failed)."""
    dataset = get_object_or_404(visible_datasets(request.user), pk=dataset_id)
    if not submit_teams_of(request.user).exists():
        raise PermissionDenied("Measuring needs the member or admin role in a team.")
    wanted = request.POST.get("tokenizer_key", "").strip()
    models = [m for m in visible_base_models(request.user) if m.team_id in (None, dataset.team_id)
              or dataset.team_id is None]
    if wanted:
        models = [m for m in models if _key(m.source) == wanted]
    rows = length_stats.request(dataset, models, force=True)
    messages.success(request, f"Measuring {dataset.name} again in {len(rows)} tokenizer(s) on a worker.")
    return redirect("dataset_detail", dataset_id=dataset.pk)


def _key(source: str) -> str:
    try:
        return tokenizer_key(source)
    except OSError:
        return ""
