"""How long an experiment will take, from what earlier runs on the same base model measured. Nothing invented.

The yardstick is the prefill time per length that the *Memory and time* evaluation records
(``forward_seconds``, one forward pass per length). Every evaluation step also records its wall time
(``<evaluation>_seconds``, see ``gpu_workers.pipeline``); dividing it by the prefill work the step's
experiment asked for gives a cost *per unit of prefill work*:

    work(evaluation) = Σ over evaluation lengths L of prefill(L) × units(evaluation)

where units are the evaluation's repetitions (documents for perplexity-like ones, passkey prompts, needles ×
depths, 1 otherwise). That cost, per method family where the family was measured (else over all families),
times the new experiment's work, plus the run's fixed overhead (loading, protocol: run time not spent in any
step) and a search family's measured search time, is one run's estimate; the experiment's is the sum over its
runs (worker time: several workers run them side by side). ``prefill(L)`` is interpolated between measured
lengths on log–log axes and extrapolated with the nearest slope, kept between 1 and 2 (a prefill is at least
linear and at most quadratic in length).

No prefill measurement on the model: no estimate. An evaluation or a search never measured on it: left out,
and the text says so. Training is always left out (its cost depends on the whole recipe).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import median
from typing import Any

from experiments.models import BaseModel, Measurement, Run
from gpu_workers.catalog import STEPS
from gpu_workers.spec import EVALUATIONS, SEARCH_MODES

RECENT_RUNS = 200
"""Only the latest succeeded runs on the model are read: the estimate costs two bounded queries."""
DOCUMENT_EVALUATIONS = ("perplexity", "longppl", "retention", "needle_perplexity")
PREFILL = "forward_seconds"
STEP_METRICS = tuple(f"{step}_seconds" for step in (*EVALUATIONS, *STEPS))
"""Every step's wall time: all of them, so the time of steps the new suite leaves out is not taken for overhead."""


@dataclass(frozen=True)
class EstimateInput:
    """What the composer has chosen, as far as cost goes."""

    lengths: tuple[int, ...]
    suite: tuple[str, ...]
    families: tuple[str, ...]
    """One per method row (a row is a run): duplicates count twice."""
    documents: int = 8
    passkey_samples: int = 20
    needle_cells: int = 10
    """Needles per cell × depths."""
    training: bool = False


@dataclass
class Estimate:
    seconds: float | None
    runs: int = 0
    """How many earlier runs it was derived from."""
    model_name: str = ""
    per_run: list[float] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    reason: str = ""
    """Why there is no estimate (when ``seconds`` is None)."""

    @property
    def text(self) -> str:
        if self.seconds is None:
            return f"No estimate yet: {self.reason}."
        each = ""
        if len(self.per_run) > 1:
            low, high = min(self.per_run), max(self.per_run)
            each = (f", ≈ {duration(low)} each" if duration(low) == duration(high)
                    else f", {duration(low)} to {duration(high)} each")
        runs = f"{len(self.per_run)} run{'s' if len(self.per_run) != 1 else ''}"
        text = (f"≈ {duration(self.seconds)} of worker time for {runs}{each}, from {self.runs} earlier "
                f"run{'s' if self.runs != 1 else ''} on {self.model_name}")
        if self.left_out:
            text += f"; leaves out {', '.join(self.left_out)}"
        return text + "."

    def to_json(self) -> dict[str, Any]:
        return {"seconds": None if self.seconds is None else round(self.seconds, 1), "text": self.text,
                "runs": self.runs, "per_run": [round(s, 1) for s in self.per_run], "left_out": self.left_out}


def duration(seconds: float) -> str:
    if seconds < 1:
        return "under 1 s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest:02d} s" if minutes < 10 else f"{round(seconds / 60)} min"
    hours, rest = divmod(round(seconds / 60), 60)
    return f"{hours} h {rest:02d} min"


# --- prefill time per length ----------------------------------------------------------------------------


def prefill_curve(points: Mapping[int, float]) -> Callable[[int], float]:
    """``prefill(L)`` through the measured (length, seconds) points (see the module docstring)."""
    pts = sorted((length, seconds) for length, seconds in points.items() if length > 0 and seconds > 0)
    if not pts:
        raise ValueError("no prefill measurements")

    def slope(a: tuple[int, float], b: tuple[int, float]) -> float:
        return math.log(b[1] / a[1]) / math.log(b[0] / a[0])

    def prefill(length: int) -> float:
        if len(pts) == 1:
            anchor, power = pts[0], 1.0
        elif length <= pts[0][0]:
            anchor, power = pts[0], min(max(slope(pts[0], pts[1]), 1.0), 2.0)
        elif length >= pts[-1][0]:
            anchor, power = pts[-1], min(max(slope(pts[-2], pts[-1]), 1.0), 2.0)
        else:
            i = next(i for i in range(1, len(pts)) if pts[i][0] >= length)
            anchor, power = pts[i - 1], slope(pts[i - 1], pts[i])
        return anchor[1] * (length / anchor[0]) ** power

    return prefill


