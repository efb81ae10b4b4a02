"""What every method family shares: parameter declarations, errors and the base model's RoPE facts.

The web form is generated from :class:`Param` declarations, so a family declares each parameter
once (name, type, default, bounds, help) and the browser, the API and the worker agree on it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class MethodError(ValueError):
    """A parameter a user typed is wrong; ``field`` names it (None: the method as a whole)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


SCALING_KEYS = frozenset({
    "rope_type", "factor", "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow",
    "mscale", "mscale_all_dim", "truncate", "low_freq_factor", "high_freq_factor", "long_factor", "short_factor",
    "long_mscale", "short_mscale",
})
"""The ``rope_parameters`` keys that describe a scaling; every other key (θ, rotary fraction, …) is kept."""


@dataclass(frozen=True)
class RopeFacts:
    """The facts of a base model's RoPE that every family needs.

    ``shipped_json`` is the checkpoint's own ``rope_parameters`` (canonical JSON, so the facts stay hashable
    for caches); methods merge into it rather than replace it, so a rotary fraction or any key we do not know
    survives, and *none* reproduces the checkpoint exactly, its own scaling included.
    """

    has_rope: bool
    head_dim: int
    rope_theta: float
    original_context: int
    rope_type: str = "default"
    partial_rotary_factor: float = 1.0
    shipped_json: str = ""
    max_position_embeddings: int = 0
    """The checkpoint's ``max_position_embeddings`` (0: unknown, treated as the original context)."""

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def shipped(self) -> dict[str, Any]:
        """The checkpoint's ``rope_parameters`` as shipped (plain RoPE at θ when unknown)."""
        if self.shipped_json:
            return json.loads(self.shipped_json)
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(self.rope_theta)}
        if self.partial_rotary_factor != 1.0:
            rope["partial_rotary_factor"] = self.partial_rotary_factor
        return rope

    @property
    def has_scaling(self) -> bool:
        """True when the checkpoint already ships a RoPE scaling (Llama-3.1, Phi-3, Qwen2.5 with YaRN, …)."""
        return self.has_rope and self.rope_type not in ("default", "", None)

    @property
    def shipped_max_position_embeddings(self) -> int:
        return self.max_position_embeddings or self.original_context

    @classmethod
    def from_facts(cls, facts: dict[str, Any]) -> RopeFacts:
        """From ``ModelFacts.to_json()`` as stored on a BaseModel row (older rows lack the newer keys)."""
        shipped = facts.get("rope_parameters")
        return cls(
            has_rope=bool(facts.get("has_rope")),
            head_dim=int(facts.get("head_dim") or 0),
            rope_theta=float(facts.get("rope_theta") or 0.0),
            original_context=int(facts.get("original_context") or 0),
            rope_type=str(facts.get("rope_type") or "default"),
            partial_rotary_factor=float(facts.get("partial_rotary_factor") or 1.0),
            shipped_json=json.dumps(shipped, sort_keys=True) if isinstance(shipped, dict) else "",
            max_position_embeddings=int(facts.get("max_position_embeddings") or 0),
        )


@dataclass(frozen=True)
class Param:
    name: str
    label: str
    kind: type
    """``float``, ``int``, ``bool`` (a switch: a checkbox in the composer, true / false or 1 / 0 in JSON) or
    ``list`` (a list of floats, typed as comma-separated numbers)."""
    default: float | int | None
    """``None`` means derived from the experiment (e.g. factor = target / original)."""
    help: str
    minimum: float | None = None
    """For a list: the bound every element must meet."""
    exclusive_minimum: bool = False
    maximum: float | None = None
    """Inclusive upper bound (None: unbounded); for a list, every element."""


@dataclass(frozen=True)
class RopeSetup:
    """What applying a method changes: a transformers v5 config, and for attention-level methods a plan.

    ``attention`` is a torch-free description of what :mod:`gpu_workers.position_patches` installs in the
    attention layers (Self-Extend's grouped positions, ReRoPE's clipped ones, log-n query scaling); None
    when plain SDPA over the config's RoPE is all the method needs.
    """

    rope_parameters: dict[str, Any]
    max_position_embeddings: int
    attention: dict[str, Any] | None = None


@dataclass(frozen=True)
class Family:
    name: str
    label: str
    help: str
    params: tuple[Param, ...]
    build: Callable[[RopeFacts, int, dict[str, Any]], RopeSetup]
    check: Callable[[RopeFacts, int, dict[str, Any]], None] | None = None
    length_dependent: bool = False
    """True when the RoPE depends on the input length, so lengths must be evaluated one by one."""
    needs_rope: bool = True
    export_refusal: str = ""
    """Why an export of this method would not reproduce it in plain transformers ("" = it would)."""
    acts_on_attention: bool = False
    """True for methods that change which positions attention sees, not the rotary frequencies: they have
    no per-dimension scaling curve."""


