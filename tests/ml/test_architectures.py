"""Every architecture × every family: the RoPE a run uses is the closed form over the rotary dims only.

The closed forms below are written out from the papers, not taken from transformers or from our own
methods, so a family that rotates the whole head of a partial-rotary model, forgets a checkpoint's own
scaling or drops its rotary fraction fails here. Perplexity is checked against plain transformers
(``labels=`` loss on a model configured by hand) on the same tokens, and *none* against
``AutoModelForCausalLM.from_pretrained`` bit for bit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from gpu_workers import pipeline
from gpu_workers.device import Placement
from gpu_workers.export import ExportError, export_checkpoint
from gpu_workers.loading import load
from gpu_workers.model_facts import inspect_model
from gpu_workers.reporter import MemoryReporter
from gpu_workers.spec import DatasetSpec, EvalSpec, MethodSpec, RunSpec
from tests.ml.architectures import CONFIGS, EXPECTED_ROTARY_DIM, ORIGINAL, rotary_module, save_tiny

TARGET = 4 * ORIGINAL
S = TARGET / ORIGINAL
FAMILIES = ("none", "pi", "ntk", "dynamic_ntk", "yarn", "llama3", "longrope", "base_change")
PARAMS: dict[str, dict[str, Any]] = {"base_change": {"rope_theta": 40000.0}}
CPU = Placement(torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {name: save_tiny(name, tmp_path_factory.mktemp(name)) for name in CONFIGS}


def _shipped(path: Path) -> dict[str, Any]:
    return json.loads((path / "config.json").read_text())


def _rope(path: Path) -> tuple[int, float, dict[str, Any]]:
    """(rotary dim, θ, shipped rope_parameters) read the plain transformers way."""
    config = AutoConfig.from_pretrained(path)
    rope = config.rope_parameters
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return int(head_dim * rope.get("partial_rotary_factor", 1.0)), float(rope["rope_theta"]), rope


def plain(d: int, theta: float) -> list[float]:
    return [theta ** (-2 * i / d) for i in range(d // 2)]


def llama3_form(d: int, theta: float, s: float, low: float, high: float, original: int) -> list[float]:
    out = []
    for f in plain(d, theta):
        wavelength = 2 * math.pi / f
        if wavelength < original / high:
            out.append(f)
        elif wavelength > original / low:
            out.append(f / s)
        else:
            smooth = (original / wavelength - low) / (high - low)
            out.append((1 - smooth) * f / s + smooth * f)
    return out


def yarn_ramp(d: int, theta: float, original: int) -> list[float]:
    """YaRN's NTK-by-parts ramp: 0 for pairs turning ≥ 32 times over the original context, 1 for < 1 turn."""
    def dim(rotations: float) -> float:
        return d * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = max(math.floor(dim(32)), 0), min(math.ceil(dim(1)), d - 1)
    return [min(1.0, max(0.0, (i - low) / (high - low))) for i in range(d // 2)]


def yarn_form(d: int, theta: float, s: float, original: int) -> list[float]:
    ramp = yarn_ramp(d, theta, original)
    return [f / s * r + f * (1 - r) for f, r in zip(plain(d, theta), ramp, strict=True)]


def closed_form(name: str, family: str, path: Path, seq_len: int | None = None) -> tuple[list[float], float]:
    """(inv_freq, attention scaling) the papers give for ``family`` on checkpoint ``name`` at ``seq_len``."""
    d, theta, rope = _rope(path)
    if family == "none":
        kind = rope["rope_type"]
        if kind == "llama3":
            return llama3_form(d, theta, rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"],
                               rope["original_max_position_embeddings"]), 1.0
        if kind == "longrope":
            factors = rope["long_factor"] if (seq_len or 0) > ORIGINAL else rope["short_factor"]
            shipped_s = _shipped(path)["max_position_embeddings"] / ORIGINAL
            return ([f / x for f, x in zip(plain(d, theta), factors, strict=True)],
                    math.sqrt(1 + math.log(shipped_s) / math.log(ORIGINAL)))
        return plain(d, theta), 1.0
    if family == "pi":
        return [f / S for f in plain(d, theta)], 1.0
    if family == "ntk":
        return plain(d, theta * S ** (d / (d - 2))), 1.0
    if family == "dynamic_ntk":
        # Blank factor = 1, the YaRN paper's dynamic NTK: NTK at scale L / L0 for an input of L > L0 tokens.
        length = max(seq_len or ORIGINAL, ORIGINAL)
        return plain(d, theta * (length / ORIGINAL) ** (d / (d - 2))), 1.0
    if family == "yarn":
        return yarn_form(d, theta, S, ORIGINAL), 0.1 * math.log(S) + 1
    if family == "llama3":
        return llama3_form(d, theta, S, 1.0, 4.0, ORIGINAL), 1.0
    if family == "longrope":
        attention = math.sqrt(1 + math.log(S) / math.log(ORIGINAL))
        if (seq_len or 0) <= ORIGINAL:
            factors = rope.get("short_factor") or [1.0] * (d // 2)
            return [f / x for f, x in zip(plain(d, theta), factors, strict=True)], attention
        # The checkpoint's own long factors, else LongRoPE's YaRN-shaped start 1 + (s − 1)·ramp.
        factors = rope.get("long_factor") or [1 + (S - 1) * r for r in yarn_ramp(d, theta, ORIGINAL)]
        return [f / x for f, x in zip(plain(d, theta), factors, strict=True)], attention
    if family == "base_change":
        return plain(d, 40000.0), 1.0
    raise AssertionError(family)


def _ids(length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 4096, (1, length), generator=torch.Generator().manual_seed(seed))


def test_facts_read_the_rotary_dims_of_every_architecture(checkpoints: dict[str, Path]) -> None:
    for name, path in checkpoints.items():
        facts = inspect_model(str(path))
        assert facts.rotary_dim == EXPECTED_ROTARY_DIM.get(name, 16), name
        assert facts.original_context == ORIGINAL, name
        assert facts.rope_type == {"llama31": "llama3", "phi3_longrope": "longrope"}.get(name, "default"), name
    qwen3 = inspect_model(str(checkpoints["qwen3"]))
    assert (qwen3.head_dim, qwen3.head_dim_explicit) == (32, True)
    assert inspect_model(str(checkpoints["llama31"])).max_position_embeddings == 8 * ORIGINAL


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("family", (*FAMILIES, "longrope_search", "longrope2_search"))
def test_built_rope_is_the_closed_form_over_the_rotary_dims(checkpoints: dict[str, Path], name: str,
                                                           family: str) -> None:
    loaded = load(str(checkpoints[name]), MethodSpec(family, PARAMS.get(family, {})), TARGET, CPU)
    module = rotary_module(loaded.model)
    family = "longrope" if family.endswith("_search") else family  # a search run starts from LongRoPE's start
    want, attention = closed_form(name, family, checkpoints[name])
    assert module.inv_freq.numel() == len(want) == loaded.facts.rotary_dim // 2
    assert torch.allclose(module.inv_freq.double(), torch.tensor(want, dtype=torch.float64), rtol=2e-5, atol=0)
    assert module.attention_scaling == pytest.approx(attention, rel=1e-6)
    if loaded.length_dependent or (family == "none" and loaded.facts.rope_type == "longrope"):
        with torch.no_grad():
            loaded.model(_ids(2 * ORIGINAL))
        want, attention = closed_form(name, family, checkpoints[name], seq_len=2 * ORIGINAL)
        assert torch.allclose(module.inv_freq.double(), torch.tensor(want, dtype=torch.float64), rtol=2e-5)
        assert module.attention_scaling == pytest.approx(attention, rel=1e-6)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_none_is_exactly_the_checkpoint_as_shipped(checkpoints: dict[str, Path], name: str) -> None:
    ours = load(str(checkpoints[name]), MethodSpec("none"), TARGET, CPU).model
    theirs = AutoModelForCausalLM.from_pretrained(checkpoints[name]).eval()
    assert ours.config.rope_parameters == theirs.config.rope_parameters
    with torch.no_grad():
        for length in (ORIGINAL // 2, 3 * ORIGINAL):
            assert torch.equal(ours(_ids(length)).logits, theirs(_ids(length)).logits), (name, length)


def _by_hand(name: str, family: str, path: Path) -> tuple[dict[str, Any], int | None]:
    """The rope_parameters (and max_position_embeddings) a researcher would write for ``family``."""
    d, theta, rope = _rope(path)
    keep = {"partial_rotary_factor": rope["partial_rotary_factor"]} if "partial_rotary_factor" in rope else {}
    o = {"original_max_position_embeddings": ORIGINAL}
    return {
        "none": (rope, None),
        "pi": ({"rope_type": "linear", "rope_theta": theta, "factor": S, **keep}, TARGET),
        "ntk": ({"rope_type": "default", "rope_theta": theta * S ** (d / (d - 2)), **keep}, TARGET),
        "dynamic_ntk": ({"rope_type": "dynamic", "rope_theta": theta, "factor": 1.0, **keep}, ORIGINAL),
        "yarn": ({"rope_type": "yarn", "rope_theta": theta, "factor": S, "beta_fast": 32.0, "beta_slow": 1.0,
                  "attention_factor": 0.1 * math.log(S) + 1, **o, **keep}, TARGET),
        "llama3": ({"rope_type": "llama3", "rope_theta": theta, "factor": S, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, **o, **keep}, TARGET + 1),
        "base_change": ({"rope_type": "default", "rope_theta": 40000.0, **keep}, TARGET),
    }[family]


def _corpus(path: Path, tokenizer: Any, docs: int, tokens: int) -> Path:
    words = [
        "river", "stone", "light", "paper", "window", "garden", "music", "number", "table", "evening",
    ]
    g = torch.Generator().manual_seed(3)
    rows = []
    for _ in range(docs):
        text = " ".join(words[i] for i in torch.randint(len(words), (tokens,), generator=g).tolist())
        assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) >= tokens
        rows.append({"text": text, "source": "words"})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("family", ("none", "pi", "ntk", "dynamic_ntk", "yarn", "llama3", "base_change"))
def test_pipeline_perplexity_equals_plain_transformers(checkpoints: dict[str, Path], tmp_path: Path, name: str,
                                                       family: str) -> None:
    path = checkpoints[name]
    tokenizer = AutoTokenizer.from_pretrained(path)
    corpus = _corpus(tmp_path / "docs.jsonl", tokenizer, docs=2, tokens=TARGET)
    lengths = (ORIGINAL, TARGET)
    reporter = MemoryReporter()
    pipeline.run(RunSpec(run_id="x", model_source=str(path), dataset=DatasetSpec(kind="local", path=str(corpus)),
                         method=MethodSpec(family, PARAMS.get(family, {})), target_length=TARGET, device="cpu",
                         eval=EvalSpec(lengths=lengths, documents=2)), reporter)
    ours = {m.context_length: m.value for m in reporter.measurements if m.metric == "perplexity"}

    rope, max_positions = _by_hand(name, family, path)
    docs = [tokenizer(json.loads(line)["text"], add_special_tokens=False)["input_ids"]
            for line in corpus.read_text().splitlines()]
    for n in lengths:
        extra = {} if family == "none" else {"rope_parameters": rope, "max_position_embeddings": max_positions}
        model = AutoModelForCausalLM.from_pretrained(path, **extra).eval()  # fresh: dynamic RoPE starts over
        nll = []
        for doc in docs:
            with torch.no_grad():
                ids = torch.tensor([doc[:n]])
                nll.append(float(model(ids, labels=ids).loss))
        assert ours[n] == pytest.approx(math.exp(sum(nll) / len(nll)), rel=2e-4), (name, family, n)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("family", FAMILIES)
def test_exported_checkpoint_reloads_with_identical_logits(checkpoints: dict[str, Path], tmp_path: Path, name: str,
                                                          family: str) -> None:
    method = MethodSpec(family, PARAMS.get(family, {}))
    if name.startswith("phi3") and family in ("pi", "dynamic_ntk", "yarn", "llama3"):
        # Phi3Config accepts only default and longrope RoPE: the export says so instead of writing a dud.
        with pytest.raises(ExportError, match=r"Phi3Config.*must be one of"):
            export_checkpoint(str(checkpoints[name]), method, TARGET, tmp_path / "export")
        assert not (tmp_path / "export").exists()
        return
    out = export_checkpoint(str(checkpoints[name]), method, TARGET, tmp_path / "export")
    ours = load(str(checkpoints[name]), method, TARGET, CPU).model
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        for length in (ORIGINAL // 2, 2 * ORIGINAL):  # ascending: a dynamic RoPE only grows
            assert torch.equal(ours(_ids(length)).logits, reloaded(_ids(length)).logits), (name, family, length)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_kv_cache_prediction_matches_the_cache_the_model_fills(checkpoints: dict[str, Path], name: str) -> None:
    from gpu_workers.evaluate.memory import cache_bytes, predicted_kv_cache_bytes, prefill

    loaded = load(str(checkpoints[name]), MethodSpec("yarn"), TARGET, CPU)
    cache = prefill(loaded.model, _ids(100)[0].tolist(), CPU.device)
    assert cache_bytes(cache) == predicted_kv_cache_bytes(loaded.facts, 100, torch.float32) > 0


@pytest.mark.parametrize("name", ["llama", "phi", "phi3_longrope"])
def test_the_retention_reference_is_the_checkpoint_as_shipped_even_for_longrope_short_factors(
    checkpoints: dict[str, Path], name: str
) -> None:
    """Issue 12, defect 1: reset_rotary_cache used to copy LongRoPE's short-factor frequencies back in."""
    from gpu_workers.evaluate.retention import original_rope
    from gpu_workers.methods.frequencies import original_rotary
    from gpu_workers.rotary import reset_rotary_cache

    pairs = EXPECTED_ROTARY_DIM.get(name, 16) // 2
    extended = load(str(checkpoints[name]), MethodSpec("longrope", {"short_factor": [1.5] * pairs}), TARGET, CPU)
    base = AutoModelForCausalLM.from_pretrained(checkpoints[name]).eval()
    ids = _ids(ORIGINAL)
    with torch.no_grad():
        want = base(ids).logits
        assert not torch.allclose(extended.model(ids).logits, want, atol=1e-4), "short factors 1.5 change the RoPE"
        with original_rope(extended.model, *original_rotary(extended.facts.rope)):
            reset_rotary_cache(extended.model)
            got = extended.model(ids).logits
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
        reset_rotary_cache(extended.model)
        assert not torch.allclose(extended.model(ids).logits, want, atol=1e-4), "the method's RoPE comes back"


def test_retention_on_a_model_whose_window_is_longer_than_every_evaluated_length(checkpoints: dict[str, Path],
                                                                                  tmp_path: Path) -> None:
    """A real checkpoint (8K window) evaluated at 1–2K: retention compares at the longest length evaluated."""
    path = checkpoints["llama"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    corpus = _corpus(tmp_path / "docs.jsonl", tokenizer, docs=2, tokens=ORIGINAL // 2)
    reporter = MemoryReporter()
    pipeline.run(RunSpec(run_id="r", model_source=str(path), dataset=DatasetSpec(kind="local", path=str(corpus)),
                         method=MethodSpec("yarn"), target_length=TARGET, device="cpu",
                         eval=EvalSpec(lengths=(ORIGINAL // 4, ORIGINAL // 2), documents=2,
                                       suite=("perplexity", "retention"))), reporter)
    retention = [m for m in reporter.measurements if m.metric == "retention_perplexity"]
    assert [m.context_length for m in retention] == [ORIGINAL // 2]
    assert 0 < retention[0].value < 2
