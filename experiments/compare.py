"""The reader of the compare page: runs picked anywhere, side by side. Two queries whatever the number of runs.

``?runs=<uuid>&runs=<uuid>`` or ``?runs=<uuid>,<uuid>`` (both may mix). Only runs in experiments the visitor can
see (:func:`experiments.access.visible_experiments`) are shown; an unknown, invisible or malformed id is only
counted ("2 runs not found or not visible"), so the page never says whether another team's run exists.

Each run gets a label unique on the page, "<method> · <experiment>" ("#<short uuid>" added where two collide),
and every chart is :func:`experiments.evaluation_charts.build` over those labels: the experiment page's
charts, with runs of several experiments overlaid. The parameter table has one column per run and marks each
row that ``differs``.

``settings.CONTEXTLAB_COMPARE_MAX_RUNS`` (default 200) caps how many runs one page loads: far above the ten a
W&B comparison allows, low enough that a pasted list of thousands of ids cannot make one request load them all.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db.models import Prefetch
from django.urls import reverse

from experiments import evaluation_charts
from experiments.access import visible_experiments
from experiments.models import Measurement, Run

DEFAULT_MAX_RUNS = 200
MISSING = "—"


def max_runs() -> int:
    return max(1, int(getattr(settings, "CONTEXTLAB_COMPARE_MAX_RUNS", DEFAULT_MAX_RUNS)))


@dataclass
class Asked:
    """The run ids a query string asked for, in order, without repeats."""

    ids: list[uuid.UUID]
    malformed: int = 0


def parse_run_ids(values: Iterable[str]) -> Asked:
    """Every ``runs`` value, each split at commas; blanks are ignored, anything not a uuid is counted."""
    ids: list[uuid.UUID] = []
    malformed = 0
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                parsed = uuid.UUID(part)
            except (ValueError, AttributeError):
                malformed += 1
                continue
            if parsed not in ids:
                ids.append(parsed)
    return Asked(ids, malformed)


@dataclass
class Cell:
    text: str
    url: str = ""
    raw: Any = None
    """What equality is judged on (a uuid, a number, a list …), so "4" and 4.0 are not mistaken for each other."""


@dataclass
class ParamRow:
    key: str
    """Stable id of the row (``method.family``, ``training.mode``, ``evaluations.ruler.samples`` …)."""
    label: str
    group: str
    cells: list[Cell]

    @property
    def differs(self) -> bool:
        return len({_canonical(cell.raw) for cell in self.cells}) > 1


@dataclass
class Column:
    run: Run
    label: str


@dataclass
class Comparison:
    columns: list[Column] = field(default_factory=list)
    rows: list[ParamRow] = field(default_factory=list)
    chart: dict[str, Any] = field(default_factory=dict)
    """The experiment page's chart payload: ``{"charts", "protocols", "original_context", "limits"}``."""
    suite: list[str] = field(default_factory=list)
    """Every evaluation any compared experiment ran, in the order they first appear."""
    not_found: int = 0
    """Asked-for ids that are malformed, unknown or in experiments the visitor cannot see."""
    over_limit: int = 0
    """Ids beyond ``CONTEXTLAB_COMPARE_MAX_RUNS`` that were not loaded."""
    limit: int = DEFAULT_MAX_RUNS
    ruler_thresholds: list[float] = field(default_factory=list)
    """The experiments' RULER thresholds when they differ (the chart's dotted lines use the first)."""

    @property
    def runs(self) -> list[Run]:
        return [column.run for column in self.columns]

    @property
    def differing(self) -> int:
        return sum(row.differs for row in self.rows)

    def shows(self, evaluation: str) -> bool:
        """Whether the page draws *evaluation*: some compared experiment ran it, or some run measured it."""
        if evaluation in self.suite:
            return True
        charts = self.chart.get("charts") or {}
        series = charts.get("series") or {}
        present = {
            "needle": bool(charts.get("needle")), "ruler": bool(charts.get("ruler")),
            "retention": bool(charts.get("retention")),
            "memory": any(series.get(name) for name in ("forward_seconds", "kv_cache_mb", "peak_memory_mb")),
        }
        return present.get(evaluation, bool(series.get(evaluation)))


