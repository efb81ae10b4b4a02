"""Fixtures for the web tests: a tiny model config, small data, a team with four kinds of people.

Nothing here reaches a broker (the Celery app's ``send_task`` is mocked for every test, one mock per task name;
fixtures store a dataset's token lengths in-process, as a worker would after registration), and model
sources are config-only directories (plus the demo tokenizer, which the dataset-length check needs),
except ``weights_dir``: a small random Llama with weights, for the checkpoint export tests.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.test import Client

from experiments.models import BaseModel, Dataset, Experiment, Membership, Team
from gpu_workers.demo import DEMO_MODEL_DIR
from tests.web.factories import login, make_experiment, make_user
from webapp.celery import LENGTH_STATS_TASK, RUN_TASK

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
WORDS = [
    "rotary", "position", "embedding", "context", "window", "interpolation", "frequency", "attention", "token",
    "sequence", "model", "layer", "head", "the", "a", "of", "and", "to", "in", "is", "that", "for", "it", "as",
    "with", "was", "on", "be", "by", "this", "are", "from", "at", "or", "an", "which", "have", "not",
]


def _tokenizer_source() -> Path:
    for candidate in (DEMO_MODEL_DIR, Path("/tmp/demo_smoke")):
        if (candidate / "tokenizer.json").exists():
            return candidate
    pytest.skip("no demo tokenizer: build gpu_workers/demo/model first")
    raise AssertionError  # unreachable


def _model_dir(root: Path, config: dict[str, Any]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    source = _tokenizer_source()
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, root / name)
    return root


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config-only Llama with RoPE and an original context of 256 tokens."""
    return _model_dir(tmp_path_factory.mktemp("models") / "tiny-llama", {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128, "head_dim": 32,
        "intermediate_size": 320, "num_attention_heads": 4, "num_key_value_heads": 4, "num_hidden_layers": 2,
        "max_position_embeddings": 256, "vocab_size": 4096, "bos_token_id": 0, "eos_token_id": 0,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
    })


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random Llama *with weights* (same RoPE facts as ``model_dir``), for tests that load or export it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    # _model_dir brings the demo tokenizer; save_pretrained then writes the real config.json.
    root = _model_dir(tmp_path_factory.mktemp("models") / "tiny-llama-weights", {})
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=4096, hidden_size=64, head_dim=32, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256, bos_token_id=0, eos_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(root)
    return root


