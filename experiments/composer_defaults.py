"""What the composer opens with, so that the default experiment runs with one click (issue 15).

A model and a dataset are chosen for the visitor (those of their latest experiment, else the first shared
or team model with RoPE and dataset), the target is 4× the model's original context, and the name says
what is compared ("None vs PI vs Dynamic NTK vs YaRN @ 1,024"). The page's script keeps target and name in
step with the choices until the visitor types their own (``static/js/composer_defaults.js``), shows the
chosen model's facts, and asks :func:`estimate_for` for the run time (``experiments.run_estimate``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from django.db.models import Q
from django.urls import reverse

from experiments import run_estimate
from experiments.access import submit_teams_of, visible_base_models, visible_datasets, visible_experiments
from experiments.composer import Composer
from experiments.composer_forms import (
    DEFAULT_SUITE,
    INITIAL_FAMILIES,
    default_eval_lengths,
    parse_depths,
    parse_lengths,
)
from experiments.forms import MAX_EVAL_LENGTH
from experiments.models import BaseModel, Dataset, Team
from gpu_workers.methods import FAMILIES

TARGET_MULTIPLE = 4
NAME_LENGTH = 200


def short_label(family: str) -> str:
    """A family's label without its parenthesis: "PI (linear)" → "PI"; the baseline is "none"."""
    if family == "none":
        return "none"
    spec = FAMILIES.get(family)
    return re.sub(r"\s*\(.*\)\s*$", "", spec.label) if spec else family


def default_name(families: Iterable[str], target: int | None) -> str:
    """ "none vs PI vs Dynamic NTK vs YaRN @ 1,024": the compared families once each, in row order."""
    labels = list(dict.fromkeys(short_label(f) for f in families if f))
    name = " vs ".join(labels) or "Experiment"
    if target:
        name = f"{name} @ {target:,}"
    return name[:NAME_LENGTH]


def default_target(model: BaseModel) -> int | None:
    if not model.original_context:
        return None
    return min(TARGET_MULTIPLE * model.original_context, MAX_EVAL_LENGTH)


def model_facts(model: BaseModel) -> dict[str, Any]:
    """What the composer shows beside the model selector (from ``BaseModel.facts``)."""
    rope = model.rope_facts()
    shipped = rope.shipped if rope.has_rope else {}
    if not rope.has_rope:
        scaling = "no RoPE"
    elif rope.has_scaling:
        factor = shipped.get("factor")
        scaling = f"{rope.rope_type}" + (f" ×{factor:g}" if isinstance(factor, int | float) else "")
    else:
        scaling = "none (plain RoPE)"
    return {
        "id": model.pk,
        "name": model.name,
        "original_context": model.original_context,
        "rope_theta": rope.rope_theta,
        "head_dim": rope.head_dim,
        "rotary_dim": rope.rotary_dim,
        "parameters": model.parameters,
        "shipped_scaling": scaling,
        "has_rope": rope.has_rope,
        "default_target": default_target(model),
        "url": reverse("model_detail", args=[model.pk]),
    }


def default_choices(user: Any) -> tuple[Team | None, BaseModel | None, Dataset | None]:
    """The team, model and dataset of the visitor's latest experiment in a team they may submit to; else their
    first such team with the first model with RoPE and the first dataset that team may use: three queries."""
    teams = submit_teams_of(user)
    latest = (visible_experiments(user).filter(team__in=teams).select_related("team", "base_model", "dataset")
              .order_by("-created").first())
    if latest is not None:
        return latest.team, latest.base_model, latest.dataset
    team = teams.order_by("name").first()
    usable = Q(team__isnull=True) if team is None else Q(team__isnull=True) | Q(team=team)
    model = visible_base_models(user).filter(usable, has_rope=True).order_by("name", "id").first()
    dataset = visible_datasets(user).filter(usable).order_by("name", "id").first()
    return team, model, dataset


