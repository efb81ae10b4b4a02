"""Where a base model may come from, and turning what a user typed into a checkpoint we can inspect.

One path for the form, the API and ``manage.py register_model``: a local directory or a Hugging Face id in
the offline cache is inspected as it is; a local ``.gguf`` file is checked (metadata only), converted once to
a safetensors directory under ``<data dir>/models/`` in a subprocess (de-quantising pulls in torch and takes
tens of seconds; the web process stays light) and that directory is registered. Local paths outside
``CONTEXTLAB_MODEL_ROOTS`` are refused for web users.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from gpu_workers.model_facts import ModelSourceError, inspect_model


@dataclass(frozen=True)
class PreparedSource:
    source: str
    """What the BaseModel row stores: a checkpoint directory or an HF id."""
    facts: dict[str, Any]


def is_local(source: str) -> bool:
    return source.startswith(("/", ".", "~"))


def check_within_roots(source: str) -> None:
    """Refuse a local path that resolves (symlinks included) outside every configured model root."""
    resolved = Path(source).expanduser().resolve()
    roots = [Path(root) for root in settings.CONTEXTLAB_MODEL_ROOTS]
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise ModelSourceError(
            f"{source} is outside the folders this server reads models from "
            f"({', '.join(str(r) for r in roots)}); copy the model there or ask an admin to add its folder "
            "to CONTEXTLAB_MODEL_ROOTS."
        )


def gguf_root() -> Path:
    return Path(settings.CONTEXTLAB_DATA_DIR) / "models"


def convert_gguf(path: str) -> Path:
    """The converted checkpoint directory (converted at most once per file), via ``python -m gpu_workers``."""
    from gpu_workers.gguf_import import check_gguf, converted_dir

    check_gguf(path)  # cheap, in-process: refuse a bad file before starting a subprocess
    done = converted_dir(path, gguf_root())
    if (done / "config.json").is_file():
        return done
    gguf_root().mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "gpu_workers", "convert-gguf", str(path), "--root", str(gguf_root())],
            capture_output=True, text=True, timeout=settings.CONTEXTLAB_GGUF_TIMEOUT,
            cwd=settings.BASE_DIR, check=False,
        )
    except subprocess.TimeoutExpired:
        raise ModelSourceError(
            f"Converting {Path(path).name} took longer than {settings.CONTEXTLAB_GGUF_TIMEOUT} s; "
            "convert it with `manage.py register_model` instead."
        ) from None
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        message = lines[-1].removeprefix("error: ") if lines else (result.stderr.strip().splitlines() or ["?"])[-1]
        raise ModelSourceError(message)
    return Path(result.stdout.strip().splitlines()[-1])


def prepare_source(source: str, *, enforce_roots: bool = True) -> PreparedSource:
    """Inspect (and for GGUF, convert) a model source; raises ModelSourceError with a message for the user."""
    source = source.strip()
    if source and is_local(source) and enforce_roots:
        check_within_roots(source)
    if source.lower().endswith(".gguf"):
        if not is_local(source):
            raise ModelSourceError("Give a GGUF file as a local path (starting with / . or ~).")
        checkpoint = convert_gguf(str(Path(source).expanduser()))
        facts = inspect_model(str(checkpoint)).to_json()
        facts["converted_from"] = str(Path(source).expanduser().resolve())
        return PreparedSource(str(checkpoint), facts)
    return PreparedSource(source, inspect_model(source).to_json())
