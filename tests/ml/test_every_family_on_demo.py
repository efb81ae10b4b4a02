"""Every method family runs end to end on the shipped demo model, through the worker's pipeline."""

from __future__ import annotations

import pytest

from gpu_workers import methods, pipeline
from gpu_workers.data.documents import builtin_corpus_dir
from gpu_workers.demo import DEMO_MODEL_DIR
from gpu_workers.reporter import MemoryReporter
from gpu_workers.spec import EVALUATIONS, DatasetSpec, EvalSpec, MethodSpec, RunSpec

PARAMS = {"base_change": {"rope_theta": 40000.0}}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(methods.FAMILIES))
def test_family_runs_on_the_demo_model(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTEXTLAB_CORPUS_DIR", str(builtin_corpus_dir()))
    reporter = MemoryReporter()
    spec = RunSpec(run_id=family, model_source=str(DEMO_MODEL_DIR), dataset=DatasetSpec(),
                   method=MethodSpec(family, PARAMS.get(family, {})), target_length=1024,
                   eval=EvalSpec(lengths=(256, 1024), documents=2, suite=EVALUATIONS, passkey_samples=4,
                                 needle_depths=(0.0, 1.0), needle_samples=1, ruler_samples=2))
    pipeline.run(spec, reporter)
    ppl = {m.context_length: m.value for m in reporter.measurements if m.metric == "perplexity"}
    assert set(ppl) == {256, 1024}
    assert all(1 < value < 4096 for value in ppl.values())  # finite and better than uniform over the vocabulary
    got = {(m.metric, m.context_length, m.depth) for m in reporter.measurements}
    for n in (256, 1024):
        assert {("passkey_accuracy", n, None), ("needle_exact", n, 0.0), ("needle_exact", n, 1.0),
                ("needle_partial", n, 1.0), ("needle_perplexity", n, None), ("forward_seconds", n, None),
                ("kv_cache_mb", n, None), ("kv_cache_mb_predicted", n, None)} <= got
    assert {("retention_perplexity", 256, None), ("retention_passkey", 256, None)} <= got
    assert {("ruler_average", 256, None), ("ruler_average", 1024, None)} <= got  # two samples a cell: shape, not score
    assert {f"{name}_seconds" for name in EVALUATIONS} <= {metric for metric, _, _ in got}
