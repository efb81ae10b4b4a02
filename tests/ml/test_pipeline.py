"""The whole ML run behind a Reporter: measurements out, cancel honoured, bad sources named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpu_workers import pipeline
from gpu_workers.data.documents import DatasetError, inspect_dataset, long_documents
from gpu_workers.data.length_stats import count_long_documents
from gpu_workers.model_facts import ModelSourceError, inspect_model
from gpu_workers.reporter import Cancelled, MemoryReporter
from gpu_workers.spec import EVALUATIONS, DatasetSpec, EvalSpec, MethodSpec, RunSpec


def _spec(model: Path, corpus: Path, family: str = "yarn") -> RunSpec:
    return RunSpec(
        run_id="r1", model_source=str(model), dataset=DatasetSpec(kind="local", path=str(corpus)),
        method=MethodSpec(family, {}), target_length=256, eval=EvalSpec(lengths=(64, 256), documents=3),
    )


def test_spec_round_trips_through_json(tiny_model_dir: Path, tiny_corpus: Path) -> None:
    spec = _spec(tiny_model_dir, tiny_corpus)
    assert RunSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_run_reports_perplexity_per_length_with_intervals(tiny_model_dir: Path, tiny_corpus: Path) -> None:
    reporter = MemoryReporter()
    pipeline.run(_spec(tiny_model_dir, tiny_corpus), reporter)
    ppl = [m for m in reporter.measurements if m.metric == "perplexity"]
    assert [m.context_length for m in ppl] == [64, 256]
    for m in ppl:
        assert m.samples == 3 and m.ci_low <= m.value <= m.ci_high
    assert reporter.fractions[0] == 0.0 and reporter.fractions[-1] == 1.0
    assert reporter.fractions == sorted(reporter.fractions)
    assert any("rope_parameters" in line and "'yarn'" in line for line in reporter.lines)


def test_run_stops_when_the_reporter_says_so(tiny_model_dir: Path, tiny_corpus: Path) -> None:
    reporter = MemoryReporter(stop_after_checks=2)
    with pytest.raises(Cancelled):
        pipeline.run(_spec(tiny_model_dir, tiny_corpus), reporter)
    assert not [m for m in reporter.measurements if m.metric == "perplexity"]


def test_model_facts_read_from_config(tiny_model_dir: Path) -> None:
    facts = inspect_model(str(tiny_model_dir))
    assert (facts.head_dim, facts.original_context, facts.num_kv_heads, facts.has_rope) == (16, 64, 2, True)
    assert facts.parameters and facts.parameters > 10_000


def test_unknown_model_sources_are_named(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="No model directory"):
        inspect_model(str(tmp_path / "missing"))
    with pytest.raises(ModelSourceError, match=r"No config\.json in"):
        inspect_model(str(tmp_path))
    with pytest.raises(ModelSourceError, match="local Hugging Face cache"):
        inspect_model("nobody/no-such-model-xyz")


def test_model_without_rope_is_recognised(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 1024, "n_embd": 64,
                                                      "n_head": 4, "n_layer": 2, "architectures": ["GPT2LMHeadModel"]}))
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelSourceError, match="gpt2 model has no rotary position embedding: it learns absolute"):
        inspect_model(str(tmp_path))


def test_local_datasets_keep_their_sources_and_count_long_documents(tiny_model_dir: Path, tiny_corpus: Path) -> None:
    spec = DatasetSpec(kind="local", path=str(tiny_corpus))
    facts = inspect_dataset(spec)
    assert facts.documents == 7 and set(facts.docs_by_source) == {"greek", "letters"}
    assert count_long_documents(spec, str(tiny_model_dir), 256) == 6
    with pytest.raises(DatasetError, match="only 6 documents of at least 256 tokens; 7 are needed"):
        from transformers import AutoTokenizer

        long_documents(spec, AutoTokenizer.from_pretrained(str(tiny_model_dir)), 256, 7)


def test_directory_and_bad_jsonl_datasets(tmp_path: Path) -> None:
    (tmp_path / "docs" / "code").mkdir(parents=True)
    (tmp_path / "docs" / "code" / "a.py").write_text("print(1)\n" * 50)
    (tmp_path / "docs" / "notes.txt").write_text("words " * 50)
    facts = inspect_dataset(DatasetSpec(kind="local", path=str(tmp_path / "docs")))
    assert facts.docs_by_source == {"code": 1, "local": 1}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(DatasetError, match="line 2 is not valid JSON"):
        inspect_dataset(DatasetSpec(kind="local", path=str(bad)))
    with pytest.raises(DatasetError, match="Nothing at"):
        inspect_dataset(DatasetSpec(kind="local", path=str(tmp_path / "none.jsonl")))


def test_every_evaluation_is_cancellable_inside_its_loop(tiny_model_dir: Path, tiny_corpus: Path) -> None:
    spec = _spec(tiny_model_dir, tiny_corpus)
    for name in EVALUATIONS:
        settings = {"suite": [name], "lengths": [256, 384], "passkey_samples": 3, "needle_samples": 1,
                    "ruler_samples": 2}
        if name == "ruler":  # this tokenizer spends more tokens on RULER's instructions than 256
            settings.update(lengths=[512, 768], ruler_tasks=["niah_single_1", "niah_single_2", "vt", "cwe"])
        one = RunSpec.from_json({**spec.to_json(), "eval": {**spec.to_json()["eval"], **settings}})
        counting = MemoryReporter()
        pipeline.run(one, counting)
        # Stop at the last check made inside the evaluation: nothing after it may be reported.
        stopped = MemoryReporter(stop_after_checks=counting.checks - 1)
        with pytest.raises(Cancelled):
            pipeline.run(one, stopped)
        assert f"{name}_seconds" not in {m.metric for m in stopped.measurements}, name
        assert counting.checks > 3, f"{name} checks for a stop inside its loop"
