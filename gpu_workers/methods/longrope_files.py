"""Read and write the rescale-factor files of microsoft/LongRoPE's evolutionary search.

So a team can bring factors searched elsewhere (or take ours elsewhere), the LongRoPE family reads the
files that repository's search writes. Formats seen in github.com/microsoft/LongRoPE:

* ``evolution/search.py`` ends with ``np.savetxt(out_dir/"result_final.csv", factors, delimiter="\\n")`` and
  ``evolution/algorithms/genetic_base.py`` writes ``result_itNNN.csv`` the same way each iteration: one
  factor per line, numpy's default ``%.18e`` (``1.000000000000000000e+00``), d/2 lines. Its initial-factor
  files (``evolution/dim_mono/init_alpha/*.csv``) have the same shape, and the search reads any of them
  with ``np.loadtxt(path, delimiter=",")``, so a single comma-separated row is accepted too.
* ``cube-new/longrope_scale/*.csv``: one comma-separated row per layer (e.g. 32 rows × 64). transformers
  applies one set to every layer, so such a file is accepted only when all rows agree.
* ``log-<timestamp>.json`` from ``genetic_base.py``: ``{"iteration", "population": [[factors, ppl], …],
  "history": …}``; the best (lowest perplexity) member of the population is taken.

Some search variants prepend extra genes (``dim_mono_n``: the start-token count, d/2 + 1 values); those
files are refused with a message rather than guessed at. A factor λ_i multiplies pair i's wavelength,
inv_freq_i = 1 / (λ_i·base^(2i/d)), the same meaning as transformers' ``long_factor`` / ``short_factor``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class FactorFileError(ValueError):
    """A factor file that cannot be used; the message says why, in words a user can act on."""


def format_factors(factors: Sequence[float]) -> str:
    """The text ``np.savetxt`` gives LongRoPE's ``result_final.csv``: one ``%.18e`` value a line."""
    return "".join(f"{float(x):.18e}\n" for x in _checked(list(factors)))


def write_factors(path: str | Path, factors: Sequence[float]) -> Path:
    path = Path(path)
    path.write_text(format_factors(factors))
    return path


def read_factors(path: str | Path, pairs: int | None = None) -> list[float]:
    """The factors in a LongRoPE factor file (any format above); ``pairs``: the count the model needs."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise FactorFileError(f"Cannot read factor file {path.name}: {exc}") from None
    return parse_factors(text, pairs)


def parse_factors(text: str, pairs: int | None = None) -> list[float]:
    """The factors in the text of a factor file (for uploads that never touch the disk)."""
    stripped = text.strip()
    if not stripped:
        raise FactorFileError("The factor file is empty.")
    values = _checked(_from_json(stripped) if stripped[0] in "{[" else _from_csv(stripped))
    if pairs is not None and len(values) != pairs:
        hint = ""
        if len(values) == pairs + 1:
            hint = " (LongRoPE's dim_mono_n files lead with a start-token count: drop it)"
        raise FactorFileError(f"The file has {len(values)} factors; this model needs {pairs}, one per RoPE pair{hint}.")
    return values


def _from_csv(text: str) -> list[float]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            rows.append([float(cell) for cell in line.split(",") if cell.strip()])
        except ValueError:
            raise FactorFileError(f"Line {number} of the factor file is not comma-separated numbers.") from None
    if all(len(row) == 1 for row in rows):
        return [row[0] for row in rows]
    if len(rows) == 1:
        return rows[0]
    if any(row != rows[0] for row in rows[1:]):
        raise FactorFileError(
            f"The file has {len(rows)} different rows (per-layer factors); transformers applies one set to "
            "every layer, so give a file with one set."
        )
    return rows[0]


def _from_json(text: str) -> list[float]:
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FactorFileError(f"The factor file is not valid JSON: {exc.msg}.") from None
    if isinstance(data, dict):
        population = data.get("population")
        if not isinstance(population, list) or not population:
            raise FactorFileError("A LongRoPE search log needs a non-empty 'population' list.")
        try:
            best = min(population, key=lambda member: math.inf if member[1] is None else float(member[1]))
            return list(best[0])
        except (TypeError, IndexError, ValueError):
            raise FactorFileError("The search log's population is not [[factors, perplexity], …].") from None
    if isinstance(data, list):
        return data
    raise FactorFileError("A JSON factor file must be a list of numbers or a LongRoPE search log.")


def _checked(values: list[Any]) -> list[float]:
    out = []
    for position, value in enumerate(values, start=1):
        try:
            if isinstance(value, bool):
                raise TypeError
            number = float(value)
        except (TypeError, ValueError):
            raise FactorFileError(f"Factor {position} ({value!r}) is not a number.") from None
        if not math.isfinite(number) or number <= 0:
            raise FactorFileError(f"Factor {position} is {number:g}; factors must be positive numbers.")
        out.append(number)
    if not out:
        raise FactorFileError("The factor file holds no factors.")
    return out
