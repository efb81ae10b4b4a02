"""An exported checkpoint opens with plain transformers and computes what the loaded model computes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from gpu_workers.device import place
from gpu_workers.export import METADATA_FILE, export_checkpoint
from gpu_workers.loading import load
from gpu_workers.methods import FAMILIES
from gpu_workers.spec import MethodSpec

TARGET = 128  # the tiny model was made for 64 tokens
PARAMS = {"base_change": {"extrapolation_length": 512}}


@pytest.mark.parametrize("family", sorted(name for name, f in FAMILIES.items() if not f.export_refusal))
def test_exported_checkpoint_gives_the_loaded_logits(tiny_model_dir: Path, tmp_path: Path, family: str) -> None:
    method = MethodSpec(family, PARAMS.get(family, {}))
    out = export_checkpoint(str(tiny_model_dir), method, TARGET, tmp_path / family)
    # Fresh models on both sides: dynamic NTK and LongRoPE change their RoPE with the input length.
    loaded = load(str(tiny_model_dir), method, TARGET, place("cpu"))
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, loaded.model.config.vocab_size, (1, TARGET), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = loaded.model(input_ids=ids).logits
        got = exported(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert exported.config.rope_parameters == loaded.model.config.rope_parameters
    metadata = json.loads((out / METADATA_FILE).read_text())
    assert metadata["family"] == family and metadata["params"] == loaded.params
    assert (out / "tokenizer.json").exists() or (out / "tokenizer_config.json").exists()


def test_export_changes_the_rope_of_the_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = export_checkpoint(str(tiny_model_dir), MethodSpec("yarn", {}), TARGET, tmp_path / "yarn")
    config = json.loads((out / "config.json").read_text())
    rope = config["rope_parameters"]
    assert rope["rope_type"] == "yarn" and rope["factor"] == 2.0 and rope["original_max_position_embeddings"] == 64
    assert config["max_position_embeddings"] == TARGET


def test_longrope_scales_attention_even_within_the_original_context(tiny_model_dir: Path) -> None:
    """transformers applies LongRoPE's attention factor to short inputs too; only factor 1 gives the base model."""
    ids = torch.randint(0, 200, (1, 32), generator=torch.Generator().manual_seed(2))

    def logits(family: str, params: dict) -> torch.Tensor:
        model = load(str(tiny_model_dir), MethodSpec(family, params), TARGET, place("cpu")).model
        with torch.no_grad():
            return model(input_ids=ids).logits

    base = logits("none", {})
    assert torch.allclose(logits("longrope", {"attention_factor": 1.0}), base, atol=1e-6)
    assert not torch.allclose(logits("longrope", {}), base, atol=1e-6)
