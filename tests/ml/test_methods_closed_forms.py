"""Llama-3 scaling, LongRoPE and base change, and every family against the papers' closed forms.

The property tests build each family's RoPE with our ``rope_setup`` and transformers' own init functions,
then compare inverse frequencies and attention scaling with formulas written here from the papers, so a
change on either side (ours or transformers') that alters the RoPE a run uses fails here.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_workers import methods
from gpu_workers.methods.base import Param, RopeFacts, RopeSetup, coerce, to_text
from gpu_workers.methods.frequencies import rope_frequencies, setup_frequencies

LLAMA2 = RopeFacts(has_rope=True, head_dim=128, rope_theta=10000.0, original_context=4096)
DEMO = RopeFacts(has_rope=True, head_dim=32, rope_theta=10000.0, original_context=256)
RTOL = 1e-6
EPS32 = 2.0**-24
PROPERTY = settings(max_examples=40, deadline=None, database=None)

head_dims = st.integers(8, 128).map(lambda n: 2 * n)
bases = st.floats(3.0, 6.0).map(lambda e: 10.0**e)
factors = st.floats(1.01, 64.0)
originals = st.integers(64, 32768)


def _theta(d: int, base: float) -> list[float]:
    return [base ** (-2 * i / d) for i in range(d // 2)]


def _assert_close(got: list[float], expected: list[float], rtol: float | list[float] = RTOL) -> None:
    assert len(got) == len(expected)
    tols = rtol if isinstance(rtol, list) else [rtol] * len(expected)
    for i, (g, e, tol) in enumerate(zip(got, expected, tols, strict=True)):
        error = abs(g - e) / abs(e)
        assert error <= tol, f"pair {i}: {g!r} vs {e!r}, relative error {error:.3g} > {tol:.3g}"


def _blend_rtol(s: float, conditioning: float) -> float:
    """Tolerance for a pair blended between θ and θ/s: transformers blends in float32, and an error δ in the
    blend weight moves the result by up to (s − 1)·δ relative (near θ/s); δ ≈ a few ε₃₂ × conditioning."""
    return RTOL + 4 * (s - 1) * conditioning * EPS32


def _facts(d: int, base: float, original: int) -> RopeFacts:
    return RopeFacts(has_rope=True, head_dim=d, rope_theta=base, original_context=original)


def _target(original: int, factor: float) -> int:
    return math.ceil(original * factor)


# --- properties against closed forms (Chen et al. PI, emozilla dynamic NTK, Peng et al. YaRN, Meta Llama 3.1,
# --- Ding et al. LongRoPE, bloc97 fixed NTK, Xiong et al. / Liu et al. base change)


@PROPERTY
@given(d=head_dims, base=bases, s=factors, original=originals)
def test_pi_is_every_frequency_over_the_factor(d: int, base: float, s: float, original: int) -> None:
    inv, attention = rope_frequencies("pi", {"factor": s}, _facts(d, base, original), _target(original, s))
    _assert_close(inv, [t / s for t in _theta(d, base)])
    assert attention == 1.0


@PROPERTY
@given(d=head_dims, base=bases, s=factors, original=originals, length_share=st.floats(0.0, 2.0))
def test_dynamic_ntk_grows_the_base_with_the_input(
    d: int, base: float, s: float, original: int, length_share: float
) -> None:
    seq_len = max(1, round(length_share * s * original))
    inv, attention = rope_frequencies("dynamic_ntk", {"factor": s}, _facts(d, base, original), 0, seq_len)
    length = max(seq_len, original)
    grown = base * (s * length / original - (s - 1)) ** (d / (d - 2))
    _assert_close(inv, _theta(d, grown))
    assert attention == 1.0


def _yarn_paper(
    d: int, base: float, original: int, s: float, beta_fast: float, beta_slow: float
) -> tuple[list[float], list[float]]:
    """YaRN's NTK-by-parts: pair i turns r_i = L/λ_i times over the original context L.

    r > β_fast: kept; r < β_slow: divided by s (paper, eq. 18–19). Between, the paper writes a ramp linear in
    r, but its reference code (and transformers) ramps linearly in the pair index between the indices where
    r = β_fast and r = β_slow, widened to whole indices (floor / ceil) — that is what runs, so that is tested.
    """

    def pair_turning(r: float) -> float:
        return (d / 2) * math.log(original / (2 * math.pi * r)) / math.log(base)

    low = max(math.floor(pair_turning(beta_fast)), 0)
    high = min(math.ceil(pair_turning(beta_slow)), d - 1)
    if low == high:
        high += 0.001
    out, tols = [], []
    for i, t in enumerate(_theta(d, base)):
        share = min(1.0, max(0.0, (i - low) / (high - low)))  # 0 = kept, 1 = interpolated
        out.append((1 - share) * t + share * t / s)
        tols.append(_blend_rtol(s, 1.0) if 0 < share < 1 else RTOL)
    return out, tols


@PROPERTY
@given(
    d=head_dims, base=bases, s=factors, original=originals,
    beta_fast=st.floats(4.0, 128.0), beta_slow=st.floats(0.25, 2.0),
)
def test_yarn_is_ntk_by_parts_with_the_paper_temperature(
    d: int, base: float, s: float, original: int, beta_fast: float, beta_slow: float
) -> None:
    params = {"factor": s, "beta_fast": beta_fast, "beta_slow": beta_slow}
    inv, attention = rope_frequencies("yarn", params, _facts(d, base, original), _target(original, s))
    expected, tols = _yarn_paper(d, base, original, s, beta_fast, beta_slow)
    _assert_close(inv, expected, tols)
    assert attention == pytest.approx(0.1 * math.log(s) + 1, rel=RTOL)
    # The paper's two outer regions hold exactly.
    for t, got in zip(_theta(d, base), inv, strict=True):
        turns = original * t / (2 * math.pi)
        if turns > beta_fast:
            assert got == pytest.approx(t, rel=RTOL)
        elif turns < beta_slow:
            assert got == pytest.approx(t / s, rel=RTOL)


def _llama3_reference(
    d: int, base: float, original: int, s: float, low: float, high: float
) -> tuple[list[float], list[float]]:
    """Meta's Llama 3.1 ``apply_scaling``: by wavelength against original/high and original/low.

    In the blend transformers computes original/wavelength − low in float32, an error of about
    ε₃₂·high/(high − low) in the weight: the tolerance there carries that conditioning.
    """
    out, tols = [], []
    for t in _theta(d, base):
        wavelength = 2 * math.pi / t
        if wavelength < original / high:
            out.append(t)
            tols.append(RTOL)
        elif wavelength > original / low:
            out.append(t / s)
            tols.append(RTOL)
        else:
            smooth = (original / wavelength - low) / (high - low)
            out.append((1 - smooth) * t / s + smooth * t)
            tols.append(_blend_rtol(s, 2 * high / (high - low) + 1))
    return out, tols


@PROPERTY
@given(
    d=head_dims, base=bases, s=factors, original=originals,
    low=st.floats(0.25, 2.0), gap=st.floats(0.5, 8.0),
)
def test_llama3_matches_meta_reference_scaling(
    d: int, base: float, s: float, original: int, low: float, gap: float
) -> None:
    params = {"factor": s, "low_freq_factor": low, "high_freq_factor": low + gap}
    inv, attention = rope_frequencies("llama3", params, _facts(d, base, original), _target(original, s))
    _assert_close(inv, *_llama3_reference(d, base, original, s, low, low + gap))
    assert attention == 1.0


@st.composite
def longrope_cases(draw: st.DrawFn) -> tuple[int, float, float, int, list[float], list[float], int]:
    d, base, s, original = draw(head_dims), draw(bases), draw(factors), draw(originals)
    pairs = d // 2
    long = draw(st.lists(st.floats(1.0, 64.0), min_size=pairs, max_size=pairs))
    short = draw(st.lists(st.floats(0.5, 4.0), min_size=pairs, max_size=pairs))
    seq_len = draw(st.integers(1, 2 * original))
    return d, base, s, original, long, short, seq_len


@PROPERTY
@given(case=longrope_cases())
def test_longrope_divides_each_pair_by_its_factor_and_switches_at_the_original_length(case: tuple) -> None:
    d, base, s, original, long, short, seq_len = case
    params = {"factor": s, "long_factor": long, "short_factor": short}
    inv, attention = rope_frequencies("longrope", params, _facts(d, base, original), _target(original, s), seq_len)
    used = long if seq_len > original else short
    _assert_close(inv, [t / lam for t, lam in zip(_theta(d, base), used, strict=True)])
    assert attention == pytest.approx(math.sqrt(1 + math.log(s) / math.log(original)), rel=RTOL)


@PROPERTY
@given(d=head_dims, base=bases, s=factors, original=originals)
def test_fixed_ntk_is_the_closed_form_base(d: int, base: float, s: float, original: int) -> None:
    inv, attention = rope_frequencies("ntk", {"factor": s}, _facts(d, base, original), _target(original, s))
    _assert_close(inv, _theta(d, base * s ** (d / (d - 2))))
    assert attention == 1.0


@PROPERTY
@given(d=head_dims, base=bases, original=originals, new_base=st.floats(3.0, 8.0).map(lambda e: 10.0**e))
def test_base_change_runs_the_typed_base(d: int, base: float, original: int, new_base: float) -> None:
    inv, attention = rope_frequencies("base_change", {"rope_theta": new_base}, _facts(d, base, original), 2 * original)
    _assert_close(inv, _theta(d, new_base))
    assert attention == 1.0


@PROPERTY
@given(d=head_dims, base=bases, original=originals, stretch=st.floats(1.5, 64.0))
def test_base_change_from_a_length_solves_the_scaling_law(d: int, base: float, original: int, stretch: float) -> None:
    facts = _facts(d, base, original)
    d_extra = 2 * math.ceil(d / 2 * math.log(original / (2 * math.pi)) / math.log(base))
    if d_extra >= d:  # every pair saw a full turn: the law gives no bound, the family refuses (tested below)
        return
    bound = 2 * math.pi * base ** (d_extra / d)
    length = math.ceil(bound * stretch)
    if (length / (2 * math.pi)) ** (d / d_extra) >= 3e38:  # beyond float32: refused (tested below)
        return
    params = methods.validate("base_change", {"extrapolation_length": length}, facts, length)
    wanted_base = (length / (2 * math.pi)) ** (d / d_extra)
    assert params["rope_theta"] == pytest.approx(wanted_base, rel=1e-12)
    inv, _ = rope_frequencies("base_change", params, facts, length)
    # Short originals on wide heads solve to huge bases; float32 pow then errs by about ln(base)·ε₃₂.
    _assert_close(inv, _theta(d, wanted_base), max(RTOL, 2 * math.log(wanted_base) * EPS32))
    assert methods.validate("base_change", params, facts, length) == params


# --- new families: defaults, canonical parameters, validation


def test_llama3_defaults_and_original_length_are_explicit() -> None:
    params = methods.validate("llama3", {}, LLAMA2, 32768)
    assert params == {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    setup = methods.rope_setup("llama3", params, LLAMA2, 32768)
    assert setup.rope_parameters["original_max_position_embeddings"] == 4096
    assert setup.rope_parameters["rope_theta"] == 10000.0
    assert setup.max_position_embeddings == 32768


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"factor": 1}, "factor"),
        ({"high_freq_factor": 1, "low_freq_factor": 1}, "high_freq_factor"),
        ({"high_freq_factor": 2, "low_freq_factor": 3}, "high_freq_factor"),
        ({"low_freq_factor": 0}, "low_freq_factor"),
        ({"low_freq_factor": "low"}, "low_freq_factor"),
    ],
)
def test_llama3_refusals_name_the_field(params: dict, field: str) -> None:
    with pytest.raises(methods.MethodError) as err:
        methods.validate("llama3", params, LLAMA2, 32768)
    assert err.value.field == field


def test_longrope_blank_factors_are_derived_and_canonical() -> None:
    params = methods.validate("longrope", {}, DEMO, 1024)
    assert params["factor"] == 4.0
    assert params["short_factor"] == [1.0] * 16
    long = params["long_factor"]
    assert len(long) == 16 and long[0] == 1.0 and long[-1] == 4.0 and long == sorted(long)
    assert params["attention_factor"] == pytest.approx(math.sqrt(1 + math.log(4) / math.log(256)))
    assert methods.validate("longrope", params, DEMO, 1024) == params
    setup = methods.rope_setup("longrope", params, DEMO, 1024)
    assert setup.rope_parameters["original_max_position_embeddings"] == 256
    assert methods.get("longrope").length_dependent


def test_longrope_attention_default_is_transformers_own() -> None:
    setup = methods.rope_setup("longrope", {"factor": 16}, LLAMA2, 65536)
    ours = setup.rope_parameters["attention_factor"]
    without = dict(setup.rope_parameters)
    del without["attention_factor"]
    _, theirs = setup_frequencies(RopeSetup(without, setup.max_position_embeddings), LLAMA2, 65536)
    assert ours == pytest.approx(theirs, rel=1e-12)
    assert ours == pytest.approx(math.sqrt(1 + math.log(16) / math.log(4096)))


def test_longrope_lists_accept_json_and_comma_separated_text() -> None:
    pairs = DEMO.rotary_dim // 2
    values = [1.0 + i / 4 for i in range(pairs)]
    as_text = ", ".join(str(v) for v in values)
    as_json = "[" + as_text + "]"
    for raw in (values, as_text, as_json, " ".join(str(v) for v in values)):
        assert methods.validate("longrope", {"long_factor": raw}, DEMO, 1024)["long_factor"] == values


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"long_factor": "1, 2, 3"}, "long_factor", "need 16 numbers"),
        ({"short_factor": [1.0] * 17}, "short_factor", "need 16 numbers"),
        ({"long_factor": [1.0] * 15 + [0.5]}, "long_factor", "at least 1"),
        ({"short_factor": [1.0] * 15 + [0.0]}, "short_factor", "greater than 0"),
        ({"long_factor": "1, two, 3"}, "long_factor", "not a number"),
        ({"long_factor": "[1, 2"}, "long_factor", "numbers separated by commas"),
        ({"long_factor": [1.0] * 15 + [float("nan")]}, "long_factor", "finite"),
        ({"long_factor": 3}, "long_factor", "list of numbers"),
        ({"factor": 0.5}, "factor", "greater than 1"),
    ],
)
def test_longrope_refusals_name_the_field(params: dict, field: str, words: str) -> None:
    with pytest.raises(methods.MethodError) as err:
        methods.validate("longrope", params, DEMO, 1024)
    assert err.value.field == field
    assert words in err.value.message


def test_list_params_print_as_text_that_reads_back() -> None:
    param = Param("long_factor", "Long factors", list, None, "help", 1.0)
    values = [1.0, 1.1, 2.5e3, 1 + 1 / 3]
    assert coerce(param, to_text(param, values)) == values
    assert to_text(param, None) == "" and coerce(param, "") is None and coerce(param, []) is None


def test_base_change_needs_exactly_one_of_base_and_length() -> None:
    with pytest.raises(methods.MethodError) as err:
        methods.validate("base_change", {}, LLAMA2, 16384)
    assert err.value.field == "rope_theta"
    with pytest.raises(methods.MethodError, match="not both") as err:
        methods.validate("base_change", {"rope_theta": 5e5, "extrapolation_length": 100000}, LLAMA2, 16384)
    assert err.value.field == "rope_theta"
    assert methods.validate("base_change", {"rope_theta": "500000"}, LLAMA2, 16384) == {"rope_theta": 5e5}


def test_base_change_length_must_exceed_what_the_base_reaches() -> None:
    with pytest.raises(methods.MethodError, match="already reaches about 4,712") as err:
        methods.validate("base_change", {"extrapolation_length": 4096}, LLAMA2, 16384)
    assert err.value.field == "extrapolation_length"
    every_pair_turns = RopeFacts(has_rope=True, head_dim=16, rope_theta=1000.0, original_context=32768)
    with pytest.raises(methods.MethodError, match="no bound") as err:
        methods.validate("base_change", {"extrapolation_length": 10**6}, every_pair_turns, 65536)
    assert err.value.field == "extrapolation_length"
    wide_head_short_context = RopeFacts(has_rope=True, head_dim=256, rope_theta=1e6, original_context=64)
    with pytest.raises(methods.MethodError, match="float32") as err:
        methods.validate("base_change", {"extrapolation_length": 10**9}, wide_head_short_context, 65536)
    assert err.value.field == "extrapolation_length"
    with pytest.raises(methods.MethodError, match="float32") as err:
        methods.validate("base_change", {"rope_theta": 1e39}, LLAMA2, 65536)
    assert err.value.field == "rope_theta"


def test_base_change_llama2_to_a_million_bases_near_the_paper() -> None:
    # Liu et al.: LLaMA-2 (d_extra 92) with base 1e6 extrapolates to ≈ 2π·1e6^(92/128) ≈ 129k tokens.
    params = methods.validate("base_change", {"extrapolation_length": 129027}, LLAMA2, 16384)
    assert params["rope_theta"] == pytest.approx(1e6, rel=1e-4)
    setup = methods.rope_setup("base_change", params, LLAMA2, 16384)
    assert setup.rope_parameters == {"rope_theta": params["rope_theta"], "rope_type": "default"}


@pytest.mark.parametrize("family", sorted(methods.FAMILIES))
def test_canonical_parameters_validate_to_themselves(family: str) -> None:
    given_params = {"extrapolation_length": 8192} if family == "base_change" else {}
    params = methods.validate(family, given_params, DEMO, 1024)
    assert methods.validate(family, params, DEMO, 1024) == params
    rope = methods.rope_setup(family, params, DEMO, 1024).rope_parameters
    assert rope["rope_theta"] > 0
    if rope["rope_type"] in ("yarn", "longrope", "llama3", "dynamic"):
        assert rope["original_max_position_embeddings"] == DEMO.original_context
