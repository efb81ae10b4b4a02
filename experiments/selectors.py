"""The reader: what pages, the API and CSV exports show, each a fixed number of queries.

Nothing here writes, and nothing here lazily touches a relation per row: every function's query
count is independent of the number of runs (the tests pin the counts).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from django.db.models import (
    Avg,
    Count,
    Exists,
    F,
    IntegerField,
    Max,
    Min,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Window,
)
from django.db.models.functions import Coalesce, RowNumber
from django.urls import reverse
from django.utils import timezone

from experiments import evaluation_charts
from experiments.access import visible_base_models, visible_experiments
from experiments.checkpoints import CHECKPOINT
from experiments.length_stats import data_key
from experiments.models import (
    Artifact,
    BaseModel,
    Dataset,
    DatasetLengthStats,
    Experiment,
    Measurement,
    Method,
    Run,
    Team,
)
from gpu_workers import catalog
from gpu_workers.data.documents import DatasetError
from gpu_workers.data.length_stats import LengthStats
from gpu_workers.tokenizer_files import tokenizer_key

Point = tuple[int, float, float | None, float | None]
"""(context length, value, ci_low, ci_high)"""

LOWER_IS_BETTER = catalog.LOWER_IS_BETTER
"""Metrics ranked lowest first (:class:`gpu_workers.catalog.Metric`)."""
STATUS_LOG_LINES = 8


def _run_count(status: str | None = None) -> Coalesce:
    """How many of the outer experiment's runs (with *status*): a correlated subquery, not a join."""
    runs = Run.objects.filter(experiment=OuterRef("pk"))
    if status is not None:
        runs = runs.filter(status=status)
    counted = runs.order_by().values("experiment").annotate(n=Count("pk")).values("n")
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)


def experiments_for_user(user: Any) -> QuerySet[Experiment]:
    """The dashboard list with run counts per status (``n_runs``, ``n_<status>``), newest first: one query.

    The counts are correlated subqueries rather than a GROUP BY over a join with runs, so a page
    (``ORDER BY … LIMIT``) only counts the runs of its own rows and the paginator's ``count()`` leaves
    them out: a page costs the same at 100 or 10,000 experiments (docs/performance.md).
    """
    counts = {f"n_{status}": _run_count(status) for status in Run.Status.values}
    return (
        visible_experiments(user)
        .select_related("team", "base_model", "dataset", "created_by")
        .annotate(n_runs=_run_count(), **counts)
        .order_by("-created", "-id")
    )


ARCHIVED_HIDE, ARCHIVED_INCLUDE, ARCHIVED_ONLY = "", "include", "only"
"""The experiment list's ``archived`` filter: hide archived experiments (default), list them too, or only them."""


def _start_of_day(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min), timezone.get_current_timezone())


def filter_experiments(experiments: QuerySet[Experiment], team: Team | None = None,
                       base_model: BaseModel | None = None, dataset: Any = None, status: str | None = None,
                       q: str | None = None, method_family: str | None = None, created_from: date | None = None,
                       created_to: date | None = None, archived: str | None = ARCHIVED_HIDE) -> QuerySet[Experiment]:
    """Narrow an experiment list: team, base model, dataset, a run with *status*, name containing *q*, a run of a
    method of *method_family*, created between *created_from* and *created_to* (dates in the site's time zone,
    both inclusive), and archived or not (*archived*: "" hides archived experiments, "include", "only")."""
    if archived == ARCHIVED_ONLY:
        experiments = experiments.filter(archived_at__isnull=False)
    elif archived != ARCHIVED_INCLUDE:
        experiments = experiments.filter(archived_at__isnull=True)
    if team is not None:
        experiments = experiments.filter(team=team)
    if base_model is not None:
        experiments = experiments.filter(base_model=base_model)
    if dataset is not None:
        experiments = experiments.filter(dataset=dataset)
    if status:
        experiments = experiments.filter(Exists(Run.objects.filter(experiment=OuterRef("pk"), status=status)))
    if q:
        experiments = experiments.filter(name__icontains=q)
    if method_family:
        experiments = experiments.filter(
            Exists(Run.objects.filter(experiment=OuterRef("pk"), method__family=method_family))
        )
    if created_from is not None:
        experiments = experiments.filter(created__gte=_start_of_day(created_from))
    if created_to is not None and created_to < date.max:
        experiments = experiments.filter(created__lt=_start_of_day(created_to + timedelta(days=1)))
    return experiments


