"""Read a base model's architecture from its config alone: no weights loaded, no network.

The web app calls this when a model is registered, so an unknown path, a model without RoPE or a
checkpoint we cannot extend faithfully is refused where the user typed it, long before a worker would
trip over it. Everything that shapes RoPE is read here, once: the head dim (explicit ``head_dim`` as in
Qwen3 / Gemma, else hidden / heads), the rotary fraction (Phi, GPT-NeoX, StableLM rotate only part of a
head), θ, the checkpoint's own scaling and its original context.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gpu_workers.methods.base import RopeFacts

ALIBI_TYPES = frozenset({"bloom", "mpt"})
"""Model types that encode position with ALiBi attention biases, not RoPE."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "tokenizer_config.json")


class ModelSourceError(ValueError):
    """The model source cannot be used (unknown path, no config, no RoPE, no tokenizer, corrupt weights)."""


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
    partial_rotary_factor: float = 1.0
    rotary_dim: int = 0
    max_position_embeddings: int = 0
    rope_parameters: dict[str, Any] = field(default_factory=dict)
    """The checkpoint's ``rope_parameters`` exactly as its config gives them (scaling included)."""
    head_dim_explicit: bool = False
    """True when the config sets ``head_dim`` itself rather than hidden / heads."""

    @property
    def rope(self) -> RopeFacts:
        return RopeFacts.from_facts(self.to_json())

    @property
    def scaling(self) -> dict[str, Any]:
        """The checkpoint's own scaling keys (empty for plain RoPE)."""
        if self.rope_type in ("default", "none"):
            return {}
        return {k: v for k, v in self.rope_parameters.items() if k not in ("rope_theta", "partial_rotary_factor")}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _count_parameters(source: Path) -> int | None:
    index = source / "model.safetensors.index.json"
    files = [source / "model.safetensors"] if (source / "model.safetensors").exists() else []
    if index.exists():
        try:
            files = sorted({source / f for f in json.loads(index.read_text())["weight_map"].values()})
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelSourceError(f"model.safetensors.index.json is not a valid index ({exc}).") from None
    if not files:
        return None
    return sum(_safetensors_parameters(file) for file in files)


