"""Mixed context windows (LongRoPE2): every training step runs the RoPE evaluation runs at that length.

A forward hook on the tiny Llama's rotary embedding records the cos/sin tables (frequencies *and* attention
scale) of every training forward; the evaluation's own perplexity loop, hooked the same way, gives the
tables at the short (exactly the original context: the boundary transformers' dynamic reset misses) and
the long length. Also the one rule of when mixed windows mean anything, and the worker refusing a spec that
slipped past the composer.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest
import torch

from gpu_workers import pipeline
from gpu_workers.data.training import TrainData
from gpu_workers.device import place
from gpu_workers.evaluate.perplexity import perplexity_by_length
from gpu_workers.loading import load
from gpu_workers.methods import FAMILIES, RopeFacts
from gpu_workers.mixed_windows import rope_changes_with_length
from gpu_workers.reporter import MemoryReporter
from gpu_workers.spec import DatasetSpec, EvalSpec, MethodSpec, RunSpec, TrainSpec
from gpu_workers.train import cli as train_cli
from gpu_workers.train import step_kinds, train

ORIGINAL = 64
"""The tiny model's original context (``tests/ml/conftest.py``)."""
LONG = 2 * ORIGINAL
TARGET = 4 * ORIGINAL
PAIRS = 8  # head_dim 16
LONGROPE = MethodSpec("longrope", {"factor": 4.0, "short_factor": [1.0 + 0.1 * (i + 1) for i in range(PAIRS)],
                                   "attention_factor": 1.2})
DYNAMIC = MethodSpec("dynamic_ntk", {"factor": 4.0})

Tables = tuple[torch.Tensor, torch.Tensor]


def _record(model: torch.nn.Module, into: list[tuple[int, Tables]]) -> torch.utils.hooks.RemovableHandle:
    """Hook the rotary embedding: (length it computed for, (cos, sin) of the first row) per forward."""
    def hook(module: torch.nn.Module, args: tuple, kwargs: dict, out: Tables) -> None:
        positions = kwargs["position_ids"] if "position_ids" in kwargs else args[1]
        into.append((int(positions.max()) + 1, (out[0][0].detach().clone(), out[1][0].detach().clone())))

    return model.model.rotary_emb.register_forward_hook(hook, with_kwargs=True)


def _evaluation_tables(model: torch.nn.Module, vocab: int) -> dict[int, Tables]:
    """The tables the evaluation's perplexity loop computes at the original and at the long length."""
    calls: list[tuple[int, Tables]] = []
    doc = torch.randint(0, vocab, (LONG,), generator=torch.Generator().manual_seed(5)).tolist()
    handle = _record(model, calls)
    try:
        perplexity_by_length(model, [doc], [ORIGINAL, LONG], device=torch.device("cpu"), length_dependent=True)
    finally:
        handle.remove()
    return dict(calls)