@dataclass
class ExperimentDetail:
    experiment: Experiment
    runs: list[Run]
    series: dict[str, list[Point]] = field(default_factory=dict)
    charts: dict[str, Any] = field(default_factory=dict)
    """Every evaluation's chart data (:func:`experiments.evaluation_charts.build`)."""
    protocols: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """What each evaluation was measured under, per group of runs (:func:`evaluation_charts.protocol_lines`)."""


def experiment_detail(experiment: Experiment) -> ExperimentDetail:
    """Runs with their methods, measurements (``run.measurement_list``) and ``run.has_checkpoint``: two queries."""
    runs = list(
        experiment.runs.select_related("method")
        .annotate(has_checkpoint=Exists(Artifact.objects.filter(run=OuterRef("pk"), kind=CHECKPOINT)))
        .prefetch_related(Prefetch("measurements", queryset=Measurement.objects.order_by("metric", "context_length",
                                                                                           "id"),
                                   to_attr="measurement_list"))
        .order_by("id")
    )
    series: dict[str, list[Point]] = {}
    for run in runs:
        points = [
            (m.context_length, m.value, m.ci_low, m.ci_high)
            for m in run.measurement_list
            if m.metric == "perplexity" and m.context_length is not None
        ]
        if points:
            series[run.method.name] = sorted(points)
    rows = (
        evaluation_charts.Row(run.method.name, m.metric, m.context_length, m.depth, m.value, m.ci_low, m.ci_high,
                              m.step, m.samples)
        for run in runs for m in run.measurement_list
    )
    charts = evaluation_charts.build(rows, [run.method.name for run in runs], _haystacks(runs),
                                     _ruler_threshold(experiment))
    return ExperimentDetail(experiment, runs, series, charts, _protocols(experiment, runs))


def evaluation_chart_data(experiment: Experiment, runs: list[Run]) -> dict[str, Any]:
    """The same chart data for the status poll: one query."""
    rows = (
        Measurement.objects.filter(run__experiment=experiment)
        .order_by("run_id", "metric", "context_length", "id")
        .values_list("run__method__name", "metric", "context_length", "depth", "value", "ci_low", "ci_high", "step",
                     "samples")
    )
    return evaluation_charts.build((evaluation_charts.Row(*row) for row in rows), [r.method.name for r in runs],
                                   _haystacks(runs), _ruler_threshold(experiment))


def _haystacks(runs: list[Run]) -> dict[str, str]:
    """{method label: the source its run's needle haystacks came from}, for runs that recorded one."""
    return {run.method.name: run.haystack_source for run in runs if run.haystack_source}


def _ruler_threshold(experiment: Experiment) -> float:
    """The experiment's RULER effective-length threshold (experiments from before it existed: RULER's 0.85)."""
    value = (experiment.evaluations or {}).get("ruler_threshold")
    return evaluation_charts.DEFAULT_RULER_THRESHOLD if value is None else float(value)


def _protocols(experiment: Experiment, runs: list[Run]) -> dict[str, list[dict[str, Any]]]:
    """The protocol lines of every evaluation in the experiment's suite, from the runs already loaded: no query."""
    suite = (experiment.evaluations or {}).get("suite", ["perplexity"])
    return evaluation_charts.protocol_lines(((run.method.name, run.protocol) for run in runs), suite)


def comparison_series(experiment: Experiment, metric: str = "perplexity") -> dict[str, list[Point]]:
    """{method label: [(length, value, ci_low, ci_high), …]} in run order: one query."""
    rows = (
        Measurement.objects.filter(run__experiment=experiment, metric=metric, context_length__isnull=False)
        .order_by("run_id", "context_length", "id")
        .values_list("run__method__name", "context_length", "value", "ci_low", "ci_high")
    )
    series: dict[str, list[Point]] = {}
    for name, length, value, low, high in rows:
        series.setdefault(name, []).append((length, value, low, high))
    return series


