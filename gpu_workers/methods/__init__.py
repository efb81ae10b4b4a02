"""The method families, one module each, and the two calls everyone else uses.

``validate`` turns what a user typed into canonical parameters (or a :class:`MethodError` naming
the field); ``rope_setup`` turns canonical parameters into transformers v5 ``rope_parameters``.
"""

from __future__ import annotations

from typing import Any

from gpu_workers.methods import base_change, llama3, longrope, longrope_search, none, ntk, pi, yarn
from gpu_workers.methods.base import Family, MethodError, Param, RopeFacts, RopeSetup, coerce, default_factor

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        none.FAMILY, pi.FAMILY, ntk.FIXED, ntk.DYNAMIC, yarn.FAMILY, llama3.FAMILY, longrope.FAMILY, base_change.FAMILY,
        longrope_search.FAMILY, longrope_search.FAMILY2,
    )
}

__all__ = ["FAMILIES", "Family", "MethodError", "Param", "RopeFacts", "RopeSetup", "get", "rope_setup", "validate"]


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
    for param in family.params:
        if param.name not in clean and param.name in setup.rope_parameters:
            clean[param.name] = setup.rope_parameters[param.name]
    return clean


def rope_setup(name: str, params: dict[str, Any], base: RopeFacts, target_length: int) -> RopeSetup:
    return get(name).build(base, target_length, validate(name, params, base, target_length))
