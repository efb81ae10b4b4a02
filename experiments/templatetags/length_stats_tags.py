"""``{% dataset_length_stats dataset %}``: the dataset page's token-length statistics, drawn from the selector.

A tag rather than view context so the dataset page's view stays as it is: the section reads what it needs.
"""

from __future__ import annotations

from typing import Any

from django import template

from experiments import selectors
from experiments.access import submit_teams_of

register = template.Library()


@register.inclusion_tag("experiments/_length_stats.html", takes_context=True)
def dataset_length_stats(context: template.Context, dataset: Any) -> dict[str, Any]:
    user = context["request"].user
    rows = selectors.dataset_length_stats(dataset, user)
    return {"dataset": dataset, "rows": rows, "pending": any(row.pending for row in rows),
            "can_measure": submit_teams_of(user).exists(), "csrf_token": context.get("csrf_token")}


@register.filter
def count(value: int | None) -> str:
    """1,872,345 for a number, an em dash for none (what the progress poll writes too)."""
    return "—" if value is None else f"{value:,}"