def checkpoint_artifact(run: Run) -> Artifact | None:
    """The run's exported checkpoint, newest first: one query."""
    return Artifact.objects.filter(run=run, kind=CHECKPOINT).order_by("-id").first()


@dataclass
class ScalingChoice:
    """Which model and length a method's scaling chart is drawn for when the visitor has not chosen."""

    base_model: BaseModel | None
    target_length: int | None
    experiment: Experiment | None = None
    """The visitor's latest experiment that used the method, if any: its model and target come first."""


def scaling_defaults(user: Any, method: Method) -> ScalingChoice:
    """The latest visible experiment with this method, else the first visible model with RoPE: 1–2 queries."""
    experiment = (
        visible_experiments(user).filter(runs__method=method).select_related("base_model").order_by("-created")
        .first()
    )
    if experiment is not None:
        return ScalingChoice(experiment.base_model, experiment.target_length, experiment)
    model = visible_base_models(user).filter(has_rope=True).order_by("name", "id").first()
    if model is None:
        return ScalingChoice(None, None)
    return ScalingChoice(model, default_target_length(method, model))


def default_target_length(method: Method, model: BaseModel) -> int:
    """A length the method means on *model*: its factor × the original context, its extrapolation length, or 4×."""
    original = max(model.original_context, 1)
    factor = method.params.get("factor")
    if isinstance(factor, int | float) and factor > 1:
        return max(original, round(original * factor))
    length = method.params.get("extrapolation_length")
    if isinstance(length, int) and length > original:
        return length
    return 4 * original


def run_payload(run: Run, log_lines: int | None = STATUS_LOG_LINES) -> dict[str, Any]:
    """A run's state as JSON-ready data (no queries if ``run.method`` is loaded)."""
    lines = run.log_lines
    return {
        "id": str(run.uuid),
        "method": {"id": run.method_id, "name": run.method.name, "family": run.method.family,
                   "params": run.method.params},
        "status": run.status,
        "status_label": run.get_status_display(),
        "progress": round(run.progress, 4),
        "progress_message": run.progress_message,
        "cancel_requested": run.cancel_requested,
        "log": lines[-log_lines:] if log_lines else lines,
        "error": run.error,
        "attempt": run.attempt,
        "worker": run.worker,
        "queued_at": _iso(run.queued_at),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "heartbeat_at": _iso(run.heartbeat_at),
        "duration_s": run.duration_s,
        "can_cancel": run.is_active,
        "can_retry": run.is_retryable,
        "haystack_source": run.haystack_source,
        "protocol": run.protocol,
        "produced_method": (
            {"id": run.produced_method_id, "url": reverse("method_detail", args=[run.produced_method_id])}
            if run.produced_method_id else None
        ),
    }


def run_status_payload(experiment: Experiment) -> dict[str, Any]:
    """What the experiment page polls every 2 s: run states and every chart. Two queries.

    The perplexity series is sent once, as ``charts["series"]["perplexity"]`` (static/js/evaluation_charts.js draws
    #ppl-chart and LongPPL's dashed lines from it).
    """
    runs = list(experiment.runs.select_related("method").order_by("id"))
    return {
        "experiment": str(experiment.uuid),
        "active": any(run.is_active for run in runs),
        "runs": [run_payload(run) for run in runs],
        "charts": evaluation_chart_data(experiment, runs),
        "protocols": _protocols(experiment, runs),
        "original_context": experiment.base_model.original_context,
    }


def measurement_payload(m: Measurement) -> dict[str, Any]:
    return {
        "metric": m.metric, "value": m.value, "context_length": m.context_length, "depth": m.depth,
        "samples": m.samples, "ci_low": m.ci_low, "ci_high": m.ci_high, "step": m.step,
        "protocol_key": m.protocol_key,
    }


# --- leaderboard ---------------------------------------------------------------------------------------


@dataclass
class LeaderboardRow:
    rank: int
    method: Method
    runs: int
    mean: float
    best: float
    best_experiment: tuple[str, str] | None
    """(experiment uuid, experiment name) of the best run."""
    experiments: list[tuple[str, str]]
    """Up to LEADERBOARD_LINKS experiments it ran in, best first: the row must not grow with history."""
    experiment_count: int = 0

    @property
    def more_experiments(self) -> int:
        return max(0, self.experiment_count - len(self.experiments))


