"""Run again with changes: the composer opened as a copy of an earlier experiment (issue 15).

``GET /experiments/new/?from=<experiment uuid>`` fills the composer from any experiment the visitor can see
(:func:`apply`); what they submit goes through the composer like any new experiment, so the result is a new
experiment and the old one is never touched. An unknown, malformed or invisible uuid finds nothing
(:func:`source_experiment` returns None) and the page opens with the usual defaults.
"""

from __future__ import annotations

import uuid
from typing import Any

from experiments import composer_defaults
from experiments.access import can_submit, visible_experiments
from experiments.composer import Composer
from experiments.composer_forms import EvaluationForm, TrainingForm, typed_number
from experiments.method_forms import MethodFormSet, param_field_name
from experiments.models import Experiment
from gpu_workers.methods import FAMILIES, MethodError, Param, RopeFacts, validate

RERUN_SUFFIX = " (rerun)"


def source_experiment(user: Any, raw: object) -> Experiment | None:
    """The experiment ``raw`` (a uuid string from the query) names, if *user* can see it: one query, none for a
    malformed uuid."""
    try:
        key = uuid.UUID(str(raw))
    except ValueError:
        return None
    return visible_experiments(user).select_related("team", "base_model", "dataset").filter(uuid=key).first()


def rerun_name(name: str) -> str:
    """ "<old name> (rerun)", the old name shortened if both would not fit the name field."""
    return name[:composer_defaults.NAME_LENGTH - len(RERUN_SUFFIX)] + RERUN_SUFFIX


def rerun_initial(user: Any, experiment: Experiment) -> dict[str, Any]:
    """The composer's initial data for running *experiment* again: the one mapping experiment → composer.

    Returns ``{"form": …, "evaluation": …, "training": …, "methods": [row, …]}``, each the ``initial`` of the
    composer part of that name (field names without the form prefixes):

    - the question: the same team if *user* may submit to it (else the composer's usual default team), base model,
      dataset, target length, evaluation lengths and documents, and the name "<old name> (rerun)";
    - the evaluation suite and every setting stored with the experiment (settings an older experiment lacks keep
      the form's defaults; a missing suite is perplexity only, as the experiment page reads it);
    - the training recipe as stored (``mode = none`` leaves the other fields at their defaults), with the preset
      whose settings it matches, if any;
    - one method row per run, in run order, with its family and its parameters typed in: only those a blank
      input would not derive to the same value (:func:`typed_params`), so posting the rows unchanged gives the
      same canonical configurations (the same Method rows), and derived values still follow a changed target.
    """
    team = experiment.team if can_submit(user, experiment.team) else composer_defaults.default_choices(user)[0]
    form = {
        "team": team.pk if team is not None else None,
        "name": rerun_name(experiment.name),
        "base_model": experiment.base_model_id,
        "dataset": experiment.dataset_id,
        "target_length": experiment.target_length,
        "eval_lengths": ", ".join(str(length) for length in experiment.eval_lengths),
        "eval_documents": experiment.eval_documents,
    }
    return {"form": form, "evaluation": EvaluationForm.initial_for(experiment.evaluations or {}),
            "training": TrainingForm.initial_for(experiment.training),
            "methods": _method_rows(experiment)}


def apply(composer: Composer, user: Any, experiment: Experiment) -> None:
    """Fill an unbound composer with :func:`rerun_initial` (a bound one keeps what was posted)."""
    if composer.form.is_bound:
        return
    initial = rerun_initial(user, experiment)
    composer.form.initial.update(initial["form"])
    composer.evaluation.initial.update(initial["evaluation"])
    composer.training.initial.update(initial["training"])
    if initial["methods"]:
        composer.methods = MethodFormSet(None, prefix=composer.prefix, initial=initial["methods"],
                                         form_kwargs={"context": composer.context})


def typed_params(family: str, params: dict[str, Any], base: RopeFacts, target_length: int) -> dict[str, Any]:
    """The fewest of *params* (canonical, as stored on a Method) that validate back to exactly *params*.

    Parameters are dropped last to first (derived ones, like YaRN's attention factor from its factor, come
    after what they derive from) while the rest still validate to the same configuration. Parameters that do
    not validate back (a method from an older version, a model whose facts changed) are all kept.
    """
    try:
        if validate(family, params, base, target_length) != params:
            return dict(params)
    except MethodError:
        return dict(params)
    typed = dict(params)
    for param in reversed(FAMILIES[family].params):
        if param.name not in typed:
            continue
        trial = {k: v for k, v in typed.items() if k != param.name}
        try:
            if validate(family, trial, base, target_length) == params:
                typed = trial
        except MethodError:
            continue
    return typed


def _field_value(param: Param, value: Any) -> Any:
    if param.kind is bool:
        return bool(value)
    if param.kind is list and isinstance(value, list | tuple):
        return ", ".join(typed_number(item) for item in value)
    return typed_number(value)


def _method_rows(experiment: Experiment) -> list[dict[str, Any]]:
    """One row per run (a method once), in run order; a family this version does not know is left out."""
    base = experiment.base_model.rope_facts()
    rows: list[dict[str, Any]] = []
    seen: set[int] = set()
    for run in experiment.runs.select_related("method").order_by("id"):
        method = run.method
        family = FAMILIES.get(method.family)
        if family is None or method.pk in seen:
            continue
        seen.add(method.pk)
        typed = typed_params(family.name, method.params or {}, base, experiment.target_length)
        row: dict[str, Any] = {"family": family.name}
        for param in family.params:
            if param.name in typed:
                row[param_field_name(family.name, param.name)] = _field_value(param, typed[param.name])
        rows.append(row)
    return rows
