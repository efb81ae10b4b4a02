"""Validation: every wrong input names its field, and nothing is saved when anything is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from experiments.composer import Composer
from experiments.composer_forms import default_eval_lengths, parse_lengths
from experiments.forms import BaseModelForm, DatasetForm
from experiments.models import BaseModel, Dataset, Experiment, Method, Run
from tests.web.helpers import composer_post


def counts() -> tuple[int, ...]:
    return Experiment.objects.count(), Run.objects.count(), Method.objects.count()


def test_valid_composer_cleans_to_canonical_methods(owner: Any, team: Any, base_model: Any, dataset: Any) -> None:
    composer = Composer(owner, composer_post(team, base_model, dataset, rows=[
        {"family": "none"}, {"family": "pi"}, {"family": "yarn", "yarn__beta_fast": "16"}, {"family": ""},
    ]))
    assert composer.is_valid(), composer.errors()
    data = composer.cleaned()
    assert data["eval_lengths"] == [256, 512, 1024]
    assert [m["family"] for m in data["methods"]] == ["none", "pi", "yarn"]
    assert data["methods"][1]["params"] == {"factor": 4.0}
    assert data["methods"][2]["params"]["beta_fast"] == 16.0
    assert data["methods"][2]["params"]["attention_factor"] == pytest.approx(1.1386, abs=1e-3)


def test_unbound_composer_offers_the_four_standard_rows(owner: Any) -> None:
    composer = Composer(owner)
    assert [form.initial["family"] for form in composer.methods.forms] == ["none", "pi", "dynamic_ntk", "yarn"]
    yarn_fields = [bf.name for bf in dict((f.name, fields) for f, fields in composer.methods.forms[0].family_groups()
                                          )["yarn"]]
    assert yarn_fields == ["yarn__factor", "yarn__beta_fast", "yarn__beta_slow", "yarn__attention_factor",
                           "yarn__log_n"]


@pytest.mark.parametrize(
    ("fields", "rows", "field", "message"),
    [
        ({"target_length": 128}, None, "target_length",
         "Target length must be at least the model's original context of 256 tokens."),
        ({"eval_lengths": "256, 8"}, None, "eval_lengths", "at least 16 tokens"),
        ({"eval_lengths": "256, abc"}, None, "eval_lengths", "not a whole number"),
        ({"eval_documents": 0}, None, "eval_documents", "greater than or equal to 1"),
        ({}, [{"family": ""}], "methods", "Choose at least one method"),
        ({}, [{"family": "pi", "pi__factor": "4"}, {"family": "pi"}], "methods", "same configuration"),
        ({}, [{"family": "pi", "pi__factor": "1"}], "methods.0.factor", "greater than 1"),
        ({}, [{"family": "pi", "pi__factor": "0.5"}], "methods.0.factor", "greater than 1"),
        ({}, [{"family": "yarn", "yarn__beta_fast": "1", "yarn__beta_slow": "2"}], "methods.0.beta_fast",
         "β fast must be greater than β slow"),
        ({}, [{"family": "pi", "pi__factor": "lots"}], "methods.0.factor", "must be a number"),
        ({}, [{"family": "magic"}], "methods.0.family", "Select a valid choice"),
    ],
)
def test_composer_errors_name_the_field_and_save_nothing(
    owner: Any, team: Any, base_model: Any, dataset: Any, fields: dict[str, Any], rows: Any, field: str,
    message: str,
) -> None:
    before = counts()
    composer = Composer(owner, composer_post(team, base_model, dataset, rows=rows, **fields))
    assert not composer.is_valid()
    errors = composer.errors()
    assert field in errors, errors
    assert any(message in m for m in errors[field]), errors[field]
    assert counts() == before


def test_method_error_lands_on_the_rows_own_input(owner: Any, team: Any, base_model: Any, dataset: Any) -> None:
    composer = Composer(owner, composer_post(team, base_model, dataset, rows=[
        {"family": "none"}, {"family": "pi", "pi__factor": "1"},
    ]))
    assert not composer.is_valid()
    assert composer.methods.forms[1].errors["pi__factor"][0].startswith("Factor must be greater than 1")
    assert not composer.methods.forms[0].errors


def test_methods_needing_rope_are_refused_on_a_model_without_rope(
    owner: Any, team: Any, norope_model: BaseModel, dataset: Any
) -> None:
    composer = Composer(owner, composer_post(team, norope_model, dataset, rows=[
        {"family": "none"}, {"family": "yarn"},
    ]))
    assert not composer.is_valid()
    errors = composer.errors()
    assert "methods.0.family" not in errors, "the baseline needs no RoPE"
    assert "no rotary position embedding" in errors["methods.1.family"][0]
    assert composer.methods.forms[1].errors["family"]


def test_dataset_too_short_names_the_counts(owner: Any, team: Any, base_model: Any, dataset: Any) -> None:
    before = counts()
    composer = Composer(owner, composer_post(team, base_model, dataset, eval_documents=12))
    assert not composer.is_valid()
    message = composer.errors()["dataset"][0]
    assert "has only 10 documents of at least 1024 tokens, but 12 are needed" in message
    assert counts() == before


def test_other_teams_models_and_data_are_not_choices(owner: Any, outsider: Any, team: Any, base_model: Any,
                                                     dataset: Any) -> None:
    composer = Composer(outsider, composer_post(team, base_model, dataset))
    assert not composer.is_valid()
    errors = composer.errors()
    assert "team" in errors and "dataset" in errors
    assert "base_model" not in errors, "the base model is shared"


def test_eval_lengths_helpers() -> None:
    assert default_eval_lengths(256, 1024) == [256, 512, 1024]
    assert default_eval_lengths(256, 1000) == [256, 512, 1000]
    assert default_eval_lengths(256, 256) == [256]
    assert parse_lengths(" 512,256 ; 512, ") == [256, 512]


# --- catalogue forms ----------------------------------------------------------------------------------------


def test_model_form_reads_facts(owner: Any, team: Any, model_dir: Path) -> None:
    form = BaseModelForm({"team": team.pk, "name": "Mine", "source": str(model_dir)}, user=owner)
    assert form.is_valid(), form.errors
    assert form.facts["original_context"] == 256 and form.facts["has_rope"] is True


def test_model_form_unknown_path_errors_on_source(owner: Any, team: Any, tmp_path: Path) -> None:
    form = BaseModelForm({"team": team.pk, "name": "Ghost", "source": str(tmp_path / "nope")}, user=owner)
    assert not form.is_valid()
    assert "No model directory at" in form.errors["source"][0]
    empty = BaseModelForm({"team": team.pk, "name": "Empty", "source": str(tmp_path)}, user=owner)
    assert not empty.is_valid()
    assert "No config.json in" in empty.errors["source"][0]
    assert BaseModel.objects.count() == 0


def test_dataset_form(owner: Any, team: Any, data_file: Path, tmp_path: Path) -> None:
    form = DatasetForm({"team": team.pk, "name": "D", "kind": "local", "path": str(data_file), "text_field": "text",
                        "source_field": "source"}, user=owner)
    assert form.is_valid(), form.errors
    assert form.facts["documents"] == 14 and form.facts["docs_by_source"] == {"code": 7, "prose": 7}
    missing = DatasetForm({"team": team.pk, "name": "D", "kind": "local", "path": str(tmp_path / "x.jsonl"),
                           "text_field": "text", "source_field": "source"}, user=owner)
    assert not missing.is_valid() and "Nothing at" in missing.errors["path"][0]
    wrong_field = DatasetForm({"team": team.pk, "name": "D", "kind": "local", "path": str(data_file),
                               "text_field": "body", "source_field": "source"}, user=owner)
    assert not wrong_field.is_valid() and "has no 'body' field" in wrong_field.errors["path"][0]
    assert Dataset.objects.count() == 0
