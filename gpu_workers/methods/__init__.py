"""The method families, one module each, and the two calls everyone else uses.

``validate`` turns what a user typed into canonical parameters (or a :class:`MethodError` naming
the field); ``rope_setup`` turns canonical parameters into transformers v5 ``rope_parameters``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gpu_workers.methods import (
    base_change,
    dynamic_yarn,
    llama3,
    longrope,
    longrope_search,
    none,
    ntk,
    pi,
    rerope,
    self_extend,
    yarn,
)
from gpu_workers.methods.attention_temperature import MODIFIERS, with_modifiers
from gpu_workers.methods.base import Family, MethodError, Param, RopeFacts, RopeSetup, coerce, default_factor

_SEARCHES = (longrope_search.LONGROPE, longrope_search.LONGROPE2)
FAMILIES: dict[str, Family] = {
    family.name: family if family in _SEARCHES else replace(family, params=family.params + MODIFIERS)
    for family in (
        none.FAMILY, pi.FAMILY, ntk.FIXED, ntk.DYNAMIC, yarn.FAMILY, dynamic_yarn.FAMILY, llama3.FAMILY,
        longrope.FAMILY, base_change.FAMILY, self_extend.FAMILY, rerope.RE_ROPE, rerope.LEAKY, *_SEARCHES,
    )
}
"""Every family; all but the searches also take the modifiers (log-n attention)."""
_MODIFIER_DEFAULTS = {p.name: p.default for p in MODIFIERS}

__all__ = [
    "FAMILIES", "Family", "MethodError", "Param", "RopeFacts", "RopeSetup", "export_refusal", "get", "rope_setup",
    "validate",
]


def get(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise MethodError(f"Unknown method family {name!r}; choose one of {', '.join(FAMILIES)}.", "family") from None


def validate(name: str, params: dict[str, Any], base: RopeFacts, target_length: int) -> dict[str, Any]:
    """Canonical parameters: typed, bounded, derived defaults filled in. Raises MethodError."""
    family = get(name)
    if family.needs_rope and not base.has_rope:
        raise MethodError(f"{family.label} rescales RoPE, but this model has no rotary position embedding.", "family")
    unknown = set(params) - {p.name for p in family.params}
    if unknown:
        raise MethodError(f"{family.label} takes no parameter {sorted(unknown)[0]!r}.", sorted(unknown)[0])
    clean: dict[str, Any] = {}
    for param in family.params:
        value = coerce(param, params.get(param.name))
        if value is None:
            value = param.default
        if value is None and param.name == "factor":
            value = default_factor(base, target_length)
        if value is not None:
            clean[param.name] = value
    if family.check is not None:
        family.check(base, target_length, clean)
    # Fill derived defaults so two spellings of one configuration compare equal.
    setup = family.build(base, target_length, clean)
    derived = {**(setup.attention or {}), **setup.rope_parameters}
    for param in family.params:
        if param.name not in clean and param.name in derived:
            clean[param.name] = derived[param.name]
    # A modifier left off is not written, so a method saved before modifiers existed keeps its hash.
    for name_, default in _MODIFIER_DEFAULTS.items():
        if clean.get(name_) == default:
            del clean[name_]
    return clean


def export_refusal(name: str, params: dict[str, Any]) -> str:
    """Why an export of this method would not reproduce it in plain transformers ("" = it would). Torch-free."""
    refusal = get(name).export_refusal
    if not refusal and params.get("log_n"):
        refusal = "log-n attention scales the queries inside the attention layers, which a transformers config " \
                  "cannot describe"
    return refusal


def rope_setup(name: str, params: dict[str, Any], base: RopeFacts, target_length: int) -> RopeSetup:
    """What the method changes (config and attention plan), from parameters validated here."""
    clean = validate(name, params, base, target_length)
    return with_modifiers(get(name).build(base, target_length, clean), clean, base)
