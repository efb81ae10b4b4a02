"""Bad parameters for the newer families (Llama-3, LongRoPE, base change, Self-Extend, ReRoPE, Dynamic YaRN, log-n):
a clear error on the field, nothing saved.

Each case goes through the JSON API (a 400 naming ``methods.<i>.<param>``) and the composer page (the
message right under that parameter's input in that row).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.urls import reverse

from experiments.models import BaseModel, Dataset, Experiment, Method, Run
from tests.web.factories import login
from tests.web.helpers import body, composer_post, csrf_token, post_json, token_client

CASES = [
    pytest.param("llama3", {"low_freq_factor": 4, "high_freq_factor": 2}, "high_freq_factor",
                 "High-frequency factor must be greater than the low-frequency factor.", id="llama3-high-below-low"),
    pytest.param("llama3", {"low_freq_factor": 2, "high_freq_factor": 2}, "high_freq_factor",
                 "High-frequency factor must be greater than the low-frequency factor.", id="llama3-high-equals-low"),
    pytest.param("longrope", {"long_factor": [1, 2, 3]}, "long_factor",
                 "Long factors need 16 numbers, one per RoPE dimension pair (rotary dim 32); got 3.",
                 id="longrope-long-too-short"),
    pytest.param("longrope", {"short_factor": [1.0] * 17}, "short_factor",
                 "Short factors need 16 numbers, one per RoPE dimension pair (rotary dim 32); got 17.",
                 id="longrope-short-too-long"),
    pytest.param("base_change", {}, "rope_theta", "Give either a new base or an extrapolation length.",
                 id="base-change-neither"),
    pytest.param("base_change", {"rope_theta": 500000, "extrapolation_length": 4096}, "rope_theta",
                 "Give either a new base or an extrapolation length, not both", id="base-change-both"),
    pytest.param("self_extend", {"window": 256}, "window",
                 "The neighbour window must be shorter than the original context (256 tokens).",
                 id="self-extend-window-too-long"),
    pytest.param("leaky_rerope", {"leak": 0.5}, "leak", "Leak k must be at least 1.", id="leaky-rerope-leak-below-1"),
    pytest.param("dynamic_yarn", {"beta_fast": 1, "beta_slow": 2}, "beta_fast", "β fast must be greater than β slow.",
                 id="dynamic-yarn-betas"),
]


def saved() -> tuple[int, int, int]:
    return Experiment.objects.count(), Run.objects.count(), Method.objects.count()


def form_value(value: Any) -> str:
    """What a person types into the composer: lists as comma-separated numbers."""
    return ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)


@pytest.mark.parametrize(("family", "params", "param", "message"), CASES)
def test_api_names_the_parameter(owner: Any, team: Any, base_model: BaseModel, dataset: Dataset, family: str,
                                 params: dict[str, Any], param: str, message: str) -> None:
    before = saved()
    data = body(team, base_model, dataset, methods=[{"family": "none"}, {"family": family, "params": params}])
    response = post_json(token_client(owner), reverse("api_experiments"), data)
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert list(errors) == [f"methods.1.{param}"], errors
    assert any(message in m for m in errors[f"methods.1.{param}"]), errors
    assert saved() == before


@pytest.mark.parametrize(("family", "params", "param", "message"), CASES)
def test_composer_shows_the_error_next_to_the_field(owner: Any, team: Any, base_model: BaseModel, dataset: Dataset,
                                                    family: str, params: dict[str, Any], param: str,
                                                    message: str) -> None:
    before = saved()
    client = login(owner, enforce_csrf=True)
    token = csrf_token(client, reverse("experiment_new"))
    row = {"family": family, **{f"{family}__{name}": form_value(value) for name, value in params.items()}}
    data = composer_post(team, base_model, dataset, rows=[{"family": "none"}, row])
    response = client.post(reverse("experiment_new"), {**data, "csrfmiddlewaretoken": token})
    assert response.status_code == 200
    html = response.content.decode()
    field = f"{family}__{param}"
    # The message sits inside the same .field block as the row's own input for that parameter.
    block = re.search(rf'<div class="field has-error">\s*<label for="id_methods-1-{field}">.*?</div>\s*</div>', html,
                      re.S)
    assert block, f"no error block around methods-1-{field}"
    assert f'name="methods-1-{field}"' in block.group(0)
    assert f'data-field="{field}">' in block.group(0)
    escaped = message.replace("'", "&#x27;")
    assert escaped in block.group(0)
    assert response.context["composer"].errors()[f"methods.1.{param}"]
    assert saved() == before


def test_a_correct_longrope_list_and_base_change_go_through(owner: Any, team: Any, base_model: BaseModel,
                                                            dataset: Dataset) -> None:
    data = body(team, base_model, dataset, methods=[
        {"family": "longrope", "params": {"long_factor": [1.5] * 16}},
        {"family": "base_change", "params": {"extrapolation_length": 4096}},
        {"family": "llama3", "params": {"low_freq_factor": 1, "high_freq_factor": 8}},
    ])
    response = post_json(token_client(owner), reverse("api_experiments"), data)
    assert response.status_code == 201, json.dumps(response.json())
    params = [run["method"]["params"] for run in response.json()["runs"]]
    assert params[0]["long_factor"] == [1.5] * 16
    assert params[1]["extrapolation_length"] == 4096 and params[1]["rope_theta"] > 10000


def test_the_attention_methods_and_log_n_go_through_with_their_derived_defaults(
    owner: Any, team: Any, base_model: BaseModel, dataset: Dataset
) -> None:
    data = body(team, base_model, dataset, methods=[
        {"family": "self_extend"}, {"family": "rerope"}, {"family": "leaky_rerope", "params": {"window": 64}},
        {"family": "dynamic_yarn"}, {"family": "yarn", "params": {"log_n": 1}},
    ])
    response = post_json(token_client(owner), reverse("api_experiments"), data)
    assert response.status_code == 201, json.dumps(response.json())
    runs = response.json()["runs"]
    target = response.json()["target_length"]
    params = [run["method"]["params"] for run in runs]
    assert params[0] == {"window": 64, "group": -(-(target - 64) // (256 - 64))}
    assert params[1] == {"window": 128}
    assert params[2] == {"window": 64, "leak": (target - 64) / (256 - 64)}
    assert params[3] == {"beta_fast": 32.0, "beta_slow": 1.0}
    assert params[4]["log_n"] is True
    assert [run["method"]["name"] for run in runs][4].endswith("+ log-n")


def test_log_n_takes_a_switch_through_the_api_and_a_checkbox_in_the_composer(
    owner: Any, team: Any, base_model: BaseModel, dataset: Dataset
) -> None:
    before = saved()
    data = body(team, base_model, dataset, methods=[{"family": "yarn", "params": {"log_n": 2}}])
    response = post_json(token_client(owner), reverse("api_experiments"), data)
    assert response.status_code == 400
    assert response.json()["errors"] == {"methods.0.log_n": ["log-n attention is a switch: true or false (1 or 0)."]}
    assert saved() == before

    client = login(owner, enforce_csrf=True)
    page = client.get(reverse("experiment_new")).content.decode()
    assert re.search(r'<input type="checkbox" name="methods-0-yarn__log_n"', page)
    token = csrf_token(client, reverse("experiment_new"))
    rows = [{"family": "yarn", "yarn__log_n": "on"}, {"family": "yarn"}]
    response = client.post(reverse("experiment_new"), {**composer_post(team, base_model, dataset, rows=rows),
                                                       "csrfmiddlewaretoken": token})
    assert response.status_code == 302, response.context["composer"].errors()
    runs = Run.objects.filter(experiment__name=composer_post(team, base_model, dataset)["name"]).order_by("id")
    assert [run.method.params.get("log_n") for run in runs] == [True, None]
