"""Token lengths of a dataset's evaluation documents under one tokenizer: what the composer checks against.

A run needs ``documents`` evaluation documents of at least its longest length (perplexity, LongPPL,
retention) and, for needle evaluations, a haystack source holding at least that many tokens. Answering
that means tokenizing every evaluation document — the demo corpus's 729 held-out documents are 1.87 M
tokens, 5.5–8 s — with the model's tokenizer, which in transformers imports torch. So a worker measures
once per (dataset, tokenizer) with the tokenizer runs use (:func:`measure`), the database keeps the sorted
lengths per source (:meth:`LengthStats.to_json`), and the composer asks the stored numbers
(:meth:`LengthStats.documents_at_least`, :meth:`LengthStats.haystack_tokens`): a bisection, no text read.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpu_workers.data.documents import load_documents, missing_haystack_source
from gpu_workers.spec import ALL_SOURCES, DatasetSpec

BATCH_DOCUMENTS = 32
"""Documents per tokenizer call: large enough for the Rust backend's batching, small enough for progress."""


@dataclass(frozen=True)
class LengthStats:
    """Every evaluation document's token count, sorted ascending, per source."""

    lengths_by_source: dict[str, tuple[int, ...]]

    @property
    def documents(self) -> int:
        return sum(len(lengths) for lengths in self.lengths_by_source.values())

    @property
    def tokens(self) -> int:
        return sum(self.tokens_by_source.values())

    @property
    def tokens_by_source(self) -> dict[str, int]:
        return {source: sum(lengths) for source, lengths in self.lengths_by_source.items()}

    @property
    def longest(self) -> int:
        return max((lengths[-1] for lengths in self.lengths_by_source.values() if lengths), default=0)

    def documents_at_least(self, min_tokens: int) -> int:
        """How many evaluation documents (any source) hold at least *min_tokens* tokens: what
        :func:`gpu_workers.data.documents.long_documents` can pick from."""
        return sum(len(lengths) - bisect.bisect_left(lengths, min_tokens)
                   for lengths in self.lengths_by_source.values())

    def haystack_tokens(self, haystack: str) -> int:
        """All tokens of the haystack source's documents (every source for ``all``): what needle haystacks are
        cut from. Raises :class:`~gpu_workers.data.documents.DatasetError` for a source the data lacks."""
        if haystack == ALL_SOURCES:
            return self.tokens
        if haystack not in self.lengths_by_source:
            raise missing_haystack_source(haystack, list(self.lengths_by_source))
        return sum(self.lengths_by_source[haystack])

    def to_json(self) -> dict[str, list[int]]:
        return {source: list(lengths) for source, lengths in sorted(self.lengths_by_source.items())}

    @classmethod
    def from_json(cls, data: dict[str, list[int]]) -> LengthStats:
        return cls({str(source): tuple(sorted(int(n) for n in lengths)) for source, lengths in data.items()})


def load_tokenizer(source: str) -> Any:
    """The tokenizer runs use (transformers' ``AutoTokenizer``, offline): imported here, on the worker only."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, local_files_only=True)


def measure(spec: DatasetSpec, tokenizer: Any, progress: Callable[[float], None] | None = None,
            batch: int = BATCH_DOCUMENTS) -> LengthStats:
    """Tokenize every evaluation document of *spec* (no special tokens, as evaluations do) and count.

    *progress* gets the share done after every batch. The haystack setting does not change which
    documents are read, so one measurement serves every haystack source."""
    docs = load_documents(spec)
    lengths: dict[str, list[int]] = defaultdict(list)
    for start in range(0, len(docs), batch):
        chunk = docs[start : start + batch]
        ids = tokenizer([d["text"] for d in chunk], add_special_tokens=False)["input_ids"]
        for doc, row in zip(chunk, ids, strict=True):
            lengths[doc["source"]].append(len(row))
        if progress is not None:
            progress(min(1.0, (start + len(chunk)) / len(docs)))
    return LengthStats({source: tuple(sorted(values)) for source, values in lengths.items()})


def count_long_documents(spec: DatasetSpec, tokenizer_source: str, min_tokens: int) -> int:
    """How many evaluation documents reach *min_tokens* tokens (measured now, with the run's tokenizer)."""
    return measure(spec, load_tokenizer(tokenizer_source)).documents_at_least(min_tokens)


def count_tokens(spec: DatasetSpec, tokenizer_source: str) -> int:
    """All tokens of the haystack source's evaluation documents (measured now, with the run's tokenizer)."""
    return measure(spec, load_tokenizer(tokenizer_source)).haystack_tokens(spec.haystack)
