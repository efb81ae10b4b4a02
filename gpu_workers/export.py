"""Save a model with a method applied as an ordinary transformers checkpoint.

Everything a method changes lives in the config (``rope_parameters``, ``max_position_embeddings``), so a
checkpoint saved after :func:`gpu_workers.loading.load` opens with plain
``AutoModelForCausalLM.from_pretrained(out_dir)`` — no Context Lab code needed to use the result — and
computes the same logits. The weights are saved in the dtype the source checkpoint declares, loaded on
the CPU, so exporting never rounds them. ``context_lab.json`` beside them records what was applied.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gpu_workers.device import Placement
from gpu_workers.loading import load
from gpu_workers.spec import MethodSpec

METADATA_FILE = "context_lab.json"


class ExportError(ValueError):
    """The method cannot be written as a config plain transformers loads and computes the same way."""


def _check_reloadable(config: object) -> None:
    """Phi-3's config, for one, accepts only ``default`` and ``longrope`` RoPE: say so before writing weights."""
    import tempfile

    from transformers import AutoConfig

    with tempfile.TemporaryDirectory() as tmp:
        try:
            config.save_pretrained(tmp)  # type: ignore[attr-defined]
            AutoConfig.from_pretrained(tmp)
        except Exception as exc:  # transformers wraps its validators' errors in several types
            cause = str(getattr(exc, "__cause__", None) or exc).strip().splitlines()[-1]
            raise ExportError(
                f"plain transformers would refuse to load this export ({type(config).__name__}: {cause}); "
                "the method runs in Context Lab, but this architecture's config cannot store it"
            ) from None


def _source_dtype(source: str) -> torch.dtype:
    from transformers import AutoConfig

    dtype = getattr(AutoConfig.from_pretrained(source, local_files_only=True), "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def export_checkpoint(source: str, method: MethodSpec, target_length: int, out_dir: str | Path) -> Path:
    """Write ``source`` with ``method`` applied for ``target_length`` tokens to ``out_dir``; returns it."""
    from gpu_workers import methods

    out = Path(out_dir)
    refusal = methods.export_refusal(method.family, method.params)
    if refusal:
        raise ExportError(f"{refusal}; the method runs in Context Lab, but an export would not reproduce it")
    loaded = load(source, method, target_length, Placement(torch.device("cpu"), _source_dtype(source)))
    _check_reloadable(loaded.model.config)
    out.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    metadata = {
        "source": source,
        "family": method.family,
        "params": loaded.params,
        "target_length": target_length,
        "rope_parameters": loaded.model.config.rope_parameters,
        "length_dependent": loaded.length_dependent,
    }
    (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return out
