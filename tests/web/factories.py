"""Small builders for test data that does not need to go through the composer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from experiments.models import BaseModel, Dataset, Experiment, Measurement, Method, Run, Team, params_hash

PASSWORD = "correct-horse-battery-staple"


def make_user(username: str) -> Any:
    return get_user_model().objects.create_user(username=username, password=PASSWORD)


def login(user: Any, enforce_csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=enforce_csrf)
    client.force_login(user)
    return client


def method(family: str = "pi", factor: float | None = 4.0, team: Team | None = None, name: str | None = None
           ) -> Method:
    params = {} if factor is None else {"factor": factor}
    found = Method.objects.filter(team=team, family=family, params_hash=params_hash(params)).first()
    return found or Method.objects.create(team=team, family=family, params=params,
                                          name=name or f"{family} ×{factor}")


def make_experiment(team: Team, user: Any, base_model: BaseModel, dataset: Dataset, runs: int = 1,
                    name: str = "Exp", status: str = Run.Status.SUCCEEDED, lengths: tuple[int, ...] = (256, 512),
                    values: Callable[[int, int], float] | None = None) -> Experiment:
    """An experiment with *runs* runs (PI ×2, ×3, …) each measured at *lengths*."""
    experiment = Experiment.objects.create(
        team=team, created_by=user, name=name, base_model=base_model, dataset=dataset, target_length=max(lengths),
        eval_lengths=list(lengths), eval_documents=2, training={"mode": "none"}, evaluations={"suite": ["perplexity"]},
    )
    now = timezone.now()
    for i in range(runs):
        run = Run.objects.create(experiment=experiment, method=method("pi", float(i + 2)), status=status,
                                 queued_at=now, started_at=now, finished_at=now)
        for length in lengths:
            value = values(i, length) if values else 10.0 + i + length / 1000
            Measurement.objects.create(run=run, metric="perplexity", value=value, context_length=length,
                                       samples=2, ci_low=value - 1, ci_high=value + 1)
    return experiment