def apply(composer: Composer, user: Any) -> None:
    """Fill an unbound composer's question with the defaults (a bound one keeps what was posted)."""
    if composer.form.is_bound:
        return
    team, model, dataset = default_choices(user)
    initial = composer.form.initial
    if team is not None:
        initial["team"] = team.pk
    target = None
    if model is not None:
        initial["base_model"] = model.pk
        target = default_target(model)
        if target:
            initial["target_length"] = target
    if dataset is not None:
        initial["dataset"] = dataset.pk
    initial["name"] = default_name(INITIAL_FAMILIES, target)


# --- the page's data ------------------------------------------------------------------------------------


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def estimate_input(params: Mapping[str, Any], model: BaseModel) -> run_estimate.EstimateInput | None:
    """The composer's cost-relevant fields, by their form names (a GET query or the bound composer's values);
    None when they do not make an experiment yet (no target, unreadable lengths)."""
    target = _int(params.get("target_length"), 0)
    try:
        lengths = parse_lengths(str(params.get("eval_lengths") or ""))
    except Exception:  # a half-typed list: no estimate until it reads
        return None
    if not lengths:
        if target < max(model.original_context, 1):
            return None
        lengths = default_eval_lengths(model.original_context, target)
    try:
        depths = len(parse_depths(str(params.get("eval-needle_depths") or "0, 0.25, 0.5, 0.75, 1")))
    except Exception:
        depths = 5
    return run_estimate.EstimateInput(
        lengths=tuple(lengths),
        suite=tuple(params.get("eval-suite") or ()),
        families=tuple(f for f in params.get("family") or () if f),
        documents=_int(params.get("eval_documents"), 8),
        passkey_samples=_int(params.get("eval-passkey_samples"), 20),
        needle_cells=_int(params.get("eval-needle_samples"), 2) * depths,
        training=(params.get("train-mode") or "none") != "none",
    )


def estimate_for(model: BaseModel | None, params: Mapping[str, Any]) -> run_estimate.Estimate:
    if model is None:
        return run_estimate.Estimate(None, reason="pick a base model")
    chosen = estimate_input(params, model)
    if chosen is None:
        return run_estimate.Estimate(None, model_name=model.name, reason="give a target length")
    if not chosen.families or not chosen.suite:
        return run_estimate.Estimate(None, model_name=model.name, reason="pick methods and evaluations")
    return run_estimate.estimate(model, chosen)


def composer_values(composer: Composer) -> dict[str, Any]:
    """The bound or initial values of the fields :func:`estimate_input` reads, as the page's script sends them."""
    form, evaluation, training = composer.form, composer.evaluation, composer.training
    suite = evaluation["suite"].value() if "suite" in evaluation.fields else list(DEFAULT_SUITE)
    return {
        "target_length": form["target_length"].value(),
        "eval_lengths": form["eval_lengths"].value(),
        "eval_documents": form["eval_documents"].value(),
        "eval-suite": list(suite or ()),
        "eval-passkey_samples": evaluation["passkey_samples"].value(),
        "eval-needle_samples": evaluation["needle_samples"].value(),
        "eval-needle_depths": evaluation["needle_depths"].value(),
        "train-mode": training["mode"].value(),
        "family": [row["family"].value() for row in composer.methods.forms],
    }


def page_context(user: Any, composer: Composer) -> dict[str, Any]:
    """The composer template's extra context: every visible model's facts, the chosen one's, the estimate."""
    models = list(visible_base_models(user).order_by("name", "id"))
    facts = {str(m.pk): model_facts(m) for m in models}
    chosen_id = str(composer.form["base_model"].value() or "")
    chosen = next((m for m in models if str(m.pk) == chosen_id), None)
    values = composer_values(composer)
    return {
        "composer_defaults": {
            "models": facts,
            "labels": {name: short_label(name) for name in FAMILIES},
            "estimate_url": reverse("experiment_estimate"),
            "target_multiple": TARGET_MULTIPLE,
        },
        "model_facts": facts.get(chosen_id),
        "estimate": estimate_for(chosen, values),
    }