def _safetensors_parameters(file: Path) -> int:
    """Parameters in one safetensors file, read from its header; a truncated or corrupt file is refused.

    The header lists every tensor's byte range, so comparing its end with the file size catches a file cut
    short in a copy without reading the weights.
    """
    try:
        size = file.stat().st_size
        with file.open("rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            if header_len <= 0 or 8 + header_len > size:
                raise ValueError("header longer than the file")
            header = json.loads(handle.read(header_len))
    except FileNotFoundError:
        raise ModelSourceError(f"{file.name} is listed in the index but missing.") from None
    except (OSError, ValueError, struct.error) as exc:
        raise ModelSourceError(f"{file.name} is not a readable safetensors file ({exc}).") from None
    total, end = 0, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        total += _prod(info.get("shape", []))
        end = max(end, int(info.get("data_offsets", [0, 0])[1]))
    if 8 + header_len + end > size:
        raise ModelSourceError(
            f"{file.name} is truncated: its header describes {8 + header_len + end:,} bytes, the file has {size:,}."
        )
    return total


def _prod(shape: list[int]) -> int:
    out = 1
    for n in shape:
        out *= n
    return out


def _rope_parameters(config: Any) -> dict[str, Any]:
    rope = getattr(config, "rope_parameters", None)
    if not isinstance(rope, dict):
        return {}
    if rope and all(isinstance(v, dict) for v in rope.values()):
        kinds = ", ".join(sorted(rope))
        raise ModelSourceError(
            f"This {config.model_type} checkpoint uses a different RoPE per layer type ({kinds}), as Gemma 3 does "
            "for its sliding-window and global layers. Context Lab extends one RoPE per model, so its methods "
            "and charts would be wrong for part of the layers; it is not supported yet."
        )
    return dict(rope)


def _no_rope_reason(config: Any) -> str:
    if config.model_type in ALIBI_TYPES or getattr(config, "alibi", False):
        return "it encodes position with ALiBi attention biases"
    if getattr(config, "n_positions", None) or config.model_type in ("gpt2", "opt", "bert"):
        return "it learns absolute position embeddings"
    return "its config names no rotary embedding (no rope_theta)"


def _check_rope_type(rope_type: str) -> None:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type != "default" and rope_type not in ROPE_INIT_FUNCTIONS:
        known = ", ".join(sorted(ROPE_INIT_FUNCTIONS))
        raise ModelSourceError(f"The checkpoint's RoPE type {rope_type!r} is not one transformers knows ({known}).")


def _check_tokenizer(path: Path) -> None:
    if not any((path / name).exists() for name in TOKENIZER_FILES):
        raise ModelSourceError(
            f"No tokenizer in {path} (looked for {', '.join(TOKENIZER_FILES)}); save the tokenizer beside the model."
        )


def facts_from_config(config: Any, parameters: int | None = None) -> ModelFacts:
    """Facts from a transformers config object; raises ModelSourceError for models we cannot extend."""
    rope = _rope_parameters(config)
    theta = rope.get("rope_theta")
    if theta is None:
        raise ModelSourceError(
            f"This {config.model_type} model has no rotary position embedding: {_no_rope_reason(config)}. "
            "Context Lab extends RoPE models."
        )
    rope_type = str(rope.get("rope_type") or rope.get("type") or "default")
    _check_rope_type(rope_type)
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    explicit = getattr(config, "head_dim", None)
    head_dim = int(explicit or (hidden // heads if heads else 0))
    fraction = rope.get("partial_rotary_factor")
    if fraction is None:
        fraction = getattr(config, "partial_rotary_factor", None) or getattr(config, "rotary_pct", None) or 1.0
    fraction = float(fraction)
    rotary_dim = int(head_dim * fraction)
    if rotary_dim < 2:
        raise ModelSourceError(f"The rotary dimension is {rotary_dim} (head dim {head_dim} × {fraction:g}).")
    max_positions = int(getattr(config, "max_position_embeddings", 0) or 0)
    original = max_positions
    if rope_type != "default":
        original = int(
            rope.get("original_max_position_embeddings")
            or getattr(config, "original_max_position_embeddings", None)
            or max_positions
        )
    shipped = {**rope, "rope_type": rope_type}
    shipped.pop("type", None)
    if fraction != 1.0:
        shipped["partial_rotary_factor"] = fraction
    if rope_type != "default" and "original_max_position_embeddings" not in shipped:
        shipped["original_max_position_embeddings"] = original
    return ModelFacts(
        architecture=(getattr(config, "architectures", None) or [type(config).__name__])[0],
        model_type=config.model_type,
        has_rope=True,
        head_dim=head_dim,
        rope_theta=float(theta),
        original_context=original,
        rope_type=rope_type,
        num_layers=int(getattr(config, "num_hidden_layers", 0) or 0),
        num_heads=heads,
        num_kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
        hidden_size=hidden,
        parameters=parameters,
        partial_rotary_factor=fraction,
        rotary_dim=rotary_dim,
        max_position_embeddings=max_positions,
        rope_parameters=shipped,
        head_dim_explicit=bool(explicit) and heads > 0 and head_dim != hidden // heads,
    )


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
    if looks_local and not (path / "config.json").is_file():
        raise ModelSourceError(f"No config.json in {source}; a model directory holds config.json beside its weights.")
    try:
        config = AutoConfig.from_pretrained(str(path) if looks_local else source, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        where = "in that directory" if looks_local else "in the local Hugging Face cache (downloads are off)"
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ModelSourceError(f"No readable model config {where}: {first}") from None
    facts = facts_from_config(config)
    if not looks_local:
        return facts
    _check_tokenizer(path)
    return ModelFacts(**{**facts.to_json(), "parameters": _count_parameters(path)})
