"""Perplexity against length: one pass equals one pass per length where the RoPE allows it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gpu_workers.device import place
from gpu_workers.evaluate import perplexity
from gpu_workers.loading import load
from gpu_workers.reporter import Cancelled
from gpu_workers.rotary import reset_rotary_cache
from gpu_workers.spec import MethodSpec

CPU = place("cpu")


def _docs(vocab: int, n: int = 3, length: int = 256) -> list[list[int]]:
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, vocab, (length,), generator=g).tolist() for _ in range(n)]


@pytest.mark.parametrize("family", ["none", "pi", "yarn", "ntk"])
def test_one_pass_equals_separate_passes_for_static_rope(tiny_model_dir: Path, family: str) -> None:
    loaded = load(str(tiny_model_dir), MethodSpec(family), 256, CPU)
    assert not loaded.length_dependent
    docs = _docs(loaded.model.config.vocab_size)
    lengths = [32, 64, 128, 256]
    one_pass = perplexity.perplexity_by_length(loaded.model, docs, lengths, device=CPU.device, length_dependent=False)
    separate = perplexity.perplexity_by_length(loaded.model, docs, lengths, device=CPU.device, length_dependent=True)
    for a, b in zip(one_pass, separate, strict=True):
        assert a.length == b.length
        assert a.perplexity == pytest.approx(b.perplexity, rel=1e-4)


def test_dynamic_ntk_differs_by_length_and_resets_between_passes(tiny_model_dir: Path) -> None:
    loaded = load(str(tiny_model_dir), MethodSpec("dynamic_ntk"), 256, CPU)
    assert loaded.length_dependent
    docs = _docs(loaded.model.config.vocab_size, n=2)
    # A long pass first, then a short one: without the reset the short pass would inherit the long scaling.
    perplexity.token_losses(loaded.model, docs[0], CPU.device)
    reset_rotary_cache(loaded.model)
    short_after_long = perplexity.token_losses(loaded.model, docs[0][:128], CPU.device)
    fresh = load(str(tiny_model_dir), MethodSpec("dynamic_ntk"), 256, CPU)
    short_fresh = perplexity.token_losses(fresh.model, docs[0][:128], CPU.device)
    assert torch.allclose(short_after_long, short_fresh, atol=1e-5)
    # And the per-length path is what a fresh model gives at each length.
    results = perplexity.perplexity_by_length(loaded.model, docs, [128, 256], device=CPU.device, length_dependent=True)
    fresh_losses = [perplexity.token_losses(fresh.model, d[:128], CPU.device).mean().item() for d in docs]
    expected_128 = math.exp(np.mean(fresh_losses))
    assert results[0].perplexity == pytest.approx(expected_128, rel=1e-4)
    # Within the original context (64) dynamic NTK is the base model; beyond it, it is not. transformers
    # resets a grown cache only for inputs strictly shorter than the original, hence our own reset.
    reset_rotary_cache(fresh.model)
    base = load(str(tiny_model_dir), MethodSpec("none"), 256, CPU)
    assert torch.allclose(
        perplexity.token_losses(base.model, docs[0][:64], CPU.device),
        perplexity.token_losses(fresh.model, docs[0][:64], CPU.device), atol=1e-5,
    )
    reset_rotary_cache(fresh.model)
    assert not torch.allclose(
        perplexity.token_losses(base.model, docs[0][:256], CPU.device),
        perplexity.token_losses(fresh.model, docs[0][:256], CPU.device), atol=1e-3,
    )


def test_perplexity_is_exp_of_mean_token_loss(tiny_model_dir: Path) -> None:
    loaded = load(str(tiny_model_dir), MethodSpec("none"), 64, CPU)
    doc = _docs(loaded.model.config.vocab_size, n=1, length=64)[0]
    x = torch.tensor([doc])
    with torch.no_grad():
        reference = loaded.model(input_ids=x, labels=x).loss.item()
    (result,) = perplexity.perplexity_by_length(loaded.model, [doc], [64], device=CPU.device, length_dependent=False)
    assert result.perplexity == pytest.approx(math.exp(reference), rel=1e-5)


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_agreement() -> None:
    spread = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    low, high = perplexity.bootstrap_ci(spread)
    assert low < math.exp(spread.mean()) < high
    tight_low, tight_high = perplexity.bootstrap_ci(np.array([3.0, 3.01, 2.99, 3.0, 3.0]))
    assert tight_high - tight_low < (high - low) / 10


def test_documents_shorter_than_the_longest_length_are_refused(tiny_model_dir: Path) -> None:
    loaded = load(str(tiny_model_dir), MethodSpec("none"), 64, CPU)
    with pytest.raises(ValueError, match="at least 128 tokens"):
        perplexity.perplexity_by_length(loaded.model, [[1] * 100], [64, 128], device=CPU.device, length_dependent=False)


def test_stop_request_interrupts_between_documents(tiny_model_dir: Path) -> None:
    loaded = load(str(tiny_model_dir), MethodSpec("none"), 64, CPU)
    calls = iter([False, True])
    with pytest.raises(Cancelled):
        perplexity.perplexity_by_length(
            loaded.model, _docs(loaded.model.config.vocab_size, 3, 64), [64], device=CPU.device,
            length_dependent=False, should_stop=lambda: next(calls),
        )


def test_chunked_losses_equal_the_models_own_loss_across_chunk_borders(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = load(str(tiny_model_dir), MethodSpec("yarn", {"factor": 2}), 256, CPU)
    ids = _docs(loaded.model.config.vocab_size, n=1)[0]
    vocab = loaded.model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(perplexity, "CPU_CHUNK_LOGITS", 100 * vocab)  # 100 positions a chunk: 255 targets span 3
    assert perplexity.loss_chunk(CPU.device, vocab) == 100
    losses = perplexity.token_losses(loaded.model, ids, CPU.device)
    with torch.no_grad():
        reference = loaded.model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss
    assert losses.shape == (255,)
    assert losses.mean().item() == pytest.approx(reference.item(), rel=1e-5)
    assert perplexity.loss_chunk(torch.device("cuda"), vocab) == perplexity.LOSS_CHUNK
