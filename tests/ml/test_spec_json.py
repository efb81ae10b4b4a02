"""The one spec round trip (issue 14): EvalSpec / TrainSpec / RunSpec → JSON → the same spec, and every bad value
a SpecError that names its field and its section."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gpu_workers.spec import DatasetSpec, EvalSpec, MethodSpec, RunSpec, SpecError, TrainSpec

OFF_DEFAULTS_EVAL = EvalSpec(
    lengths=(1024, 256, 512), documents=3, protocol="sliding", stride=64,
    suite=("perplexity", "passkey", "needle", "ruler", "longppl"), passkey_samples=7, passkey_depth=0.5,
    needle_depths=(1.0, 0.0, 0.5), needle_samples=3, needle_variant="multikey", needle_format="magic_number",
    needle_count=6, ruler_tasks=("niah_single_1", "vt"), ruler_samples=5, ruler_threshold=0.9,
    ruler_max_new_tokens=12, longppl_short_window=64, longppl_gain=1.5, longppl_bound=3.0,
)
OFF_DEFAULTS_TRAIN = TrainSpec(
    mode="finetune", steps=30, learning_rate=1e-3, warmup_steps=3, batch_size=2, grad_accum=4, train_length=512,
    gradient_checkpointing=True, lora=True, lora_rank=4, lora_alpha=8, train_embeddings_and_norms=False,
    s2_attn=True, s2_group_fraction=0.125, data_strategy="upsample_sources", long_threshold=300,
    keep_short_p=0.5, upsample_sources=("code", "prose"), upsample_multiplier=3.0, passkey_fraction=0.1,
    checkpoint_every=10, seed=7,
)


@pytest.mark.parametrize("spec", [EvalSpec(lengths=(256,)), OFF_DEFAULTS_EVAL, TrainSpec(), OFF_DEFAULTS_TRAIN])
def test_to_json_then_from_json_is_the_same_spec(spec: EvalSpec | TrainSpec) -> None:
    data = json.loads(json.dumps(spec.to_json()))  # what the database, a Celery message and the API carry
    assert type(spec).from_json(data) == spec
    assert all(not isinstance(v, tuple) for v in spec.to_json().values()), "JSON has lists, not tuples"


def test_run_spec_round_trip_carries_both_specs() -> None:
    run = RunSpec(run_id="r1", model_source="/models/demo", dataset=DatasetSpec(haystack_source="prose"),
                  method=MethodSpec(family="yarn", params={"factor": 4.0}), target_length=1024,
                  eval=OFF_DEFAULTS_EVAL, train=OFF_DEFAULTS_TRAIN, seed=3, train_processes=2,
                  train_launcher="torchrun")
    again = RunSpec.from_json(json.loads(json.dumps(run.to_json())))
    assert again == run
    assert again.eval.lengths == (256, 512, 1024) and again.train.upsample_sources == ("code", "prose")


def test_whole_numbers_are_accepted_where_floats_are_wanted_but_not_the_reverse() -> None:
    assert EvalSpec.from_json({"lengths": [256], "ruler_threshold": 1}).ruler_threshold == 1.0
    assert EvalSpec.from_json({"lengths": [256.0], "documents": 4.0}).documents == 4
    with pytest.raises(SpecError) as caught:
        EvalSpec.from_json({"lengths": [256], "documents": 2.5})
    assert (caught.value.field, caught.value.section) == ("documents", "eval")
    assert caught.value.sentence == "Documents must be a whole number, not 2.5."


@pytest.mark.parametrize(
    ("cls", "data", "field", "words"),
    [
        (EvalSpec, {"lengths": [256], "documents": True}, "documents", "whole number, not True"),
        (EvalSpec, {"lengths": "256"}, "lengths", "as a list"),
        (EvalSpec, {"lengths": [256], "suite": "perplexity"}, "suite", "as a list"),
        (EvalSpec, {"lengths": [256], "passkey_depth": "half"}, "passkey_depth", "must be a number"),
        (EvalSpec, {"lengths": [256], "protocol": 3}, "protocol", "must be text"),
        (TrainSpec, {"lora": "on"}, "lora", "true or false"),
        (TrainSpec, {"steps": "100"}, "steps", "whole number"),
        (TrainSpec, {"learning_rate": False}, "learning_rate", "must be a number"),
    ],
)
def test_a_value_of_the_wrong_type_names_its_field(cls: Any, data: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(SpecError) as caught:
        cls.from_json(data)
    assert caught.value.field == field and caught.value.section == cls.section
    assert words in str(caught.value)


def test_unknown_keys_and_non_objects_are_refused_by_name() -> None:
    with pytest.raises(SpecError) as caught:
        TrainSpec.from_json({"mode": "finetune", "stepz": 3, "lr": 1})
    assert caught.value.field == "lr" and caught.value.section == "train"
    assert str(caught.value) == "unknown settings lr, stepz"
    with pytest.raises(SpecError) as caught:
        EvalSpec.from_json(["perplexity"])
    assert caught.value.field == "__all__" and caught.value.section == "eval"


@pytest.mark.parametrize(
    ("cls", "data", "field"),
    [
        (EvalSpec, {"lengths": [256], "ruler_threshold": 1.5}, "ruler_threshold"),
        (EvalSpec, {"lengths": [8]}, "lengths"),
        (TrainSpec, {"mode": "finetune", "pose": True, "s2_attn": True}, "s2_attn"),
        (TrainSpec, {"mode": "dance"}, "mode"),
    ],
)
def test_values_of_the_right_type_still_meet_the_dataclass_checks(cls: Any, data: dict[str, Any], field: str
                                                                  ) -> None:
    with pytest.raises(SpecError) as caught:
        cls.from_json(data)
    assert caught.value.field == field and caught.value.section == cls.section
