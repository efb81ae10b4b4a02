"""What the search evaluates and what it reports: candidates, their fitness, each generation, the result.

Plain frozen values with JSON round trips: a search state saved after a generation is made of them, and
a resumed search reads them back. A fitness of +inf (a candidate that diverged) is written as ``null``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Candidate:
    """What a fitness evaluates: one factor per pair (shortest wavelength first), n̂, attention scale.

    ``critical_dim`` is the first searched pair (LongRoPE2: the pairs below it follow the NTK curve; 0 in
    LongRoPE mode). The fitness ignores it, as the factors already say it; the search needs it to mutate the
    right pairs, and it is part of the key so a result reports the split it was found with.
    """

    factors: tuple[float, ...]
    n_hat: int = 0
    attention_factor: float = 1.0
    critical_dim: int = 0

    def key(self) -> tuple[tuple[float, ...], int, float, int]:
        return (self.factors, self.n_hat, self.attention_factor, self.critical_dim)

    def to_json(self) -> dict[str, Any]:
        return {"factors": list(self.factors), "n_hat": self.n_hat, "attention_factor": self.attention_factor,
                "critical_dim": self.critical_dim}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Candidate:
        return cls(tuple(float(x) for x in data["factors"]), int(data["n_hat"]), float(data["attention_factor"]),
                   int(data["critical_dim"]))


@dataclass(frozen=True)
class Evaluated:
    candidate: Candidate
    fitness: float

    def to_json(self) -> dict[str, Any]:
        return {**self.candidate.to_json(), "fitness": finite_or_none(self.fitness)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Evaluated:
        return cls(Candidate.from_json(data), none_to_inf(data["fitness"]))


@dataclass(frozen=True)
class GenerationRecord:
    generation: int
    """0 = the initial population."""
    best: float
    median: float
    evaluations: int
    """Fitness calls so far (cumulative)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "best": finite_or_none(self.best),
            "median": finite_or_none(self.median),
            "evaluations": self.evaluations,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenerationRecord:
        return cls(
            int(data["generation"]), none_to_inf(data["best"]), none_to_inf(data["median"]), int(data["evaluations"])
        )


@dataclass(frozen=True)
class SearchResult:
    factor: float
    """s, the length scale searched for."""
    factors: list[float]
    """The best long factors, one per dimension pair."""
    fitness: float
    attention_factor: float
    n_hat: int
    mode: str
    critical_dim: int
    """The best candidate's first searched pair: the pairs below it follow the NTK curve (0 in longrope mode)."""
    critical_window: tuple[int, int] = (0, 0)
    """(low, high): where the critical dim was searched; equal when it was fixed (always (0, 0) in longrope mode)."""
    history: list[GenerationRecord] = field(default_factory=list)
    evaluations: int = 0
    skipped: int = 0
    """Proposed children already in the fitness cache, so not evaluated again."""
    stopped_early: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "factor": self.factor,
            "factors": list(self.factors),
            "fitness": finite_or_none(self.fitness),
            "attention_factor": self.attention_factor,
            "n_hat": self.n_hat,
            "mode": self.mode,
            "critical_dim": self.critical_dim,
            "critical_window": list(self.critical_window),
            "history": [h.to_json() for h in self.history],
            "evaluations": self.evaluations,
            "skipped": self.skipped,
            "stopped_early": self.stopped_early,
        }


def finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def none_to_inf(value: float | None) -> float:
    return math.inf if value is None else float(value)


def to_method_params(result: SearchResult) -> dict[str, Any]:
    """The ``longrope`` method parameters that reproduce the best candidate in transformers.

    transformers' longrope has no n̂, so a result whose best n̂ is not 0 is refused.
    """
    if result.n_hat:
        raise ValueError(
            f"the best candidate keeps n̂ = {result.n_hat} initial positions un-interpolated, which transformers' "
            "longrope cannot express; search with n_hat_choices=(0,) for exportable factors"
        )
    return {"factor": result.factor, "long_factor": list(result.factors), "attention_factor": result.attention_factor}