LEADERBOARD_LINKS = 5

LENGTH_FREE_METRICS = catalog.LENGTH_FREE_METRICS
"""Metrics measured once per run, not per context length: the leaderboard ignores its length filter for them."""


ANY_LENGTH: Any = object()
"""``_finished_measurements``' context length meaning every length (of a metric measured per length)."""


def _finished_measurements(teams: Iterable[Team] | QuerySet[Team], base_model: BaseModel, context_length: Any,
                           metric: str, protocol_key: str | None = None) -> QuerySet[Measurement]:
    measurements = Measurement.objects.filter(
        metric=metric,
        depth__isnull=True,
        run__status=Run.Status.SUCCEEDED,
        run__experiment__team__in=teams,
        run__experiment__base_model=base_model,
        run__experiment__archived_at__isnull=True,
    )
    if metric in LENGTH_FREE_METRICS:
        measurements = measurements.filter(context_length__isnull=True)
    elif context_length is ANY_LENGTH:
        measurements = measurements.filter(context_length__isnull=False)
    else:
        measurements = measurements.filter(context_length=context_length)
    if protocol_key is not None:
        measurements = measurements.filter(protocol_key=protocol_key)
    return measurements


@dataclass
class ProtocolChoice:
    key: str
    """The measurements' protocol key; blank for numbers recorded before protocols were."""
    runs: int
    run_protocol: dict[str, Any]
    """One run's whole protocol with this key (they agree on everything the key covers)."""


ProtocolGroups = dict[int | None, list[dict[str, Any]]]
"""Per context length (None for a length-free metric): the protocols measured there, each
``{"protocol_key", "n" (runs), "example" (a run id)}``, most runs first."""


def leaderboard_groups(teams: Iterable[Team] | QuerySet[Team], base_model: BaseModel,
                       metric: str = "perplexity") -> ProtocolGroups:
    """Which lengths and protocols the leaderboard can show, in one query: the page's length filter and its
    protocol choices come from one grouped pass over the matching measurements, not one pass each."""
    groups: ProtocolGroups = defaultdict(list)
    for row in (_finished_measurements(teams, base_model, ANY_LENGTH, metric)
                .values("context_length", "protocol_key")
                .annotate(n=Count("run_id", distinct=True), example=Min("run_id"))
                .order_by("context_length", "-n", "protocol_key")):
        groups[row.pop("context_length")].append(row)
    return dict(groups)


def leaderboard_lengths(teams: Iterable[Team] | QuerySet[Team], base_model: BaseModel,
                        metric: str = "perplexity", groups: ProtocolGroups | None = None) -> list[int]:
    """Context lengths with finished measurements, for the leaderboard's filter: one query, none with *groups*
    (or for a metric without lengths)."""
    if metric in LENGTH_FREE_METRICS:
        return []
    if groups is None:
        groups = leaderboard_groups(teams, base_model, metric)
    return sorted(length for length in groups if length is not None)


def leaderboard_protocols(teams: Iterable[Team] | QuerySet[Team], base_model: BaseModel, context_length: int | None,
                          metric: str, groups: ProtocolGroups | None = None) -> list[ProtocolChoice]:
    """The protocols the matching measurements were taken under, most runs first: two queries, one with
    *groups* (from :func:`leaderboard_groups`)."""
    if groups is None:
        groups = leaderboard_groups(teams, base_model, metric)
    chosen = groups.get(None if metric in LENGTH_FREE_METRICS else context_length, [])
    protocols = dict(Run.objects.filter(pk__in=[g["example"] for g in chosen]).values_list("pk", "protocol"))
    return [ProtocolChoice(g["protocol_key"], g["n"], protocols.get(g["example"]) or {}) for g in chosen]


