"""RoPE theory: the published LLaMA-2 numbers, the scaling law and its inverse, YaRN's ramp as transformers runs it."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from gpu_workers import methods, rope_theory
from gpu_workers.methods import frequencies
from gpu_workers.methods.base import RopeFacts

LLAMA2 = RopeFacts(has_rope=True, head_dim=128, rope_theta=10000.0, original_context=4096)
DEMO = RopeFacts(has_rope=True, head_dim=32, rope_theta=10000.0, original_context=256)
PROPERTY = settings(max_examples=40, deadline=None, database=None)

head_dims = st.integers(8, 128).map(lambda n: 2 * n)
bases = st.floats(3.0, 6.0).map(lambda e: 10.0**e)
originals = st.integers(64, 32768)


def test_llama2_critical_dimension_and_bound_match_liu_et_al() -> None:
    assert rope_theory.critical_dimension(128, 10000.0, 4096) == 92
    assert len(rope_theory.full_period_dims(128, 10000.0, 4096)) == 46
    assert rope_theory.full_period_dims(128, 10000.0, 4096) == list(range(46))
    bound = rope_theory.extrapolation_bound(128, 10000.0, 4096)
    assert bound == pytest.approx(2 * math.pi * 10000 ** (92 / 128))
    assert 4096 < bound < 4800  # just past the training length
    # Base 1e6 (as in Liu et al.'s 1M-context LLaMA-2 runs): ≈ 129k tokens.
    assert rope_theory.extrapolation_bound(128, 10000.0, 4096, 1e6) == pytest.approx(129_027, rel=1e-4)


def test_llama2_yarn_ramp_dims_exact_and_truncated() -> None:
    low, high = rope_theory.yarn_ramp_dims(128, 10000.0, 4096, 32, 1, truncate=False)
    assert low == pytest.approx(20.944, abs=1e-3) and high == pytest.approx(45.027, abs=1e-3)
    assert rope_theory.yarn_ramp_dims(128, 10000.0, 4096, 32, 1) == (20, 46)


def _transformers_yarn_ratio(truncate: bool, factor: float = 16.0) -> list[float]:
    rope = {
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": factor, "original_max_position_embeddings": 4096,
        "beta_fast": 32.0, "beta_slow": 1.0, "truncate": truncate,
    }
    config = LlamaConfig(hidden_size=128, num_attention_heads=1, head_dim=128, max_position_embeddings=65536,
                         rope_parameters=rope)
    inv, _ = ROPE_INIT_FUNCTIONS["yarn"](config, None)
    original = frequencies.original_frequencies(LLAMA2)
    return [o / n for o, n in zip(original, inv.double().tolist(), strict=True)]


@pytest.mark.parametrize("truncate", [True, False])
def test_yarn_ramp_dims_are_where_transformers_starts_and_stops_interpolating(truncate: bool) -> None:
    low, high = rope_theory.yarn_ramp_dims(128, 10000.0, 4096, 32, 1, truncate=truncate)
    ratio = _transformers_yarn_ratio(truncate)
    ramp = rope_theory.yarn_ramp(128, low, high)
    for i, r in enumerate(ratio):
        assert r == pytest.approx(1 / (1 - ramp[i] + ramp[i] / 16), rel=1e-5)
        if i <= low:
            assert r == pytest.approx(1.0, rel=1e-6)
        if i >= high:
            assert r == pytest.approx(16.0, rel=1e-6)
        if low < i < high:
            assert 1.0 < r < 16.0
    # The family (transformers' default truncate=True) gives the truncated ramp.
    family = frequencies.effective_scaling("yarn", {"factor": 16}, LLAMA2, 65536)
    assert family == pytest.approx(_transformers_yarn_ratio(True), rel=1e-6)
    assert family[20] == 1.0 and family[21] > 1.0 and family[45] < 16.0 and family[46] == pytest.approx(16.0)


def test_yarn_ramp_dims_do_not_depend_on_the_factor() -> None:
    for factor in (2.0, 16.0, 64.0):
        ratio = _transformers_yarn_ratio(True, factor)
        assert ratio[20] == 1.0 and ratio[46] == pytest.approx(factor)


def test_longrope2_critical_dim_for_llama2() -> None:
    assert rope_theory.longrope2_critical_dim(128, 10000.0, 4096) == 45
    assert rope_theory.critical_dimension(128, 1e4, 4096) // 2 - 1 == 45  # one pair below Liu et al.'s 92 / 2


def test_wavelengths_start_at_two_pi_and_grow_by_the_base() -> None:
    waves = rope_theory.wavelengths(32, 10000.0)
    assert len(waves) == 16 and waves[0] == pytest.approx(2 * math.pi)
    assert all(b / a == pytest.approx(10000 ** (2 / 32)) for a, b in itertools.pairwise(waves))
    with pytest.raises(ValueError):
        rope_theory.wavelengths(31, 10000.0)


def test_edge_cases_of_the_scaling_law() -> None:
    assert rope_theory.critical_dimension(16, 1000.0, 32768) == 16  # every pair turns in training
    assert rope_theory.extrapolation_bound(16, 1000.0, 32768) == math.inf
    assert rope_theory.critical_dimension(16, 1e4, 6) == 0
    with pytest.raises(ValueError):
        rope_theory.base_for_extrapolation(16, 1000.0, 32768, 10**6)


@PROPERTY
@given(d=head_dims, base=bases, original=originals)
def test_critical_dimension_counts_the_pairs_with_a_full_period(d: int, base: float, original: int) -> None:
    full_pairs = len(rope_theory.full_period_dims(d, base, original))
    assert rope_theory.critical_dimension(d, base, original) == min(d, 2 * full_pairs)


@PROPERTY
@given(d=head_dims, base=bases, original=originals, stretch=st.floats(1.0, 1000.0))
def test_base_for_extrapolation_inverts_the_bound(d: int, base: float, original: int, stretch: float) -> None:
    if rope_theory.critical_dimension(d, base, original) >= d:
        return
    wanted = rope_theory.extrapolation_bound(d, base, original) * stretch
    new_base = rope_theory.base_for_extrapolation(d, base, original, wanted)
    assert new_base >= base * (1 - 1e-12)
    assert rope_theory.extrapolation_bound(d, base, original, new_base) == pytest.approx(wanted, rel=1e-9)


@PROPERTY
@given(d=head_dims, base=bases, original=originals, fast=st.floats(2.0, 128.0), slow=st.floats(0.25, 1.9))
def test_truncated_ramp_contains_the_exact_one(d: int, base: float, original: int, fast: float, slow: float) -> None:
    low, high = rope_theory.yarn_ramp_dims(d, base, original, fast, slow, truncate=False)
    t_low, t_high = rope_theory.yarn_ramp_dims(d, base, original, fast, slow)
    assert t_low <= max(low, 0) and t_high >= min(high, d - 1)
    assert isinstance(t_low, int) and isinstance(t_high, int)


def test_effective_scaling_per_family() -> None:
    assert frequencies.effective_scaling("none", {}, DEMO, 1024) == [1.0] * 16
    assert frequencies.effective_scaling("pi", {"factor": 4}, DEMO, 1024) == pytest.approx([4.0] * 16, rel=1e-6)
    ntk = frequencies.effective_scaling("ntk", {"factor": 4}, DEMO, 1024)
    assert ntk[0] == 1.0 and ntk[-1] == pytest.approx(4.0, rel=1e-6) and ntk == sorted(ntk)
    # Dynamic NTK: nothing within the original context, the fixed-NTK base at the target (factor = target ratio).
    assert frequencies.effective_scaling("dynamic_ntk", {"factor": 4}, DEMO, 1024, seq_len=200) == [1.0] * 16
    assert frequencies.effective_scaling("dynamic_ntk", {"factor": 4}, DEMO, 1024) == pytest.approx(
        frequencies.effective_scaling("ntk", {"factor": 13}, DEMO, 1024), rel=1e-5
    )
    long = [1.0 + i / 5 for i in range(16)]
    short = [1.0 + i / 50 for i in range(16)]
    params = {"long_factor": long, "short_factor": short}
    assert frequencies.effective_scaling("longrope", params, DEMO, 1024) == pytest.approx(long, rel=1e-6)
    assert frequencies.effective_scaling("longrope", params, DEMO, 1024, seq_len=256) == pytest.approx(short, rel=1e-6)
    llama3 = frequencies.effective_scaling("llama3", {"factor": 8}, LLAMA2, 32768)
    assert llama3[0] == 1.0 and llama3[-1] == pytest.approx(8.0, rel=1e-6) and llama3 == sorted(llama3)
    changed = frequencies.effective_scaling("base_change", {"rope_theta": 1e6}, LLAMA2, 32768)
    assert changed[-1] == pytest.approx(100 ** (126 / 128), rel=1e-5)


def test_longrope_default_long_factors_follow_the_yarn_ramp() -> None:
    params = methods.validate("longrope", {"factor": 16}, LLAMA2, 65536)
    ramp = rope_theory.yarn_ramp(128, *rope_theory.yarn_ramp_dims(128, 1e4, 4096))
    assert params["long_factor"] == pytest.approx([1 + 15 * r for r in ramp])
    assert params["long_factor"][20] == 1.0 and params["long_factor"][46] == 16.0