def compare(user: Any, values: Iterable[str]) -> Comparison:
    """The page for the ``runs`` query values *values*: two queries (runs with their experiment, team, model,
    dataset and method; their measurements), none when no id parses."""
    asked = parse_run_ids(values)
    limit = max_runs()
    wanted, over = asked.ids[:limit], max(0, len(asked.ids) - limit)
    runs = _load(user, wanted) if wanted else []
    labels = labels_for(runs)
    columns = [Column(run, label) for run, label in zip(runs, labels, strict=True)]
    comparison = Comparison(columns=columns, not_found=asked.malformed + len(wanted) - len(runs), over_limit=over,
                            limit=limit)
    comparison.suite = _suite(runs)
    comparison.rows = parameter_rows(columns)
    thresholds = list(dict.fromkeys(_ruler_threshold(run) for run in runs))
    comparison.ruler_thresholds = thresholds if len(thresholds) > 1 else []
    comparison.chart = _chart(columns, comparison.suite, thresholds[0] if thresholds else None)
    return comparison


def _load(user: Any, ids: list[uuid.UUID]) -> list[Run]:
    found = (
        Run.objects.filter(uuid__in=ids, experiment__in=visible_experiments(user).values("pk"))
        .select_related("method", "experiment", "experiment__team", "experiment__base_model", "experiment__dataset")
        .prefetch_related(Prefetch("measurements",
                                   queryset=Measurement.objects.order_by("metric", "context_length", "id"),
                                   to_attr="measurement_list"))
    )
    by_uuid = {run.uuid: run for run in found}
    return [by_uuid[i] for i in ids if i in by_uuid]


def labels_for(runs: list[Run]) -> list[str]:
    """"<method name> · <experiment name>", with "#<short uuid>" added to labels two runs would share."""
    plain = [f"{run.method.name} · {run.experiment.name}" for run in runs]
    counts = Counter(plain)
    labels = [f"{label} #{str(run.uuid)[:8]}" if counts[label] > 1 else label for run, label in zip(runs, plain,
                                                                                                    strict=True)]
    if len(set(labels)) < len(labels):  # a shared 8-character prefix: astronomically rare, but labels key charts
        labels = [f"{label} #{run.uuid}" if counts[label] > 1 else label for run, label in zip(runs, plain,
                                                                                              strict=True)]
    return labels


def _suite(runs: list[Run]) -> list[str]:
    suite: dict[str, None] = {}
    for run in runs:
        for name in (run.experiment.evaluations or {}).get("suite", ["perplexity"]):
            suite[name] = None
    return list(suite)


def _ruler_threshold(run: Run) -> float:
    value = (run.experiment.evaluations or {}).get("ruler_threshold")
    return evaluation_charts.DEFAULT_RULER_THRESHOLD if value is None else float(value)


def _chart(columns: list[Column], suite: list[str], ruler_threshold: float | None) -> dict[str, Any]:
    """The payload ``static/js/evaluation_charts.js`` draws on the experiment page, built over the run labels."""
    labels = [column.label for column in columns]
    rows = (
        evaluation_charts.Row(column.label, m.metric, m.context_length, m.depth, m.value, m.ci_low, m.ci_high,
                              m.step, m.samples)
        for column in columns for m in column.run.measurement_list
    )
    haystacks = {column.label: column.run.haystack_source for column in columns if column.run.haystack_source}
    charts = evaluation_charts.build(rows, labels, haystacks,
                                     evaluation_charts.DEFAULT_RULER_THRESHOLD if ruler_threshold is None
                                     else ruler_threshold)
    originals = {column.run.experiment.base_model.original_context for column in columns}
    return {
        "charts": charts,
        "protocols": evaluation_charts.protocol_lines(((c.label, c.run.protocol) for c in columns), suite),
        # One dotted "original context" line only when every run's model shares it.
        "original_context": originals.pop() if len(originals) == 1 else None,
        "limits": [],
    }


