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
