"""The analytic RoPE charts: per-dimension scaling curves and scaling-law limits, as JSON-ready data.

A reader like ``selectors``, but for numbers that come from theory rather than from the database: every
value here is computed by ``gpu_workers.rope_theory`` and ``gpu_workers.methods.frequencies`` (which
builds each method's frequencies with transformers' own RoPE code), so what a page draws is the RoPE a run
uses. Nothing here queries the database; callers pass in rows they already loaded. Results are cached per
(family, parameters, model facts, length) because a page may draw the same curve again on every visit and the
numbers never change.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from experiments.models import BaseModel, Method, Run
from gpu_workers import methods, rope_theory
from gpu_workers.methods import FAMILIES, MethodError, RopeFacts, frequencies

SIGNIFICANT = 6
"""Digits kept in the JSON: float32 frequencies carry no more, and the page stays small."""


def _round(value: float) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, SIGNIFICANT - 1 - math.floor(math.log10(abs(value))))


@dataclass(frozen=True)
class RopeAxes:
    """The base model's side of every scaling chart: its wavelengths and critical dimension."""

    rotary_dim: int
    rope_theta: float
    original_context: int
    target_length: int
    pairs: list[int]
    wavelengths: list[float]
    """2π·base^(2i/d) per pair, in tokens."""
    critical_dimension: int
    """Liu et al.'s d_extra, in dimensions: pairs below d_extra/2 turned through a full period in training."""
    extrapolation_bound: float | None
    """The scaling law's T_extra for the model's own base; None when it sets no bound."""

    critical_pair: int
    """d_extra/2: the first pair that did not turn through a full period within the original context."""


@dataclass(frozen=True)
class ScalingCurve:
    """One method's original inv_freq / new inv_freq per RoPE pair, or why it could not be drawn."""

    name: str
    family: str
    scaling: list[float] = field(default_factory=list)
    wavelengths: list[float] = field(default_factory=list)
    """The method's wavelengths (original × scaling), in tokens."""
    length_dependent: bool = False
    drawn_at: int | None = None
    """The input length a length-dependent family is drawn for (the target length); None otherwise."""
    error: str = ""
    attention_note: str = ""
    """For methods that remap positions in attention (Self-Extend, ReRoPE, log-n): what the curve cannot show."""


def attention_note(family: str, params: dict[str, Any]) -> str:
    """What an attention-level method (or the log-n modifier) does that a per-dimension curve cannot draw."""
    notes = []
    if family == "self_extend":
        notes.append(f"keeps exact positions within {params.get('window')} tokens and divides farther ones by "
                     f"{params.get('group')}")
    elif family == "rerope":
        notes.append(f"sees every key farther than {params.get('window')} tokens at that distance")
    elif family == "leaky_rerope":
        notes.append(f"lets distances past {params.get('window')} tokens grow {_round(float(params.get('leak', 1)))}"
                     " times slower")
    if params.get("log_n"):
        notes.append("scales queries past the original context by ln(m + 1) / ln(original)")
    if not notes:
        return ""
    return "leaves the rotary frequencies as drawn and " + "; ".join(notes) + " inside attention"


@dataclass(frozen=True)
class ScalingLimit:
    """Where the scaling law expects a run with a fixed new base to stop extrapolating."""

    name: str
    family: str
    rope_theta: float
    length: float | None
    """T_extra in tokens; None when every dimension turned through a full period (no bound)."""


def rope_facts(base_model: BaseModel) -> RopeFacts | None:
    """The model's RoPE facts, or None when there is no RoPE to draw."""
    facts = base_model.rope_facts()
    if not facts.has_rope or facts.rotary_dim < 2 or facts.rope_theta <= 1 or facts.original_context <= 0:
        return None
    return facts


