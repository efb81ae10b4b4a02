"""Self-Extend, ReRoPE, Leaky ReRoPE, log-n attention and Dynamic YaRN against references written here.

The attention-level references use RoPE's relative form — score(m, n) = Re Σ_j q̃_j conj(k̃_j) e^{i·P(m,n)·θ_j}
over complex pairs, with P(m, n) the relative position each paper prescribes — built from the layer's
projections, not from the rotated tensors the patch sees, so a wrong rotation, a wrong position map or a
wrong band edge fails here. Dynamic YaRN is checked against plain transformers' static YaRN at the
factor L / L₀ the input implies.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from gpu_workers import methods
from gpu_workers.device import Placement
from gpu_workers.evaluate.perplexity import perplexity_by_length
from gpu_workers.evaluate.retention import original_rope
from gpu_workers.export import ExportError, export_checkpoint
from gpu_workers.loading import load
from gpu_workers.methods import MethodError, RopeFacts
from gpu_workers.methods.frequencies import original_rotary
from gpu_workers.rotary import reset_rotary_cache
from gpu_workers.spec import MethodSpec
from tests.ml.architectures import CONFIGS, ORIGINAL, rotary_module, save_tiny

CPU = Placement(torch.device("cpu"), torch.float32)
TARGET = 4 * ORIGINAL
WINDOW, GROUP, LEAK = 16, 4, 3.0
ATTENTION_METHODS = {
    "self_extend": {"window": WINDOW, "group": GROUP},
    "rerope": {"window": WINDOW},
    "leaky_rerope": {"window": WINDOW, "leak": LEAK},
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {name: save_tiny(name, tmp_path_factory.mktemp(name)) for name in CONFIGS}


def _ids(length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 4096, (1, length), generator=torch.Generator().manual_seed(seed))


def relative_positions(family: str, length: int) -> torch.Tensor:
    """P(m, n) for every query m and key n, as the papers define it."""
    m = torch.arange(length, dtype=torch.float64)[:, None]
    n = torch.arange(length, dtype=torch.float64)[None, :]
    exact = m - n
    if family == "self_extend":  # Jin et al. 2024, eq. for grouped attention
        far = (torch.floor(m / GROUP) + WINDOW - WINDOW // GROUP) - torch.floor(n / GROUP)
    elif family == "rerope":  # Su 2023: every distance past the window is the window
        far = torch.full_like(exact, float(WINDOW))
    elif family == "leaky_rerope":  # Su 2023: past the window the distance grows 1/k as fast
        far = WINDOW + (exact - WINDOW) / LEAK
    else:
        return exact
    return torch.where(exact < WINDOW, exact, far)


def reference_attention(layer: torch.nn.Module, hidden: torch.Tensor, positions: torch.Tensor, theta: float,
                        rotary_dim: int, query_scale: torch.Tensor | None = None) -> torch.Tensor:
    """One Llama / Phi attention layer computed from its projections with relative positions ``positions``."""
    heads = layer.config.num_attention_heads
    kv_heads = getattr(layer.config, "num_key_value_heads", None) or heads
    d = layer.head_dim
    seq = hidden.shape[1]
    q = layer.q_proj(hidden)[0].view(seq, heads, d).double()
    k = layer.k_proj(hidden)[0].view(seq, kv_heads, d).double().repeat_interleave(heads // kv_heads, dim=1)
    v = layer.v_proj(hidden)[0].view(seq, kv_heads, d).double().repeat_interleave(heads // kv_heads, dim=1)
    if query_scale is not None:
        q = q * query_scale.double()[:, None, None]
    half = rotary_dim // 2
    freqs = torch.tensor([theta ** (-2 * j / rotary_dim) for j in range(half)], dtype=torch.float64)
    zq = torch.complex(q[..., :half], q[..., half:rotary_dim])  # (seq, heads, pairs)
    zk = torch.complex(k[..., :half], k[..., half:rotary_dim])
    phase = torch.exp(1j * positions[:, :, None] * freqs[None, None, :])  # (m, n, pairs)
    scores = torch.einsum("mhj,nhj,mnj->hmn", zq, zk.conj(), phase).real
    scores = scores + torch.einsum("mhx,nhx->hmn", q[..., rotary_dim:], k[..., rotary_dim:])
    scores = scores / math.sqrt(d)
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    out = torch.einsum("hmn,nhx->mhx", probs, v).reshape(1, seq, heads * d).float()
    projection = layer.o_proj if hasattr(layer, "o_proj") else layer.dense
    return projection(out)


def _first_attention(model: torch.nn.Module) -> torch.nn.Module:
    return model.model.layers[0].self_attn


def _layer_io(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(input hidden states, output) of the first attention layer in one forward pass."""
    seen: dict[str, torch.Tensor] = {}
    layer = _first_attention(model)

    def before(module: Any, args: tuple, kwargs: dict) -> None:
        seen["in"] = kwargs.get("hidden_states", args[0] if args else None)

    def after(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        seen["out"] = output[0]

    hooks = [layer.register_forward_pre_hook(before, with_kwargs=True),
             layer.register_forward_hook(after, with_kwargs=True)]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for hook in hooks:
            hook.remove()
    return seen["in"], seen["out"]


@pytest.mark.parametrize("name", ["llama", "phi"])
@pytest.mark.parametrize("family", sorted(ATTENTION_METHODS))
def test_remapped_attention_equals_the_papers_relative_positions(checkpoints: dict[str, Path], name: str,
                                                                 family: str) -> None:
    loaded = load(str(checkpoints[name]), MethodSpec(family, ATTENTION_METHODS[family]), TARGET, CPU)
    length = 3 * ORIGINAL
    hidden, got = _layer_io(loaded.model, _ids(length))
    with torch.no_grad():
        want = reference_attention(_first_attention(loaded.model), hidden, relative_positions(family, length),
                                   loaded.facts.rope_theta, loaded.facts.rotary_dim)
        plain = reference_attention(_first_attention(loaded.model), hidden, relative_positions("none", length),
                                    loaded.facts.rope_theta, loaded.facts.rotary_dim)
    assert torch.allclose(got, want, atol=2e-5, rtol=1e-4), (got - want).abs().max()
    assert not torch.allclose(got, plain, atol=1e-4), "past the window the positions are remapped"


@pytest.mark.parametrize("name", ["llama", "phi"])
def test_log_n_scales_each_query_past_the_original_context(checkpoints: dict[str, Path], name: str) -> None:
    loaded = load(str(checkpoints[name]), MethodSpec("none", {"log_n": 1}), TARGET, CPU)
    length = 3 * ORIGINAL
    hidden, got = _layer_io(loaded.model, _ids(length))
    scale = torch.tensor([max(1.0, math.log(m + 1) / math.log(ORIGINAL)) for m in range(length)])
    with torch.no_grad():
        want = reference_attention(_first_attention(loaded.model), hidden, relative_positions("none", length),
                                   loaded.facts.rope_theta, loaded.facts.rotary_dim, query_scale=scale)
    assert torch.allclose(got, want, atol=2e-5, rtol=1e-4), (got - want).abs().max()


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("family", [*sorted(ATTENTION_METHODS), "log_n"])
def test_attention_methods_on_every_architecture(checkpoints: dict[str, Path], name: str, family: str) -> None:
    """Inside the window nothing changes; the KV cache gives the one-pass logits; past it something does."""
    method = MethodSpec("none", {"log_n": 1}) if family == "log_n" else MethodSpec(family, ATTENTION_METHODS[family])
    ours = load(str(checkpoints[name]), method, TARGET, CPU).model
    theirs = AutoModelForCausalLM.from_pretrained(checkpoints[name]).eval()
    short = WINDOW if family != "log_n" else ORIGINAL
    ids = _ids(3 * ORIGINAL)
    with torch.no_grad():
        assert torch.allclose(ours(ids[:, :short]).logits, theirs(ids[:, :short]).logits, atol=1e-5), name
        full = ours(ids).logits
        assert not torch.allclose(full, theirs(ids).logits, atol=1e-4), name
        cache = DynamicCache(config=ours.config)
        split = 2 * ORIGINAL + 5
        first = ours(ids[:, :split], past_key_values=cache, use_cache=True).logits
        steps = [ours(ids[:, i:i + 1], past_key_values=cache, use_cache=True).logits for i in range(split, split + 3)]
        rest = ours(ids[:, split + 3:], past_key_values=cache, use_cache=True).logits
    assert torch.allclose(torch.cat([first, *steps, rest], dim=1), full, atol=2e-5), name


def test_yarn_with_log_n_is_yarn_inside_the_original_context_and_tempered_beyond(checkpoints: dict[str, Path]) -> None:
    path = str(checkpoints["llama"])
    yarn = load(path, MethodSpec("yarn"), TARGET, CPU).model
    both = load(path, MethodSpec("yarn", {"log_n": 1}), TARGET, CPU).model
    ids = _ids(2 * ORIGINAL)
    with torch.no_grad():
        a, b = yarn(ids).logits, both(ids).logits
    assert torch.allclose(a[:, :ORIGINAL], b[:, :ORIGINAL], atol=1e-6)
    assert not torch.allclose(a[:, ORIGINAL:], b[:, ORIGINAL:], atol=1e-4)


def test_the_retention_reference_switches_attention_methods_off(checkpoints: dict[str, Path]) -> None:
    loaded = load(str(checkpoints["llama"]), MethodSpec("self_extend", ATTENTION_METHODS["self_extend"]), TARGET,
                  CPU)
    base = AutoModelForCausalLM.from_pretrained(checkpoints["llama"]).eval()
    ids = _ids(2 * ORIGINAL)
    with torch.no_grad():
        want = base(ids).logits
        with original_rope(loaded.model, *original_rotary(loaded.facts.rope)):
            assert torch.allclose(loaded.model(ids).logits, want, atol=1e-5)
        assert not torch.allclose(loaded.model(ids).logits, want, atol=1e-4), "Self-Extend is back after the block"


# --- Dynamic YaRN -----------------------------------------------------------------------------------------


def _static_yarn(path: Path, factor: float) -> torch.nn.Module:
    """Plain transformers YaRN at a fixed factor: what Dynamic YaRN must equal at length factor × L₀."""
    config = AutoModelForCausalLM.from_pretrained(path).config
    rope = {"rope_type": "yarn", "rope_theta": float(config.rope_parameters["rope_theta"]), "factor": factor,
            "original_max_position_embeddings": ORIGINAL, "beta_fast": 32.0, "beta_slow": 1.0}
    if "partial_rotary_factor" in config.rope_parameters:
        rope["partial_rotary_factor"] = config.rope_parameters["partial_rotary_factor"]
    return AutoModelForCausalLM.from_pretrained(path, rope_parameters=rope,
                                                max_position_embeddings=round(factor * ORIGINAL)).eval()


@pytest.mark.parametrize("name", ["llama", "qwen3", "phi", "gpt_neox"])
def test_dynamic_yarn_is_yarn_at_the_scale_of_the_current_length(checkpoints: dict[str, Path], name: str) -> None:
    loaded = load(str(checkpoints[name]), MethodSpec("dynamic_yarn"), TARGET, CPU)
    assert loaded.length_dependent
    plain = AutoModelForCausalLM.from_pretrained(checkpoints[name]).eval()
    with torch.no_grad():
        ids = _ids(ORIGINAL)
        assert torch.equal(loaded.model(ids).logits, plain(ids).logits), "no change inside the original context"
        for length in (2 * ORIGINAL, 3 * ORIGINAL + 7):
            reset_rotary_cache(loaded.model)
            ids = _ids(length)
            want = _static_yarn(checkpoints[name], length / ORIGINAL)(ids).logits
            assert torch.allclose(loaded.model(ids).logits, want, atol=1e-5), (name, length)
        module = rotary_module(loaded.model)
        assert module.attention_scaling == pytest.approx(0.1 * math.log((3 * ORIGINAL + 7) / ORIGINAL) + 1)
        reset_rotary_cache(loaded.model)
        assert module.attention_scaling == 1.0, "the reset also puts the temperature back"
        assert torch.equal(loaded.model(_ids(ORIGINAL)).logits, plain(_ids(ORIGINAL)).logits)


def test_dynamic_yarn_perplexity_runs_one_pass_per_length(checkpoints: dict[str, Path]) -> None:
    path = checkpoints["llama"]
    loaded = load(str(path), MethodSpec("dynamic_yarn"), TARGET, CPU)
    docs = [_ids(TARGET, seed=s)[0].tolist() for s in (1, 2)]
    ours = perplexity_by_length(loaded.model, docs, [ORIGINAL, TARGET], device=CPU.device, length_dependent=True)
    for result, model in zip(ours, (AutoModelForCausalLM.from_pretrained(path).eval(), _static_yarn(path, 4.0)),
                             strict=True):
        nll = []
        for doc in docs:
            ids = torch.tensor([doc[:result.length]])
            with torch.no_grad():
                nll.append(float(model(ids, labels=ids).loss))
        assert result.perplexity == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-4), result.length


