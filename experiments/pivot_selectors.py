"""The pivot leaderboard's reads: methods (grouped by configuration) × context lengths, and one column per metric.

Like with like: every number comes from succeeded runs on one base model, one dataset and one training recipe,
under one evaluation protocol per metric, from experiments that are not archived. A *configuration* is a method
family plus its canonical parameters (``Method.params_hash``), so the same method registered by two teams is one
row. Each function's query count is fixed whatever the history: the aggregation happens in the database, and a
row's run links are cut there too (a window function), so a configuration with 5,000 runs costs what one with 5 does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db.models import Avg, Count, F, Max, Min, QuerySet, Window
from django.db.models.functions import RowNumber

from experiments.models import BaseModel, Dataset, Experiment, Measurement, Method, Run, Team
from experiments.selectors import LENGTH_FREE_METRICS, ProtocolChoice
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


@dataclass
class ConfigRuns:
    method: Method
    """The configuration's earliest method row: its name and parameters label the row."""
    runs: int
    """Distinct runs with any number in the table."""
    recent: list[str]
    """Up to RUN_LINKS run uuids, most recent first."""


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
          training: dict[str, Any], metric: str) -> QuerySet[Measurement]:
    measurements = Measurement.objects.filter(
        metric=metric,
        run__status=Run.Status.SUCCEEDED,
        run__experiment__team__in=teams,
        run__experiment__base_model=base_model,
        run__experiment__dataset=dataset,
        run__experiment__training=training,
        run__experiment__archived_at__isnull=True,
    )
    if metric not in GRID_METRICS:
        measurements = measurements.filter(depth__isnull=True)
    if metric in LENGTH_FREE_METRICS:
        return measurements.filter(context_length__isnull=True)
    return measurements.filter(context_length__isnull=False)


def protocols(teams: Iterable[Team] | QuerySet[Team], base_model: BaseModel, dataset: Dataset,
              training: dict[str, Any], metric: str) -> list[ProtocolChoice]:
    """The protocols this metric was measured under here, most runs first: two queries."""
    groups = list(
        _pool(teams, base_model, dataset, training, metric)
        .values("protocol_key").annotate(n=Count("run_id", distinct=True), example=Min("run_id"))
        .order_by("-n", "protocol_key")
    )
    found = dict(Run.objects.filter(pk__in=[g["example"] for g in groups]).values_list("pk", "protocol"))
    return [ProtocolChoice(g["protocol_key"], g["n"], found.get(g["example"]) or {}) for g in groups]


def cells(teams: Iterable[Team] | QuerySet[Team], base_model: BaseModel, dataset: Dataset, training: dict[str, Any],
          metric: str, protocol_key: str) -> dict[tuple[Config, int | None], Aggregate]:
    """(configuration, context length) → runs, mean, min and max of the metric: one query."""
    rows = (
        _pool(teams, base_model, dataset, training, metric).filter(protocol_key=protocol_key)
        .values("run__method__family", "run__method__params_hash", "context_length")
        .annotate(n=Count("run_id", distinct=True), mean=Avg("value"), low=Min("value"), high=Max("value"),
                  method_id=Min("run__method_id"))
        .order_by()
    )
    return {((r["run__method__family"], r["run__method__params_hash"]), r["context_length"]):
            Aggregate(r["n"], r["mean"], r["low"], r["high"], r["method_id"]) for r in rows}


def config_runs(teams: Iterable[Team] | QuerySet[Team], base_model: BaseModel, dataset: Dataset,
                training: dict[str, Any], metric: str, protocol_key: str,
                link_length: int | None) -> dict[Config, ConfigRuns]:
    """Each configuration's method row, run count and most recent runs at *link_length*: three queries."""
    pool = _pool(teams, base_model, dataset, training, metric).filter(protocol_key=protocol_key)
    totals = list(pool.values("run__method__family", "run__method__params_hash")
                  .annotate(n=Count("run_id", distinct=True), method_id=Min("run__method_id")).order_by())
    methods = Method.objects.in_bulk([t["method_id"] for t in totals])
    ranked = pool.filter(context_length=link_length)
    per_run = 1 if metric not in GRID_METRICS else 64  # a grid metric has one row per depth of each run
    recent: dict[Config, list[str]] = defaultdict(list)
    for family, digest, run_uuid in (
        ranked.annotate(rank=Window(RowNumber(), partition_by=[F("run__method__family"),
                                                               F("run__method__params_hash")],
                                    order_by=F("run_id").desc()))
        .filter(rank__lte=RUN_LINKS * per_run)
        .order_by("-run_id").values_list("run__method__family", "run__method__params_hash", "run__uuid")
    ):
        if str(run_uuid) not in recent[(family, digest)] and len(recent[(family, digest)]) < RUN_LINKS:
            recent[(family, digest)].append(str(run_uuid))
    configs = {t["method_id"]: (t["run__method__family"], t["run__method__params_hash"]) for t in totals}
    return {configs[t["method_id"]]: ConfigRuns(methods[t["method_id"]], t["n"], recent[configs[t["method_id"]]])
            for t in totals}


def protocol_by_metric(teams: Iterable[Team] | QuerySet[Team], base_model: BaseModel, dataset: Dataset,
                       training: dict[str, Any], metric: str, length: int | None
                       ) -> tuple[str | None, dict[Config, Aggregate]]:
    """For the summary: the protocol with the most runs for *metric* (at *length*) and every configuration's
    aggregate under it: one query."""
    pool = _pool(teams, base_model, dataset, training, metric)
    if metric not in LENGTH_FREE_METRICS:
        pool = pool.filter(context_length=length)
    rows = list(pool.values("run__method__family", "run__method__params_hash", "protocol_key")
                .annotate(n=Count("run_id", distinct=True), mean=Avg("value"), low=Min("value"), high=Max("value"),
                          method_id=Min("run__method_id")).order_by())
    runs_per_key: dict[str, int] = defaultdict(int)
    for r in rows:
        runs_per_key[r["protocol_key"]] += r["n"]
    if not runs_per_key:
        return None, {}
    key = min(runs_per_key, key=lambda k: (-runs_per_key[k], k))
    return key, {(r["run__method__family"], r["run__method__params_hash"]):
                 Aggregate(r["n"], r["mean"], r["low"], r["high"], r["method_id"])
                 for r in rows if r["protocol_key"] == key}


def lengths(teams: Iterable[Team] | QuerySet[Team], base_model: BaseModel, dataset: Dataset,
            training: dict[str, Any], metric: str = "perplexity") -> list[int]:
    """The context lengths this metric was measured at here, ascending: one query."""
    if metric in LENGTH_FREE_METRICS:
        return []
    return list(_pool(teams, base_model, dataset, training, metric)
                .values_list("context_length", flat=True).distinct().order_by("context_length"))


def methods(ids: Iterable[int]) -> dict[int, Method]:
    return Method.objects.in_bulk(list(ids))