def coerce(param: Param, raw: Any) -> Any:
    """Turn a typed value (form string, JSON number) into the declared type, or raise MethodError."""
    if raw is None or raw == "":
        return None
    if param.kind is list:
        return _coerce_list(param, raw)
    if param.kind is bool:
        return _coerce_switch(param, raw)
    try:
        value = param.kind(raw) if param.kind is float else int(str(raw).strip())
    except (TypeError, ValueError):
        kind = "a number" if param.kind is float else "a whole number"
        raise MethodError(f"{param.label} must be {kind}.", param.name) from None
    if param.kind is float and value != value:  # NaN
        raise MethodError(f"{param.label} must be a number.", param.name)
    if _too_small(param, value):
        raise MethodError(f"{param.label} must be {_relation(param)} {param.minimum:g}.", param.name)
    if param.maximum is not None and value > param.maximum:
        raise MethodError(f"{param.label} must be at most {param.maximum:g}.", param.name)
    return value


_SWITCH_WORDS = {
    "1": True, "true": True, "on": True, "yes": True, "0": False, "false": False, "off": False, "no": False,
}


def _coerce_switch(param: Param, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int | float) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str) and raw.strip().lower() in _SWITCH_WORDS:
        return _SWITCH_WORDS[raw.strip().lower()]
    raise MethodError(f"{param.label} is a switch: true or false (1 or 0).", param.name)


def _too_small(param: Param, value: float) -> bool:
    if param.minimum is None:
        return False
    return value <= param.minimum if param.exclusive_minimum else value < param.minimum


def _relation(param: Param) -> str:
    return "greater than" if param.exclusive_minimum else "at least"


def _coerce_list(param: Param, raw: Any) -> list[float] | None:
    """A JSON list, or a string: ``[1, 2.5]`` (JSON) or ``1, 2.5`` (commas and/or whitespace between numbers)."""
    items: Any = raw
    if isinstance(raw, str):
        text = raw.strip()
        try:
            items = json.loads(text) if text.startswith("[") else [t for t in re.split(r"[,\s]+", text) if t]
        except json.JSONDecodeError:
            raise MethodError(f"{param.label} must be numbers separated by commas.", param.name) from None
    if not isinstance(items, list | tuple):
        raise MethodError(f"{param.label} must be a list of numbers separated by commas.", param.name)
    if not items:
        return None
    values: list[float] = []
    for position, item in enumerate(items, start=1):
        try:
            if isinstance(item, bool):
                raise TypeError
            value = float(item)
        except (TypeError, ValueError):
            raise MethodError(f"{param.label}: item {position} ({item!r}) is not a number.", param.name) from None
        if not math.isfinite(value):
            raise MethodError(f"{param.label}: item {position} is not a finite number.", param.name)
        if _too_small(param, value):
            raise MethodError(
                f"{param.label}: every item must be {_relation(param)} {param.minimum:g} "
                f"(item {position} is {value:g}).",
                param.name,
            )
        values.append(value)
    return values


def to_text(param: Param, value: Any) -> str:
    """The string a form shows for a value, which ``coerce`` reads back to the same value."""
    if value is None:
        return ""
    if param.kind is bool:
        return "1" if value else ""
    if param.kind is list:
        return ", ".join(repr(float(v)) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def default_factor(base: RopeFacts, target_length: int) -> float:
    return target_length / base.original_context


def require_factor_above_one(params: dict[str, Any], label: str = "Factor") -> None:
    if params["factor"] <= 1:
        raise MethodError(f"{label} must be greater than 1 (got {params['factor']:g}).", "factor")


def with_theta(base: RopeFacts, **fields: Any) -> dict[str, Any]:
    """The checkpoint's ``rope_parameters`` without its scaling, then ``fields`` on top.

    Merging (not replacing) keeps the rotary fraction and any architecture key transformers reads from
    ``rope_parameters``; θ is always present, because transformers 5 leaves it None otherwise. A family
    applied to a checkpoint that already carries a scaling therefore *replaces* that scaling, relative to the
    checkpoint's original context.
    """
    params = {key: value for key, value in base.shipped.items() if key not in SCALING_KEYS}
    params["rope_theta"] = float(base.rope_theta)
    if base.partial_rotary_factor != 1.0:
        params["partial_rotary_factor"] = base.partial_rotary_factor
    params.update(fields)
    return params


FACTOR = Param("factor", "Factor", float, None, "Scale s; blank = target length / original context.", 1.0, True)
"""The scale s every interpolating family takes; blank derives it from the experiment."""
