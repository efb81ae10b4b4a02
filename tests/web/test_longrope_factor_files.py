"""LongRoPE factor files in and out: the search's files become a Method, a Method's factors download as one."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from experiments.models import BaseModel, Method, Team
from gpu_workers.methods.longrope_files import parse_factors, write_factors
from tests.web.factories import login


def _import(path: Path, base_model: BaseModel, team: Team, **extra: Any) -> str:
    out = io.StringIO()
    args = [str(path), "--base-model", base_model.name, "--target-length", "1024", "--team", team.name]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    call_command("import_longrope_factors", *args, stdout=out)
    return out.getvalue()


def test_a_search_result_file_becomes_a_team_method(tmp_path: Path, base_model: BaseModel, team: Team) -> None:
    pairs = base_model.rope_facts().rotary_dim // 2
    factors = [1.0 + i * 0.25 for i in range(pairs)]
    write_factors(tmp_path / "result_final.csv", factors)
    output = _import(tmp_path / "result_final.csv", base_model, team, name="Searched ×4")
    method = Method.objects.get(family="longrope")
    assert method.team == team and method.name == "Searched ×4"
    assert method.params["long_factor"] == pytest.approx(factors)
    assert f"{pairs} factors" in output


def test_a_file_of_the_wrong_length_is_refused_with_the_count(tmp_path: Path, base_model: BaseModel,
                                                            team: Team) -> None:
    write_factors(tmp_path / "short.csv", [1.0, 2.0, 3.0])
    pairs = base_model.rope_facts().rotary_dim // 2
    with pytest.raises(CommandError, match=str(pairs)):
        _import(tmp_path / "short.csv", base_model, team)
    assert not Method.objects.filter(family="longrope").exists()


def test_factors_download_in_the_same_format(base_model: BaseModel, team: Team, owner: Any, outsider: Any,
                                             client: Any) -> None:
    pairs = base_model.rope_facts().rotary_dim // 2
    factors = [1.0 + i / pairs for i in range(pairs)]
    method = Method.objects.create(team=team, family="longrope", name="LR",
                                   params={"factor": 4.0, "long_factor": factors, "short_factor": [1.0] * pairs})
    url = f"/methods/{method.pk}/long_factor.csv"
    response = login(owner).get(url)
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert parse_factors(response.content.decode(), pairs) == pytest.approx(factors)
    assert b"long factors" in login(owner).get(f"/methods/{method.pk}/").content
    assert login(outsider).get(url).status_code == 404
    assert client.get(url).status_code == 302  # anonymous: to the login page
    other = Method.objects.create(team=team, family="pi", name="PI", params={"factor": 4.0})
    assert login(owner).get(f"/methods/{other.pk}/long_factor.csv").status_code == 404
