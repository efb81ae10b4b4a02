"""Method families: validation messages, canonical parameters and the RoPE they hand transformers."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from gpu_workers import methods
from gpu_workers.methods.base import RopeFacts
from gpu_workers.methods.ntk import ntk_base

LLAMA2 = RopeFacts(has_rope=True, head_dim=128, rope_theta=10000.0, original_context=4096)
DEMO = RopeFacts(has_rope=True, head_dim=32, rope_theta=10000.0, original_context=256)


def _inv_freq(base: RopeFacts, family: str, params: dict, target: int, seq_len: int | None = None) -> torch.Tensor:
    setup = methods.rope_setup(family, params, base, target)
    config = LlamaConfig(
        hidden_size=base.head_dim * 4, num_attention_heads=4, max_position_embeddings=setup.max_position_embeddings,
        rope_parameters=setup.rope_parameters,
    )
    rope_type = setup.rope_parameters["rope_type"]
    if rope_type == "default":
        theta = setup.rope_parameters["rope_theta"]
        return 1.0 / theta ** (torch.arange(0, base.head_dim, 2, dtype=torch.float64) / base.head_dim)
    inv_freq, _ = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu", seq_len=seq_len)
    return inv_freq.double()


def test_factor_defaults_to_target_over_original() -> None:
    assert methods.validate("pi", {}, DEMO, 1024) == {"factor": 4.0}
    assert methods.validate("pi", {"factor": "8"}, DEMO, 1024) == {"factor": 8.0}


@pytest.mark.parametrize("family", ["pi", "ntk", "yarn"])
@pytest.mark.parametrize("bad", ["1", "0.5", "-2"])
def test_factor_at_most_one_is_refused_naming_the_field(family: str, bad: str) -> None:
    with pytest.raises(methods.MethodError) as err:
        methods.validate(family, {"factor": bad}, DEMO, 1024)
    assert err.value.field == "factor"
    assert "greater than 1" in err.value.message


def test_non_numbers_and_unknown_parameters_are_refused() -> None:
    with pytest.raises(methods.MethodError, match="must be a number") as err:
        methods.validate("yarn", {"beta_fast": "fast"}, DEMO, 1024)
    assert err.value.field == "beta_fast"
    with pytest.raises(methods.MethodError) as err:
        methods.validate("pi", {"alpha": 2}, DEMO, 1024)
    assert err.value.field == "alpha"
    with pytest.raises(methods.MethodError) as err:
        methods.validate("rope_magic", {}, DEMO, 1024)
    assert err.value.field == "family"


def test_yarn_betas_must_be_ordered() -> None:
    with pytest.raises(methods.MethodError) as err:
        methods.validate("yarn", {"beta_fast": 1, "beta_slow": 2}, DEMO, 1024)
    assert err.value.field == "beta_fast"


def test_methods_that_rescale_rope_need_a_rope_model() -> None:
    no_rope = RopeFacts(has_rope=False, head_dim=32, rope_theta=0.0, original_context=1024)
    assert methods.validate("none", {}, no_rope, 2048) == {}
    with pytest.raises(methods.MethodError, match="no rotary") as err:
        methods.validate("yarn", {}, no_rope, 2048)
    assert err.value.field == "family"


def test_yarn_fills_the_paper_attention_factor() -> None:
    params = methods.validate("yarn", {"factor": 16}, LLAMA2, 65536)
    assert params["attention_factor"] == pytest.approx(0.1 * math.log(16) + 1)
    setup = methods.rope_setup("yarn", params, LLAMA2, 65536)
    assert setup.rope_parameters["original_max_position_embeddings"] == 4096
    assert setup.max_position_embeddings == 65536


def test_pi_divides_every_frequency_by_the_factor() -> None:
    base = _inv_freq(DEMO, "none", {}, 256)
    assert torch.allclose(_inv_freq(DEMO, "pi", {"factor": 4}, 1024), base / 4, rtol=1e-6)


def test_fixed_ntk_is_the_closed_form_base() -> None:
    assert ntk_base(LLAMA2, 4.0) == pytest.approx(10000 * 4 ** (128 / 126))
    inv = _inv_freq(DEMO, "ntk", {"factor": 4}, 1024)
    new_base = 10000 * 4 ** (32 / 30)
    expected = 1.0 / new_base ** (torch.arange(0, 32, 2, dtype=torch.float64) / 32)
    assert torch.allclose(inv, expected, rtol=1e-6)
    # NTK leaves the highest frequency alone and interpolates the lowest by exactly the factor.
    base = _inv_freq(DEMO, "none", {}, 256)
    assert inv[0] == pytest.approx(base[0].item())
    assert (base[-1] / inv[-1]).item() == pytest.approx(4.0, rel=1e-6)


def test_dynamic_ntk_is_unchanged_within_the_original_context_and_ntk_beyond() -> None:
    base = _inv_freq(DEMO, "none", {}, 256)
    assert torch.allclose(_inv_freq(DEMO, "dynamic_ntk", {"factor": 4}, 1024, seq_len=256), base.float().double())
    at_1024 = _inv_freq(DEMO, "dynamic_ntk", {"factor": 4}, 1024, seq_len=1024)
    grown = 10000 * (4 * 1024 / 256 - 3) ** (32 / 30)
    assert torch.allclose(at_1024, 1.0 / grown ** (torch.arange(0, 32, 2, dtype=torch.float64) / 32), rtol=1e-5)


def test_dynamic_ntk_factor_defaults_to_one_the_yarn_papers_dynamic_ntk() -> None:
    # Blank is 1, not target / original: transformers' formula then grows the NTK scale as L / L0.
    assert methods.validate("dynamic_ntk", {}, DEMO, 1024) == {"factor": 1.0}
    assert methods.validate("dynamic_ntk", {"factor": "1"}, DEMO, 1024) == {"factor": 1.0}
    assert methods.validate("dynamic_ntk", {"factor": "2.5"}, DEMO, 1024) == {"factor": 2.5}
    at_1024 = _inv_freq(DEMO, "dynamic_ntk", {}, 1024, seq_len=1024)
    grown = 10000 * (1024 / 256) ** (32 / 30)
    assert torch.allclose(at_1024, 1.0 / grown ** (torch.arange(0, 32, 2, dtype=torch.float64) / 32), rtol=1e-5)
    base = _inv_freq(DEMO, "none", {}, 256)
    assert (base[-1] / at_1024[-1]).item() == pytest.approx(4.0, rel=1e-5), "the lowest frequency scales by L / L0"


@pytest.mark.parametrize("bad", ["0.99", "0", "-2"])
def test_dynamic_ntk_factor_below_one_is_refused_naming_the_field(bad: str) -> None:
    with pytest.raises(methods.MethodError) as err:
        methods.validate("dynamic_ntk", {"factor": bad}, DEMO, 1024)
    assert err.value.field == "factor"
    assert "at least 1" in err.value.message


def test_dynamic_ntk_help_says_what_the_factor_does_at_run_time() -> None:
    factor = next(p for p in methods.get("dynamic_ntk").params if p.name == "factor")
    assert factor.default == 1.0
    assert factor.minimum == 1.0 and not factor.exclusive_minimum
    assert "factor·L/L0 − (factor − 1)" in factor.help and "L/L0" in factor.help and "YaRN" in factor.help


def test_fixed_ntk_keeps_its_factor_above_one_and_the_target_ratio_default() -> None:
    assert methods.validate("ntk", {}, DEMO, 1024) == {"factor": 4.0}
    with pytest.raises(methods.MethodError, match="greater than 1"):
        methods.validate("ntk", {"factor": "1"}, DEMO, 1024)


def test_yarn_keeps_high_frequencies_and_interpolates_low_ones() -> None:
    base = _inv_freq(DEMO, "none", {}, 256)
    yarn = _inv_freq(DEMO, "yarn", {"factor": 4}, 1024)
    ratio = base / yarn
    assert ratio[0].item() == pytest.approx(1.0, rel=1e-6)
    assert ratio[-1].item() == pytest.approx(4.0, rel=1e-6)
    assert torch.all(ratio[1:] >= ratio[:-1] * (1 - 1e-6))


def test_every_family_declares_help_and_labels() -> None:
    for family in methods.FAMILIES.values():
        assert family.label and family.help
        for param in family.params:
            assert param.label and param.help and param.kind in (int, float, bool, list)
