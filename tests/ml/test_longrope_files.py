"""LongRoPE factor files: what microsoft/LongRoPE's search writes reads back, and ours reads in theirs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_workers import methods
from gpu_workers.methods.base import RopeFacts
from gpu_workers.methods.longrope_files import FactorFileError, parse_factors, read_factors, write_factors

DEMO = RopeFacts(has_rope=True, head_dim=32, rope_theta=10000.0, original_context=256)
FACTORS = [1.0] * 6 + [1.01, 1.08, 1.23, 1.5, 2.0, 2.75, 3.5, 4.0, 4.0, 4.0]


def _savetxt(values: list[float]) -> str:
    """What LongRoPE's search does with its result: np.savetxt(path, factors, delimiter="\\n")."""
    buffer = io.StringIO()
    np.savetxt(buffer, np.array(values), delimiter="\n")
    return buffer.getvalue()


factor_lists = st.lists(
    st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False), min_size=1, max_size=128
)


@settings(max_examples=40, deadline=None, database=None)
@given(values=factor_lists)
def test_written_factors_read_back_exactly(tmp_path_factory: pytest.TempPathFactory, values: list[float]) -> None:
    path = write_factors(tmp_path_factory.mktemp("f") / "result_final.csv", values)
    assert read_factors(path) == values
    assert path.read_text() == _savetxt(values)  # byte for byte what numpy (and so LongRoPE) writes
    assert np.loadtxt(path, delimiter=",", ndmin=1).tolist() == values  # and how LongRoPE reads init files


def test_reads_the_search_result_format(tmp_path: Path) -> None:
    path = tmp_path / "result_final.csv"
    path.write_text(_savetxt(FACTORS))
    assert read_factors(path, pairs=16) == FACTORS
    params = methods.validate("longrope", {"long_factor": read_factors(path, 16)}, DEMO, 1024)
    assert params["long_factor"] == FACTORS


def test_reads_a_single_row_and_identical_per_layer_rows() -> None:
    row = ",".join(str(v) for v in FACTORS)
    assert parse_factors(row, 16) == FACTORS
    assert parse_factors("\n".join([row] * 32) + "\n", 16) == FACTORS
    assert parse_factors("# searched factors\n" + _savetxt(FACTORS)) == FACTORS
    assert parse_factors(json.dumps(FACTORS)) == FACTORS


def test_refuses_per_layer_rows_that_differ() -> None:
    row = ",".join(str(v) for v in FACTORS)
    other = ",".join(str(v * 2) for v in FACTORS)
    with pytest.raises(FactorFileError, match="one set"):
        parse_factors(f"{row}\n{other}\n")


def test_reads_the_best_member_of_a_search_log() -> None:
    worse = [1.0] * 16
    log = {"iteration": 7, "population": [[worse, 9.5], [FACTORS, 8.25], [worse, None]], "history": []}
    assert parse_factors(json.dumps(log), 16) == FACTORS
    with pytest.raises(FactorFileError, match="population"):
        parse_factors(json.dumps({"iteration": 1}))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty"),
        ("1.0\nabc\n", "Line 2"),
        ("1.0\n-2.0\n", "positive"),
        ("1.0\nnan\n", "positive"),
        ("[1, true]", "not a number"),
        ("{bad json", "not valid JSON"),
        ('"text"', "Line 1"),
        ('{"population": [[1, 2]]}', "not \\[\\[factors"),
    ],
)
def test_bad_files_say_why(text: str, words: str) -> None:
    with pytest.raises(FactorFileError, match=words):
        parse_factors(text)


def test_wrong_count_names_the_dim_mono_n_start_token() -> None:
    with pytest.raises(FactorFileError, match="needs 16") as err:
        parse_factors(_savetxt([3.0, *FACTORS]), 16)
    assert "start-token" in str(err.value)
    with pytest.raises(FactorFileError, match="needs 16"):
        parse_factors(_savetxt(FACTORS[:10]), 16)


def test_missing_file_is_a_factor_file_error(tmp_path: Path) -> None:
    with pytest.raises(FactorFileError, match="Cannot read"):
        read_factors(tmp_path / "nope.csv")
