"""Pick where a run computes: CUDA with bf16 when there is a GPU, the CPU in fp32 otherwise.

The same code runs on both; only this choice differs. bf16 autocast was measured slower than fp32
on the development CPU, so the CPU path stays fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


def place(requested: str = "auto") -> Placement:
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {requested!r}")
    use_cuda = requested == "cuda" or (requested == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("CUDA was requested but no GPU is visible to this worker.")
    if use_cuda:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return Placement(torch.device("cuda"), dtype)
    return Placement(torch.device("cpu"), torch.float32)


def reset_peak_memory(placement: Placement) -> None:
    if placement.is_cuda:
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb(placement: Placement) -> float | None:
    """Peak allocated GPU memory since the last reset; None on the CPU (no per-call allocator peak)."""
    if placement.is_cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    return None