def axes(base: RopeFacts, target_length: int) -> RopeAxes:
    bound = rope_theory.extrapolation_bound(base.rotary_dim, base.rope_theta, base.original_context)
    critical = rope_theory.critical_dimension(base.rotary_dim, base.rope_theta, base.original_context)
    return RopeAxes(
        rotary_dim=base.rotary_dim,
        rope_theta=base.rope_theta,
        original_context=base.original_context,
        target_length=target_length,
        pairs=list(range(base.rotary_dim // 2)),
        wavelengths=[_round(w) for w in rope_theory.wavelengths(base.rotary_dim, base.rope_theta)],
        critical_dimension=critical,
        extrapolation_bound=None if math.isinf(bound) else _round(bound),
        critical_pair=critical // 2,
    )


@lru_cache(maxsize=512)
def _scaling(family: str, params_json: str, base: RopeFacts, target_length: int) -> tuple[float, ...]:
    """Per pair, what a run applies at the target length.

    ``seq_len`` is the target on purpose: a length-dependent family (dynamic NTK, LongRoPE) is drawn from the
    frequencies transformers computes for an input of that length, e.g. dynamic NTK's base grown for NTK scale
    factor·L/L0 − (factor − 1), not the factor the user typed.
    """
    params = json.loads(params_json)
    return tuple(frequencies.effective_scaling(family, params, base, target_length, seq_len=target_length))


def scaling_curve(name: str, family: str, params: dict[str, Any], base: RopeFacts, target_length: int
                  ) -> ScalingCurve:
    """The curve for one method configuration; a parameter that does not fit this model becomes ``error``."""
    spec = FAMILIES.get(family)
    if spec is None:
        return ScalingCurve(name, family, error=f"Unknown method family {family!r}.")
    try:
        scaling = _scaling(family, json.dumps(params, sort_keys=True), base, target_length)
    except MethodError as exc:
        return ScalingCurve(name, family, error=f"Does not apply to this model: {exc.message}")
    except (ValueError, ZeroDivisionError, OverflowError) as exc:
        return ScalingCurve(name, family, error=f"Could not compute its frequencies: {exc}")
    original = rope_theory.wavelengths(base.rotary_dim, base.rope_theta)
    return ScalingCurve(
        name=name,
        family=family,
        scaling=[_round(s) for s in scaling],
        wavelengths=[_round(w * s) for w, s in zip(original, scaling, strict=True)],
        length_dependent=spec.length_dependent,
        drawn_at=target_length if spec.length_dependent else None,
        attention_note=attention_note(family, params),
    )


def scaling_limit(name: str, family: str, params: dict[str, Any], base: RopeFacts, target_length: int
                  ) -> ScalingLimit | None:
    """T_extra for a method that runs plain RoPE with a new, fixed base (fixed NTK, base change); else None.

    Only those have one effective base for every input length, which is what Liu et al.'s law is about;
    interpolation methods and length-dependent ones change the frequencies in other ways.
    """
    try:
        rope = methods.rope_setup(family, params, base, target_length).rope_parameters
    except MethodError:
        return None
    theta = float(rope.get("rope_theta") or 0.0)
    if rope.get("rope_type") != "default" or theta <= 1 or math.isclose(theta, base.rope_theta):
        return None
    bound = rope_theory.extrapolation_bound(base.rotary_dim, base.rope_theta, base.original_context, theta)
    return ScalingLimit(name, family, _round(theta), None if math.isinf(bound) else _round(bound))


# --- what the pages draw ----------------------------------------------------------------------------------


def method_chart(method: Method, base_model: BaseModel, target_length: int) -> dict[str, Any]:
    """The method page's chart: the curve, the model's wavelengths and critical dimension."""
    base = rope_facts(base_model)
    if base is None:
        return {"error": f"{base_model.name} has no rotary position embedding; there is no per-dimension scaling."}
    curve = scaling_curve(method.name, method.family, method.params, base, target_length)
    limit = scaling_limit(method.name, method.family, method.params, base, target_length)
    return {
        "model": base_model.name,
        "axes": asdict(axes(base, target_length)),
        "curve": asdict(curve),
        "limit": asdict(limit) if limit else None,
    }


def compare_chart(runs: Iterable[Run], base_model: BaseModel, target_length: int) -> dict[str, Any]:
    """The experiment page's side-by-side curves, one per method (runs with ``method`` loaded)."""
    base = rope_facts(base_model)
    if base is None:
        return {"error": f"{base_model.name} has no rotary position embedding; there is no per-dimension scaling."}
    curves: list[ScalingCurve] = []
    seen: set[int] = set()
    for run in runs:
        if run.method_id in seen:
            continue
        seen.add(run.method_id)
        curves.append(scaling_curve(run.method.name, run.method.family, run.method.params, base, target_length))
    return {
        "model": base_model.name,
        "axes": asdict(axes(base, target_length)),
        "curves": [asdict(curve) for curve in curves],
    }


def scaling_limits(runs: Iterable[Run], base_model: BaseModel, target_length: int) -> list[ScalingLimit]:
    """T_extra per run with a fixed new base, in run order (runs with ``method`` loaded)."""
    base = rope_facts(base_model)
    if base is None:
        return []
    limits = []
    for run in runs:
        limit = scaling_limit(run.method.name, run.method.family, run.method.params, base, target_length)
        if limit is not None:
            limits.append(limit)
    return limits


@lru_cache(maxsize=256)
def _shipped_wavelengths(base: RopeFacts) -> tuple[float, ...]:
    """2π / inv_freq of the checkpoint as shipped (its own scaling included), per rotary pair.

    Cached per facts because transformers builds the frequencies and a model page is visited again and again.
    """
    return tuple(2 * math.pi / f for f in frequencies.original_frequencies(base))


def model_chart(base_model: BaseModel) -> dict[str, Any]:
    """The model page's chart: wavelength per rotary pair, the original context and the critical dimension.

    Drawn at the original context (no target: the page is about the checkpoint, not an experiment). For a
    checkpoint that ships its own scaling the shipped wavelengths come too, so the reader sees what *none* runs.
    """
    base = rope_facts(base_model)
    if base is None:
        return {"error": f"{base_model.name} has no rotary position embedding; there are no wavelengths to draw."}
    shipped: dict[str, Any] | None = None
    if base.has_scaling:
        try:
            shipped = {"rope_type": base.rope_type, "wavelengths": [_round(w) for w in _shipped_wavelengths(base)]}
        except (MethodError, ValueError, KeyError, TypeError, ZeroDivisionError) as exc:
            shipped = {"rope_type": base.rope_type, "wavelengths": [],
                       "error": f"Could not compute the shipped {base.rope_type} frequencies: {exc}"}
    return {
        "model": base_model.name,
        "axes": asdict(axes(base, base.original_context)),
        "shipped": shipped,
    }
