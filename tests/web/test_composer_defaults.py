"""The composer opens ready to run: a model and data chosen, target 4× the model's context, a name from the
methods and length, the model's facts beside it, and a run-time estimate from earlier runs' measurements."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from experiments import composer_defaults, run_estimate
from experiments.models import BaseModel, Dataset, Experiment, Measurement, Run, Team
from tests.web.factories import login, make_experiment
from tests.web.helpers import form_values

DEFAULT_NAME = "none vs PI vs Dynamic NTK vs YaRN @ 1,024"


# --- defaults ---------------------------------------------------------------------------------------------------


def test_composer_opens_with_defaults_and_facts(owner: Any, team: Team, base_model: BaseModel, dataset: Dataset
                                                ) -> None:
    page = login(owner).get(reverse("experiment_new"))
    values = form_values(page.content.decode())
    assert values["name"] == DEFAULT_NAME
    assert values["target_length"] == "1024"
    assert values["base_model"] == str(base_model.pk) and values["dataset"] == str(dataset.pk)
    facts = page.context["model_facts"]
    assert facts == {**facts, "original_context": 256, "rope_theta": 10000.0, "head_dim": 32, "rotary_dim": 32,
                     "shipped_scaling": "none (plain RoPE)", "default_target": 1024}
    html = page.content.decode()
    assert 'id="model-facts"' in html and '<dd data-fact="original_context">256</dd>' in html
    assert ">Run</button>" in html
    assert "No estimate yet" in html, "no run on the model yet: nothing is invented"
    assert page.context["composer_defaults"]["models"][str(base_model.pk)]["default_target"] == 1024


def test_composer_as_opened_submits_with_one_click(owner: Any, team: Team, base_model: BaseModel, dataset: Dataset,
                                                   no_broker: Any, django_capture_on_commit_callbacks: Any) -> None:
    """What the page renders, posted as a browser would, with nothing typed: an experiment with four runs."""
    client = login(owner, enforce_csrf=True)
    html = client.get(reverse("experiment_new")).content.decode()
    data = form_values(html)
    assert data["csrfmiddlewaretoken"]
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("experiment_new"), data)
    assert response.status_code == 302, response.context and response.context["composer"].errors()
    experiment = Experiment.objects.get()
    assert experiment.name == DEFAULT_NAME and experiment.target_length == 1024
    assert experiment.eval_lengths == [256, 512, 1024]
    assert sorted(experiment.runs.values_list("method__family", flat=True)) == ["dynamic_ntk", "none", "pi", "yarn"]
    assert no_broker.call_count == 4


def test_latest_experiment_sets_model_and_data(owner: Any, team: Team, base_model: BaseModel, dataset: Dataset,
                                               model_dir: Any) -> None:
    bigger = BaseModel(team=team, name="Another Llama", source=str(model_dir))
    bigger.apply_facts({**base_model.facts, "original_context": 512})
    bigger.save()
    # Without history: the first model by name ("Another Llama"); after an experiment on Tiny Llama, that one.
    assert composer_defaults.default_choices(owner)[1] == bigger
    make_experiment(team, owner, base_model, dataset)
    assert composer_defaults.default_choices(owner) == (team, base_model, dataset)
    values = form_values(login(owner).get(reverse("experiment_new")).content.decode())
    assert values["base_model"] == str(base_model.pk)


def test_a_posted_composer_keeps_what_was_typed(owner: Any, team: Team, base_model: BaseModel, dataset: Dataset
                                                ) -> None:
    client = login(owner)
    data = form_values(client.get(reverse("experiment_new")).content.decode())
    data.update(name="Mine", target_length="100")  # below the original context: refused, re-rendered
    page = client.post(reverse("experiment_new"), data)
    assert page.status_code == 200
    values = form_values(page.content.decode())
    assert values["name"] == "Mine" and values["target_length"] == "100"


def test_default_name_and_labels() -> None:
    assert composer_defaults.default_name(["none", "pi", "dynamic_ntk", "yarn"], 1024) == DEFAULT_NAME
    assert composer_defaults.default_name(["pi", "pi", "longrope_search"], 131072) == "PI vs LongRoPE search @ 131,072"
    assert composer_defaults.default_name([], None) == "Experiment"


# --- the estimate -----------------------------------------------------------------------------------------------


def measured_history(team: Team, owner: Any, base_model: BaseModel, dataset: Dataset) -> Experiment:
    """One earlier experiment: prefill 0.1 s at 256 and 0.2 s at 512 tokens, perplexity over 2 documents at both
    lengths in 0.6 s (= 1 s per unit of prefill work), runs that took 1.6 s (1 s of overhead)."""
    experiment = make_experiment(team, owner, base_model, dataset, runs=2, lengths=(256, 512))
    now = timezone.now()
    for run in experiment.runs.all():
        Run.objects.filter(pk=run.pk).update(started_at=now - timedelta(seconds=1.6), finished_at=now)
        Measurement.objects.bulk_create([
            Measurement(run=run, metric="forward_seconds", value=0.1, context_length=256),
            Measurement(run=run, metric="forward_seconds", value=0.2, context_length=512),
            Measurement(run=run, metric="perplexity_seconds", value=0.6, context_length=512),
        ])
    return experiment


def test_estimate_from_measured_prefill(owner: Any, team: Team, base_model: BaseModel, dataset: Dataset) -> None:
    measured_history(team, owner, base_model, dataset)
    chosen = run_estimate.EstimateInput(lengths=(256, 512, 1024), suite=("perplexity", "memory"),
                                        families=("none", "pi", "yarn"), documents=8)
    result = run_estimate.estimate(base_model, chosen)
    # prefill(1024) extrapolates at the measured slope (1): 0.4 s; work = (0.1 + 0.2 + 0.4) × 8 documents = 5.6;
    # per run 1 s overhead + 5.6 s, three runs.
    assert result.seconds == pytest.approx(3 * 6.6)
    assert result.per_run == pytest.approx([6.6, 6.6, 6.6]) and result.runs == 2
    assert result.left_out == ["memory (never timed on this model)"]
    assert result.text.startswith("≈ 20 s of worker time for 3 runs, ≈ 7 s each, from 2 earlier runs on Tiny Llama")


def test_no_estimate_without_prefill_measurements(owner: Any, team: Team, base_model: BaseModel, dataset: Dataset
                                                  ) -> None:
    make_experiment(team, owner, base_model, dataset)
    chosen = run_estimate.EstimateInput(lengths=(256,), suite=("perplexity",), families=("none",))
    result = run_estimate.estimate(base_model, chosen)
    assert result.seconds is None and "prefill" in result.text and result.text.startswith("No estimate yet")


def test_prefill_curve() -> None:
    curve = run_estimate.prefill_curve({256: 1.0, 512: 4.0})
    assert curve(384) == pytest.approx(1.0 * 1.5 ** 2)  # inside: the measured slope (2)
    assert curve(1024) == pytest.approx(16.0)
    flat = run_estimate.prefill_curve({256: 1.0, 512: 1.1})
    assert flat(1024) == pytest.approx(2.2), "extrapolation is at least linear"
    assert run_estimate.prefill_curve({256: 1.0})(1024) == pytest.approx(4.0)


@pytest.mark.parametrize("who", ("owner", "teammate", "viewer", "outsider"))
def test_estimate_endpoint(request: pytest.FixtureRequest, team: Team, owner: Any, base_model: BaseModel,
                           dataset: Dataset, who: str) -> None:
    """Read-only and scoped: a model of another team counts as none chosen (nothing about it leaks)."""
    measured_history(team, owner, base_model, dataset)
    private = BaseModel.objects.create(team=team, name="Lab's model", source=base_model.source, facts=base_model.facts,
                                       original_context=256)
    client = login(request.getfixturevalue(who))
    query = {"target_length": 1024, "eval_documents": 8, "eval-suite": ["perplexity"], "family": ["none", "pi"]}
    shared = client.get(reverse("experiment_estimate"), {**query, "base_model": base_model.pk}).json()
    assert shared["seconds"] == pytest.approx(2 * 6.6)
    theirs = client.get(reverse("experiment_estimate"), {**query, "base_model": private.pk}).json()
    if who == "outsider":
        assert theirs == {**theirs, "seconds": None, "text": "No estimate yet: pick a base model."}
    else:
        assert theirs["seconds"] is None and "Lab's model" in theirs["text"]


def test_estimate_endpoint_is_get_only_and_login_required(client: Client, owner: Any, base_model: BaseModel) -> None:
    url = reverse("experiment_estimate")
    assert client.get(url)["Location"].startswith(reverse("login"))
    assert login(owner).post(url).status_code == 405


def test_composer_shows_the_estimate(owner: Any, team: Team, base_model: BaseModel, dataset: Dataset) -> None:
    measured_history(team, owner, base_model, dataset)
    page = login(owner).get(reverse("experiment_new"))
    estimate = page.context["estimate"]
    assert estimate.seconds is not None and estimate.text in page.content.decode()
