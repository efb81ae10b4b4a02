"""How the pipeline talks back: a small protocol the web side implements with the database.

Keeping it a protocol lets tests and notebooks pass a list-collecting reporter and lets the
pipeline stay ignorant of where progress and numbers end up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class Cancelled(Exception):
    """Raised by the pipeline when ``reporter.should_stop()`` said so."""


@dataclass(frozen=True)
class Measurement:
    metric: str
    value: float
    context_length: int | None = None
    depth: float | None = None
    samples: int | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    step: int | None = None
    protocol_key: str | None = None
    """The key of the evaluation protocol it was measured under (:mod:`gpu_workers.protocol`); set by the
    pipeline for every evaluation's numbers, None for training losses and search progress."""


class Reporter(Protocol):
    def progress(self, fraction: float, message: str) -> None: ...
    def log(self, line: str) -> None: ...
    def measurement(self, measurement: Measurement) -> None: ...
    def artifact(self, kind: str, path: str) -> None: ...
    def protocol(self, facts: dict[str, Any]) -> None: ...
    def should_stop(self) -> bool: ...


@dataclass
class MemoryReporter:
    """Collects everything in lists: for tests, notebooks and benchmarks."""

    stop_after_checks: int | None = None
    fractions: list[float] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    artifacts: list[tuple[str, str]] = field(default_factory=list)
    protocols: list[dict[str, Any]] = field(default_factory=list)
    checks: int = 0

    def progress(self, fraction: float, message: str) -> None:
        self.fractions.append(fraction)
        self.lines.append(message)

    def log(self, line: str) -> None:
        self.lines.append(line)

    def measurement(self, measurement: Measurement) -> None:
        self.measurements.append(measurement)

    def artifact(self, kind: str, path: str) -> None:
        self.artifacts.append((kind, path))

    def protocol(self, facts: dict[str, Any]) -> None:
        self.protocols.append(facts)

    def should_stop(self) -> bool:
        self.checks += 1
        return self.stop_after_checks is not None and self.checks > self.stop_after_checks
