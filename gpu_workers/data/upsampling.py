"""Length-upsampling data strategies for continued pretraining at a longer context.

Fu et al. (2024), "Data Engineering for Scaling Language Models to 128K Context", found that what
matters is *which* long data a model sees: upsampling long documents *inside every source* while
keeping each source's share of tokens (``per_source``) beats dropping short documents over the
whole corpus (``global``), which silently shifts the domain mix toward the sources that happen to
be long (books, code repositories), and beats upsampling whole sources (``upsample_sources``).
``truncate`` is the control: the original documents cut to the original context, i.e. what the
model saw before.

Everything here is a pure function of tokenized documents and a seed, so a strategy can be
previewed on the web page (:func:`mixture_stats` before vs after) and replayed exactly on a
worker. :func:`pack` turns the chosen documents into fixed-length training sequences.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from gpu_workers import catalog

STRATEGIES = catalog.keys(catalog.DATA_STRATEGIES)
DEFAULT_THRESHOLD = 4096
"""The paper's "long document" cut-off in tokens."""
DEFAULT_KEEP_SHORT_P = 0.15
"""The paper keeps roughly 10-20% of the short documents."""


@dataclass(frozen=True)
class Doc:
    """One tokenized document and the source (domain) it came from."""

    source: str
    tokens: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.tokens, tuple):
            object.__setattr__(self, "tokens", tuple(self.tokens))

    def __len__(self) -> int:
        return len(self.tokens)


def tokenize_documents(rows: Iterable[Mapping[str, str]], encode: Callable[[str], Sequence[int]]) -> list[Doc]:
    """Turn ``load_documents`` rows (``{"text", "source"}``) into :class:`Doc` s with *encode* (text -> ids)."""
    return [Doc(str(row["source"]), tuple(encode(row["text"]))) for row in rows]


# --- parameter checks ------------------------------------------------------------------------------


def _check_threshold(threshold: int) -> None:
    if threshold < 1:
        raise ValueError(f"threshold must be at least 1 token, not {threshold}")


def _check_p(keep_short_p: float) -> None:
    if not 0.0 <= keep_short_p <= 1.0:
        raise ValueError(f"keep_short_p is a probability between 0 and 1, not {keep_short_p}")


