"""The pivot leaderboard: what a researcher would otherwise build in a spreadsheet, computed from the measurements.

Two views over one base model, one dataset and one training recipe (numbers from other data or other training are
not comparable, so the page never mixes them): *by length* is methods × context lengths for one metric; *summary*
is one column per headline metric at one length. Rows are configurations (family + canonical parameters), each cell
the mean over the runs that agree, with the min–max spread when there are several. The page and the CSV render the
same :class:`PivotTable`, so the download is exactly the table on screen.

Query-string values are untrusted: an unknown team, model or dataset is a 404, an unknown metric, recipe, view or
length falls back to the default, and the defaults pick the combination with the most data.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.http import Http404, QueryDict, StreamingHttpResponse

from experiments import csv_export, pivot_selectors
from experiments.access import visible_base_models
from experiments.leaderboard import int_param, team_scope
from experiments.models import BaseModel, Dataset, Team, params_hash
from experiments.selectors import LENGTH_FREE_METRICS, LOWER_IS_BETTER, ProtocolChoice
from gpu_workers import catalog
from gpu_workers.protocol import describe as protocol_text

PIVOT_METRICS = catalog.metric_labels(catalog.PIVOT_METRICS)
"""The by-length view's metrics, ``{key: label}`` (:data:`gpu_workers.catalog.PIVOT_METRICS`)."""
PIVOT_EVALUATIONS = {m.key: m.evaluation for m in (*catalog.PIVOT_METRICS, *catalog.SUMMARY_METRICS)}
"""Which evaluation's protocol a metric is measured under."""


@dataclass(frozen=True)
class SummaryColumn:
    metric: str
    header: str
    at_length: bool
    """True: measured at the chosen length; False: once per run (effective length)."""


SUMMARY_COLUMNS = tuple(SummaryColumn(m.key, m.summary, m.lengths == catalog.AT_EVAL_LENGTHS)
                        for m in catalog.SUMMARY_METRICS)
"""The summary view's columns (:data:`gpu_workers.catalog.SUMMARY_METRICS`). Retention is measured inside the
original context, at lengths of its own: its column averages every length it has."""

VIEWS = {"length": "by length", "summary": "summary"}
FIXED_COLUMNS = ("method", "family", "parameters", "runs")


def recipe_key(training: dict[str, Any]) -> str:
    return params_hash(training)[:12]


def recipe_label(training: dict[str, Any]) -> str:
    """``no training`` or ``finetune · steps 200 · lr 0.001 …``: what a person reads in the recipe filter."""
    mode = training.get("mode") or "none"
    if mode == "none":
        return "no training"
    rest = " · ".join(f"{k} {v}" for k, v in sorted(training.items()) if k != "mode" and v not in ("", None, [], {}))
    return f"{mode} · {rest}" if rest else str(mode)


def _format(metric: str, value: float) -> str:
    if metric == "ruler_effective_length":
        return f"{value:.0f}"
    if metric == "forward_seconds":
        return f"{value:.4f}"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


@dataclass
class PivotCell:
    text: str
    value: float | None = None
    best: bool = False
    title: str = ""


@dataclass
class PivotRow:
    method: str
    family: str
    parameters: str
    runs: int
    run_uuids: list[str]
    cells: list[PivotCell]

    @property
    def values(self) -> list[str]:
        """The row as the CSV writes it, in ``PivotTable.header`` order."""
        return [self.method, self.family, self.parameters, str(self.runs), *(c.text for c in self.cells)]


