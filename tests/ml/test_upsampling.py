"""Length-upsampling strategies on a synthetic three-source corpus (no model, no tokenizer)."""

from __future__ import annotations

import json
import random
from itertools import chain

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_workers.data.upsampling import (
    STRATEGIES,
    Doc,
    apply_strategy,
    mixture_stats,
    pack,
    tokenize_documents,
    truncate_documents,
)

THRESHOLD = 512
SEP = 0
MAX_LEN = 20_000
_rng = random.Random(1234)
BASE = tuple(_rng.randrange(1, 250) for _ in range(MAX_LEN))
"""Document tokens are slices of this (ids 1..249), so the separator id 0 never occurs inside a document."""

SOURCES = {
    # name: (documents, median length in tokens, log-normal sigma)
    "web": (2000, 80, 1.0),
    "code": (800, 150, 1.0),
    "books": (200, 400, 1.0),
}


def make_corpus(seed: int = 0) -> list[Doc]:
    rng = random.Random(seed)
    docs = []
    for source, (count, median, sigma) in SOURCES.items():
        for _ in range(count):
            n = min(max(round(rng.lognormvariate(0, sigma) * median), 1), MAX_LEN)
            start = rng.randrange(0, MAX_LEN - n + 1)
            docs.append(Doc(source, BASE[start : start + n]))
    rng.shuffle(docs)
    return docs


@pytest.fixture(scope="module")
def corpus() -> list[Doc]:
    return make_corpus()


@pytest.fixture(scope="module")
def before(corpus: list[Doc]):
    return mixture_stats(corpus, threshold=THRESHOLD)


def shares(docs: list[Doc]) -> dict[str, float]:
    return {s: v.token_share for s, v in mixture_stats(docs, threshold=THRESHOLD).sources.items()}


def test_strategy_names() -> None:
    assert STRATEGIES == ("per_source", "global", "upsample_sources", "truncate")


def test_corpus_is_a_real_mixture(before) -> None:
    """Guard for the tests below: every source has both short and long documents, in different proportions."""
    long = {s: v.long_token_share for s, v in before.sources.items()}
    assert all(0.1 < share < 0.9 for share in long.values()), long
    assert long["web"] < long["code"] < long["books"]


def test_per_source_keeps_the_mix_and_raises_long_share_in_every_source(corpus, before) -> None:
    out = apply_strategy(corpus, "per_source", threshold=THRESHOLD, keep_short_p=0.1, seed=3)
    after = mixture_stats(out, threshold=THRESHOLD)
    assert set(after.sources) == set(before.sources)
    for source, old in before.sources.items():
        new = after.sources[source]
        assert new.token_share == pytest.approx(old.token_share, abs=0.02), source
        assert new.long_token_share > old.long_token_share + 0.05, source
    assert after.long_token_share > before.long_token_share + 0.1
    # Output documents are original documents of the same source; at most one per source is cut to fit.
    originals = {(d.source, d.tokens) for d in corpus}
    cut = [d for d in out if (d.source, d.tokens) not in originals]
    assert len(cut) <= len(SOURCES)
    assert all(any(o.source == d.source and o.tokens[: len(d)] == d.tokens for o in corpus) for d in cut)


def test_global_drifts_toward_the_long_source_and_per_source_does_not(corpus, before) -> None:
    glob = apply_strategy(corpus, "global", threshold=THRESHOLD, keep_short_p=0.1, seed=3)
    per = apply_strategy(corpus, "per_source", threshold=THRESHOLD, keep_short_p=0.1, seed=3)
    glob_stats = mixture_stats(glob, threshold=THRESHOLD)
    assert glob_stats.long_token_share > before.long_token_share + 0.1
    old, g, p = before.sources, glob_stats.sources, mixture_stats(per, threshold=THRESHOLD).sources
    assert g["books"].token_share > old["books"].token_share + 0.05
    assert g["web"].token_share < old["web"].token_share - 0.05
    drift_global = max(abs(g[s].token_share - old[s].token_share) for s in old)
    drift_per = max(abs(p[s].token_share - old[s].token_share) for s in old)
    assert drift_per < drift_global / 10
    # Same amount of data by default: per_source rebalances, it does not grow the corpus.
    assert sum(map(len, per)) == pytest.approx(sum(map(len, glob)), abs=len(SOURCES))
    # Global dropping keeps whole original documents, never repeats them; some short ones survive at p = 0.1.
    assert len({id(d) for d in glob}) == len(glob) and {id(d) for d in glob} <= {id(d) for d in corpus}
    assert any(len(d) < THRESHOLD for d in glob)


