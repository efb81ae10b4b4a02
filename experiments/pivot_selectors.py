"""The pivot leaderboard's reads: methods (grouped by configuration) × context lengths, and one column per metric.

Like with like: every number comes from succeeded runs on one base model, one dataset and one training recipe,
under one evaluation protocol per metric, from experiments that are not archived. A *configuration* is a method
family plus its canonical parameters (``Method.params_hash``), so the same method registered by two teams is one
row. Each function's query count is fixed whatever the history: the aggregation happens in the database, and a
row's run links are cut there too (a window function), so a configuration with 5,000 runs costs what one with 5 does.
The measurements are scanned twice per page, whatever the view: :func:`groups` aggregates every metric the page
shows in one pass (protocol, configuration and length are its group keys; the choices between them are made in
Python over the few groups), and :func:`recent_runs` picks the linked runs (docs/performance.md).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db.models import Avg, Count, F, Max, Min, Q, QuerySet, Window
from django.db.models.functions import RowNumber

from experiments.models import BaseModel, Dataset, Experiment, Measurement, Method, Run, Team
from gpu_workers import catalog

GRID_METRICS = frozenset(m.key for m in catalog.METRICS.values() if m.chart == catalog.NEEDLE_GRID)
"""Metrics measured per needle depth: a cell averages over the depths (and the runs)."""
RUN_LINKS = 10
"""Runs linked per row (the most recent ones measured at the table's longest length)."""

Config = tuple[str, str]
"""(method family, params hash)"""


@dataclass
class Aggregate:
    runs: int
    mean: float
    low: float
    high: float
    method_id: int = 0
    """The configuration's earliest method row among these numbers."""


@dataclass(frozen=True)
class Group:
    """One (metric, protocol, configuration, length) of the pool with its aggregate."""

    metric: str
    protocol_key: str
    config: Config
    length: int | None
    aggregate: Aggregate
    example_run: int
    """One run's id, whose protocol names this group's protocol facts."""


def recipes(teams: Iterable[Team] | QuerySet[Team], base_model: BaseModel, dataset: Dataset) -> list[dict[str, Any]]:
    """The distinct training recipes of the teams' live experiments on this model and dataset: one query."""
    seen: list[dict[str, Any]] = []
    for training in (Experiment.objects.filter(team__in=teams, base_model=base_model, dataset=dataset,
                                               archived_at__isnull=True)
                     .order_by().values_list("training", flat=True).distinct()):
        if training not in seen:
            seen.append(training)
    return seen


def datasets(teams: Iterable[Team] | QuerySet[Team], base_model: BaseModel) -> list[Dataset]:
    """Datasets with live experiments on this model, most experiments first: one query."""
    return list(
        Dataset.objects.filter(experiments__team__in=teams, experiments__base_model=base_model,
                               experiments__archived_at__isnull=True)
        .annotate(n=Count("experiments")).order_by("-n", "name", "pk")
    )


def _pool(teams: Iterable[Team] | QuerySet[Team], base_model: BaseModel, dataset: Dataset,
          training: dict[str, Any], metrics: Iterable[str]) -> QuerySet[Measurement]:
    """Succeeded runs' numbers for *metrics* here; a needle grid's every depth, every other metric's plain rows."""
    metrics = set(metrics)
    return Measurement.objects.filter(
        Q(metric__in=metrics & GRID_METRICS) | Q(metric__in=metrics - GRID_METRICS, depth__isnull=True),
        run__status=Run.Status.SUCCEEDED,
        run__experiment__team__in=teams,
        run__experiment__base_model=base_model,
        run__experiment__dataset=dataset,
        run__experiment__training=training,
        run__experiment__archived_at__isnull=True,
    )


def groups(teams: Iterable[Team] | QuerySet[Team], base_model: BaseModel, dataset: Dataset,
           training: dict[str, Any], metrics: Iterable[str], length: int | None = None,
           any_length: Iterable[str] = ()) -> list[Group]:
    """Every (metric, protocol, configuration, length) with its runs, mean, min and max: one query.

    With *length*, only numbers at that length, measured once per run (no length), or of the *any_length* metrics
    (those with lengths of their own, as retention): the summary reads a quarter of the rows it would otherwise.
    """
    pool = _pool(teams, base_model, dataset, training, metrics)
    if length is not None:
        pool = pool.filter(Q(context_length=length) | Q(context_length__isnull=True) | Q(metric__in=list(any_length)))
    rows = (
        pool
        .values("metric", "protocol_key", "run__method__family", "run__method__params_hash", "context_length")
        .annotate(n=Count("run_id", distinct=True), mean=Avg("value"), low=Min("value"), high=Max("value"),
                  method_id=Min("run__method_id"), example=Min("run_id"))
        .order_by()
    )
    return [Group(r["metric"], r["protocol_key"], (r["run__method__family"], r["run__method__params_hash"]),
                  r["context_length"], Aggregate(r["n"], r["mean"], r["low"], r["high"], r["method_id"]),
                  r["example"]) for r in rows]


def lengths(teams: Iterable[Team] | QuerySet[Team], base_model: BaseModel, dataset: Dataset,
            training: dict[str, Any], metric: str) -> list[int]:
    """The context lengths *metric* was measured at here, ascending: one query."""
    return list(_pool(teams, base_model, dataset, training, [metric]).filter(context_length__isnull=False)
                .values_list("context_length", flat=True).distinct().order_by("context_length"))


def run_protocols(run_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The runs' recorded protocols (one example run per protocol key): one query."""
    return dict(Run.objects.filter(pk__in=list(run_ids)).values_list("pk", "protocol"))


def recent_runs(teams: Iterable[Team] | QuerySet[Team], base_model: BaseModel, dataset: Dataset,
                training: dict[str, Any], metric: str, protocol_key: str,
                length: int | None) -> dict[Config, list[str]]:
    """Each configuration's RUN_LINKS most recent runs measured at *length*, newest first: one query."""
    per_run = 1 if metric not in GRID_METRICS else 64  # a grid metric has one row per depth of each run
    recent: dict[Config, list[str]] = defaultdict(list)
    ranked = (
        _pool(teams, base_model, dataset, training, [metric]).filter(protocol_key=protocol_key, context_length=length)
        .annotate(rank=Window(RowNumber(), partition_by=[F("run__method__family"), F("run__method__params_hash")],
                              order_by=F("run_id").desc()))
        .filter(rank__lte=RUN_LINKS * per_run)
        .order_by("-run_id").values_list("run__method__family", "run__method__params_hash", "run__uuid")
    )
    for family, digest, run_uuid in ranked:
        links = recent[(family, digest)]
        if str(run_uuid) not in links and len(links) < RUN_LINKS:
            links.append(str(run_uuid))
    return recent


def methods(ids: Iterable[int]) -> dict[int, Method]:
    return Method.objects.in_bulk(list(ids))