def units(evaluation: str, documents: int, passkey_samples: int, needle_cells: int) -> int:
    if evaluation in DOCUMENT_EVALUATIONS:
        return max(documents, 1)
    if evaluation == "passkey":
        return max(passkey_samples, 1)
    if evaluation == "needle":
        return max(needle_cells, 1)
    return 1


def _settings_units(evaluation: str, documents: int, settings: Mapping[str, Any]) -> int:
    depths = settings.get("needle_depths") or (0, 0.25, 0.5, 0.75, 1)
    return units(evaluation, documents, int(settings.get("passkey_samples") or 20),
                 int(settings.get("needle_samples") or 2) * len(depths))


# --- the estimate ---------------------------------------------------------------------------------------


def estimate(model: BaseModel, chosen: EstimateInput) -> Estimate:
    """The estimate for *chosen* on *model*: two queries."""
    runs = list(
        Run.objects.filter(experiment__base_model=model, status=Run.Status.SUCCEEDED, started_at__isnull=False,
                           finished_at__isnull=False)
        .order_by("-finished_at")
        .values("pk", "method__family", "started_at", "finished_at", "experiment__eval_lengths",
                "experiment__eval_documents", "experiment__evaluations")[:RECENT_RUNS]
    )
    if not runs:
        return Estimate(None, model_name=model.name, reason=f"no run on {model.name} has finished yet")
    rows = Measurement.objects.filter(run_id__in=[r["pk"] for r in runs],
                                      metric__in=[PREFILL, *STEP_METRICS]).values_list(
        "run_id", "metric", "context_length", "value")
    prefill_points: dict[int, list[float]] = defaultdict(list)
    steps: dict[int, dict[str, float]] = defaultdict(dict)
    for run_id, metric, length, value in rows:
        if metric == PREFILL and length:
            prefill_points[length].append(value)
        elif metric != PREFILL:
            steps[run_id][metric.removesuffix("_seconds")] = value
    if not prefill_points:
        return Estimate(None, model_name=model.name,
                        reason=f"no run on {model.name} has measured its prefill time per length (tick "
                               f"“Memory and time” once)")
    prefill = prefill_curve({length: median(values) for length, values in prefill_points.items()})
    costs, overheads, searches, used = _calibrate(runs, steps, prefill)
    return _predict(model, chosen, prefill, costs, overheads, searches, used)


Costs = dict[tuple[str, str], list[float]]


def _calibrate(runs: Sequence[dict[str, Any]], steps: dict[int, dict[str, float]], prefill: Callable[[int], float]
               ) -> tuple[Costs, dict[str, list[float]], dict[str, list[float]], int]:
    """Seconds per unit of prefill work per (family, evaluation) and per ("*", evaluation); overheads; searches."""
    costs: Costs = defaultdict(list)
    overheads: dict[str, list[float]] = defaultdict(list)
    searches: dict[str, list[float]] = defaultdict(list)
    used = 0
    for run in runs:
        measured = steps.get(run["pk"])
        if not measured:
            continue
        used += 1
        family = run["method__family"]
        lengths = [int(n) for n in run["experiment__eval_lengths"] or [] if int(n) > 0]
        settings = run["experiment__evaluations"] or {}
        for evaluation, seconds in measured.items():
            if evaluation in ("search", "train"):
                if evaluation == "search":
                    searches[family].append(seconds)
                continue
            work = sum(prefill(n) for n in lengths) * _settings_units(evaluation, run["experiment__eval_documents"],
                                                                      settings)
            if work > 0:
                costs[(family, evaluation)].append(seconds / work)
                costs[("*", evaluation)].append(seconds / work)
        total = (run["finished_at"] - run["started_at"]).total_seconds()
        overhead = max(total - sum(measured.values()), 0.0)
        overheads[family].append(overhead)
        overheads["*"].append(overhead)
    return costs, overheads, searches, used


def _predict(model: BaseModel, chosen: EstimateInput, prefill: Callable[[int], float], costs: Costs,
             overheads: dict[str, list[float]], searches: dict[str, list[float]], used: int) -> Estimate:
    if used == 0:
        return Estimate(None, model_name=model.name,
                        reason=f"no run on {model.name} has recorded its evaluations' times yet")
    left_out: list[str] = []
    base_work = sum(prefill(n) for n in chosen.lengths)
    per_run = []
    for family in chosen.families:
        seconds = median(overheads.get(family) or overheads["*"])
        for evaluation in chosen.suite:
            measured = costs.get((family, evaluation)) or costs.get(("*", evaluation))
            if not measured:
                _note(left_out, f"{evaluation} (never timed on this model)")
                continue
            seconds += median(measured) * base_work * units(evaluation, chosen.documents, chosen.passkey_samples,
                                                            chosen.needle_cells)
        if family in SEARCH_MODES:
            if searches.get(family):
                seconds += median(searches[family])
            else:
                _note(left_out, f"the {family} search (never timed on this model)")
        per_run.append(seconds)
    if chosen.training:
        _note(left_out, "training")
    return Estimate(sum(per_run), runs=used, model_name=model.name, per_run=per_run, left_out=left_out)


def _note(notes: list[str], note: str) -> None:
    if note not in notes:
        notes.append(note)
