"""Training checkpoints: written atomically, resumed only by the same settings and data, deleted when done.

Every ``checkpoint_every`` steps, ``work_dir/train/checkpoint.pt`` gets the trainable weights, optimizer,
scheduler, grad-scaler and torch RNG states, the step and the losses so far — written to a temporary file
and renamed over the previous one, so a worker killed mid-write leaves the last good checkpoint. A checkpoint
written for other settings or data (its :func:`fingerprint` differs) is ignored and later overwritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gpu_workers.data.training import TrainData
from gpu_workers.spec import TrainSpec

CHECKPOINT_DIR = "train"
CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_VERSION = 1
POSE_SETTINGS = ("pose", "pose_chunks")


def checkpoint_path(work_dir: Path) -> Path:
    return Path(work_dir) / CHECKPOINT_DIR / CHECKPOINT_FILE


def fingerprint(spec: TrainSpec, data: TrainData, trainable: list[str], world: int) -> str:
    """What a checkpoint must match to be resumed: settings (all but the checkpoint interval) and data.

    PoSE's settings and the length its positions spread over count only when PoSE is on, so a checkpoint
    written before PoSE existed still resumes (its fingerprint had neither).
    """
    settings = {k: v for k, v in asdict(spec).items() if k != "checkpoint_every"}
    if spec.pose:
        settings["pose_target_length"] = data.pose_target_length
    else:
        for key in POSE_SETTINGS:
            settings.pop(key, None)
    rows = hashlib.sha256()
    for stream in (data.long, data.short):
        rows.update(f"{len(stream)}:".encode())
        for row in stream[:2] + stream[-2:]:
            rows.update(",".join(map(str, row)).encode() + b";")
    return json.dumps({"settings": settings, "rows": rows.hexdigest(), "trainable": trainable, "world": world},
                      sort_keys=True, default=list)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write to a temporary file in the same directory, then rename over the last checkpoint (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` when it was written for this ``fingerprint``, else ``None`` (with a warning)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated file cannot come from the atomic write, but a disk can fail
        warnings.warn(f"ignoring unreadable training checkpoint {path}: {exc}", stacklevel=3)
        return None
    if state.get("version") != CHECKPOINT_VERSION or state.get("fingerprint") != fingerprint:
        warnings.warn(f"ignoring training checkpoint {path}: it was written for other settings or data",
                      stacklevel=3)
        return None
    return state


def remove_checkpoint(path: Path) -> None:
    """After a successful run: the checkpoint holds only what training needs (for LoRA: adapters, not a model),
    and a retry of a finished run, whose model was lost with its worker, must train again, not skip to it."""
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # something else lives there
        path.parent.rmdir()


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextmanager
def forked_rng(device: torch.device) -> Iterator[None]:
    """Seeding inside training must not move the caller's random streams."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield
