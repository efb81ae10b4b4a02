"""The analytic chart data: what rope_theory says, for the method as it runs, and no database queries."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from experiments import rope_charts
from experiments.models import BaseModel, Experiment, Method
from gpu_workers import rope_theory
from gpu_workers.methods import frequencies, validate
from tests.web.factories import make_experiment, method

DEMO_D, DEMO_THETA, DEMO_CONTEXT = 32, 10000.0, 256


def canonical(base_model: BaseModel, family: str, params: dict[str, Any], target: int = 1024) -> Method:
    clean = validate(family, params, base_model.rope_facts(), target)
    return Method.objects.create(family=family, params=clean, name=f"{family} {params}")


def test_axes_are_the_models_wavelengths_and_critical_dimension(base_model: BaseModel) -> None:
    axes = rope_charts.axes(base_model.rope_facts(), 1024)
    assert axes.pairs == list(range(16))
    assert axes.wavelengths[0] == pytest.approx(2 * math.pi)
    assert axes.wavelengths[15] == pytest.approx(2 * math.pi * DEMO_THETA ** (30 / 32), rel=1e-5)
    assert axes.critical_dimension == rope_theory.critical_dimension(DEMO_D, DEMO_THETA, DEMO_CONTEXT) == 14
    assert axes.critical_pair == 7
    # Pairs left of the critical pair fit a whole period into the original context; the others do not.
    assert axes.wavelengths[6] <= DEMO_CONTEXT < axes.wavelengths[7]
    assert axes.extrapolation_bound == pytest.approx(rope_theory.extrapolation_bound(32, DEMO_THETA, 256), rel=1e-5)


@pytest.mark.parametrize(("family", "params"), [
    ("none", {}), ("pi", {}), ("ntk", {}), ("dynamic_ntk", {}), ("yarn", {}), ("llama3", {}), ("longrope", {}),
    ("base_change", {"extrapolation_length": 4096}),
])
def test_method_chart_is_rope_theory_effective_scaling(base_model: BaseModel, family: str,
                                                       params: dict[str, Any]) -> None:
    chosen = canonical(base_model, family, params)
    chart = rope_charts.method_chart(chosen, base_model, 1024)
    want = frequencies.effective_scaling(family, chosen.params, base_model.rope_facts(), 1024)
    curve = chart["curve"]
    assert curve["error"] == ""
    assert curve["scaling"] == pytest.approx(want, rel=1e-5)
    assert curve["wavelengths"] == pytest.approx([w * s for w, s in zip(chart["axes"]["wavelengths"], want,
                                                                        strict=True)], rel=1e-4)
    assert curve["length_dependent"] is (family in ("dynamic_ntk", "longrope"))
    assert curve["drawn_at"] == (1024 if curve["length_dependent"] else None)


def _transformers_dynamic_scaling(factor: float, seq_len: int) -> list[float]:
    """plain inv_freq ÷ what transformers' own ``dynamic`` init computes at ``seq_len`` on the demo geometry."""
    config = LlamaConfig(hidden_size=DEMO_D * 4, num_attention_heads=4, max_position_embeddings=DEMO_CONTEXT,
                         rope_parameters={"rope_type": "dynamic", "rope_theta": DEMO_THETA, "factor": factor})
    inv_freq, _ = ROPE_INIT_FUNCTIONS["dynamic"](config, "cpu", seq_len=seq_len)
    plain = 1.0 / DEMO_THETA ** (torch.arange(0, DEMO_D, 2, dtype=torch.int64).float() / DEMO_D)
    return (plain / inv_freq).tolist()


@pytest.mark.parametrize(("params", "factor", "lowest"), [({}, 1.0, 4.0), ({"factor": 2}, 2.0, 7.0)])
def test_dynamic_ntk_is_drawn_as_transformers_applies_it_at_the_target(
        base_model: BaseModel, params: dict[str, Any], factor: float, lowest: float) -> None:
    # Blank factor = 1: the YaRN paper's dynamic NTK, scale L / L0 = 4 at 1024; factor 2 scales by 2·4 − 1 = 7.
    chosen = canonical(base_model, "dynamic_ntk", params)
    assert chosen.params == {"factor": factor}
    curve = rope_charts.method_chart(chosen, base_model, 1024)["curve"]
    assert curve["drawn_at"] == 1024
    assert curve["scaling"] == pytest.approx(_transformers_dynamic_scaling(factor, 1024), rel=1e-5)
    assert curve["scaling"][0] == 1.0 and curve["scaling"][-1] == pytest.approx(lowest, rel=1e-5)
    # Within the original context the method is plain RoPE; the chart is not drawn there.
    assert _transformers_dynamic_scaling(factor, DEMO_CONTEXT) == pytest.approx([1.0] * 16)


