"""Human names for method configurations ("YaRN ×4 (β fast 16)"), shown in charts and tables.

A name names what differs from the family's defaults, so the usual configuration reads short.
"""

from __future__ import annotations

from typing import Any

from gpu_workers.methods import FAMILIES, MethodError, RopeFacts, validate


def _number(value: Any) -> str:
    if isinstance(value, list | tuple):
        return f"[{len(value)} values]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def method_label(family: str, params: dict[str, Any], base: RopeFacts | None = None, target_length: int = 0) -> str:
    spec = FAMILIES.get(family)
    if spec is None:
        return family
    label = spec.label
    if "factor" in params:
        label = f"{label} ×{_number(params['factor'])}"
    defaults: dict[str, Any] = {}
    if base is not None:
        seed = {"factor": params["factor"]} if "factor" in params else {}
        try:
            defaults = validate(family, seed, base, target_length or base.original_context)
        except MethodError:
            defaults = {}
    extras = []
    for param in spec.params:
        if param.name in ("factor", "log_n") or param.name not in params:
            continue
        default = defaults.get(param.name, param.default)
        if default is None or params[param.name] != default:
            extras.append(f"{param.label} {_number(params[param.name])}")
    if extras:
        label = f"{label} ({', '.join(extras)})"
    if params.get("log_n"):
        label = f"{label} + log-n"
    return label
