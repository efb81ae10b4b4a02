"""Chart data for every evaluation of an experiment, built from measurements already in memory.

Pure functions over ``(method label, metric, length, depth, value, ci_low, ci_high)`` rows, so the
page (prefetched measurements) and the 2-second status poll (one query) draw from the same code.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any, NamedTuple

SERIES_METRICS = {
    "perplexity": "perplexity",
    "passkey": "passkey_accuracy",
    "needle_perplexity": "needle_perplexity",
    "forward_seconds": "forward_seconds",
    "kv_cache_mb": "kv_cache_mb",
    "kv_cache_mb_predicted": "kv_cache_mb_predicted",
    "peak_memory_mb": "peak_memory_mb",
}
RETENTION_METRICS = (
    "short_perplexity", "short_perplexity_base", "retention_perplexity",
    "short_passkey", "short_passkey_base", "retention_passkey",
)
GRID_METRICS = ("needle_exact", "needle_partial")
SEARCH_METRICS = ("search_best", "search_median", "search_evaluations", "search_factor", "search_critical_dim")


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


def build(rows: Iterable[Row], methods: list[str], haystacks: dict[str, str] | None = None) -> dict[str, Any]:
    """{"series": {chart: {method: [[length, value, low, high], …]}}, "needle": [...], "retention": [...]}.

    *haystacks* maps a method to the dataset source its run's needle haystacks came from, shown with its grid.
    """
    haystacks = haystacks or {}
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
            found = searches[row.method]
            if row.metric == "search_critical_dim":
                found["critical_dim"] = int(row.value)
            elif row.metric == "search_factor" and row.step is not None and row.depth is not None:
                found["factors"].setdefault(row.step, {})[int(row.depth)] = row.value
            elif row.step is not None:
                found[row.metric.removeprefix("search_")][row.step] = row.value
            continue
        chart = by_metric.get(row.metric)
        if chart is not None and row.context_length is not None and row.depth is None:
            series[chart].setdefault(row.method, []).append([row.context_length, row.value, row.ci_low, row.ci_high])
        elif row.metric in GRID_METRICS and row.context_length is not None and row.depth is not None:
            cell = grids[row.method].setdefault((row.context_length, row.depth), {})
            cell[row.metric] = row.value
            if row.samples is not None:
                cell["samples"] = max(cell.get("samples", 0), row.samples)
        elif row.metric in RETENTION_METRICS:
            retention[row.method][row.metric] = row.value
            retention[row.method]["length"] = row.context_length
    for chart in series.values():
        for points in chart.values():
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
    }


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
