"""Archive, unarchive and delete an experiment (issue 15); running one again is the composer's
``?from=<uuid>`` (``views.experiment_new`` with ``experiments.rerun``).

Reads go through ``lifecycle_selectors``, writes through ``lifecycle_services``. An experiment outside the
visitor's teams is 404 (``access.experiment_for``); a viewer who tries to archive, or anyone but a team admin
who tries to delete, gets 403. Archive and unarchive are POST-only and go back to the experiment page with a
message; delete asks first (GET: what would be removed), then removes on POST and goes to the dashboard.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from experiments import lifecycle_selectors, lifecycle_services
from experiments.access import experiment_for
from experiments.models import Experiment


def _set_archived(request: HttpRequest, experiment_id: str, change: Callable[[Any, Experiment], bool], done: str,
                  unchanged: str) -> HttpResponse:
    """Apply *change*; say *done* when it changed something and *unchanged* otherwise (``{name}`` filled in)."""
    experiment = experiment_for(request.user, experiment_id)
    if change(request.user, experiment):
        messages.success(request, done.format(name=experiment.name))
    else:
        messages.info(request, unchanged.format(name=experiment.name))
    return redirect("experiment_detail", experiment_id=experiment.uuid)


@login_required
@require_POST
def experiment_archive(request: HttpRequest, experiment_id: str) -> HttpResponse:
    return _set_archived(request, experiment_id, lifecycle_services.archive_experiment,
                         "Archived “{name}”: it is hidden from the experiment list and the leaderboard, and stays "
                         "here at its address and in its exports.", "“{name}” was already archived.")


@login_required
@require_POST
def experiment_unarchive(request: HttpRequest, experiment_id: str) -> HttpResponse:
    return _set_archived(request, experiment_id, lifecycle_services.unarchive_experiment,
                         "Unarchived “{name}”: it is back in the experiment list and the leaderboard.",
                         "“{name}” was not archived.")


@login_required
@require_http_methods(["GET", "POST"])
def experiment_delete(request: HttpRequest, experiment_id: str) -> HttpResponse:
    """GET: the confirmation page (how many runs and measurements would go). POST: delete, to the dashboard."""
    experiment = experiment_for(request.user, experiment_id)
    lifecycle_services.require_delete(request.user, experiment)
    if request.method == "GET":
        return render(request, "experiments/experiment_confirm_delete.html", {
            "experiment": experiment,
            "summary": lifecycle_selectors.deletion_summary(experiment),
        })
    try:
        deleted = lifecycle_services.delete_experiment(request.user, experiment)
    except lifecycle_services.LifecycleRefused as exc:
        messages.error(request, f"“{experiment.name}” was not deleted: {exc}")
        return redirect("experiment_detail", experiment_id=experiment.uuid)
    runs = f"{deleted.runs} run{'' if deleted.runs == 1 else 's'}"
    measurements = f"{deleted.measurements} measurement{'' if deleted.measurements == 1 else 's'}"
    messages.success(request, f"Deleted “{experiment.name}” with its {runs} and {measurements}.")
    return redirect("dashboard")
