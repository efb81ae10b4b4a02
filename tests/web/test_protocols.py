"""Protocols on record: the leaderboard never ranks numbers measured under different protocols together, the CSV
and API carry them, and RULER / LongPPL settings a run could not honour are refused on their field."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from django.urls import reverse

from experiments import leaderboard, selectors, services
from experiments.models import Experiment, Measurement, Run
from gpu_workers import protocol as protocols
from gpu_workers.spec import DatasetSpec, EvalSpec, MethodSpec, RunSpec
from tests.web.factories import login, make_experiment
from tests.web.helpers import composer_post

pytestmark = pytest.mark.django_db


def _protocol(protocol: str = "truncate", documents: int = 2, ruler_tasks: tuple[str, ...] | None = None
              ) -> dict[str, Any]:
    extra = {} if ruler_tasks is None else {"ruler_tasks": ruler_tasks}
    spec = RunSpec("r", "m", DatasetSpec(), MethodSpec("pi"), 512,
                   EvalSpec(lengths=(256, 512), documents=documents, protocol=protocol, stride=128,
                            suite=("perplexity", "ruler"), **extra))
    return protocols.build(spec, tokenizer_digest="ab" * 32, dtype="float32", device="cpu",
                           attn_implementation="sdpa", original_context=256, versions={"torch": "2.13.0"})


def _stamp(experiment: Experiment, facts: dict[str, Any]) -> None:
    """As a worker would: the run's protocol, and each perplexity measurement's key."""
    for run in experiment.runs.all():
        run.protocol = facts
        run.save(update_fields=["protocol"])
        Measurement.objects.filter(run=run, metric="perplexity").update(protocol_key=facts["keys"]["perplexity"])


def test_keys_change_with_what_changes_the_numbers_and_only_for_that_evaluation() -> None:
    base = _protocol()
    assert base["keys"]["perplexity"] == _protocol()["keys"]["perplexity"], "deterministic"
    assert _protocol("sliding")["keys"]["perplexity"] != base["keys"]["perplexity"]
    assert _protocol(documents=4)["keys"]["perplexity"] != base["keys"]["perplexity"]
    fewer_tasks = _protocol(ruler_tasks=("vt",))
    assert fewer_tasks["keys"]["ruler"] != base["keys"]["ruler"]
    assert fewer_tasks["keys"]["perplexity"] == base["keys"]["perplexity"], "RULER's tasks do not split perplexity"
    text = protocols.describe(base, "perplexity")
    for fact in ("protocol truncate", "documents 2", "documents of at least (tokens) 512", "BOS added none",
                 "tokenizer abababababab", "seed 0", "dtype float32", "device cpu", "attention sdpa"):
        assert fact in text, text


def test_the_leaderboard_ranks_one_protocol_at_a_time(team: Any, owner: Any, base_model: Any, dataset: Any) -> None:
    truncate = make_experiment(team, owner, base_model, dataset, runs=2, name="T", values=lambda i, n: 20.0 - i)
    sliding = make_experiment(team, owner, base_model, dataset, runs=3, name="S", values=lambda i, n: 5.0 + i)
    _stamp(truncate, _protocol("truncate"))
    _stamp(sliding, _protocol("sliding"))
    query = leaderboard.resolve(owner, {"base_model": str(base_model.pk), "context_length": "512"})
    # The sliding protocol has more runs, so it is the default; the truncate runs are never mixed in.
    assert [c.runs for c in query.protocols] == [3, 2]
    assert query.protocol.key == _protocol("sliding")["keys"]["perplexity"]
    assert {r.best_experiment[1] for r in query.rows} == {"S"}
    assert "protocol sliding" in query.protocol_description
    other = leaderboard.resolve(owner, {"base_model": str(base_model.pk), "context_length": "512",
                                        "protocol": _protocol("truncate")["keys"]["perplexity"]})
    assert {r.best_experiment[1] for r in other.rows} == {"T"}
    assert [r.best for r in other.rows] == [19.0, 20.0]

    page = login(owner).get(reverse("leaderboard"), {"base_model": base_model.pk, "context_length": 512})
    html = page.content.decode()
    assert 'data-role="protocol-filter"' in html and "1 other protocol" in html
    response = login(owner).get(reverse("leaderboard_csv"), other.params())
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert {row["protocol_key"] for row in rows} == {_protocol("truncate")["keys"]["perplexity"]}
    assert all("protocol truncate" in row["protocol"] for row in rows)


def test_numbers_recorded_before_protocols_stay_apart(team: Any, owner: Any, base_model: Any, dataset: Any) -> None:
    old = make_experiment(team, owner, base_model, dataset, runs=1, name="old")
    new = make_experiment(team, owner, base_model, dataset, runs=1, name="new")
    _stamp(new, _protocol())
    choices = selectors.leaderboard_protocols([team], base_model, 512, "perplexity")
    assert sorted(c.key for c in choices) == sorted(["", _protocol()["keys"]["perplexity"]])
    for choice in choices:
        rows = selectors.leaderboard_rows([team], base_model, 512, "perplexity", choice.key)
        assert [r.best_experiment[1] for r in rows] == (["old"] if choice.key == "" else ["new"])
    assert old.pk != new.pk


def test_effective_length_is_ranked_without_a_length(team: Any, owner: Any, base_model: Any, dataset: Any) -> None:
    experiment = make_experiment(team, owner, base_model, dataset, runs=2)
    facts = _protocol()
    for i, run in enumerate(experiment.runs.order_by("id")):
        Measurement.objects.create(run=run, metric="ruler_effective_length", value=256.0 * (i + 1),
                                   protocol_key=facts["keys"]["ruler"])
        Run.objects.filter(pk=run.pk).update(protocol=facts)
    query = leaderboard.resolve(owner, {"base_model": str(base_model.pk), "metric": "ruler_effective_length"})
    assert query.length_free and query.context_length is None
    assert [r.best for r in query.rows] == [512.0, 256.0], "longer effective length ranks first"
    assert "tasks all 13" in query.protocol_description


def test_csv_and_api_carry_each_measurements_protocol(team: Any, owner: Any, base_model: Any, dataset: Any) -> None:
    experiment = make_experiment(team, owner, base_model, dataset, runs=1)
    facts = _protocol("sliding")
    _stamp(experiment, facts)
    client = login(owner)
    response = client.get(reverse("experiment_csv", args=[experiment.uuid]))
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert {(r["evaluation"], r["perplexity_protocol"], r["stride"], r["tokenizer_hash"], r["bos"], r["dtype"],
             r["attn_implementation"], r["document_min_tokens"]) for r in rows} == {
        ("perplexity", "sliding", "128", "abababababab", "none", "float32", "sdpa", "512")}
    run = experiment.runs.get()
    api = client.get(f"/api/v1/runs/{run.uuid}/").json()
    assert api["protocol"]["keys"]["perplexity"] == facts["keys"]["perplexity"]
    assert {m["protocol_key"] for m in api["measurements"]} == {facts["keys"]["perplexity"]}


def test_a_retry_forgets_the_previous_attempts_protocol(team: Any, owner: Any, base_model: Any, dataset: Any,
                                                         monkeypatch: Any) -> None:
    monkeypatch.setattr(services, "_enqueue_on_commit", lambda run_uuid: None)
    experiment = make_experiment(team, owner, base_model, dataset, runs=1, status=Run.Status.FAILED)
    _stamp(experiment, _protocol())
    run = services.retry_run(owner, experiment.runs.get())
    assert run.protocol == {}


def _ruler_post(team: Any, base_model: Any, dataset: Any, **fields: Any) -> dict[str, Any]:
    return composer_post(team, base_model, dataset, **{"eval-suite": ["perplexity", "ruler"],
                                                       "eval_lengths": "256", "target_length": 512, **fields})


@pytest.mark.parametrize(("fields", "field", "message"), [
    ({"eval-ruler_threshold": "0"}, "ruler_threshold", "above 0 and at most 1"),
    ({"eval-ruler_threshold": "1.5"}, "ruler_threshold", "less than or equal to 1"),
    ({"eval-ruler_samples": "400"}, "ruler_samples", "fit without reusing text"),
    ({"eval-ruler_samples": "0"}, "ruler_samples", "greater than or equal to 1"),
    ({"eval_lengths": "40"}, "eval_lengths", "too short"),
    ({"eval-suite": ["longppl"], "eval-longppl_short_window": "256"}, "longppl_short_window",
     "must be shorter than the evaluator"),
])
def test_bad_ruler_and_longppl_settings_are_refused_on_their_field(
    team: Any, owner: Any, base_model: Any, dataset: Any, fields: dict[str, Any], field: str, message: str
) -> None:
    client = login(owner)
    response = client.post(reverse("experiment_new"), _ruler_post(team, base_model, dataset, **fields))
    assert response.status_code == 200
    assert not Experiment.objects.exists(), "nothing saved"
    composer = response.context["composer"]
    form = composer.form if field == "eval_lengths" else composer.evaluation
    errors = " ".join(form.errors.get(field, []))
    assert message in errors, (field, form.errors)


def test_a_ruler_experiment_is_saved_with_its_settings(team: Any, owner: Any, base_model: Any, dataset: Any,
                                                       monkeypatch: Any) -> None:
    monkeypatch.setattr(services, "_enqueue_on_commit", lambda run_uuid: None)
    body = _ruler_post(team, base_model, dataset, **{"eval-ruler_tasks": ["niah_single_1", "vt"],
                                                     "eval-ruler_samples": "3", "eval-ruler_threshold": "0.9"})
    response = login(owner).post(reverse("experiment_new"), body)
    assert response.status_code == 302, response.context and response.context["composer"].errors()
    experiment = Experiment.objects.get()
    spec = experiment.eval_spec()
    assert spec.ruler_tasks == ("niah_single_1", "vt") and spec.ruler_samples == 3 and spec.ruler_threshold == 0.9
    assert spec.wants("ruler") and not spec.wants("passkey")