# --- the parameter table ---------------------------------------------------------------------------------------


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _text(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        if all(not isinstance(v, dict | list | tuple) for v in value):
            return ", ".join(_text(v) for v in value) if value else "[]"
        return json.dumps(value, default=str)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _value_cell(value: Any) -> Cell:
    return Cell(_text(value), raw=value)


def _keys(dicts: Iterable[dict[str, Any] | None]) -> list[str]:
    """The union of the dicts' keys, in the order they first appear."""
    keys: dict[str, None] = {}
    for d in dicts:
        for key in d or {}:
            keys[key] = None
    return list(keys)


def _flatten(settings_: dict[str, Any] | None) -> dict[str, Any]:
    """Evaluation settings, nested sections flattened one level: ``{"ruler": {"samples": 8}}`` → ``ruler.samples``."""
    flat: dict[str, Any] = {}
    for key, value in (settings_ or {}).items():
        if isinstance(value, dict) and value:
            for sub, inner in value.items():
                flat[f"{key}.{sub}"] = inner
        else:
            flat[key] = value
    return flat


def _duration(run: Run) -> Cell:
    seconds = run.duration_s
    return Cell(MISSING if seconds is None else f"{seconds:.1f} s", raw=seconds)


def parameter_rows(columns: list[Column]) -> list[ParamRow]:
    """One row per fact that can tell two runs apart, one cell per run (no query: everything is loaded)."""
    runs = [column.run for column in columns]
    if not runs:
        return []
    experiments = [run.experiment for run in runs]

    row = ParamRow
    rows = [
        row("experiment", "Experiment", "Experiment",
            [Cell(e.name, reverse("experiment_detail", args=[e.uuid]), str(e.uuid)) for e in experiments]),
        row("team", "Team", "Experiment", [Cell(e.team.name, raw=e.team_id) for e in experiments]),
        row("base_model", "Base model", "Experiment",
            [Cell(e.base_model.name, reverse("model_detail", args=[e.base_model_id]), e.base_model_id)
             for e in experiments]),
        row("dataset", "Dataset", "Experiment",
            [Cell(e.dataset.name, reverse("dataset_detail", args=[e.dataset_id]), e.dataset_id) for e in experiments]),
        row("method", "Method", "Method",
            [Cell(run.method.name, reverse("method_detail", args=[run.method_id]), run.method_id) for run in runs]),
        row("method.family", "Method family", "Method", [_value_cell(run.method.family) for run in runs]),
    ]
    params = [run.method.params or {} for run in runs]
    rows += [row(f"method.params.{key}", key, "Method", [_value_cell(p.get(key)) for p in params])
             for key in _keys(params)]
    rows += [
        row("target_length", "Target length", "Experiment", [_value_cell(e.target_length) for e in experiments]),
        row("eval_lengths", "Eval lengths", "Evaluation", [_value_cell(list(e.eval_lengths)) for e in experiments]),
        row("eval_documents", "Eval documents", "Evaluation", [_value_cell(e.eval_documents) for e in experiments]),
    ]
    training = [e.training or {} for e in experiments]
    rows += [row(f"training.{key}", key, "Training recipe", [_value_cell(t.get(key)) for t in training])
             for key in _keys(training)]
    evaluations = [_flatten(e.evaluations) for e in experiments]
    rows += [row(f"evaluations.{key}", key, "Evaluation settings", [_value_cell(s.get(key)) for s in evaluations])
             for key in _keys(evaluations)]
    protocol_keys = [dict((run.protocol or {}).get("keys") or {}) for run in runs]
    rows += [row(f"protocol.{name}", name, "Protocol key", [_value_cell(keys.get(name)) for keys in protocol_keys])
             for name in _keys(protocol_keys)]
    rows += [
        row("status", "Status", "Run", [Cell(run.get_status_display(), raw=run.status) for run in runs]),
        row("duration", "Duration", "Run", [_duration(run) for run in runs]),
    ]
    return rows
