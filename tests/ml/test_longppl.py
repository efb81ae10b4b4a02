"""LongPPL: windowed evaluator losses match plain transformers, the key-token rule is exactly the paper's, and
the key-token perplexity is exp of the pooled NLL over those tokens."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from gpu_workers.data.documents import long_documents
from gpu_workers.demo import DEMO_MODEL_DIR
from gpu_workers.device import place
from gpu_workers.evaluate import longppl
from gpu_workers.loading import load
from gpu_workers.reporter import Cancelled
from gpu_workers.spec import DatasetSpec, MethodSpec
from tests.ml.architectures import save_tiny

CPU = place("cpu")


@pytest.fixture(scope="module")
def demo() -> torch.nn.Module:
    return load(str(DEMO_MODEL_DIR), MethodSpec("none"), 256, CPU).model


@pytest.fixture(scope="module")
def demo_docs() -> list[list[int]]:
    """The first nine demo-corpus documents of ≥ 256 tokens, cut to 512. The demo model barely uses context
    beyond 64 tokens: of these only the ninth holds a key token (LSD 2.36, long loss 1.0), inside the first 256."""
    tokenizer = AutoTokenizer.from_pretrained(str(DEMO_MODEL_DIR))
    return [d[:512] for d in long_documents(DatasetSpec(), tokenizer, 256, 9)]


def _random_ids(vocab: int, length: int, seed: int = 0) -> list[int]:
    return torch.randint(0, vocab, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


@torch.no_grad()
def _plain_losses(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids])
    return torch.nn.functional.cross_entropy(model(input_ids=x).logits[0, :-1].float(), x[0, 1:], reduction="none")


@torch.no_grad()
def _reference_windowed(model: torch.nn.Module, ids: list[int], window: int) -> torch.Tensor:
    """Each target scored by the first window holding it; windows window//2 apart, the last ending at the end."""
    n = len(ids)
    starts = [0]
    while starts[-1] + window < n:
        starts.append(min(starts[-1] + window // 2, n - window))
    logits: dict[int, torch.Tensor] = {}
    out = []
    for p in range(1, n):
        start = next(s for s in starts if s + window > p)
        context = p - start
        if p >= window:
            assert window // 2 <= context <= window - 1
        else:
            assert start == 0
        if start not in logits:
            logits[start] = model(input_ids=torch.tensor([ids[start:start + window]])).logits[0].float()
        out.append(torch.nn.functional.cross_entropy(logits[start][context - 1], torch.tensor(ids[p])))
    return torch.stack(out)


# ------------------------------------------------------------------------------------------- windows


@pytest.mark.parametrize(("window", "batch"), [(64, 32), (37, 2), (16, 3)])
def test_windowed_losses_match_plain_transformers_on_the_demo_model(demo: torch.nn.Module, window: int,
                                                                    batch: int) -> None:
    ids = _random_ids(demo.config.vocab_size, 203)
    got = longppl.windowed_losses(demo, ids, window, device=CPU.device, batch=batch)
    assert got.dtype == torch.float32 and got.shape == (202,)
    assert torch.allclose(got, _reference_windowed(demo, ids, window), atol=1e-4)


def test_windowed_losses_match_plain_transformers_on_gpt_neox(tmp_path: Path) -> None:
    model = load(str(save_tiny("gpt_neox", tmp_path / "neox")), MethodSpec("none"), 64, CPU).model
    ids = _random_ids(model.config.vocab_size, 150, seed=1)
    got = longppl.windowed_losses(model, ids, 32, device=CPU.device, batch=4)
    assert torch.allclose(got, _reference_windowed(model, ids, 32), atol=1e-4)
    # Windowing changes the numbers beyond the first window (the model sees less context there).
    assert not torch.allclose(got[40:], _plain_losses(model, ids)[40:], atol=1e-3)


def test_a_window_holding_the_whole_input_is_one_pass(demo: torch.nn.Module) -> None:
    ids = _random_ids(demo.config.vocab_size, 120, seed=2)
    full = _plain_losses(demo, ids)
    for window in (120, 256):
        assert torch.allclose(longppl.windowed_losses(demo, ids, window, device=CPU.device), full, atol=1e-4)


# ------------------------------------------------------------------------------------------- key tokens


def test_key_tokens_are_exactly_gain_and_bound_with_strict_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    long = torch.tensor([1.0, 1.0, 2.0, 0.5, 1.5, 0.0])
    short = torch.tensor([3.0, 3.5, 5.0, 2.5, 4.0, 1.0])
    windows: list[int] = []

    def fake(model: object, ids: list[int], window: int, *, device: torch.device, batch: int = 32) -> torch.Tensor:
        windows.append(window)
        assert len(ids) == 7
        return {256: long, 64: short}[window]

    monkeypatch.setattr(longppl, "windowed_losses", fake)
    doc = list(range(7))
    (mask,) = longppl.key_token_masks(None, [doc], long_window=256, short_window=64, device=CPU.device)
    # gain 2: index 0 and 3 save exactly 2 nats (not more); index 2 has long loss exactly 2 (not below).
    assert mask.tolist() == [False, True, False, False, True, False]
    assert sorted(windows) == [64, 256]
    (loose,) = longppl.key_token_masks(None, [doc], long_window=256, short_window=64, gain=0.5, bound=1.5,
                                       device=CPU.device)
    assert loose.tolist() == [True, True, False, True, False, True]


def test_demo_key_tokens_lie_past_the_short_window_and_longppl_is_their_perplexity(
    demo: torch.nn.Module, demo_docs: list[list[int]]
) -> None:
    seen: list[tuple[int, int]] = []
    # short window 32 (the default's ratio, 1/8): with 64 the rebuilt demo model (stop 23) marks no key token in
    # these documents' first 256 tokens (the previous build marked a handful).
    masks = longppl.key_token_masks(demo, demo_docs, long_window=256, short_window=32, device=CPU.device,
                                    on_document=lambda done, total: seen.append((done, total)))
    assert seen == [(i, len(demo_docs)) for i in range(1, len(demo_docs) + 1)]
    assert [m.shape for m in masks] == [(len(d) - 1,) for d in demo_docs]
    assert all(m.dtype == torch.bool for m in masks)
    assert sum(int(m[:255].sum()) for m in masks) > 0
    assert not any(m[:31].any() for m in masks)  # tokens 1..31: both windows show the same context

    results = longppl.longppl_by_length(demo, demo_docs, masks, [32, 256], device=CPU.device,
                                        length_dependent=False)
    short, at_256 = results
    assert (short.longppl, short.ci_low, short.ci_high, short.key_tokens, short.documents) == (None, None, None, 0, 0)
    nll, count, docs = 0.0, 0, 0
    for doc, mask in zip(demo_docs, masks, strict=True):
        keys = mask[:255]
        nll += float(_plain_losses(demo, doc[:256])[keys].double().sum())
        count += int(keys.sum())
        docs += bool(keys.any())
    assert at_256.key_tokens == count and at_256.documents == docs
    assert at_256.longppl == pytest.approx(math.exp(nll / count), rel=1e-4)
    # Inside its window the evaluated model is the evaluator, and every key token has long loss < bound.
    assert at_256.longppl < math.exp(longppl.DEFAULT_BOUND)

    measurements = longppl.to_measurements(results)
    assert [(m.metric, m.context_length) for m in measurements] == [
        ("longppl_key_tokens", 32), ("longppl", 256), ("longppl_key_tokens", 256)]
    assert measurements[0].value == 0.0 and measurements[2].value == float(count)
    assert measurements[1].samples == count and measurements[1].value == at_256.longppl


# ------------------------------------------------------------------------------------------- LongPPL


def _synthetic_masks(docs: list[list[int]], share: float = 0.2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return [torch.rand(len(d) - 1, generator=g) < share for d in docs]


def test_longppl_pools_key_tokens_over_documents_and_one_pass_equals_per_length(
    demo: torch.nn.Module, demo_docs: list[list[int]]
) -> None:
    docs = [d[:384] for d in demo_docs[:4]]
    masks = _synthetic_masks(docs)
    masks[3][:] = False  # a document without key tokens adds nothing and is not counted
    lengths = [128, 384]
    one = longppl.longppl_by_length(demo, docs, masks, lengths, device=CPU.device, length_dependent=False)
    per = longppl.longppl_by_length(demo, docs, masks, lengths, device=CPU.device, length_dependent=True)
    for n, a, b in zip(lengths, one, per, strict=True):
        sums = [float(_plain_losses(demo, d[:n])[m[:n - 1]].double().sum()) for d, m in zip(docs, masks, strict=True)]
        counts = [int(m[:n - 1].sum()) for m in masks]
        assert a.length == b.length == n
        assert a.longppl == pytest.approx(math.exp(sum(sums) / sum(counts)), rel=1e-4)  # ratio of sums
        assert (a.key_tokens, a.documents) == (b.key_tokens, b.documents) == (sum(counts), 3)
        assert a.longppl == pytest.approx(b.longppl, rel=1e-4)
        assert a.ci_low == pytest.approx(b.ci_low, rel=1e-4) and a.ci_high == pytest.approx(b.ci_high, rel=1e-4)
        assert a.ci_low < a.longppl < a.ci_high
    (single,) = longppl.longppl_by_length(demo, docs[:1], masks[:1], [128], device=CPU.device,
                                          length_dependent=False)
    assert single.ci_low == single.ci_high == single.longppl


def test_length_dependent_passes_reset_the_rotary_cache(demo_docs: list[list[int]]) -> None:
    dynamic = load(str(DEMO_MODEL_DIR), MethodSpec("dynamic_ntk"), 512, CPU)
    assert dynamic.length_dependent
    docs = [d[:256] for d in demo_docs[:2]]
    masks = _synthetic_masks(docs)
    fresh = longppl.longppl_by_length(dynamic.model, docs, masks, [256], device=CPU.device, length_dependent=True)
    longppl.windowed_losses(dynamic.model, demo_docs[0], 512, device=CPU.device)  # grows the NTK scaling
    after_long = longppl.longppl_by_length(dynamic.model, docs, masks, [256], device=CPU.device,
                                           length_dependent=True)
    assert after_long[0].longppl == pytest.approx(fresh[0].longppl, rel=1e-5)


def test_cancellation_and_bad_arguments(demo: torch.nn.Module, demo_docs: list[list[int]]) -> None:
    docs = [d[:256] for d in demo_docs[:2]]
    masks = _synthetic_masks(docs)
    with pytest.raises(Cancelled):
        longppl.key_token_masks(demo, docs, long_window=256, short_window=64, device=CPU.device,
                                should_stop=lambda: True)
    with pytest.raises(Cancelled):
        longppl.longppl_by_length(demo, docs, masks, [256], device=CPU.device, length_dependent=False,
                                  should_stop=lambda: True)
    for long_window, short_window in ((256, 8), (256, 256), (64, 128)):
        with pytest.raises(ValueError, match="short_window"):
            longppl.key_token_masks(demo, docs, long_window=long_window, short_window=short_window,
                                    device=CPU.device)
    with pytest.raises(ValueError, match="at least 300 tokens"):
        longppl.longppl_by_length(demo, docs, masks, [128, 300], device=CPU.device, length_dependent=False)
    with pytest.raises(ValueError, match="mask"):
        longppl.longppl_by_length(demo, docs, [masks[0][:-1], masks[1]], [128], device=CPU.device,
                                  length_dependent=False)
    with pytest.raises(ValueError, match="masks for"):
        longppl.longppl_by_length(demo, docs, masks[:1], [128], device=CPU.device, length_dependent=False)


def test_default_short_window() -> None:
    assert longppl.default_short_window(4096) == 512
    assert longppl.default_short_window(256) == 32
    assert longppl.default_short_window(32) == 16