def test_known_shapes(base_model: BaseModel) -> None:
    def scaling(family: str, **params: Any) -> list[float]:
        return rope_charts.method_chart(canonical(base_model, family, params), base_model, 1024)["curve"]["scaling"]

    assert scaling("pi") == [4.0] * 16
    assert scaling("none") == [1.0] * 16
    yarn = scaling("yarn")
    assert yarn[0] == 1.0 and yarn[-1] == pytest.approx(4.0) and yarn == sorted(yarn)


def test_limits_only_for_fixed_new_bases(base_model: BaseModel, team: Any, owner: Any, dataset: Any) -> None:
    experiment = make_experiment(team, owner, base_model, dataset, runs=1, lengths=(256, 1024))
    ntk = canonical(base_model, "ntk", {"factor": 4})
    abf = canonical(base_model, "base_change", {"extrapolation_length": 4096})
    for chosen in (ntk, abf):
        experiment.runs.create(method=chosen, status="succeeded")
    runs = list(experiment.runs.select_related("method").order_by("id"))
    limits = rope_charts.scaling_limits(runs, base_model, 1024)
    assert [limit.family for limit in limits] == ["ntk", "base_change"], "PI has no single new base"
    ntk_theta = DEMO_THETA * 4 ** (32 / 30)
    assert limits[0].rope_theta == pytest.approx(ntk_theta, rel=1e-5)
    assert limits[0].length == pytest.approx(rope_theory.extrapolation_bound(32, DEMO_THETA, 256, ntk_theta),
                                             rel=1e-5)
    assert limits[1].length == pytest.approx(4096, rel=1e-5), "base change solved for 4096 tokens reaches 4096"


def test_compare_chart_one_curve_per_method_without_queries(experiment: Experiment,
                                                            django_assert_num_queries: Any) -> None:
    runs = list(experiment.runs.select_related("method").order_by("id"))
    base_model = experiment.base_model
    with django_assert_num_queries(0):
        data = rope_charts.compare_chart(runs, base_model, 1024)
    assert [c["name"] for c in data["curves"]] == [run.method.name for run in runs]
    assert data["curves"][0]["scaling"] == [2.0] * 16 and data["curves"][1]["scaling"] == [3.0] * 16
    assert data["axes"]["critical_dimension"] == 14


def test_parameters_that_do_not_fit_the_model_are_an_error_not_a_crash(base_model: BaseModel, db: None) -> None:
    wide = BaseModel(name="Wide", source="x")
    wide.apply_facts({"has_rope": True, "head_dim": 64, "rope_theta": 10000.0, "original_context": 256})
    longrope = canonical(base_model, "longrope", {"long_factor": [2.0] * 16})
    curve = rope_charts.method_chart(longrope, wide, 1024)["curve"]
    assert curve["scaling"] == [] and "32 numbers" in curve["error"]


def test_a_model_without_rope_has_no_chart(norope_model: BaseModel) -> None:
    assert "no rotary position embedding" in rope_charts.method_chart(method("none", None), norope_model, 1024)[
        "error"]
    assert rope_charts.scaling_limits([], norope_model, 1024) == []


def test_attention_methods_draw_the_checkpoints_frequencies_and_say_what_they_change(
    base_model: BaseModel, team: Any, owner: Any, dataset: Any, client: Any
) -> None:
    from django.urls import reverse

    from tests.web.factories import login

    experiment = make_experiment(team, owner, base_model, dataset, runs=0, lengths=(256, 1024))
    chosen = [canonical(base_model, "self_extend", {}), canonical(base_model, "yarn", {"log_n": True}),
              canonical(base_model, "dynamic_yarn", {})]
    for m in chosen:
        experiment.runs.create(method=m, status="succeeded")
    curves = rope_charts.compare_chart(list(experiment.runs.select_related("method").order_by("id")), base_model,
                                       1024)["curves"]
    assert curves[0]["scaling"] == [1.0] * 16, "Self-Extend keeps the checkpoint's RoPE"
    assert curves[0]["attention_note"] == ("leaves the rotary frequencies as drawn and keeps exact positions within "
                                           "64 tokens and divides farther ones by 5 inside attention")
    assert "ln(m + 1)" in curves[1]["attention_note"] and curves[1]["scaling"][-1] == pytest.approx(4.0)
    # Dynamic YaRN is drawn at the target: YaRN ×4 there.
    assert curves[2]["scaling"] == pytest.approx(curves[1]["scaling"]) and curves[2]["drawn_at"] == 1024
    page = login(owner).get(reverse("experiment_detail", args=[experiment.uuid])).content.decode()
    assert page.count('data-role="attention-note"') == 2
