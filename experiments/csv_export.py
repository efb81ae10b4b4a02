"""Streamed CSV downloads: RFC 4180 quoting, and spreadsheet-formula neutralisation of text cells.

Text that a user typed (experiment and method names) could start with ``=``, ``+``, ``-``, ``@``,
a tab or a carriage return, which spreadsheets run as a formula (CSV injection). Such cells get a
leading single quote. Numbers are written as numbers, so ``-1.5`` stays ``-1.5``.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from django.http import StreamingHttpResponse

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class _Echo:
    """A write-only file whose write() hands the line back, so csv.writer can feed a generator."""

    def write(self, value: str) -> str:
        return value


def cell(value: Any) -> Any:
    """What goes into one CSV cell: numbers untouched, None blank, dicts/lists as JSON, text neutralised."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return value
    if isinstance(value, dict | list):
        value = json.dumps(value, sort_keys=True)
    text = str(value)
    if text.startswith(FORMULA_STARTS):
        return "'" + text
    return text


def csv_lines(columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    writer = csv.writer(_Echo(), quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
    yield writer.writerow(columns)
    for row in rows:
        yield writer.writerow([cell(row.get(column)) for column in columns])


def safe_filename(name: str, suffix: str = ".csv") -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:80] or "export"
    return f"{stem}{suffix}"


def csv_response(filename: str, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(csv_lines(columns, rows), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{safe_filename(filename)}"'
    return response


LEADERBOARD_COLUMNS = (
    "rank", "method", "family", "method_params", "runs", "mean", "best", "best_experiment", "best_experiment_id",
    "base_model", "context_length", "metric", "protocol_key", "protocol",
)


def leaderboard_dicts(rows: Iterable[Any], base_model_name: str, context_length: int | None, metric: str,
                      protocol_key: str = "", protocol: str = "") -> Iterator[dict[str, Any]]:
    """``selectors.LeaderboardRow`` objects as CSV rows."""
    for row in rows:
        yield {
            "rank": row.rank,
            "method": row.method.name,
            "family": row.method.family,
            "method_params": row.method.params,
            "runs": row.runs,
            "mean": row.mean,
            "best": row.best,
            "best_experiment": row.best_experiment[1] if row.best_experiment else None,
            "best_experiment_id": row.best_experiment[0] if row.best_experiment else None,
            "base_model": base_model_name,
            "context_length": context_length,
            "metric": metric,
            "protocol_key": protocol_key,
            "protocol": protocol,
        }