def leaderboard_rows(teams: Iterable[Team] | QuerySet[Team], base_model: BaseModel, context_length: int | None,
                     metric: str = "perplexity", protocol_key: str | None = None) -> list[LeaderboardRow]:
    """Methods ranked by their best value at *context_length* over the teams' succeeded runs measured under one
    protocol (*protocol_key*; None = any, for callers that already narrowed it): 3 queries."""
    lower = metric in LOWER_IS_BETTER
    best = Min("value") if lower else Max("value")
    measurements = _finished_measurements(teams, base_model, context_length, metric, protocol_key)
    totals = list(
        measurements.values("run__method_id")
        .annotate(n=Count("run_id", distinct=True), mean=Avg("value"), best=best,
                  experiment_count=Count("run__experiment_id", distinct=True))
        .order_by("best" if lower else "-best", "run__method_id")
    )
    # Each method's best LEADERBOARD_LINKS experiments, chosen in the database (a window over the per-experiment
    # bests), so the page reads the same number of rows however many experiments a method ran in.
    per_experiment = (
        measurements.values("run__method_id", "run__experiment__uuid", "run__experiment__name")
        .annotate(best=best)
        .annotate(place=Window(RowNumber(), partition_by=F("run__method_id"),
                               order_by=[F("best").asc() if lower else F("best").desc(),
                                         F("run__experiment__name").asc()]))
        .filter(place__lte=LEADERBOARD_LINKS)
        .order_by("run__method_id", "place")
    )
    experiments: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for row in per_experiment:
        experiments[row["run__method_id"]].append((str(row["run__experiment__uuid"]), row["run__experiment__name"]))
    methods = Method.objects.in_bulk([row["run__method_id"] for row in totals])
    rows = []
    for rank, row in enumerate(totals, 1):
        links = experiments[row["run__method_id"]]
        rows.append(LeaderboardRow(
            rank=rank,
            method=methods[row["run__method_id"]],
            runs=row["n"],
            mean=row["mean"],
            best=row["best"],
            best_experiment=links[0] if links else None,
            experiments=links,
            experiment_count=row["experiment_count"],
        ))
    return rows


# --- CSV -----------------------------------------------------------------------------------------------


PROTOCOL_COLUMNS = (
    "dataset", "perplexity_protocol", "stride", "documents", "document_min_tokens", "bos", "tokenizer_hash", "seed",
    "dtype", "device", "attn_implementation",
)
"""The protocol facts every measurement row repeats (from its run's protocol: the common facts, then its
evaluation's section); the rest of the section is the ``protocol_settings`` JSON column."""
MEASUREMENT_COLUMNS = (
    "experiment", "experiment_id", "run_id", "method", "family", "method_params", "status", "started",
    "duration_s", "metric", "context_length", "depth", "samples", "value", "ci_low", "ci_high",
    "evaluation", "protocol_key", *PROTOCOL_COLUMNS, "protocol_settings",
)


def _protocol_columns(protocol: dict[str, Any], key: str) -> dict[str, Any]:
    evaluation = next((name for name, k in (protocol.get("keys") or {}).items() if k == key), None) if key else None
    if evaluation is None:
        return {"evaluation": None, "protocol_key": key or None, **dict.fromkeys(PROTOCOL_COLUMNS),
                "protocol_settings": None}
    section = dict((protocol.get("evaluations") or {}).get(evaluation) or {})
    facts = {**(protocol.get("common") or {}), **section}
    rest = {k: v for k, v in section.items() if k not in PROTOCOL_COLUMNS}
    return {"evaluation": evaluation, "protocol_key": key, **{c: facts.get(c) for c in PROTOCOL_COLUMNS},
            "protocol_settings": rest}


MEASUREMENT_CHUNK = 2000
"""Rows fetched per round trip while the CSV streams (a server-side cursor on PostgreSQL)."""
_MEASUREMENT_FIELDS = ("run_id", "metric", "context_length", "depth", "samples", "value", "ci_low", "ci_high",
                       "protocol_key")


