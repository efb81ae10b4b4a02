"""An API body (``POST /api/v1/experiments/``) turned into the page's :class:`~experiments.composer.Composer`,
so the API cannot accept what the page would refuse.

Models, datasets and teams are named by id or name; the experiment's plain fields and the method rows become
the composer's form data; ``evaluations`` and ``training`` go to the composer as JSON, which it parses into
the spec objects (``EvalSpec.from_json`` / ``TrainSpec.from_json``). Errors come back as
``{"errors": {field: [messages]}}``, method rows named ``methods.<index>.<param>`` and recipe settings
``evaluations.<setting>`` / ``training.<setting>``.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet

from experiments.access import can_submit, submit_teams_of, teams_of, visible_base_models, visible_datasets
from experiments.composer import Composer
from experiments.method_forms import MAX_METHOD_ROWS
from experiments.models import Team
from gpu_workers.methods import FAMILIES


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
    """Form data for the experiment form and the method rows from the API body, plus errors the translation
    itself found."""
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
    _methods_data(body.get("methods"), data, errors)
    return data, errors


def composer_for(user: Any, body: dict[str, Any]) -> tuple[Composer, dict[str, list[str]]]:
    """The :class:`Composer` for an API body, plus the errors the translation itself found: the experiment
    fields and method rows as form data, ``evaluations`` and ``training`` as JSON for the spec objects."""
    data, errors = composer_data(user, body)
    return Composer(user, data, evaluations=body.get("evaluations"), training=body.get("training"),
                    from_json=True), errors
