"""Read a base model's architecture from its config alone: no weights, no network.

The web app calls this when a model is registered, so an unknown path or a model without RoPE is
refused where the user typed it, long before a worker would trip over it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gpu_workers.methods.base import RopeFacts


class ModelSourceError(ValueError):
    """The model source cannot be read (unknown path, no config, not cached offline)."""


@dataclass(frozen=True)
class ModelFacts:
    architecture: str
    model_type: str
    has_rope: bool
    head_dim: int
    rope_theta: float
    original_context: int
    rope_type: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    hidden_size: int
    parameters: int | None

    @property
    def rope(self) -> RopeFacts:
        return RopeFacts(
            has_rope=self.has_rope, head_dim=self.head_dim, rope_theta=self.rope_theta,
            original_context=self.original_context, rope_type=self.rope_type,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _count_parameters(source: Path) -> int | None:
    index = source / "model.safetensors.index.json"
    files = [source / "model.safetensors"] if (source / "model.safetensors").exists() else []
    if index.exists():
        files = sorted({source / f for f in json.loads(index.read_text())["weight_map"].values()})
    if not files:
        return None
    from safetensors import safe_open

    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                total += _prod(handle.get_slice(key).get_shape())
    return total


def _prod(shape: list[int]) -> int:
    out = 1
    for n in shape:
        out *= n
    return out


def inspect_model(source: str) -> ModelFacts:
    """Facts from a local directory or an HF id already in the local cache (never downloads)."""
    from transformers import AutoConfig

    source = source.strip()
    if not source:
        raise ModelSourceError("Give a local directory or a Hugging Face model id.")
    looks_local = source.startswith(("/", ".", "~"))
    path = Path(source).expanduser()
    if looks_local and not path.is_dir():
        raise ModelSourceError(f"No model directory at {source}.")
    try:
        config = AutoConfig.from_pretrained(str(path) if looks_local else source, local_files_only=True)
    except (OSError, ValueError) as exc:
        where = "in that directory" if looks_local else "in the local Hugging Face cache (downloads are off)"
        raise ModelSourceError(f"No readable model config {where}: {str(exc).splitlines()[0]}") from None
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta") if isinstance(rope, dict) else None
    heads = getattr(config, "num_attention_heads", 0) or 0
    hidden = getattr(config, "hidden_size", 0) or 0
    head_dim = getattr(config, "head_dim", None) or (hidden // heads if heads else 0)
    return ModelFacts(
        architecture=(getattr(config, "architectures", None) or [type(config).__name__])[0],
        model_type=config.model_type,
        has_rope=theta is not None,
        head_dim=int(head_dim),
        rope_theta=float(theta or 0.0),
        original_context=int(getattr(config, "max_position_embeddings", 0) or 0),
        rope_type=str(rope.get("rope_type", "default")) if theta is not None else "none",
        num_layers=int(getattr(config, "num_hidden_layers", 0) or 0),
        num_heads=int(heads),
        num_kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
        hidden_size=int(hidden),
        parameters=_count_parameters(path) if looks_local else None,
    )
