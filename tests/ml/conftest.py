"""Fixtures for the ML side: a tiny random Llama on disk, so tests need neither the shipped model nor a network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from gpu_workers.demo.build_model import train_tokenizer

WORDS = [
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu", "nu",
    "xi", "omicron", "pi", "rho", "sigma", "tau",
]


def _texts(n: int, words: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (words,), generator=g).tolist()) for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = train_tokenizer([*_texts(50, 200, 0), "0123456789 The pass key is. What is the pass key?"], 300)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local jsonl dataset with two sources and documents long enough for 256 tokens."""
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    rows = [{"text": t, "source": "greek" if i % 2 else "letters"} for i, t in enumerate(_texts(6, 600, 1))]
    rows.append({"text": "too short", "source": "letters"})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path