def measurement_rows(experiment: Experiment) -> Iterator[dict[str, Any]]:
    """One row per measurement (a run without any gets one row with blank metric): two queries.

    Streamed: measurements arrive as tuples in chunks, so a million-row export holds one chunk in memory
    and its first row leaves before the last is read (docs/performance.md).
    """
    runs = list(experiment.runs.select_related("method").order_by("id"))
    stream = (
        Measurement.objects.filter(run__experiment=experiment)
        .order_by("run_id", "metric", "context_length", "id")
        .values_list(*_MEASUREMENT_FIELDS)
        .iterator(chunk_size=MEASUREMENT_CHUNK)
    )
    pending = next(stream, None)
    for run in runs:
        base = {
            "experiment": experiment.name,
            "experiment_id": str(experiment.uuid),
            "run_id": str(run.uuid),
            "method": run.method.name,
            "family": run.method.family,
            "method_params": run.method.params,
            "status": run.status,
            "started": _iso(run.started_at),
            "duration_s": run.duration_s,
        }
        protocol_columns: dict[str, dict[str, Any]] = {}
        wrote = False
        while pending is not None and pending[0] == run.pk:
            _, metric, length, depth, samples, value, low, high, key = pending
            if key not in protocol_columns:
                protocol_columns[key] = _protocol_columns(run.protocol, key)
            yield {**base, "metric": metric, "context_length": length, "depth": depth, "samples": samples,
                   "value": value, "ci_low": low, "ci_high": high, **protocol_columns[key]}
            wrote = True
            pending = next(stream, None)
        if not wrote:
            yield {**base, **dict.fromkeys(("metric", "context_length", "depth", "samples", "value", "ci_low",
                                            "ci_high")), **_protocol_columns(run.protocol, "")}


def _iso(moment: Any) -> str | None:
    return moment.isoformat() if moment else None


def experiments_using_model(user: Any, base_model: BaseModel) -> list[Experiment]:
    """The model page's list: the user's teams' experiments on *base_model*, newest first, with run counts.

    One query whatever the number of experiments (the dashboard's annotated list, narrowed to the model), so
    a shared model that every team uses does not leak another team's experiments nor cost a query per row.
    """
    return list(experiments_for_user(user).filter(base_model=base_model))


# --- the dataset page's token lengths ------------------------------------------------------------------


@dataclass
class LengthStatsRow:
    """One tokenizer's measurement of a dataset, for the dataset page and its progress poll."""

    tokenizer_key: str
    models: list[str]
    status: str
    status_label: str
    progress: float = 0.0
    documents: int | None = None
    tokens: int | None = None
    longest: int | None = None
    haystack_tokens: int | None = None
    error: str = ""

    @property
    def pending(self) -> bool:
        return self.status in (DatasetLengthStats.Status.QUEUED, DatasetLengthStats.Status.RUNNING)

    @property
    def status_text(self) -> str:
        """"Measuring 42%", "Ready", "Failed: <why>" …: one wording for the page and its poll."""
        if self.status == DatasetLengthStats.Status.RUNNING:
            return f"{self.status_label} {self.progress:.0%}"
        return f"{self.status_label}: {self.error}" if self.error else self.status_label

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "pending": self.pending, "status_text": self.status_text}


def dataset_length_stats(dataset: Dataset, user: Any) -> list[LengthStatsRow]:
    """The stored token lengths of *dataset* under the tokenizer of every model the visitor may pair it with,
    models sharing tokenizer files grouped (``"missing"`` where none is stored). Two queries; tokenizer keys
    come from the files (memoised per process), and ``lengths`` is read only to count the haystack source."""
    models = visible_base_models(user)
    if dataset.team_id is not None:
        models = models.filter(Q(team__isnull=True) | Q(team_id=dataset.team_id))
    by_key: dict[str, list[str]] = {}
    for model in models:
        try:
            by_key.setdefault(tokenizer_key(model.source), []).append(model.name)
        except OSError:
            continue  # no tokenizer files: the composer names the problem when the model is picked
    stored = {row.tokenizer_key: row for row in DatasetLengthStats.objects.filter(
        dataset=dataset, data_key=data_key(dataset), tokenizer_key__in=list(by_key))}
    out = []
    for key, names in by_key.items():
        row = stored.get(key)
        if row is None:
            out.append(LengthStatsRow(key, names, "missing", "Not measured"))
            continue
        entry = LengthStatsRow(key, names, row.status, row.get_status_display(), row.progress, error=row.error)
        if row.status == DatasetLengthStats.Status.SUCCEEDED:
            entry.documents, entry.tokens, entry.longest = row.documents, row.tokens, row.longest
            try:
                entry.haystack_tokens = LengthStats.from_json(row.lengths).haystack_tokens(dataset.haystack)
            except DatasetError:
                entry.haystack_tokens = 0
        out.append(entry)
    return out
