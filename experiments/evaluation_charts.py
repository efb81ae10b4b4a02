"""Chart data for every evaluation of an experiment, built from measurements already in memory.

Pure functions over ``(method label, metric, length, depth, value, ci_low, ci_high)`` rows, so the
page (prefetched measurements) and the 2-second status poll (one query) draw from the same code; and
:func:`protocol_lines`, the line under each evaluation saying what its numbers were measured under.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any, NamedTuple

from gpu_workers import catalog
from gpu_workers.catalog import RULER_GROUPS, RULER_TASKS
from gpu_workers.data.ruler import TASKS as RULER_TASK_INFO
from gpu_workers.protocol import describe


def _drawn_in(chart: str) -> tuple[str, ...]:
    return tuple(m.key for m in catalog.METRICS.values() if m.chart == chart)


SERIES_METRICS = {m.chart: m.key for m in catalog.METRICS.values() if m.chart and m.chart not in catalog.PANELS}
"""Line series over the lengths, ``{series name: metric}`` (:attr:`gpu_workers.catalog.Metric.chart`)."""
RETENTION_METRICS = _drawn_in(catalog.RETENTION_TABLE)
GRID_METRICS = _drawn_in(catalog.NEEDLE_GRID)
SEARCH_METRICS = _drawn_in(catalog.SEARCH_PANEL)
DEFAULT_RULER_THRESHOLD = 0.85
NOT_RECORDED = "not recorded"


class Row(NamedTuple):
    method: str
    metric: str
    context_length: int | None
    depth: float | None
    value: float
    ci_low: float | None
    ci_high: float | None
    step: int | None = None
    samples: int | None = None


def _grid(cells: dict[tuple[int, float], dict[str, float]]) -> dict[str, Any]:
    """Matrices indexed [depth][length]: exact and partial rates, and the needles behind each cell (for hover)."""
    lengths = sorted({n for n, _ in cells})
    depths = sorted({d for _, d in cells})

    def matrix(metric: str) -> list[list[float | None]]:
        return [[cells.get((n, d), {}).get(metric) for n in lengths] for d in depths]

    return {"lengths": lengths, "depths": depths, "exact": matrix("needle_exact"), "partial": matrix("needle_partial"),
            "samples": matrix("samples")}


def _add_search_row(found: dict[str, Any], row: Row) -> None:
    """A ``search_*`` row into its run's search summary (best/median/evaluations by generation, factors)."""
    if row.metric == "search_critical_dim":
        found["critical_dim"] = int(row.value)
    elif row.metric == "search_factor" and row.step is not None and row.depth is not None:
        found["factors"].setdefault(row.step, {})[int(row.depth)] = row.value
    elif row.step is not None:
        found[row.metric.removeprefix("search_")][row.step] = row.value


def _add_grid_row(cell: dict[str, float], row: Row) -> None:
    """A needle row into its (length, depth) cell; the cell's sample count is the largest of its rows'."""
    cell[row.metric] = row.value
    if row.samples is not None:
        cell["samples"] = max(cell.get("samples", 0), row.samples)


def build(rows: Iterable[Row], methods: list[str], haystacks: dict[str, str] | None = None,
          ruler_threshold: float = DEFAULT_RULER_THRESHOLD) -> dict[str, Any]:
    """{"series": {chart: {method: [[length, value, low, high], …]}}, "needle": [...], "retention": [...],
    "ruler": [...], "ruler_threshold": float, …}.

    *haystacks* maps a method to the dataset source its run's needle haystacks came from, shown with its grid;
    *ruler_threshold* is the experiment's effective-length threshold (a share of each run's reference score).
    """
    haystacks = haystacks or {}
    rulers: dict[str, _Ruler] = defaultdict(_Ruler)
    series: dict[str, dict[str, list[list[Any]]]] = {chart: {} for chart in SERIES_METRICS}
    by_metric = {metric: chart for chart, metric in SERIES_METRICS.items()}
    grids: dict[str, dict[tuple[int, float], dict[str, float]]] = defaultdict(dict)
    retention: dict[str, dict[str, Any]] = defaultdict(dict)
    searches: dict[str, dict[str, Any]] = defaultdict(lambda: {"best": {}, "median": {}, "evaluations": {},
                                                               "factors": {}, "critical_dim": None})
    losses: dict[str, list[list[float]]] = defaultdict(list)
    for row in rows:
        if row.metric == "train_loss" and row.step is not None:
            losses[row.method].append([row.step, row.value])
            continue
        if row.metric in SEARCH_METRICS:
            _add_search_row(searches[row.method], row)
            continue
        if row.metric.startswith("ruler_"):
            rulers[row.method].add(row)
        chart = by_metric.get(row.metric)
        if chart is not None and row.context_length is not None and row.depth is None:
            series[chart].setdefault(row.method, []).append([row.context_length, row.value, row.ci_low, row.ci_high])
        elif row.metric in GRID_METRICS and row.context_length is not None and row.depth is not None:
            _add_grid_row(grids[row.method].setdefault((row.context_length, row.depth), {}), row)
        elif row.metric in RETENTION_METRICS:
            retention[row.method][row.metric] = row.value
            retention[row.method]["length"] = row.context_length
    for by_method in series.values():
        for points in by_method.values():
            points.sort(key=lambda p: p[0])
    order = {name: i for i, name in enumerate(methods)}
    return {
        "series": series,
        "needle": [{"name": name, "haystack": haystacks.get(name, ""), **_grid(grids[name])}
                   for name in sorted(grids, key=lambda n: order.get(n, 1e9))],
        "retention": [{"name": name, **retention[name]}
                      for name in sorted(retention, key=lambda n: order.get(n, 1e9))],
        "search": [_search(name, searches[name]) for name in sorted(searches, key=lambda n: order.get(n, 1e9))],
        "train_loss": {name: sorted(points) for name, points in losses.items()},
        "ruler": [rulers[name].chart(name) for name in sorted(rulers, key=lambda n: order.get(n, 1e9))
                  if not rulers[name].empty],
        "ruler_threshold": ruler_threshold,
    }