@dataclass
class PivotTable:
    columns: list[str]
    """The value columns' headers (after FIXED_COLUMNS)."""
    rows: list[PivotRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What each value column was measured under (one line per column in the summary, one for the pivot)."""

    @property
    def header(self) -> list[str]:
        return [*FIXED_COLUMNS, *self.columns]


@dataclass
class PivotQuery:
    teams: Any
    team: Team | None
    base_models: list[BaseModel]
    base_model: BaseModel | None
    datasets: list[Dataset]
    dataset: Dataset | None
    recipes: list[tuple[str, str]]
    """(key, label) of every training recipe with experiments here."""
    recipe: str
    training: dict[str, Any] | None
    view: str
    metric: str
    lengths: list[int] = field(default_factory=list)
    length: int | None = None
    protocols: list[ProtocolChoice] = field(default_factory=list)
    protocol: ProtocolChoice | None = None
    table: PivotTable = field(default_factory=lambda: PivotTable([]))
    chart: dict[str, Any] = field(default_factory=dict)

    @property
    def metric_label(self) -> str:
        return PIVOT_METRICS[self.metric]

    @property
    def lower_is_better(self) -> bool:
        return self.metric in LOWER_IS_BETTER

    @property
    def protocol_options(self) -> list[tuple[str, str]]:
        return [(c.key, f"{c.key or 'not recorded'} · {c.runs} run{'s' if c.runs != 1 else ''}")
                for c in self.protocols]

    def params(self) -> dict[str, Any]:
        return {
            "team": self.team.pk if self.team else "",
            "base_model": self.base_model.pk if self.base_model else "",
            "dataset": self.dataset.pk if self.dataset else "",
            "recipe": self.recipe,
            "view": self.view,
            "metric": self.metric,
            "length": self.length or "",
            "protocol": self.protocol.key if self.protocol else "",
        }


def _pick(options: list[Any], raw: str, what: str) -> Any:
    if not raw:
        return options[0] if options else None
    found = next((o for o in options if str(o.pk) == raw), None) or next((o for o in options if o.name == raw), None)
    if found is None:
        raise Http404(f"No such {what}.")
    return found


def resolve(user: Any, query: QueryDict) -> PivotQuery:
    """The filters, with defaults, and the table they select."""
    my_teams, team, teams = team_scope(user, query.get("team") or "")
    base_models = list(visible_base_models(user))
    base_model = _pick(base_models, query.get("base_model") or "", "base model")
    datasets = pivot_selectors.datasets(teams, base_model) if base_model else []
    dataset = _pick(datasets, query.get("dataset") or "", "dataset") if datasets else None
    trainings = pivot_selectors.recipes(teams, base_model, dataset) if dataset else []
    recipes = sorted(((recipe_key(t), recipe_label(t), t) for t in trainings), key=lambda r: (r[1] != "no training",
                                                                                              r[1]))
    wanted = query.get("recipe") or ""
    chosen = next((r for r in recipes if r[0] == wanted), recipes[0] if recipes else None)
    view = query.get("view") if query.get("view") in VIEWS else "length"
    metric = query.get("metric") if query.get("metric") in PIVOT_METRICS else "perplexity"
    result = PivotQuery(my_teams, team, base_models, base_model, datasets, dataset,
                        [(key, label) for key, label, _ in recipes], chosen[0] if chosen else "",
                        chosen[2] if chosen else None, view, metric)
    if base_model is None or dataset is None or chosen is None:
        return result
    training = chosen[2]
    if view == "summary":
        result.lengths = pivot_selectors.lengths(teams, base_model, dataset, training, "perplexity")
        result.length = int_param(query.get("length"))
        if result.length not in result.lengths:
            result.length = result.lengths[-1] if result.lengths else None
        own = [c.metric for c in SUMMARY_COLUMNS if not c.at_length and c.metric not in LENGTH_FREE_METRICS]
        found = pivot_selectors.groups(teams, base_model, dataset, training, [c.metric for c in SUMMARY_COLUMNS],
                                       length=result.length if result.length is not None else -1, any_length=own)
        result.table = summary_table(found, result.length)
        return result
    found = pivot_selectors.groups(teams, base_model, dataset, training, [metric])
    result.protocols = _protocol_choices(found)
    wanted_key = query.get("protocol")
    result.protocol = next((c for c in result.protocols if c.key == wanted_key), None)
    if result.protocol is None and result.protocols:
        result.protocol = result.protocols[0]
    if result.protocol is not None:
        result.table, result.lengths = length_table(found, metric, result.protocol, lambda key, length: (
            pivot_selectors.recent_runs(teams, base_model, dataset, training, metric, key, length)))
        result.chart = _chart(result.table, result.lengths, metric)
    return result


def _runs_per_key(found: Iterable[pivot_selectors.Group]) -> dict[str, int]:
    """Runs behind each protocol: per configuration the most runs at any one length, summed (a run measures every
    length of its experiment, so this counts each run once without a second pass over the measurements)."""
    most: dict[tuple[str, pivot_selectors.Config], int] = {}
    for g in found:
        most[(g.protocol_key, g.config)] = max(g.aggregate.runs, most.get((g.protocol_key, g.config), 0))
    runs: dict[str, int] = {}
    for (key, _), n in most.items():
        runs[key] = runs.get(key, 0) + n
    return runs


def _protocol_choices(found: list[pivot_selectors.Group]) -> list[ProtocolChoice]:
    """The protocols the metric was measured under here, most runs first (one query for their facts)."""
    runs = _runs_per_key(found)
    examples: dict[str, int] = {}
    for g in found:
        examples[g.protocol_key] = min(g.example_run, examples.get(g.protocol_key, g.example_run))
    facts = pivot_selectors.run_protocols(examples.values())
    return [ProtocolChoice(key, runs[key], facts.get(examples[key]) or {})
            for key in sorted(runs, key=lambda k: (-runs[k], k))]


def _collapse(found: list[pivot_selectors.Group]) -> tuple[str | None, dict[pivot_selectors.Config,
                                                                          pivot_selectors.Aggregate]]:
    """The most-used protocol among *found* and, under it, one aggregate per configuration (several lengths, as
    retention has, are averaged: mean of the means, the widest spread)."""
    runs = _runs_per_key(found)
    if not runs:
        return None, {}
    key = min(runs, key=lambda k: (-runs[k], k))
    merged: dict[pivot_selectors.Config, list[pivot_selectors.Aggregate]] = {}
    for g in found:
        if g.protocol_key == key:
            merged.setdefault(g.config, []).append(g.aggregate)
    return key, {
        config: pivot_selectors.Aggregate(max(a.runs for a in aggs), sum(a.mean for a in aggs) / len(aggs),
                                          min(a.low for a in aggs), max(a.high for a in aggs),
                                          min(a.method_id for a in aggs))
        for config, aggs in merged.items()
    }


def _params_text(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, separators=(", ", ": ")) if params else ""


def _cell(metric: str, agg: pivot_selectors.Aggregate | None) -> PivotCell:
    if agg is None:
        return PivotCell("")
    text = _format(metric, agg.mean)
    if agg.runs > 1:
        text += f" [{_format(metric, agg.low)}–{_format(metric, agg.high)}]"
    return PivotCell(text, agg.mean, title=f"mean of {agg.runs} run{'s' if agg.runs != 1 else ''}")


def _mark_best(rows: list[PivotRow], column: int, lower: bool, metric: str) -> None:
    """Bold the best value of a column, and every value shown the same: a reader sees two cells that both read
    44.84 as a tie, whatever the digits past the ones shown (dynamic NTK inside the original context is the
    baseline up to float rounding)."""
    values = [value for r in rows if (value := r.cells[column].value) is not None]
    if not values:
        return
    best = _format(metric, min(values) if lower else max(values))
    for r in rows:
        value = r.cells[column].value
        if value is not None and _format(metric, value) == best:
            r.cells[column].best = True


def length_table(found: list[pivot_selectors.Group], metric: str, protocol: ProtocolChoice,
                 recent_runs: Callable[[str, int | None], dict[pivot_selectors.Config, list[str]]]
                 ) -> tuple[PivotTable, list[int]]:
    """Configurations × context lengths for one metric under one protocol (*found*: its groups); two queries, the
    method rows and *recent_runs* (each configuration's linked runs at the longest length)."""
    cells = {(g.config, g.length): g.aggregate for g in found
             if g.protocol_key == protocol.key and g.length is not None}
    lengths = sorted({length for _, length in cells})
    runs: dict[pivot_selectors.Config, int] = {}
    method_ids: dict[pivot_selectors.Config, int] = {}
    for (config, _), agg in cells.items():
        runs[config] = max(agg.runs, runs.get(config, 0))
        method_ids[config] = min(agg.method_id, method_ids.get(config, agg.method_id))
    methods = pivot_selectors.methods(method_ids.values())
    recent = recent_runs(protocol.key, lengths[-1]) if lengths else {}
    lower = metric in LOWER_IS_BETTER
    table = PivotTable([str(n) for n in lengths])
    for config, method_id in method_ids.items():
        method = methods[method_id]
        table.rows.append(PivotRow(method.name, method.family, _params_text(method.params), runs[config],
                                   recent.get(config, []), [_cell(metric, cells.get((config, n))) for n in lengths]))
    last = len(lengths) - 1

    def order(row: PivotRow) -> tuple[int, float, str]:
        value = row.cells[last].value if lengths else None
        return (value is None, (value if lower else -value) if value is not None else 0.0, row.method)

    table.rows.sort(key=order)
    for column in range(len(lengths)):
        _mark_best(table.rows, column, lower, metric)
    evaluation = PIVOT_EVALUATIONS.get(metric, metric)
    described = protocol_text(protocol.run_protocol, evaluation) if protocol.key else ""
    table.notes.append(f"{PIVOT_METRICS[metric]}, protocol {protocol.key or 'not recorded'}"
                       + (f": {described}" if described else ""))
    return table, lengths


def summary_table(found: list[pivot_selectors.Group], length: int | None) -> PivotTable:
    """One column per headline metric at *length*, each under its own most-used protocol (*found*: the groups of
    every summary metric); one query, the method rows."""
    table = PivotTable([c.header + (f" @ {length}" if c.at_length and length else "") for c in SUMMARY_COLUMNS])
    columns: list[dict[pivot_selectors.Config, pivot_selectors.Aggregate]] = []
    method_ids: dict[pivot_selectors.Config, int] = {}
    for column in SUMMARY_COLUMNS:
        mine = [g for g in found if g.metric == column.metric]
        if column.at_length:
            mine = [g for g in mine if g.length == length]
        elif column.metric in LENGTH_FREE_METRICS:
            mine = [g for g in mine if g.length is None]
        key, aggregates = _collapse(mine)
        columns.append(aggregates)
        for config, agg in aggregates.items():
            method_ids[config] = min(agg.method_id, method_ids.get(config, agg.method_id))
        if key is not None:
            table.notes.append(f"{column.header}: protocol {key or 'not recorded'}")
    methods = pivot_selectors.methods(method_ids.values())
    for config, method_id in method_ids.items():
        method = methods[method_id]
        runs = max((c[config].runs for c in columns if config in c), default=0)
        table.rows.append(PivotRow(method.name, method.family, _params_text(method.params), runs, [],
                                   [_cell(col.metric, c.get(config)) for col, c in zip(SUMMARY_COLUMNS, columns,
                                                                                         strict=True)]))
    table.rows.sort(key=lambda r: (r.cells[0].value is None, r.cells[0].value or 0.0, r.method))
    for index, column in enumerate(SUMMARY_COLUMNS):
        _mark_best(table.rows, index, column.metric in LOWER_IS_BETTER, column.metric)
    return table


def _chart(table: PivotTable, lengths: list[int], metric: str) -> dict[str, Any]:
    """One line per configuration over length, with the min–max spread as error bars (Plotly traces)."""
    traces = []
    for row in table.rows:
        xs = [n for n, c in zip(lengths, row.cells, strict=True) if c.value is not None]
        ys = [c.value for c in row.cells if c.value is not None]
        traces.append({"name": row.method, "x": xs, "y": ys, "type": "scatter", "mode": "lines+markers"})
    return {"traces": traces, "metric": PIVOT_METRICS[metric], "log_y": catalog.METRICS[metric].log_scale}


def csv_response(query: PivotQuery) -> StreamingHttpResponse:
    header = query.table.header
    rows = (dict(zip(header, row.values, strict=True)) for row in query.table.rows)
    name = query.base_model.name if query.base_model else "none"
    which = query.metric if query.view == "length" else f"summary-{query.length or ''}"
    return csv_export.csv_response(f"pivot-{name}-{which}", header, rows)
