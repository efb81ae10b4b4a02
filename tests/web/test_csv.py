"""CSV exports: RFC 4180 quoting, formula neutralisation of text, numbers left as numbers."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from django.urls import reverse

from experiments.csv_export import cell, csv_lines
from experiments.models import Experiment, Measurement, Method
from tests.web.factories import login, make_experiment


def download(client: Any, url: str) -> tuple[str, list[dict[str, str]]]:
    response = client.get(url)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith("attachment; filename=")
    text = b"".join(response.streaming_content).decode()
    return text, list(csv.DictReader(io.StringIO(text, newline="")))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=HYPERLINK(\"x\")", "'=HYPERLINK(\"x\")"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("plain", "plain"),
        (-1.5, -1.5),
        (-3, -3),
        (0.0, 0.0),
        (None, ""),
        ({"factor": 4.0}, '{"factor": 4.0}'),
    ],
)
def test_cell(value: Any, expected: Any) -> None:
    assert cell(value) == expected


def test_rfc4180_quoting() -> None:
    lines = list(csv_lines(["a", "b", "c"], [{"a": 'say "hi", then\nleave', "b": -1.5, "c": "x,y"}]))
    assert lines == ["a,b,c\r\n", '"say ""hi"", then\nleave",-1.5,"x,y"\r\n']


def test_experiment_csv_round_trips_awkward_names(owner: Any, team: Any, base_model: Any, dataset: Any) -> None:
    name = '=cmd|"/c calc"!A1, with "quotes",\nand a newline'
    experiment = make_experiment(team, owner, base_model, dataset, runs=1, name=name,
                                 values=lambda i, length: -1.5 if length == 256 else 2.25)
    Method.objects.filter(pk=experiment.runs.get().method_id).update(name="-PI, the \"linear\" one")
    text, rows = download(login(owner), reverse("experiment_csv", args=[experiment.uuid]))
    assert text.splitlines()[0] == ("experiment,experiment_id,run_id,method,family,method_params,status,started,"
                                    "duration_s,metric,context_length,depth,samples,value,ci_low,ci_high,"
                                    "evaluation,protocol_key,dataset,perplexity_protocol,stride,documents,"
                                    "document_min_tokens,bos,tokenizer_hash,seed,dtype,device,attn_implementation,"
                                    "protocol_settings")
    assert len(rows) == 2
    first = rows[0]
    assert first["experiment"] == "'" + name
    assert first["method"] == "'-PI, the \"linear\" one"
    assert first["experiment_id"] == str(experiment.uuid)
    assert first["method_params"] == '{"factor": 2.0}'
    assert (first["metric"], first["context_length"], first["value"], first["ci_low"]) == ("perplexity", "256",
                                                                                          "-1.5", "-2.5")
    assert first["depth"] == "" and first["duration_s"] == "0.0"


def test_run_without_measurements_still_listed(owner: Any, team: Any, base_model: Any, dataset: Any) -> None:
    experiment: Experiment = make_experiment(team, owner, base_model, dataset, runs=2)
    Measurement.objects.filter(run=experiment.runs.last()).delete()
    _, rows = download(login(owner), reverse("experiment_csv", args=[experiment.uuid]))
    assert len(rows) == 3
    assert rows[-1]["metric"] == "" and rows[-1]["status"] == "succeeded"


def test_leaderboard_csv_page(owner: Any, experiment: Experiment, base_model: Any) -> None:
    _, rows = download(login(owner), reverse("leaderboard_csv") + f"?base_model={base_model.pk}&context_length=256")
    assert [(r["rank"], r["runs"], r["best"], r["mean"]) for r in rows] == [("1", "1", "10.256", "10.256"),
                                                                            ("2", "1", "11.256", "11.256")]
    assert rows[0]["base_model"] == "Tiny Llama" and rows[0]["context_length"] == "256"
