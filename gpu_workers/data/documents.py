"""Evaluation documents from any dataset source (their token lengths: :mod:`gpu_workers.data.length_stats`).

Sources: the built-in demo corpus (its held-out split), a local ``.jsonl`` / ``.parquet`` / ``.txt``
file or a directory of text files, or a Hugging Face dataset saved on disk (``datasets.save_to_disk``).
Nothing here downloads.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu_workers.data import builtin_corpus
from gpu_workers.spec import ALL_SOURCES, DatasetSpec

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".tex"}


class DatasetError(ValueError):
    """The dataset cannot be read, or has too few documents for what was asked."""


@dataclass(frozen=True)
class DatasetFacts:
    documents: int
    chars_by_source: dict[str, int]
    docs_by_source: dict[str, int]


DEFAULT_CORPUS_DIR = Path(__file__).resolve().parents[2] / "var" / "demo_corpus"


def builtin_corpus_dir(configured: str = "") -> Path:
    """Where the built-in corpus lives: the configured directory (:attr:`DatasetSpec.corpus_dir`), else the default.

    Read from the spec, not the environment: the worker's settings decide it and put it into the RunSpec.
    """
    return Path(configured) if configured else DEFAULT_CORPUS_DIR


def _from_jsonl(path: Path, spec: DatasetSpec) -> list[dict[str, str]]:
    docs = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise DatasetError(f"{path.name} line {number} is not valid JSON.") from None
            if spec.text_field not in row:
                raise DatasetError(f"{path.name} line {number} has no '{spec.text_field}' field.")
            docs.append({"text": str(row[spec.text_field]), "source": str(row.get(spec.source_field, "local"))})
    return docs


def _from_directory(path: Path) -> list[dict[str, str]]:
    docs = []
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES):
        relative = file.relative_to(path)
        source = relative.parts[0] if len(relative.parts) > 1 else "local"
        docs.append({"text": file.read_text(encoding="utf-8", errors="replace"), "source": source})
    return docs


def _from_parquet(path: Path, spec: DatasetSpec) -> list[dict[str, str]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise DatasetError(f"{path.name} is not a readable parquet file: {exc}") from None
    if spec.text_field not in table.column_names:
        raise DatasetError(f"{path.name} has no '{spec.text_field}' column (it has {', '.join(table.column_names)}).")
    texts = table.column(spec.text_field).to_pylist()
    sources = (table.column(spec.source_field).to_pylist() if spec.source_field in table.column_names
               else ["local"] * len(texts))
    return [{"text": str(t), "source": str(s)} for t, s in zip(texts, sources, strict=True) if t]


EVALUATION_SPLITS = ("test", "validation", "train")
TRAINING_SPLITS = ("train", "validation", "test")


def _from_hf_disk(path: Path, spec: DatasetSpec, splits: tuple[str, ...] = EVALUATION_SPLITS
                  ) -> list[dict[str, str]]:
    try:
        import datasets
    except ImportError:
        raise DatasetError("Reading a Hugging Face dataset needs the 'datasets' package on the worker.") from None
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        split = next((s for s in splits if s in loaded), None)
        loaded = loaded[split]
    if spec.text_field not in loaded.column_names:
        raise DatasetError(f"The dataset has no '{spec.text_field}' column.")
    sources = loaded[spec.source_field] if spec.source_field in loaded.column_names else ["hf"] * len(loaded)
    return [{"text": t, "source": str(s)} for t, s in zip(loaded[spec.text_field], sources, strict=True)]


def load_documents(spec: DatasetSpec) -> list[dict[str, str]]:
    """The documents evaluations read: the held-out split for the built-in corpus, all of a local one."""
    if spec.kind == "builtin":
        directory = builtin_corpus.ensure_built(builtin_corpus_dir(spec.corpus_dir))
        rows = builtin_corpus.read_jsonl(directory / "heldout.jsonl")
        return [{"text": d["text"], "source": d["source"]} for d in rows]
    path = Path(spec.path).expanduser()
    if not path.exists():
        raise DatasetError(f"Nothing at {spec.path}.")
    if spec.kind == "hf":
        return _from_hf_disk(path, spec)
    if path.is_dir():
        docs = _from_directory(path)
    elif path.suffix == ".jsonl":
        docs = _from_jsonl(path, spec)
    elif path.suffix == ".parquet":
        docs = _from_parquet(path, spec)
    elif path.suffix in TEXT_SUFFIXES:
        docs = [{"text": path.read_text(encoding="utf-8", errors="replace"), "source": "local"}]
    else:
        raise DatasetError(
            f"Unsupported file type {path.suffix!r}: use .jsonl, .parquet, a text file or a directory."
        )
    if not docs:
        raise DatasetError(f"No documents found at {spec.path}.")
    return docs


def haystack_documents(spec: DatasetSpec) -> list[dict[str, str]]:
    """The evaluation documents of the dataset's haystack source (:attr:`DatasetSpec.haystack`), in file order.

    A source the data does not have is an error naming the ones it has, so a typo in the dataset's setting
    fails the run (and the composer) visibly instead of silently filling haystacks with something else.
    """
    docs = load_documents(spec)
    source = spec.haystack
    if source == ALL_SOURCES:
        return docs
    picked = [d for d in docs if d["source"] == source]
    if not picked:
        raise missing_haystack_source(source, {d["source"] for d in docs})
    return picked


def missing_haystack_source(source: str, present: set[str] | list[str]) -> DatasetError:
    """The error for a haystack source the data does not have, naming the ones it has (one wording for the
    worker reading documents and the composer reading stored length statistics)."""
    listed = ", ".join(sorted(present)) or "none"
    return DatasetError(f"The dataset has no documents from source {source!r} for needle haystacks "
                        f"(its sources: {listed}; or use {ALL_SOURCES!r}).")


def load_training_documents(
    spec: DatasetSpec, exclude: set[str] | frozenset[str] = frozenset()
) -> list[dict[str, str]]:
    """What training reads: the built-in corpus's or a Hugging Face dataset's train split; otherwise every
    document whose text is not in *exclude* (the evaluation documents), so a run never trains on what it is
    scored on."""
    if spec.kind == "builtin":
        directory = builtin_corpus.ensure_built(builtin_corpus_dir(spec.corpus_dir))
        corpus = builtin_corpus.read_jsonl(directory / "train.jsonl")
        return [{"text": d["text"], "source": d["source"]} for d in corpus]
    if spec.kind == "hf" and Path(spec.path).expanduser().exists():
        rows = _from_hf_disk(Path(spec.path).expanduser(), spec, TRAINING_SPLITS)
    else:
        rows = load_documents(spec)
    docs = [d for d in rows if d["text"] not in exclude]
    if not docs:
        raise DatasetError("Every document of the dataset is used for evaluation; none is left to train on.")
    return docs


def evaluation_texts(spec: DatasetSpec, tokenizer: Any, min_tokens: int, count: int) -> set[str]:
    """The texts :func:`long_documents` picks for evaluation (for local datasets, kept out of training)."""
    picked: set[str] = set()
    for doc in _interleave_sources(load_documents(spec)):
        if len(picked) == count:
            break
        if len(tokenizer(doc["text"], add_special_tokens=False)["input_ids"]) >= min_tokens:
            picked.add(doc["text"])
    return picked


def inspect_dataset(spec: DatasetSpec) -> DatasetFacts:
    chars: dict[str, int] = defaultdict(int)
    counts: dict[str, int] = defaultdict(int)
    docs = load_documents(spec)
    for doc in docs:
        chars[doc["source"]] += len(doc["text"])
        counts[doc["source"]] += 1
    return DatasetFacts(len(docs), dict(chars), dict(counts))


def _interleave_sources(docs: list[dict[str, str]]) -> list[dict[str, str]]:
    """Round-robin over sources so a handful of documents still covers every domain."""
    by_source: dict[str, list[dict[str, str]]] = defaultdict(list)
    for doc in docs:
        by_source[doc["source"]].append(doc)
    queues = [by_source[s] for s in sorted(by_source)]
    out: list[dict[str, str]] = []
    for i in range(max(len(q) for q in queues)):
        out.extend(q[i] for q in queues if i < len(q))
    return out


def long_documents(spec: DatasetSpec, tokenizer: Any, min_tokens: int, count: int) -> list[list[int]]:
    """The first *count* documents (sources interleaved) of at least *min_tokens* tokens."""
    picked = []
    for doc in _interleave_sources(load_documents(spec)):
        ids = tokenizer(doc["text"], add_special_tokens=False)["input_ids"]
        if len(ids) >= min_tokens:
            picked.append(ids)
            if len(picked) == count:
                return picked
    raise DatasetError(
        f"The dataset has only {len(picked)} documents of at least {min_tokens} tokens; "
        f"{count} are needed. Lower the longest evaluation length or the number of documents."
    )
