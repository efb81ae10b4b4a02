"""The only input the ML side accepts: plain, validated dataclasses that round-trip through JSON.

A Celery message carries ``RunSpec.to_json()``-able facts only, never ORM objects, so a run can be
replayed from a notebook with nothing but this dict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

DATASET_KINDS = ("builtin", "local", "hf")
PPL_PROTOCOLS = ("truncate",)


@dataclass(frozen=True)
class MethodSpec:
    family: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetSpec:
    kind: str = "builtin"
    path: str = ""
    text_field: str = "text"
    source_field: str = "source"

    def __post_init__(self) -> None:
        if self.kind not in DATASET_KINDS:
            raise ValueError(f"dataset kind must be one of {DATASET_KINDS}, not {self.kind!r}")


@dataclass(frozen=True)
class EvalSpec:
    lengths: tuple[int, ...]
    documents: int = 8
    protocol: str = "truncate"

    def __post_init__(self) -> None:
        object.__setattr__(self, "lengths", tuple(sorted({int(n) for n in self.lengths})))
        if not self.lengths or self.lengths[0] < 16:
            raise ValueError("evaluation lengths must be at least 16 tokens")
        if self.documents < 1:
            raise ValueError("at least one evaluation document is needed")
        if self.protocol not in PPL_PROTOCOLS:
            raise ValueError(f"perplexity protocol must be one of {PPL_PROTOCOLS}")


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    model_source: str
    dataset: DatasetSpec
    method: MethodSpec
    target_length: int
    eval: EvalSpec
    seed: int = 0
    device: str = "auto"
    """``auto`` picks CUDA when present, the CPU otherwise; ``cpu`` / ``cuda`` force one."""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["eval"]["lengths"] = list(self.eval.lengths)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSpec:
        return cls(
            run_id=data["run_id"],
            model_source=data["model_source"],
            dataset=DatasetSpec(**data["dataset"]),
            method=MethodSpec(**data["method"]),
            target_length=int(data["target_length"]),
            eval=EvalSpec(**data["eval"]),
            seed=int(data.get("seed", 0)),
            device=data.get("device", "auto"),
        )
