"""The analytic chart data: what rope_theory says, for the method as it runs, and no database queries."""

from __future__ import annotations

import math
from typing import Any

import pytest

from experiments import rope_charts
from experiments.models import BaseModel, Experiment, Method
from gpu_workers import rope_theory
from gpu_workers.methods import validate
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
    want = rope_theory.effective_scaling(family, chosen.params, base_model.rope_facts(), 1024)
    curve = chart["curve"]
    assert curve["error"] == ""
    assert curve["scaling"] == pytest.approx(want, rel=1e-5)
    assert curve["wavelengths"] == pytest.approx([w * s for w, s in zip(chart["axes"]["wavelengths"], want,
                                                                        strict=True)], rel=1e-4)
    assert curve["length_dependent"] is (family in ("dynamic_ntk", "longrope"))
    assert curve["drawn_at"] == (1024 if curve["length_dependent"] else None)


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
