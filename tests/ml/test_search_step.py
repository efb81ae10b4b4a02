"""The search step inside a run: progress as measurements, factor files, resume after a stop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpu_workers import methods, pipeline
from gpu_workers.data.documents import builtin_corpus_dir
from gpu_workers.demo import DEMO_MODEL_DIR
from gpu_workers.methods.longrope_files import read_factors
from gpu_workers.model_facts import inspect_model
from gpu_workers.reporter import Cancelled, MemoryReporter
from gpu_workers.spec import DatasetSpec, EvalSpec, MethodSpec, RunSpec

SMALL = {"factor": 2.0, "population": 4, "parents": 2, "generations": 2, "patience": 0, "search_documents": 1}


@pytest.fixture(autouse=True)
def _corpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTEXTLAB_CORPUS_DIR", str(builtin_corpus_dir()))


def _spec(work: Path, family: str = "longrope_search", **params: object) -> RunSpec:
    return RunSpec(run_id="s", model_source=str(DEMO_MODEL_DIR), dataset=DatasetSpec(),
                   method=MethodSpec(family, {**SMALL, **params}), target_length=512,
                   eval=EvalSpec(lengths=(256, 512), documents=2), work_dir=str(work))


def test_search_rows_validate_like_any_method_and_name_the_bad_field() -> None:
    base = inspect_model(str(DEMO_MODEL_DIR)).rope
    clean = methods.validate("longrope2_search", {"search_attention": 1}, base, 1024)
    assert clean["factor"] == 4.0 and clean["population"] == 8 and clean["search_attention"] == 1
    with pytest.raises(methods.MethodError) as caught:
        methods.validate("longrope_search", {"population": 4, "parents": 4}, base, 1024)
    assert caught.value.field == "parents" and "less than population" in str(caught.value)


@pytest.mark.parametrize("family", ["longrope_search", "longrope2_search"])
def test_a_search_length_within_the_original_context_is_refused_on_its_field(family: str) -> None:
    base = inspect_model(str(DEMO_MODEL_DIR)).rope  # original context 256
    for params, target in (({"factor": 4, "search_length": 256}, 1024), ({"factor": 4, "search_length": 128}, 1024),
                           ({"factor": 2}, 256)):  # blank search length = a target at the original context
        with pytest.raises(methods.MethodError) as caught:
            methods.validate(family, params, base, target)
        assert caught.value.field == "search_length", params
        assert "must exceed the original context of 256 tokens" in caught.value.message
    assert methods.validate(family, {"factor": 4, "search_length": 257}, base, 1024)["search_length"] == 257


def test_a_longrope2_run_reports_the_split_it_chose_and_restarts_over_an_old_state(tmp_path: Path) -> None:
    (tmp_path / "search_state.json").write_text(json.dumps({"version": 1, "generation": 1}))
    reporter = MemoryReporter()
    pipeline.run(_spec(tmp_path, "longrope2_search"), reporter)
    assert any("does not fit this search" in line and "starting afresh" in line for line in reporter.lines)
    assert any("critical dimension searched in pairs 5–9" in line for line in reporter.lines), reporter.lines
    (chosen,) = [m.value for m in reporter.measurements if m.metric == "search_critical_dim"]
    summary = json.loads(Path(dict(reporter.artifacts)["search_result"]).read_text())["result"]
    assert 5 <= chosen <= 9 and summary["critical_dim"] == chosen and summary["critical_window"] == [5, 9]
    assert json.loads((tmp_path / "search_state.json").read_text())["version"] == 2


def test_a_search_run_streams_generations_saves_factors_and_evaluates_them(tmp_path: Path) -> None:
    reporter = MemoryReporter()
    pipeline.run(_spec(tmp_path), reporter)
    best = [m for m in reporter.measurements if m.metric == "search_best"]
    assert [m.step for m in best] == [0, 1, 2]
    assert [m.value for m in best] == sorted((m.value for m in best), reverse=True), "the best never gets worse"
    factors = [m for m in reporter.measurements if m.metric == "search_factor" and m.step == 2]
    assert [m.depth for m in factors] == list(range(16))
    kinds = dict(reporter.artifacts)
    summary = json.loads(Path(kinds["search_result"]).read_text())
    assert read_factors(kinds["longrope_factors"]) == pytest.approx(summary["method_params"]["long_factor"])
    assert [f.value for f in factors] == pytest.approx(summary["method_params"]["long_factor"])
    assert {m.context_length for m in reporter.measurements if m.metric == "perplexity"} == {256, 512}
    assert any("evaluating the searched factors as LongRoPE" in line for line in reporter.lines)


def test_a_stopped_search_resumes_from_its_last_generation(tmp_path: Path) -> None:
    straight = MemoryReporter()
    pipeline.run(_spec(tmp_path / "straight"), straight)

    class StopAfterGeneration1(MemoryReporter):
        def should_stop(self) -> bool:
            return any(m.metric == "search_best" and m.step == 1 for m in self.measurements)

    with pytest.raises(Cancelled):
        pipeline.run(_spec(tmp_path / "again"), StopAfterGeneration1())
    assert json.loads((tmp_path / "again" / "search_state.json").read_text())["generation"] == 1
    resumed = MemoryReporter()
    pipeline.run(_spec(tmp_path / "again"), resumed)
    assert any("resuming the search after generation 1" in line for line in resumed.lines)

    def numbers(reporter: MemoryReporter, metric: str) -> dict[int | None, float]:
        return {m.step if metric.startswith("search") else m.context_length: m.value
                for m in reporter.measurements if m.metric == metric}

    assert list(numbers(resumed, "search_best")) == [2], "only the missing generation ran"
    assert numbers(resumed, "search_best")[2] == pytest.approx(numbers(straight, "search_best")[2])
    assert numbers(resumed, "perplexity") == pytest.approx(numbers(straight, "perplexity"))