@pytest.mark.parametrize("family", ["dynamic_yarn", "self_extend", "rerope", "leaky_rerope"])
def test_methods_a_config_cannot_hold_refuse_to_export(checkpoints: dict[str, Path], tmp_path: Path,
                                                      family: str) -> None:
    with pytest.raises(ExportError, match="would not reproduce it"):
        export_checkpoint(str(checkpoints["llama"]), MethodSpec(family), TARGET, tmp_path / "out")
    with pytest.raises(ExportError, match="log-n"):
        export_checkpoint(str(checkpoints["llama"]), MethodSpec("yarn", {"log_n": 1}), TARGET, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- validation (torch-free) ------------------------------------------------------------------------------

BASE = RopeFacts(has_rope=True, head_dim=64, rope_theta=10000.0, original_context=256)


def test_attention_methods_derive_their_defaults_from_the_experiment() -> None:
    assert methods.validate("self_extend", {}, BASE, 1024) == {"window": 64, "group": 5}  # ⌈(1024−64)/(256−64)⌉
    assert methods.validate("rerope", {}, BASE, 1024) == {"window": 128}
    assert methods.validate("leaky_rerope", {}, BASE, 1024) == {"window": 128, "leak": 7.0}  # (1024−128)/(256−128)
    assert methods.validate("dynamic_yarn", {}, BASE, 1024) == {"beta_fast": 32.0, "beta_slow": 1.0}


@pytest.mark.parametrize(("family", "params", "field", "words"), [
    ("self_extend", {"window": 256}, "window", "shorter than the original context"),
    ("self_extend", {"group": 0}, "group", "at least 1"),
    ("rerope", {"window": 300}, "window", "shorter than the original context"),
    ("leaky_rerope", {"leak": 0.5}, "leak", "at least 1"),
    ("dynamic_yarn", {"beta_fast": 1, "beta_slow": 2}, "beta_fast", "greater than β slow"),
    ("yarn", {"log_n": 2}, "log_n", "a switch"),
])
def test_bad_parameters_name_their_field(family: str, params: dict, field: str, words: str) -> None:
    with pytest.raises(MethodError, match=words) as caught:
        methods.validate(family, params, BASE, 1024)
    assert caught.value.field == field


def test_log_n_off_leaves_canonical_parameters_as_before() -> None:
    """A method saved before log-n existed hashes the same: the modifier at its default is not written."""
    assert "log_n" not in methods.validate("yarn", {"log_n": 0}, BASE, 1024)
    assert "log_n" not in methods.validate("yarn", {"log_n": False}, BASE, 1024)
    assert methods.validate("yarn", {"log_n": 1}, BASE, 1024)["log_n"] is True
    assert methods.rope_setup("yarn", {}, BASE, 1024).attention is None
    assert methods.rope_setup("yarn", {"log_n": "on"}, BASE, 1024).attention == {"kind": "plain",
                                                                               "log_n_context": 256}
    assert "log_n" not in {p.name for p in methods.get("longrope_search").params}
