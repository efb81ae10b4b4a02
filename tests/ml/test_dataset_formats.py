"""Datasets users bring: parquet files and Hugging Face datasets saved on disk, read offline, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpu_workers import pipeline
from gpu_workers.data.documents import DatasetError, inspect_dataset, load_documents, load_training_documents
from gpu_workers.reporter import MemoryReporter
from gpu_workers.spec import DatasetSpec, EvalSpec, MethodSpec, RunSpec, TrainSpec


def _rows(tiny_corpus: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in tiny_corpus.read_text().splitlines() if line.strip()]


def test_parquet_columns_are_read_with_their_sources(tmp_path: Path, tiny_corpus: Path) -> None:
    rows = _rows(tiny_corpus)
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"body": [r["text"] for r in rows], "domain": [r["source"] for r in rows]}), path)
    spec = DatasetSpec(kind="local", path=str(path), text_field="body", source_field="domain")
    assert [d["text"] for d in load_documents(spec)] == [r["text"] for r in rows]
    assert inspect_dataset(spec).docs_by_source == {"greek": 3, "letters": 4}
    with pytest.raises(DatasetError, match="no 'text' column"):
        load_documents(DatasetSpec(kind="local", path=str(path)))
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet")
    with pytest.raises(DatasetError, match="not a readable parquet file"):
        load_documents(DatasetSpec(kind="local", path=str(broken)))


def test_a_hugging_face_dataset_saved_to_disk_runs_through_the_pipeline(tmp_path: Path, tiny_corpus: Path,
                                                                        tiny_model_dir: Path) -> None:
    rows = _rows(tiny_corpus)
    splits = datasets.DatasetDict({
        "train": datasets.Dataset.from_list(rows[:4]),
        "test": datasets.Dataset.from_list(rows[4:] + rows[:2]),
    })
    splits.save_to_disk(str(tmp_path / "hf"))
    spec = DatasetSpec(kind="hf", path=str(tmp_path / "hf"))
    assert len(load_documents(spec)) == len(rows) - 4 + 2, "the test split is the evaluation split"
    reporter = MemoryReporter()
    run = RunSpec(run_id="hf", model_source=str(tiny_model_dir), dataset=spec, method=MethodSpec("pi"),
                  target_length=128, eval=EvalSpec(lengths=(64, 128), documents=2),
                  train=TrainSpec(mode="finetune", steps=2, warmup_steps=1, data_strategy="global", keep_short_p=1.0),
                  work_dir=str(tmp_path / "work"))
    pipeline.run(run, reporter)
    assert {m.context_length for m in reporter.measurements if m.metric == "perplexity"} == {64, 128}
    assert [m.step for m in reporter.measurements if m.metric == "train_loss"] == [1, 2]
    # Training reads the train split, minus anything it is evaluated on.
    evaluated = {d["text"] for d in load_documents(spec)[:2]}
    training = [d["text"] for d in load_training_documents(spec, evaluated)]
    assert not evaluated & set(training)
    assert training == [r["text"] for r in rows[:4] if r["text"] not in evaluated]
