"""Registering a base model from the form, the API and ``manage.py register_model``: real checkpoints and bad input.

Every bad input (no config.json, no RoPE, ALiBi, per-layer RoPE, no tokenizer, a truncated weights file, a
GGUF transformers cannot read or that is cut short, a path outside the model roots) gets its message on the
``source`` field (form), as ``errors.source`` in a 400 (API) or as a CommandError (command), and nothing is
saved.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from experiments.models import BaseModel
from gpu_workers.demo import DEMO_MODEL_DIR
from tests.ml.architectures import save_tiny
from tests.web.factories import login
from tests.web.helpers import post_json, token_client

TOKENIZER = ("tokenizer.json", "tokenizer_config.json")


def _config_dir(root: Path, config: dict[str, Any], tokenizer: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    if tokenizer:
        for name in TOKENIZER:
            shutil.copy(DEMO_MODEL_DIR / name, root / name)
    return root


LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
         "num_hidden_layers": 2, "intermediate_size": 96, "max_position_embeddings": 256, "vocab_size": 4096,
         "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}


def _gguf(path: Path, architecture: str) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny")
    writer.add_context_length(256)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def bad_sources(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """name → (source, a phrase its message must contain)."""
    weights = save_tiny("llama", tmp_path / "cut")
    data = (weights / "model.safetensors").read_bytes()
    (weights / "model.safetensors").write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + b"\x00" * 64)
    return {
        "no config": (str(tmp_path / "nothing-here"), "No model directory"),
        "no config.json": (str((tmp_path / "bare").mkdir() or tmp_path / "bare"), "No config.json in"),
        "gpt-2": (str(_config_dir(tmp_path / "gpt2", {"model_type": "gpt2", "n_positions": 256, "n_embd": 64,
                                                     "n_head": 4, "n_layer": 2})),
                  "no rotary position embedding: it learns absolute position embeddings"),
        "bloom": (str(_config_dir(tmp_path / "bloom", {"model_type": "bloom", "hidden_size": 64, "n_head": 4,
                                                      "n_layer": 2})), "ALiBi"),
        "gemma3": (str(_config_dir(tmp_path / "gemma3", {"model_type": "gemma3_text", "hidden_size": 64,
                                                        "num_attention_heads": 4, "head_dim": 16,
                                                        "num_hidden_layers": 2, "vocab_size": 4096})),
                   "different RoPE per layer type"),
        "no tokenizer": (str(_config_dir(tmp_path / "notok", LLAMA, tokenizer=False)), "No tokenizer in"),
        "truncated weights": (str(weights), "model.safetensors is truncated"),
        "gguf of an unknown architecture": (str(_gguf(tmp_path / "rwkv.gguf", "rwkv6")),
                                            "cannot read GGUF models of architecture 'rwkv6'"),
        "gguf without rope": (str(_gguf(tmp_path / "gpt2.gguf", "gpt2")), "no rotary position embedding"),
        "corrupt gguf": (str(garbage), "not a readable GGUF file"),
        "missing gguf": (str(tmp_path / "nowhere.gguf"), "No GGUF file at"),
    }


def test_every_bad_source_is_named_on_the_form_field(owner: Any, team: Any,
                                                     bad_sources: dict[str, tuple[str, str]]) -> None:
    client = login(owner)
    for name, (source, phrase) in bad_sources.items():
        response = client.post(reverse("model_new"), {"team": team.pk, "name": name, "source": source})
        assert response.status_code == 200, name
        errors = response.context["form"].errors
        assert list(errors) == ["source"] and phrase in errors["source"][0], (name, errors)
        assert "Traceback" not in response.content.decode()
    assert BaseModel.objects.count() == 0


def test_every_bad_source_is_a_400_naming_the_field_from_the_api(owner: Any, team: Any,
                                                                 bad_sources: dict[str, tuple[str, str]]) -> None:
    client = token_client(owner)
    for name, (source, phrase) in bad_sources.items():
        response = post_json(client, reverse("api_models"), {"team": team.pk, "name": name, "source": source})
        assert response.status_code == 400, name
        errors = response.json()["errors"]
        assert list(errors) == ["source"] and phrase in errors["source"][0], (name, errors)
    assert BaseModel.objects.count() == 0


def test_every_bad_source_is_a_command_error(db: None, bad_sources: dict[str, tuple[str, str]]) -> None:
    for name, (source, phrase) in bad_sources.items():
        with pytest.raises(CommandError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
            call_command("register_model", source, "--name", name, stdout=io.StringIO())
    assert BaseModel.objects.count() == 0


def test_paths_outside_the_model_roots_are_refused_for_web_users(owner: Any, team: Any, tmp_path: Path,
                                                                 settings: Any) -> None:
    source = save_tiny("llama", tmp_path / "elsewhere")
    settings.CONTEXTLAB_MODEL_ROOTS = [DEMO_MODEL_DIR.resolve()]
    response = login(owner).post(reverse("model_new"), {"team": team.pk, "name": "x", "source": str(source)})
    assert "outside the folders this server reads models from" in response.context["form"].errors["source"][0]
    link = DEMO_MODEL_DIR / "escape-link-test"
    link.symlink_to(source)  # a symlink inside a root pointing out of it is still outside
    try:
        api = post_json(token_client(owner), reverse("api_models"), {"team": team.pk, "name": "x",
                                                                    "source": str(link)})
        assert api.status_code == 400 and "outside the folders" in api.json()["errors"]["source"][0]
    finally:
        link.unlink()
    assert BaseModel.objects.count() == 0
    out = io.StringIO()
    call_command("register_model", str(source), "--name", "operator's", stdout=out)  # the shell is trusted
    assert BaseModel.objects.get().name == "operator's"


@pytest.mark.parametrize(("name", "rotary_dim", "rope_type", "original"), [
    ("phi", 8, "default", 64), ("gpt_neox", 4, "default", 64), ("qwen3", 32, "default", 64),
    ("llama31", 16, "llama3", 64), ("phi3_longrope", 16, "longrope", 64),
])
def test_real_architectures_register_with_their_rope_facts(owner: Any, team: Any, tmp_path: Path, name: str,
                                                           rotary_dim: int, rope_type: str, original: int) -> None:
    source = save_tiny(name, tmp_path / name)
    response = post_json(token_client(owner), reverse("api_models"), {"team": team.pk, "name": name,
                                                                      "source": str(source)})
    assert response.status_code == 201, response.content
    model = BaseModel.objects.get(name=name)
    assert (model.facts["rotary_dim"], model.facts["rope_type"], model.original_context) == (
        rotary_dim, rope_type, original)
    assert model.rope_facts().rotary_dim == rotary_dim
    assert response.json()["facts"]["rope_parameters"]["rope_type"] == rope_type


def test_viewers_cannot_register_and_duplicates_are_named(owner: Any, viewer: Any, team: Any, tmp_path: Path) -> None:
    source = str(save_tiny("llama", tmp_path / "m"))
    assert post_json(token_client(viewer), reverse("api_models"), {"team": team.pk, "name": "m",
                                                                   "source": source}).status_code == 403
    assert post_json(token_client(owner), reverse("api_models"), {"team": team.pk, "name": "m",
                                                                  "source": source}).status_code == 201
    again = post_json(token_client(owner), reverse("api_models"), {"team": team.pk, "name": "m", "source": source})
    assert again.status_code == 400 and "already has a model named" in again.json()["errors"]["name"][0]
    assert BaseModel.objects.count() == 1


def test_register_model_command_names_a_missing_package(db: None) -> None:
    with pytest.raises(CommandError, match="not installed"):
        call_command("register_model", "--from-package", "no-such-package-xyz", "--name", "x")