def test_per_source_budget_sets_the_total(corpus) -> None:
    total = sum(map(len, corpus))
    out = apply_strategy(corpus, "per_source", threshold=THRESHOLD, keep_short_p=0.1, budget=total, seed=0)
    assert sum(map(len, out)) == pytest.approx(total, abs=len(SOURCES))
    assert shares(out) == pytest.approx(shares(corpus), abs=0.001)


def test_per_source_keeps_a_source_with_only_short_documents() -> None:
    docs = [Doc("chat", BASE[:50])] * 40 + [Doc("books", BASE[:1000])] * 4 + [Doc("books", BASE[:30])] * 20
    out = apply_strategy(docs, "per_source", threshold=500, keep_short_p=0.0, seed=0)
    assert shares(out) == pytest.approx(shares(docs), abs=0.01)
    assert sum(1 for d in out if d.source == "books" and len(d) != 1000) <= 1  # short books all dropped


@pytest.mark.parametrize("factor", [2.0, 1.5, 0.5])
def test_upsample_sources_multiplies_only_the_chosen_source(corpus, before, factor: float) -> None:
    out = apply_strategy(corpus, "upsample_sources", sources=["books"], multiplier=factor, seed=1)
    after = mixture_stats(out, threshold=THRESHOLD)
    assert after.sources["books"].tokens == pytest.approx(factor * before.sources["books"].tokens, abs=1)
    for source in ("web", "code"):
        assert sorted(d.tokens for d in out if d.source == source) == sorted(
            d.tokens for d in corpus if d.source == source
        )


def test_upsample_sources_accepts_a_mapping(corpus, before) -> None:
    out = apply_strategy(corpus, "upsample_sources", sources={"books": 3.0, "code": 2.0}, seed=0)
    after = mixture_stats(out, threshold=THRESHOLD)
    assert after.sources["books"].tokens == pytest.approx(3 * before.sources["books"].tokens, abs=1)
    assert after.sources["code"].tokens == pytest.approx(2 * before.sources["code"].tokens, abs=1)
    assert after.sources["web"].tokens == before.sources["web"].tokens


def test_truncate_is_the_original_cut_into_context_sized_pieces(corpus, before) -> None:
    out = apply_strategy(corpus, "truncate", original_length=300)
    assert all(1 <= len(d) <= 300 for d in out)
    after = mixture_stats(out, threshold=THRESHOLD)
    assert {s: v.tokens for s, v in after.sources.items()} == {s: v.tokens for s, v in before.sources.items()}
    assert after.long_token_share == 0.0
    # Pieces come in order and nothing is lost: joined, they give back the documents.
    assert len(out) == sum(-(-len(d) // 300) for d in corpus)
    assert list(chain.from_iterable(d.tokens for d in out)) == list(chain.from_iterable(d.tokens for d in corpus))


@pytest.mark.parametrize("strategy", ["per_source", "global", "upsample_sources"])
def test_seeded(corpus, strategy: str) -> None:
    kwargs = {"threshold": THRESHOLD, "keep_short_p": 0.2, "sources": ["web"], "multiplier": 1.5}
    first = apply_strategy(corpus, strategy, seed=7, **kwargs)
    assert apply_strategy(corpus, strategy, seed=7, **kwargs) == first
    assert apply_strategy(corpus, strategy, seed=8, **kwargs) != first


def test_pack_makes_exact_sequences_and_conserves_tokens(corpus) -> None:
    docs = corpus[:300]
    seqs = pack(docs, 1024, seed=0, separator_id=SEP)
    assert seqs and all(len(s.tokens) == 1024 for s in seqs)
    stream = sum(map(len, docs)) + len(docs) - 1
    assert 0 <= stream - 1024 * len(seqs) < 1024
    separators = sum(s.tokens.count(SEP) for s in seqs)
    assert len(docs) - 1 - 1024 // 2 <= separators <= len(docs) - 1
    for s in seqs:
        assert sum(s.source_tokens.values()) == 1024 - s.tokens.count(SEP)
    assert pack(docs, 1024, seed=0, separator_id=SEP) == seqs
    assert pack(docs, 1024, seed=1, separator_id=SEP) != seqs


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=0, max_value=80), min_size=0, max_size=40),
    length=st.integers(min_value=1, max_value=64),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_pack_property(lengths: list[int], length: int, seed: int) -> None:
    docs = [Doc("ab"[i % 2], BASE[:n]) for i, n in enumerate(lengths)]
    seqs = pack(docs, length, seed=seed, separator_id=SEP)
    nonempty = [n for n in lengths if n]
    stream = sum(nonempty) + max(len(nonempty) - 1, 0)
    assert len(seqs) == stream // length
    assert all(len(s.tokens) == length for s in seqs)
    doc_tokens = sum(sum(s.source_tokens.values()) for s in seqs)
    assert doc_tokens == sum(len(s.tokens) - s.tokens.count(SEP) for s in seqs)
    assert sum(nonempty) - length <= doc_tokens <= sum(nonempty)