@pytest.fixture(scope="session")
def norope_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT-2-style config: learned absolute positions, no RoPE."""
    return _model_dir(tmp_path_factory.mktemp("models") / "tiny-gpt2", {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_positions": 256, "n_embd": 128,
        "n_head": 4, "n_layer": 2, "vocab_size": 4096, "bos_token_id": 0, "eos_token_id": 0,
    })


@pytest.fixture(scope="session")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 long documents (well over 1024 tokens) and 4 short ones, from two sources."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "docs.jsonl"
    with path.open("w") as handle:
        for i in range(14):
            words = 1500 if i < 10 else 40
            text = " ".join(rng.choice(WORDS) for _ in range(words))
            handle.write(json.dumps({"text": text, "source": "prose" if i % 2 else "code"}) + "\n")
    return path


# --- people ---------------------------------------------------------------------------------------------


@pytest.fixture
def team(db: None) -> Team:
    return Team.objects.create(name="Lab")


@pytest.fixture
def other_team(db: None) -> Team:
    return Team.objects.create(name="Elsewhere")


@pytest.fixture
def owner(team: Team) -> Any:
    user = make_user("owner")
    Membership.objects.create(user=user, team=team, role=Membership.Role.ADMIN)
    return user


@pytest.fixture
def teammate(team: Team) -> Any:
    user = make_user("teammate")
    Membership.objects.create(user=user, team=team, role=Membership.Role.MEMBER)
    return user


@pytest.fixture
def viewer(team: Team) -> Any:
    user = make_user("viewer")
    Membership.objects.create(user=user, team=team, role=Membership.Role.VIEWER)
    return user


@pytest.fixture
def outsider(other_team: Team) -> Any:
    user = make_user("outsider")
    Membership.objects.create(user=user, team=other_team, role=Membership.Role.ADMIN)
    return user


@pytest.fixture
def as_user() -> Callable[..., Client]:
    return login


# --- catalogue ------------------------------------------------------------------------------------------


@pytest.fixture
def base_model(db: None, model_dir: Path) -> BaseModel:
    from gpu_workers.model_facts import inspect_model

    model = BaseModel(team=None, name="Tiny Llama", source=str(model_dir))
    model.apply_facts(inspect_model(str(model_dir)).to_json())
    model.save()
    measured_with(model)
    return model


@pytest.fixture
def norope_model(db: None, norope_dir: Path) -> BaseModel:
    """A row registered before registration refused models without RoPE: the guards further on still hold."""
    model = BaseModel(team=None, name="Tiny GPT-2", source=str(norope_dir))
    model.apply_facts({"architecture": "GPT2LMHeadModel", "model_type": "gpt2", "has_rope": False, "head_dim": 32,
                       "rope_theta": 0.0, "original_context": 256, "rope_type": "none"})
    model.save()
    measured_with(model)
    return model


@pytest.fixture
def dataset(team: Team, data_file: Path) -> Dataset:
    dataset = Dataset.objects.create(team=team, name="Small docs", kind="local", path=str(data_file),
                                     facts={"documents": 14})
    measure_lengths(dataset)
    return dataset


def measure_lengths(dataset: Dataset, *models: BaseModel) -> None:
    """What a worker does after *dataset* is registered: store its token lengths in the tokenizers of *models*
    (default: every model it can be combined with), here in-process through the worker's own code path."""
    from experiments import length_stats

    length_stats.compute_now(dataset, list(models) or length_stats.combinable_models(dataset))


def measured_with(model: BaseModel) -> None:
    """What a worker does after *model* is registered: every dataset it can be combined with, measured."""
    from experiments import length_stats

    for dataset in length_stats.combinable_datasets(model):
        length_stats.compute_now(dataset, [model])


@pytest.fixture(autouse=True)
def model_roots(settings: Any, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Test models live under pytest's temporary folder: let the form and the API read from there."""
    settings.CONTEXTLAB_MODEL_ROOTS = [tmp_path_factory.getbasetemp().resolve(), DEMO_MODEL_DIR.resolve()]
    return settings.CONTEXTLAB_MODEL_ROOTS


@pytest.fixture(autouse=True)
def sent_tasks() -> Any:
    """Never talk to a broker from these tests: every task is sent by name through ``app.send_task``, which
    hands each send to a mock per task name (without the name: the call is ``args=…, task_id=…, queue=…``)."""
    by_name = {RUN_TASK: mock.Mock(), LENGTH_STATS_TASK: mock.Mock()}

    def send_task(name: str, *args: Any, **kwargs: Any) -> Any:
        return by_name[name](*args, **kwargs)

    with mock.patch("webapp.celery.app.send_task", side_effect=send_task):
        yield by_name


@pytest.fixture(autouse=True)
def no_broker(sent_tasks: dict[str, mock.Mock]) -> Any:
    """The run task's sends; tests that care inspect this mock."""
    return sent_tasks[RUN_TASK]


@pytest.fixture(autouse=True)
def length_stats_broker(sent_tasks: dict[str, mock.Mock]) -> Any:
    """The measuring task's sends, mocked the same way (fixtures measure in-process: ``measure_lengths``)."""
    return sent_tasks[LENGTH_STATS_TASK]


@pytest.fixture
def experiment(team: Team, owner: Any, base_model: BaseModel, dataset: Dataset) -> Experiment:
    return make_experiment(team, owner, base_model, dataset, runs=2, name="Zebra question")


@pytest.fixture
def measure() -> Callable[..., None]:
    """``measure(dataset, *models)``: store token lengths as a worker would (for datasets made in a test)."""
    return measure_lengths