def _ruler_metric(metric: str) -> tuple[str, str | None] | None:
    """What a ``ruler_*`` metric is: ``(kind, task or group)``, or None for a name this page does not know."""
    whole = {"ruler_average": "average", "ruler_reference": "reference", "ruler_effective_length": "effective"}
    if metric in whole:
        return whole[metric], None
    for prefix, kind in (("ruler_group_", "group"), ("ruler_reference_", "group_reference"),
                         ("ruler_effective_length_", "group_effective")):
        if metric.startswith(prefix) and metric.removeprefix(prefix) in RULER_GROUPS:
            return kind, metric.removeprefix(prefix)
    task = metric.removeprefix("ruler_")
    return ("task", task) if task in RULER_TASK_INFO else None


class _Ruler:
    """One run's RULER measurements, gathered row by row, then laid out as a task × length table."""

    def __init__(self) -> None:
        self.tasks: dict[str, dict[int, tuple[float, int | None]]] = defaultdict(dict)
        self.groups: dict[str, dict[int, float]] = defaultdict(dict)
        self.average: dict[int, float] = {}
        self.reference: tuple[float, int | None] | None = None
        self.effective: int | None = None
        self.group_reference: dict[str, float] = {}
        self.group_effective: dict[str, int] = {}

    @property
    def empty(self) -> bool:
        return not (self.tasks or self.groups or self.average or self.reference is not None)

    def add(self, row: Row) -> None:
        found = _ruler_metric(row.metric)
        if found is None:
            return
        kind, name = found
        length = row.context_length
        if kind == "reference":
            self.reference = (row.value, length)
        elif kind == "effective":
            self.effective = int(row.value)
        elif kind == "group_reference" and name is not None:
            self.group_reference[name] = row.value
        elif kind == "group_effective" and name is not None:
            self.group_effective[name] = int(row.value)
        elif length is None:
            return
        elif kind == "average":
            self.average[length] = row.value
        elif kind == "group" and name is not None:
            self.groups[name][length] = row.value
        elif kind == "task" and name is not None:
            self.tasks[name][length] = (row.value, row.samples)

    def chart(self, name: str) -> dict[str, Any]:
        lengths = sorted({n for cells in self.tasks.values() for n in cells}
                         | {n for cells in self.groups.values() for n in cells} | set(self.average))
        tasks = [task for task in RULER_TASKS if task in self.tasks]
        present = {RULER_TASK_INFO[task].group for task in tasks} | set(self.groups) | set(self.group_reference)
        groups = [group for group in RULER_GROUPS if group in present]

        def cell(task: str, length: int, index: int) -> Any:
            found = self.tasks[task].get(length)
            return None if found is None else found[index]

        return {
            "name": name,
            "lengths": lengths,
            "tasks": [{"task": task, "group": RULER_TASK_INFO[task].group,
                       "description": RULER_TASK_INFO[task].description,
                       "scores": [cell(task, n, 0) for n in lengths],
                       "samples": [cell(task, n, 1) for n in lengths]} for task in tasks],
            "groups": {group: [self.groups.get(group, {}).get(n) for n in lengths] for group in groups},
            "average": [self.average.get(n) for n in lengths],
            "reference": self.reference[0] if self.reference else None,
            "reference_length": self.reference[1] if self.reference else None,
            "effective_length": self.effective,
            "reference_by_group": {group: self.group_reference.get(group) for group in groups},
            "effective_by_group": {group: self.group_effective.get(group) for group in groups},
        }


def protocol_lines(runs: Iterable[tuple[str, dict[str, Any]]], evaluations: Iterable[str]
                   ) -> dict[str, list[dict[str, Any]]]:
    """{evaluation: [{"runs": [method labels], "key": protocol key, "text": one line}, …]} for the page.

    *runs* are ``(method label, run.protocol)``. Runs sharing an evaluation's key share one entry (its
    :func:`gpu_workers.protocol.describe` line); several entries mean the runs were measured differently and
    are not ranked against each other. A run without a recorded protocol for the evaluation (a run from
    before protocols were recorded, or one not yet started) is listed under ``"not recorded"`` (key ``""``).
    """
    runs = list(runs)
    lines: dict[str, list[dict[str, Any]]] = {}
    for evaluation in evaluations:
        entries: dict[str, dict[str, Any]] = {}
        for label, protocol in runs:
            text = describe(protocol or {}, evaluation)
            key = str(((protocol or {}).get("keys") or {}).get(evaluation) or "") if text else ""
            entry = entries.setdefault(f"{key}\n{text}", {"runs": [], "key": key, "text": text or NOT_RECORDED})
            entry["runs"].append(label)
        lines[evaluation] = list(entries.values())
    return lines


def _search(name: str, found: dict[str, Any]) -> dict[str, Any]:
    generations = sorted(found["best"])
    latest = max(found["factors"]) if found["factors"] else None
    factors = found["factors"].get(latest, {})
    return {
        "name": name,
        "generations": generations,
        "best": [found["best"][g] for g in generations],
        "median": [found["median"].get(g) for g in generations],
        "evaluations": [found["evaluations"].get(g) for g in generations],
        "factors": [factors[i] for i in sorted(factors)],
        "factors_generation": latest,
        "critical_dim": found["critical_dim"],
    }