def test_mixture_stats_is_drawable(corpus, before) -> None:
    assert before.documents == len(corpus)
    assert before.tokens == sum(map(len, corpus))
    assert sum(v.token_share for v in before.sources.values()) == pytest.approx(1.0)
    edges = before.bin_edges
    assert list(edges) == sorted(set(edges)) and edges[0] == 1 and edges[-1] > max(map(len, corpus))
    for source, v in before.sources.items():
        assert v.documents == SOURCES[source][0]
        assert sum(v.doc_counts) == v.documents and sum(v.token_counts) == v.tokens
        assert len(v.doc_counts) == len(edges) - 1
    # "After" on the same axis: reuse the edges; truncation moves every document into the low bins.
    after = mixture_stats(truncate_documents(corpus, original_length=256), threshold=THRESHOLD, bins=edges)
    assert after.bin_edges == edges
    high = [i for i, lo in enumerate(edges[:-1]) if lo > 256]
    assert all(after.sources[s].doc_counts[i] == 0 for s in after.sources for i in high)
    assert json.loads(json.dumps(before.to_json()))["sources"]["books"]["documents"] == 200


def test_tokenize_documents() -> None:
    rows = [{"text": "a bb ccc", "source": "x"}, {"text": "", "source": "y"}]
    docs = tokenize_documents(rows, lambda text: [len(w) for w in text.split()])
    assert docs == [Doc("x", (1, 2, 3)), Doc("y", ())]


@pytest.mark.parametrize(
    ("strategy", "kwargs", "names"),
    [
        ("shuffle", {}, "strategy"),
        ("per_source", {"keep_short_p": 1.5}, "keep_short_p"),
        ("global", {"keep_short_p": -0.1}, "keep_short_p"),
        ("per_source", {"threshold": 0}, "threshold"),
        ("per_source", {"budget": 0}, "budget"),
        ("upsample_sources", {"sources": ["novels"]}, "sources"),
        ("upsample_sources", {"sources": []}, "sources"),
        ("upsample_sources", {"sources": ["books"], "multiplier": 0}, "multiplier"),
        ("upsample_sources", {"sources": {"books": float("nan")}}, "multiplier"),
        ("truncate", {"original_length": 0}, "original_length"),
    ],
)
def test_bad_parameters_are_named(corpus, strategy: str, kwargs: dict, names: str) -> None:
    with pytest.raises(ValueError, match=names):
        apply_strategy(corpus, strategy, **kwargs)


def test_bad_pack_and_stats_parameters_are_named(corpus) -> None:
    with pytest.raises(ValueError, match="length"):
        pack(corpus, 0, separator_id=SEP)
    with pytest.raises(ValueError, match="separator_id"):
        pack(corpus, 16, separator_id=-1)
    with pytest.raises(ValueError, match="bins"):
        mixture_stats(corpus, bins=[10, 5])
    with pytest.raises(ValueError, match="threshold"):
        mixture_stats(corpus, threshold=0)