@pytest.mark.parametrize("method", [LONGROPE, DYNAMIC], ids=["longrope", "dynamic_ntk"])
def test_each_training_step_uses_the_rope_evaluation_uses_at_its_length(tiny_model_dir: Path,
                                                                        method: MethodSpec) -> None:
    loaded = load(str(tiny_model_dir), method, TARGET, place("cpu"))
    vocab = loaded.model.config.vocab_size
    expected = _evaluation_tables(copy.deepcopy(loaded.model), vocab)
    # The two windows really differ (else the comparison below would prove nothing), LongRoPE at both lengths.
    assert not torch.allclose(expected[ORIGINAL][0], expected[LONG][0][:ORIGINAL], atol=1e-4)
    if method is LONGROPE:
        plain = torch.arange(ORIGINAL)[:, None] / 10000.0 ** (torch.arange(0, 2 * PAIRS, 2) / (2 * PAIRS))
        assert not torch.allclose(expected[ORIGINAL][0][:, :PAIRS], plain.cos(), atol=1e-3)  # short factors, ×1.2

    g = torch.Generator().manual_seed(0)
    data = TrainData(long=torch.randint(0, vocab, (6, LONG), generator=g).tolist(),
                     short=torch.randint(0, vocab, (6, ORIGINAL), generator=g).tolist())
    spec = TrainSpec(mode="finetune", steps=6, warmup_steps=1, grad_accum=2, mixed_windows=True, short_fraction=0.5,
                     seed=0)
    kinds = step_kinds(6, 0.5, 0, True)
    assert any(not a and b for a, b in itertools.pairwise(kinds))  # a short step right after a long one
    model = loaded.model
    calls: list[tuple[int, Tables]] = []
    per_step: list[list[tuple[int, Tables]]] = []

    def on_step(step: int, loss: float, lr: float) -> None:
        per_step.append(calls[:])
        calls.clear()

    handle = _record(model, calls)
    try:
        train(model, data, spec, on_step=on_step)
    finally:
        handle.remove()
    for short, forwards in zip(kinds, per_step, strict=True):
        assert [length for length, _ in forwards] == [ORIGINAL if short else LONG] * 2  # one per micro-batch
        for length, (cos, sin) in forwards:
            want_cos, want_sin = expected[length]
            assert torch.allclose(cos, want_cos, atol=1e-6) and torch.allclose(sin, want_sin, atol=1e-6), \
                f"{'short' if short else 'long'} step at {length} tokens differs from evaluation"
    # Training leaves no grown dynamic cache behind.
    rotary = model.model.rotary_emb
    assert torch.equal(rotary.inv_freq, rotary.original_inv_freq)


def _facts(rope_type: str = "default", has_rope: bool = True) -> RopeFacts:
    return RopeFacts(has_rope=has_rope, head_dim=16, rope_theta=10000.0, original_context=ORIGINAL,
                     rope_type=rope_type)


@pytest.mark.parametrize(("family", "rope_type", "changes"), [
    ("none", "default", False), ("none", "llama3", False), ("none", "yarn", False), ("none", "dynamic", True),
    ("none", "longrope", True), ("pi", "default", False), ("ntk", "default", False), ("yarn", "default", False),
    ("llama3", "default", False), ("base_change", "default", False), ("dynamic_ntk", "default", True),
    ("longrope", "default", True), ("longrope_search", "default", True), ("longrope2_search", "default", True),
    ("pi", "longrope", False),  # a method replaces the checkpoint's scaling: only its own rule counts
])
def test_mixed_windows_mean_something_only_for_a_rope_that_changes_with_length(family: str, rope_type: str,
                                                                               changes: bool) -> None:
    assert rope_changes_with_length(family, _facts(rope_type)) is changes


def test_the_rule_follows_every_family_s_own_flag() -> None:
    for name, family in FAMILIES.items():
        if name != "none":
            assert rope_changes_with_length(name, _facts()) is family.length_dependent, name
    assert not rope_changes_with_length("none", _facts("longrope", has_rope=False))


def _run_spec(model_dir: Path, method: MethodSpec, **train: object) -> RunSpec:
    return RunSpec(run_id="mixed", model_source=str(model_dir), dataset=DatasetSpec(), method=method,
                   target_length=TARGET, eval=EvalSpec(lengths=(ORIGINAL,), documents=1), device="cpu",
                   train=TrainSpec(mode="finetune", steps=2, warmup_steps=1, **train))


def test_the_worker_refuses_mixed_windows_for_a_method_they_cannot_change(tiny_model_dir: Path,
                                                                          tmp_path: Path) -> None:
    spec = _run_spec(tiny_model_dir, MethodSpec("pi", {"factor": 4.0}), mixed_windows=True)
    with pytest.raises(ValueError, match=r"change nothing for PI.*same at the original length as at the target"):
        pipeline.run(spec, MemoryReporter())
    with pytest.raises(ValueError, match="change nothing for None"):
        train_cli.run(_run_spec(tiny_model_dir, MethodSpec("none"), mixed_windows=True), tmp_path / "out")
    assert not (tmp_path / "out").exists()