def _token_totals(docs: Iterable[Doc]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for doc in docs:
        totals[doc.source] = totals.get(doc.source, 0) + len(doc)
    return totals


def _by_source(docs: Iterable[Doc]) -> dict[str, list[Doc]]:
    groups: dict[str, list[Doc]] = {}
    for doc in docs:
        groups.setdefault(doc.source, []).append(doc)
    return groups


# --- building blocks -------------------------------------------------------------------------------


def _drop_short(docs: Iterable[Doc], threshold: int, keep_short_p: float, rng: random.Random) -> list[Doc]:
    """Every document of at least *threshold* tokens, and each shorter one with probability *keep_short_p*."""
    return [d for d in docs if len(d) >= threshold or rng.random() < keep_short_p]


def _fill(pool: Sequence[Doc], target: int, rng: random.Random) -> list[Doc]:
    """Exactly *target* tokens from *pool*: shuffled full passes, then a shuffled partial pass.

    Full passes before any repeat keep repetition as even as possible; the last document taken is cut
    to the tokens still missing, so totals (and hence shares) come out exact rather than "about".
    """
    pool = [d for d in pool if len(d)]
    out: list[Doc] = []
    missing = target
    while pool and missing > 0:
        order = list(pool)
        rng.shuffle(order)
        for doc in order:
            if len(doc) <= missing:
                out.append(doc)
                missing -= len(doc)
            else:
                out.append(Doc(doc.source, doc.tokens[:missing]))
                missing = 0
            if missing == 0:
                break
    return out


# --- strategies ------------------------------------------------------------------------------------


def upsample_per_source(
    docs: Sequence[Doc],
    *,
    threshold: int = DEFAULT_THRESHOLD,
    keep_short_p: float = DEFAULT_KEEP_SHORT_P,
    budget: int | None = None,
    seed: int = 0,
) -> list[Doc]:
    """Drop short documents, then restore every source's original token share.

    Each source is refilled from its own surviving documents (repeated where it lost more than the
    others, cut where it lost less) to ``share * total`` tokens, where ``total`` is *budget* or, by
    default, the tokens that survived the dropping (the same size ``global`` gives). A source whose
    documents were all short and all dropped is refilled from its original documents, so the mix holds.
    """
    _check_threshold(threshold)
    _check_p(keep_short_p)
    if budget is not None and budget < 1:
        raise ValueError(f"budget must be at least 1 token, not {budget}")
    rng = random.Random(seed)
    original = _by_source(docs)
    totals = _token_totals(docs)
    grand = sum(totals.values())
    shares = {s: t / grand for s, t in totals.items() if t}
    kept = _by_source(d for d in _drop_short(docs, threshold, keep_short_p, rng) if len(d))
    total = budget if budget is not None else sum(len(d) for group in kept.values() for d in group)
    out: list[Doc] = []
    for source, share in shares.items():
        out.extend(_fill(kept.get(source) or original[source], round(share * total), rng))
    return out


def upsample_global(
    docs: Sequence[Doc],
    *,
    threshold: int = DEFAULT_THRESHOLD,
    keep_short_p: float = DEFAULT_KEEP_SHORT_P,
    seed: int = 0,
) -> list[Doc]:
    """Drop short documents over the whole corpus, letting the domain mix drift (the paper's baseline)."""
    _check_threshold(threshold)
    _check_p(keep_short_p)
    return _drop_short(docs, threshold, keep_short_p, random.Random(seed))


def upsample_sources(docs: Sequence[Doc], multipliers: Mapping[str, float], *, seed: int = 0) -> list[Doc]:
    """Multiply the tokens of the named sources (``{"books": 2.0}``); the other sources are left as they are.

    A fractional multiplier repeats a random part of the source (1.5 = everything once, half again);
    below 1 it keeps only that fraction.
    """
    if not multipliers:
        raise ValueError("sources: name at least one source to upsample")
    known = _token_totals(docs)
    unknown = sorted(set(multipliers) - set(known))
    if unknown:
        raise ValueError(f"sources: unknown source(s) {', '.join(map(repr, unknown))}; the corpus has {sorted(known)}")
    for source, factor in multipliers.items():
        if not factor > 0 or math.isinf(factor):
            raise ValueError(f"multiplier for {source!r} must be a positive number, not {factor}")
    rng = random.Random(seed)
    out: list[Doc] = []
    for source, group in _by_source(docs).items():
        if source in multipliers:
            out.extend(_fill(group, round(multipliers[source] * known[source]), rng))
        else:
            out.extend(group)
    return out


def truncate_documents(docs: Iterable[Doc], *, original_length: int) -> list[Doc]:
    """The control: every document cut into consecutive pieces of at most *original_length* tokens."""
    if original_length < 1:
        raise ValueError(f"original_length must be at least 1 token, not {original_length}")
    return [
        Doc(d.source, d.tokens[start : start + original_length])
        for d in docs
        for start in range(0, len(d), original_length)
    ]


def apply_strategy(
    docs: Sequence[Doc],
    strategy: str,
    *,
    threshold: int = DEFAULT_THRESHOLD,
    keep_short_p: float = DEFAULT_KEEP_SHORT_P,
    sources: Mapping[str, float] | Sequence[str] = (),
    multiplier: float = 2.0,
    original_length: int = DEFAULT_THRESHOLD,
    budget: int | None = None,
    seed: int = 0,
) -> list[Doc]:
    """Run one of :data:`STRATEGIES`; only the parameters that strategy uses are read and checked.

    *sources* (``upsample_sources``) is either a list of names, each multiplied by *multiplier*, or
    a mapping of name to its own multiplier. *budget* is for ``per_source`` only.
    """
    if strategy == "per_source":
        return upsample_per_source(docs, threshold=threshold, keep_short_p=keep_short_p, budget=budget, seed=seed)
    if strategy == "global":
        return upsample_global(docs, threshold=threshold, keep_short_p=keep_short_p, seed=seed)
    if strategy == "upsample_sources":
        if isinstance(sources, str):
            sources = [sources]
        factors = dict(sources) if isinstance(sources, Mapping) else dict.fromkeys(sources, multiplier)
        return upsample_sources(docs, factors, seed=seed)
    if strategy == "truncate":
        return truncate_documents(docs, original_length=original_length)
    raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")


# --- statistics for the before / after page --------------------------------------------------------


def length_bins(max_length: int, count: int = 20) -> tuple[int, ...]:
    """Log-spaced integer bin edges covering lengths 1 .. *max_length* (the last edge is exclusive)."""
    if count < 1:
        raise ValueError(f"bins must be at least 1, not {count}")
    top = max(max_length, 1) + 1
    return tuple(sorted({1, top} | {round(top ** (i / count)) for i in range(count + 1)}))


@dataclass(frozen=True)
class SourceStats:
    documents: int
    tokens: int
    token_share: float
    """This source's share of all tokens."""
    long_token_share: float
    """Share of this source's tokens that sit in documents of at least ``threshold`` tokens."""
    doc_counts: tuple[int, ...]
    """Documents per length bin."""
    token_counts: tuple[int, ...]
    """Tokens per length bin (where the tokens are, which a document histogram hides)."""


@dataclass(frozen=True)
class MixtureStats:
    threshold: int
    documents: int
    tokens: int
    long_token_share: float
    bin_edges: tuple[int, ...]
    """Shared by every source; bin *i* holds lengths ``edges[i] <= n < edges[i + 1]``."""
    sources: dict[str, SourceStats] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def mixture_stats(
    docs: Sequence[Doc], *, threshold: int = DEFAULT_THRESHOLD, bins: int | Sequence[int] = 20
) -> MixtureStats:
    """Per-source token share, document count, long-token share and length histograms.

    *bins* is a number of log-spaced bins or explicit increasing edges; to draw "before" and "after"
    on the same axis, pass ``before.bin_edges`` as the *bins* of the "after" call. Lengths outside
    the edges are counted in the first or last bin, so histogram totals always match the counts.
    """
    _check_threshold(threshold)
    if isinstance(bins, int):
        edges = length_bins(max((len(d) for d in docs), default=1), bins)
    else:
        edges = tuple(int(e) for e in bins)
        if len(edges) < 2 or any(b <= a for a, b in itertools.pairwise(edges)):
            raise ValueError("bins must be a count or at least two strictly increasing edges")
    total = sum(len(d) for d in docs)
    groups = _by_source(docs)
    stats: dict[str, SourceStats] = {}
    for source in sorted(groups):
        group = groups[source]
        doc_counts = [0] * (len(edges) - 1)
        token_counts = [0] * (len(edges) - 1)
        for doc in group:
            i = min(max(bisect.bisect_right(edges, len(doc)) - 1, 0), len(doc_counts) - 1)
            doc_counts[i] += 1
            token_counts[i] += len(doc)
        tokens = sum(len(d) for d in group)
        long_tokens = sum(len(d) for d in group if len(d) >= threshold)
        stats[source] = SourceStats(
            documents=len(group),
            tokens=tokens,
            token_share=tokens / total if total else 0.0,
            long_token_share=long_tokens / tokens if tokens else 0.0,
            doc_counts=tuple(doc_counts),
            token_counts=tuple(token_counts),
        )
    long_total = sum(len(d) for d in docs if len(d) >= threshold)
    return MixtureStats(
        threshold=threshold,
        documents=len(docs),
        tokens=total,
        long_token_share=long_total / total if total else 0.0,
        bin_edges=edges,
        sources=stats,
    )


# --- packing ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackedSequence:
    tokens: tuple[int, ...]
    source_tokens: dict[str, int]
    """Tokens each source contributed to this sequence (separators belong to no source)."""


def pack(docs: Iterable[Doc], length: int, *, seed: int = 0, separator_id: int) -> list[PackedSequence]:
    """Fixed-length training sequences: shuffled documents joined by *separator_id*, cut every *length* tokens.

    Documents span sequence boundaries (no padding, nothing wasted but the tail), which is how
    long-context continued pretraining is usually fed; the incomplete last sequence is dropped.
    """
    if length < 1:
        raise ValueError(f"length must be at least 1 token, not {length}")
    if separator_id < 0:
        raise ValueError(f"separator_id must be a non-negative token id, not {separator_id}")
    order = [d for d in docs if len(d)]
    random.Random(seed).shuffle(order)
    out: list[PackedSequence] = []
    buffer: list[int] = []
    counts: dict[str, int] = {}

    def push(tokens: Sequence[int], source: str | None) -> None:
        nonlocal buffer, counts
        pos = 0
        while pos < len(tokens):
            take = min(length - len(buffer), len(tokens) - pos)
            buffer.extend(tokens[pos : pos + take])
            if source is not None:
                counts[source] = counts.get(source, 0) + take
            pos += take
            if len(buffer) == length:
                out.append(PackedSequence(tuple(buffer), counts))
                buffer, counts = [], {}

    for i, doc in enumerate(order):
        if i:
            push((separator_id,), None)
        push(doc.tokens, doc.source)
    return out
