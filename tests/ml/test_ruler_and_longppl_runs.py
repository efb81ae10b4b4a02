"""RULER and LongPPL inside a run on the shipped demo model, and the protocol every number carries."""

from __future__ import annotations

import pytest

from gpu_workers import pipeline
from gpu_workers.demo import DEMO_MODEL_DIR
from gpu_workers.reporter import MemoryReporter
from gpu_workers.spec import DatasetSpec, EvalSpec, MethodSpec, RunSpec

pytestmark = pytest.mark.slow

TASKS = ("niah_single_1", "niah_single_2", "vt", "cwe")


def _run(family: str = "none", **settings: object) -> MemoryReporter:
    ev = EvalSpec(lengths=(256, 512), documents=2, suite=("perplexity", "longppl", "ruler"), ruler_tasks=TASKS,
                  ruler_samples=3, **settings)  # type: ignore[arg-type]
    spec = RunSpec("r", str(DEMO_MODEL_DIR), DatasetSpec(), MethodSpec(family, {}), 1024, ev)
    reporter = MemoryReporter()
    pipeline.run(spec, reporter)
    return reporter


@pytest.fixture(scope="module")
def baseline() -> MemoryReporter:
    return _run()


def test_a_run_reports_ruler_per_task_group_and_average_with_an_effective_length(baseline: MemoryReporter) -> None:
    by = {(m.metric, m.context_length): m for m in baseline.measurements}
    for task in TASKS:
        for length in (256, 512):
            cell = by[(f"ruler_{task}", length)]
            assert cell.samples == 3 and 0 <= cell.value <= 1 and cell.ci_low <= cell.value <= cell.ci_high
    for length in (256, 512):
        mean = sum(by[(f"ruler_{t}", length)].value for t in TASKS) / len(TASKS)
        assert by[("ruler_average", length)].value == pytest.approx(mean)
        retrieval = (by[("ruler_niah_single_1", length)].value + by[("ruler_niah_single_2", length)].value) / 2
        assert by[("ruler_group_retrieval", length)].value == pytest.approx(retrieval)
    reference = by[("ruler_reference", 256)].value
    assert reference == by[("ruler_average", 256)].value, "the score at the original context"
    effective = by.get(("ruler_effective_length", None))
    bar = 0.85 * reference
    expected = 512 if by[("ruler_average", 512)].value >= bar else 256
    assert reference > 0 and effective is not None and effective.value == expected


def test_longppl_is_reported_beside_perplexity_with_its_key_tokens(baseline: MemoryReporter) -> None:
    keys = {m.context_length: m.value for m in baseline.measurements if m.metric == "longppl_key_tokens"}
    assert set(keys) == {256, 512} and keys[512] >= keys[256] > 0, "key tokens exist and accumulate with length"
    longppl = {m.context_length: m for m in baseline.measurements if m.metric == "longppl"}
    ppl = {m.context_length: m.value for m in baseline.measurements if m.metric == "perplexity"}
    for length in (256, 512):
        # Key tokens are those the base model predicts well with its context: far below ordinary perplexity.
        assert longppl[length].value < ppl[length] and longppl[length].samples == keys[length]


def test_every_evaluation_number_carries_its_protocol_key(baseline: MemoryReporter) -> None:
    (facts,) = baseline.protocols
    assert set(facts["keys"]) == {"perplexity", "longppl", "ruler"}
    assert facts["common"]["bos"] == "none" and facts["common"]["dtype"] == "float32"
    assert facts["common"]["attn_implementation"] == "sdpa" and len(facts["common"]["tokenizer_hash"]) == 12
    assert facts["evaluations"]["perplexity"]["document_min_tokens"] == 512
    assert facts["evaluations"]["longppl"]["long_window"] == 256
    assert facts["evaluations"]["longppl"]["short_window"] == 32
    assert facts["evaluations"]["ruler"]["ruler_tasks"] == list(TASKS)
    for m in baseline.measurements:
        evaluation = ("longppl" if m.metric.startswith("longppl") else
                      "ruler" if m.metric.startswith("ruler") else m.metric.removesuffix("_seconds")
                      .removesuffix("_peak_memory_mb"))
        assert m.protocol_key == facts["keys"][evaluation], m


def test_a_longppl_short_window_not_shorter_than_the_evaluator_is_refused_before_anything_runs() -> None:
    from gpu_workers.spec import SpecError

    with pytest.raises(SpecError, match="must be shorter") as caught:
        _run(longppl_short_window=256)
    assert caught.value.field == "longppl_short_window"
