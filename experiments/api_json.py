"""How the JSON API (/api/v1/) writes the catalogue and experiments: one function per kind of object, shared by
every endpoint that returns it."""

from __future__ import annotations

from typing import Any

from django.urls import reverse

from experiments import selectors
from experiments.models import BaseModel, Dataset, Experiment, Method, Run


def ref(obj: Any) -> dict[str, Any] | None:
    return {"id": obj.pk, "name": obj.name} if obj is not None else None


def base_model_json(model: BaseModel) -> dict[str, Any]:
    return {
        "id": model.pk, "name": model.name, "source": model.source, "team": ref(model.team),
        "original_context": model.original_context, "head_dim": model.head_dim, "rope_theta": model.rope_theta,
        "has_rope": model.has_rope, "parameters": model.parameters, "facts": model.facts,
    }


def dataset_json(dataset: Dataset) -> dict[str, Any]:
    return {
        "id": dataset.pk, "name": dataset.name, "team": ref(dataset.team), "kind": dataset.kind,
        "path": dataset.path, "text_field": dataset.text_field, "source_field": dataset.source_field,
        "haystack_source": dataset.haystack_source, "haystack": dataset.haystack,
        "facts": dataset.facts,
    }


def method_json(method: Method) -> dict[str, Any]:
    return {"id": method.pk, "name": method.name, "family": method.family, "params": method.params,
            "team": ref(method.team)}


def experiment_json(experiment: Experiment, runs: list[Run] | None = None) -> dict[str, Any]:
    runs = runs if runs is not None else list(experiment.runs.select_related("method").order_by("id"))
    return {
        "id": str(experiment.uuid),
        "name": experiment.name,
        "team": ref(experiment.team),
        "created_by": experiment.created_by.get_username() if experiment.created_by else None,
        "created": experiment.created.isoformat(),
        "archived_at": experiment.archived_at.isoformat() if experiment.archived_at else None,
        "base_model": ref(experiment.base_model),
        "dataset": ref(experiment.dataset),
        "target_length": experiment.target_length,
        "eval_lengths": experiment.eval_lengths,
        "eval_documents": experiment.eval_documents,
        "training": experiment.training,
        "evaluations": experiment.evaluations,
        "url": reverse("experiment_detail", kwargs={"experiment_id": experiment.uuid}),
        "measurements_csv": reverse("api_experiment_csv", kwargs={"experiment_id": experiment.uuid}),
        "runs": [selectors.run_payload(run) for run in runs],
    }
