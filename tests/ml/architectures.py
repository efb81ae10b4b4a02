"""Tiny random-init checkpoints of every RoPE architecture researchers extend, saved with the demo tokenizer.

Each is small enough to build in well under a second, and differs from the plain Llama in exactly the way
that breaks naive RoPE code: an explicit head_dim (Qwen3, Gemma), a rotary fraction (Phi, GPT-NeoX,
StableLM), a shipped scaling (Llama-3.1's ``llama3``, Phi-3's ``longrope``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import transformers as T

from gpu_workers.demo import DEMO_MODEL_DIR

ORIGINAL = 64
"""Every checkpoint's original (pretraining) context in tokens."""
COMMON = {"num_hidden_layers": 2, "intermediate_size": 96, "tie_word_embeddings": False}


def _llama31() -> T.PretrainedConfig:
    return T.LlamaConfig(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=ORIGINAL * 8,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": ORIGINAL}, **COMMON,
    )


def _phi3_longrope() -> T.PretrainedConfig:
    pairs = 8  # head_dim 16
    return T.Phi3Config(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=ORIGINAL * 4,
        original_max_position_embeddings=ORIGINAL,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                         "short_factor": [1.0 + 0.05 * i for i in range(pairs)],
                         "long_factor": [1.0 + 0.4 * i for i in range(pairs)]},
        **COMMON,
    )


CONFIGS: dict[str, Any] = {
    "llama": lambda: T.LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=ORIGINAL, **COMMON),
    "llama31": _llama31,
    "mistral": lambda: T.MistralConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                       max_position_embeddings=ORIGINAL, sliding_window=None, **COMMON),
    "qwen2": lambda: T.Qwen2Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=ORIGINAL, **COMMON),
    "qwen3": lambda: T.Qwen3Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                   max_position_embeddings=ORIGINAL, **COMMON),
    "gemma": lambda: T.GemmaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                                   max_position_embeddings=ORIGINAL, **COMMON),
    "phi": lambda: T.PhiConfig(hidden_size=64, num_attention_heads=4, partial_rotary_factor=0.5,
                               max_position_embeddings=ORIGINAL, **COMMON),
    "phi3": lambda: T.Phi3Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
                                 max_position_embeddings=ORIGINAL, original_max_position_embeddings=ORIGINAL,
                                 **COMMON),
    "phi3_longrope": _phi3_longrope,
    "gpt_neox": lambda: T.GPTNeoXConfig(hidden_size=64, num_attention_heads=4, rotary_pct=0.25,
                                        max_position_embeddings=ORIGINAL, **COMMON),
    "stablelm": lambda: T.StableLmConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
                                         partial_rotary_factor=0.25, max_position_embeddings=ORIGINAL, **COMMON),
}
"""Name → config factory. head_dim 16 unless explicit (Qwen3, Gemma: 32); rotary dims 16, 8 or 4."""

EXPECTED_ROTARY_DIM = {"qwen3": 32, "gemma": 32, "phi": 8, "gpt_neox": 4, "stablelm": 4}


def save_tiny(name: str, out: Path, seed: int = 0) -> Path:
    """Random-init weights of architecture ``name`` plus the demo tokenizer, written as a checkpoint."""
    config = CONFIGS[name]()
    config.vocab_size = 4096
    config.bos_token_id, config.eos_token_id, config.pad_token_id = 1, 2, None
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DEMO_MODEL_DIR / file, out / file)
    return out


def rotary_module(model: torch.nn.Module) -> torch.nn.Module:
    found = [m for m in model.modules() if hasattr(m, "inv_freq") and hasattr(m, "attention_scaling")]
    assert len(found) == 1, f"expected one rotary embedding, found {len(found)}"
    return found[0]
