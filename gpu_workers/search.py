"""LongRoPE / LongRoPE2 evolutionary search of per-dimension RoPE rescale factors.

A candidate is one rescale factor λ_i ≥ 1 per RoPE dimension pair (pair i turns at 1 / (λ_i · θ^(2i/d)),
transformers' ``longrope`` long factors), optionally with n̂ (how many initial positions keep the original,
un-interpolated rotation) and an attention (logit) scale. The search is the genetic algorithm of LongRoPE
(Ding et al. 2024): a population seeded from the PI shape (every λ_i = s), the NTK-aware shape (the factors
NTK's larger base implies, λ_i = s^(2i/(d−2))), LongRoPE's YaRN-shaped start (:func:`yarn_start_factors`)
and YaRN's own frequencies (:func:`yarn_frequency_factors`), filled up with random perturbations of those;
then, each generation, the ``parents`` fittest survive and the rest of the population is refilled by
mutation and crossover of them.

Constraints, imposed on every candidate before it is evaluated:

* **monotone**: λ is non-decreasing from the high-frequency pairs (i = 0) to the low-frequency ones, as
  LongRoPE requires. Mutation and crossover results are projected onto that set by least-squares isotonic
  regression (pool adjacent violators) — the nearest monotone vector, not a rejection loop.
* **bounds**: 1 ≤ λ_i ≤ ``max_factor_ratio`` · s (default 1.25 · s). The lower bound keeps every pair at
  or below its trained frequency (LongRoPE's search space); the upper bound lets the low-frequency pairs
  interpolate somewhat more than the length ratio, which LongRoPE2 found they want (their factors exceed s
  past the critical dimension) and which covers LongRoPE's own search list (1 … 1 + s) for s ≥ 4, while
  keeping the space small. Searched values are rounded to ``decimals`` places (the cache key is the vector
  actually evaluated).
* **LongRoPE2 mode** (Shang et al. 2025): each candidate carries a critical dimension k; the pairs below it
  are not searched and follow the NTK-shaped curve λ_i = s^(2i/(d−2)) exactly (unrounded). The pairs from it
  on are searched with the lower bound raised to s, as the paper constrains them (they lack a full trained
  period, so must scale at least by the length ratio). The NTK part stays below s, so the whole vector is
  monotone. k itself is searched, as the paper does: within ``critical_dim_window`` pairs of the theory value
  d_extra/2 (:func:`gpu_workers.rope_theory.longrope2_critical_window`); mutation may move it by one pair,
  crossover takes one parent's. A given ``critical_dim`` fixes it. The seeds are distinct there: PI-shaped
  (s on every searched pair), NTK-shaped (NTK's per-pair growth continued from s), YaRN-shaped (a ramp from s
  to the upper bound), all at the theory value, then PI-shaped seeds at the other critical dims of the window.
* **search length**: the fitness length (``target_length``) must exceed the original context; a search at or
  within it would tune factors where plain RoPE already works.

Fitness is any ``Callable[[Candidate], float]``, lower is better (perplexity at the target length, a
needle-driven perplexity…); NaN counts as +inf. :func:`perplexity_fitness` builds one for a loaded
transformers model by rewriting its rotary embedding in place, so the model is loaded once for the whole
search. Each distinct candidate is evaluated once (fitness cache); the search stops early when the best has
not improved by more than ``early_stop_tolerance`` (relative) for ``patience`` generations. Given a batched
fitness (``fitness_many``, e.g. :func:`batched_perplexity_fitness`, which runs K candidates × D documents as
one forward batch with per-row rotary frequencies), each generation's new candidates are evaluated together,
``batch_candidates`` at a time, with the same result as one at a time. After every
generation a plain JSON-able state goes to ``on_generation``; ``search(..., resume_from=state)`` continues
from it exactly (same RNG stream, cache and counters), so a resumed run ends where an uninterrupted one would.

Nothing here imports Django, and torch is only imported by the model fitness helpers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from gpu_workers import rope_theory
from gpu_workers.methods.base import RopeFacts
from gpu_workers.methods.longrope import default_attention_factor, yarn_start_factors
from gpu_workers.reporter import Cancelled

if TYPE_CHECKING:
    import torch

__all__ = [
    "MODES",
    "Candidate",
    "Evaluated",
    "GenerationRecord",
    "SearchConfig",
    "SearchConfigError",
    "SearchResult",
    "SearchStateError",
    "batched_perplexity_fitness",
    "batched_token_losses",
    "candidate_inv_freq",
    "critical_dim",
    "critical_window",
    "default_attention",
    "ntk_factors",
    "perplexity_fitness",
    "pi_factors",
    "rope_override",
    "rope_override_rows",
    "search",
    "seed_factors",
    "to_method_params",
    "yarn_frequency_factors",
]

MODES = ("longrope", "longrope2")
STATE_VERSION = 2
"""2: candidates carry their critical dimension and the state its window (1 had one fixed critical dim)."""
MAX_TRIES = 20
"""Attempts at a child the cache has not seen before its slot in the generation is given up."""
RESUMABLE_CHANGES = ("generations", "patience", "early_stop_tolerance")
"""Config fields a resumed search may change (to extend or shorten it); every other must match the state."""


class SearchConfigError(ValueError):
    """A bad search setting; ``field`` names it."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class SearchStateError(ValueError):
    """A saved state this code cannot resume (another format version): start the search afresh instead."""


@dataclass(frozen=True)
class SearchConfig:
    """Every hyper-parameter of a factor search. Defaults fit the demo model (d = 32, 256 → 512 tokens)."""

    rotary_dim: int = 32
    rope_theta: float = 10000.0
    original_context: int = 256
    target_length: int = 512
    """The evaluation length the fitness uses; with ``factor`` blank, s = target_length / original_context."""
    factor: float | None = None
    mode: str = "longrope"
    population: int = 8
    parents: int = 3
    generations: int = 4
    """Generations after the initial population (0 = evaluate the initial population only)."""
    mutation_rate: float = 0.3
    """Probability that a mutation touches each searched pair (at least one always changes), n̂ and attention."""
    mutation_scale: float = 0.1
    """σ of the log-normal multiplicative noise on a factor; attention noise is σ · (attention range width)."""
    crossover_rate: float = 0.5
    """Share of children made by crossover of two parents; the rest by mutation of one."""
    max_factor_ratio: float = 1.25
    """Upper bound of every factor, as a multiple of s."""
    search_attention: bool = False
    attention_range: tuple[float, float] = (1.0, 1.5)
    attention_factor: float | None = None
    """Attention scale when it is not searched (and the seeds' when it is); blank = √(1 + ln s / ln L₀)."""
    n_hat_choices: tuple[int, ...] = (0,)
    """n̂ values to search (initial positions left un-interpolated); (0,) = no n̂ search."""
    critical_dim: int | None = None
    """LongRoPE2 only: a fixed first searched pair; blank = searched within ``critical_dim_window``."""
    critical_dim_window: int = 2
    """LongRoPE2 only: pairs either side of the theory value d_extra/2 the critical dim is searched in (clipped to
    the pairs; 0 = fixed at the theory value). ±2 brackets the old fixed d_extra/2 − 1 with room either way."""
    patience: int = 2
    """Stop after this many generations without improvement; 0 = never stop early."""
    early_stop_tolerance: float = 1e-3
    """Relative improvement of the best fitness that counts as one."""
    decimals: int = 4
    seed: int = 0

    @classmethod
    def for_model(cls, base: RopeFacts, target_length: int, **overrides: Any) -> SearchConfig:
        """A config for a model's RoPE facts, other fields from ``overrides`` or the defaults."""
        return cls(
            rotary_dim=base.rotary_dim,
            rope_theta=float(base.rope_theta),
            original_context=base.original_context,
            target_length=target_length,
            **overrides,
        )

    @property
    def scale(self) -> float:
        """s, the length scale."""
        return float(self.factor) if self.factor is not None else self.target_length / self.original_context

    @property
    def pairs(self) -> int:
        return self.rotary_dim // 2

    def validate(self) -> SearchConfig:
        """Raise :class:`SearchConfigError` naming the first bad field; return self."""

        def need(ok: bool, name: str, message: str) -> None:
            if not ok:
                raise SearchConfigError(f"{message} (got {getattr(self, name)!r})", name)

        need(
            _is_int(self.rotary_dim) and self.rotary_dim >= 4 and self.rotary_dim % 2 == 0,
            "rotary_dim",
            "must be an even whole number of at least 4",
        )
        need(_is_num(self.rope_theta) and self.rope_theta > 1, "rope_theta", "must be a number greater than 1")
        need(
            _is_int(self.original_context) and self.original_context >= 8,
            "original_context",
            "must be a whole number of at least 8",
        )
        need(
            _is_int(self.target_length) and self.target_length >= 2,
            "target_length",
            "must be a whole number of at least 2",
        )
        # Whatever the factor: a fitness measured within the original context tunes nothing that needs it.
        if self.target_length <= self.original_context:
            raise SearchConfigError(
                f"the search length must exceed the original context of {self.original_context} tokens "
                f"(got {self.target_length})",
                "target_length",
            )
        if self.factor is not None:
            need(_is_num(self.factor) and self.factor > 1, "factor", "must be a number greater than 1")
        need(self.mode in MODES, "mode", f"must be one of {', '.join(MODES)}")
        need(_is_int(self.population) and self.population >= 2, "population", "must be a whole number of at least 2")
        need(
            _is_int(self.parents) and 1 <= self.parents < self.population,
            "parents",
            "must be at least 1 and less than population",
        )
        need(_is_int(self.generations) and self.generations >= 0, "generations", "must be a whole number ≥ 0")
        need(_is_num(self.mutation_rate) and 0 < self.mutation_rate <= 1, "mutation_rate", "must be in (0, 1]")
        need(_is_num(self.mutation_scale) and 0 < self.mutation_scale <= 2, "mutation_scale", "must be in (0, 2]")
        need(_is_num(self.crossover_rate) and 0 <= self.crossover_rate <= 1, "crossover_rate", "must be in [0, 1]")
        need(
            _is_num(self.max_factor_ratio) and self.max_factor_ratio >= 1,
            "max_factor_ratio",
            "must be a number of at least 1",
        )
        need(isinstance(self.search_attention, bool), "search_attention", "must be true or false")
        rng = self.attention_range
        need(
            isinstance(rng, tuple) and len(rng) == 2 and all(_is_num(v) for v in rng) and 0 < rng[0] <= rng[1],
            "attention_range",
            "must be two numbers 0 < low ≤ high",
        )
        need(
            self.attention_factor is None or (_is_num(self.attention_factor) and self.attention_factor > 0),
            "attention_factor",
            "must be blank or a positive number",
        )
        choices = self.n_hat_choices
        need(
            isinstance(choices, tuple)
            and len(choices) > 0
            and all(_is_int(n) and n >= 0 for n in choices)
            and len(set(choices)) == len(choices),
            "n_hat_choices",
            "must be distinct whole numbers ≥ 0, at least one",
        )
        need(self.critical_dim is None or self.mode == "longrope2", "critical_dim", "applies to longrope2 mode only")
        need(
            self.critical_dim is None or (_is_int(self.critical_dim) and 0 <= self.critical_dim < self.pairs),
            "critical_dim",
            f"must be blank or a pair index in [0, {self.pairs - 1}]",
        )
        need(
            _is_int(self.critical_dim_window) and self.critical_dim_window >= 0,
            "critical_dim_window",
            "must be a whole number of pairs ≥ 0",
        )
        need(_is_int(self.patience) and self.patience >= 0, "patience", "must be a whole number ≥ 0")
        need(
            _is_num(self.early_stop_tolerance) and self.early_stop_tolerance >= 0,
            "early_stop_tolerance",
            "must be a number ≥ 0",
        )
        need(_is_int(self.decimals) and 1 <= self.decimals <= 8, "decimals", "must be a whole number in [1, 8]")
        need(_is_int(self.seed), "seed", "must be a whole number")
        need(_lower_bound(self) <= _upper_bound(self), "max_factor_ratio", "leaves no room above the lower bound")
        return self

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["attention_range"] = list(self.attention_range)
        data["n_hat_choices"] = list(self.n_hat_choices)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SearchConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SearchConfigError("is not a search setting", unknown[0])
        values = dict(data)
        for name in ("attention_range", "n_hat_choices"):
            if name in values and isinstance(values[name], list):
                values[name] = tuple(values[name])
        return cls(**values).validate()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


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
        return {**self.candidate.to_json(), "fitness": _finite_or_none(self.fitness)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Evaluated:
        return cls(Candidate.from_json(data), _none_to_inf(data["fitness"]))


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
            "best": _finite_or_none(self.best),
            "median": _finite_or_none(self.median),
            "evaluations": self.evaluations,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenerationRecord:
        return cls(
            int(data["generation"]), _none_to_inf(data["best"]), _none_to_inf(data["median"]), int(data["evaluations"])
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
            "fitness": _finite_or_none(self.fitness),
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


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _none_to_inf(value: float | None) -> float:
    return math.inf if value is None else float(value)


# ---------------------------------------------------------------------------------------------- shapes


def pi_factors(rotary_dim: int, factor: float) -> list[float]:
    """PI: every pair interpolated by s."""
    return [float(factor)] * (rotary_dim // 2)


def ntk_factors(rotary_dim: int, factor: float) -> list[float]:
    """The factors NTK-aware scaling implies per pair: (s^(d/(d−2)))^(2i/d) = s^(2i/(d−2)); 1 … s."""
    return [float(factor) ** (2 * i / (rotary_dim - 2)) for i in range(rotary_dim // 2)]


def yarn_frequency_factors(rotary_dim: int, rope_theta: float, original_context: int, factor: float) -> list[float]:
    """The factors YaRN's own frequencies imply per pair: λ_i = 1 / (1 − r_i + r_i / s), r_i its ramp (β 32 / 1).

    transformers' ``yarn`` blends the *inverse frequencies* linearly along the ramp, which is not the linear
    blend of the factors that :func:`~gpu_workers.methods.longrope.yarn_start_factors` makes (LongRoPE's start,
    1 + (s − 1)·r_i): on the demo model at s = 4 pair 3 turns 1.47× slower under YaRN and 2.29× under the
    start shape. Seeding with this shape puts YaRN itself in the initial population.
    """
    low, high = rope_theory.yarn_ramp_dims(rotary_dim, rope_theta, original_context)
    return [1.0 / (1.0 - r + r / float(factor)) for r in rope_theory.yarn_ramp(rotary_dim, low, high)]


def _facts(config: SearchConfig) -> RopeFacts:
    return RopeFacts(
        has_rope=True,
        head_dim=config.rotary_dim,
        rope_theta=config.rope_theta,
        original_context=config.original_context,
    )


def critical_dim(config: SearchConfig) -> int:
    """Where the seeds split: the given critical dim, else the theory value d_extra/2; 0 in longrope mode."""
    if config.mode != "longrope2":
        return 0
    if config.critical_dim is not None:
        return config.critical_dim
    return rope_theory.longrope2_theoretical_pair(config.rotary_dim, config.rope_theta, config.original_context)


def critical_window(config: SearchConfig) -> tuple[int, int]:
    """(low, high) critical dims a candidate may have: the theory value ± the window; one value when fixed."""
    if config.mode != "longrope2":
        return (0, 0)
    if config.critical_dim is not None:
        return (config.critical_dim, config.critical_dim)
    return rope_theory.longrope2_critical_window(
        config.rotary_dim, config.rope_theta, config.original_context, config.critical_dim_window
    )


def default_attention(config: SearchConfig) -> float:
    if config.attention_factor is not None:
        return float(config.attention_factor)
    return default_attention_factor(config.scale, config.original_context)


def _lower_bound(config: SearchConfig) -> float:
    low = config.scale if config.mode == "longrope2" else 1.0
    unit = 10.0**config.decimals
    return math.ceil(round(low * unit, 6)) / unit


def _upper_bound(config: SearchConfig) -> float:
    unit = 10.0**config.decimals
    return math.floor(round(config.max_factor_ratio * config.scale * unit, 6)) / unit


def seed_factors(config: SearchConfig) -> dict[str, list[float]]:
    """The full factor vectors the search starts from, each projected onto the search constraints.

    LongRoPE mode: the PI, NTK and YaRN shapes. Two YaRN shapes: ``yarn``, LongRoPE's start (linear in the
    factor along YaRN's ramp), and ``yarn_freq``, the frequencies transformers' YaRN actually uses
    (:func:`yarn_frequency_factors`).

    LongRoPE2 mode: those shapes all lie at or below s past the critical dim, so the lower bound s would make
    them one vector. The seeds are instead shaped *within* the searched region [s, upper bound], split at the
    theory value (:func:`critical_dim`): ``pi`` (s on every searched pair), ``ntk`` (NTK's per-pair growth
    s^(2/(d−2)) continued from s), ``yarn`` (a ramp linear in the pair index from s to the upper bound, as YaRN
    ramps between its untouched and interpolated pairs); then ``pi_k<j>``, PI-shaped split at each other
    critical dim j of the window, nearest the theory value first, so a small population still samples the split.
    A seed's critical dim is where its factors first reach the searched lower bound (the NTK head stays below s).
    """
    space = _Space(config)
    if config.mode != "longrope2":
        shapes = {
            "pi": pi_factors(config.rotary_dim, config.scale),
            "ntk": ntk_factors(config.rotary_dim, config.scale),
            "yarn": yarn_start_factors(_facts(config), config.scale),
            "yarn_freq": yarn_frequency_factors(
                config.rotary_dim, config.rope_theta, config.original_context, config.scale
            ),
        }
        return {name: list(space.full(space.project(np.asarray(v)), 0)) for name, v in shapes.items()}
    centre = critical_dim(config)
    n = config.pairs - centre
    steps = np.arange(n, dtype=np.float64)
    searched = {
        "pi": np.full(n, config.scale),
        "ntk": config.scale * config.scale ** (2 * steps / (config.rotary_dim - 2)),
        "yarn": np.linspace(config.scale, space.high, n) if n > 1 else np.full(1, config.scale),
    }
    seeds = {name: list(space.full(space.project(v), centre)) for name, v in searched.items()}
    low, high = space.window
    for k in sorted(range(low, high + 1), key=lambda j: (abs(j - centre), j)):
        if k != centre:
            seeds[f"pi_k{k}"] = list(space.full(space.project(np.full(config.pairs - k, config.scale)), k))
    return seeds


class _Space:
    """The constraints: the critical dims allowed, the searched pairs' bounds, rounding, and the NTK head."""

    def __init__(self, config: SearchConfig) -> None:
        self.config = config
        self.window = critical_window(config)
        self.low = _lower_bound(config)
        self.high = _upper_bound(config)
        self.ntk = tuple(ntk_factors(config.rotary_dim, config.scale))

    @property
    def moves(self) -> bool:
        """True when the critical dim is searched (so mutation and crossover draw for it)."""
        return self.window[0] < self.window[1]

    def project(self, values: np.ndarray) -> np.ndarray:
        """Nearest monotone vector (isotonic regression), clipped to the bounds, rounded."""
        fitted = np.clip(_isotonic(np.asarray(values, dtype=np.float64)), self.low, self.high)
        rounded = np.clip(np.round(fitted, self.config.decimals), self.low, self.high)
        return np.maximum.accumulate(rounded)

    def full(self, searched: np.ndarray, k: int) -> tuple[float, ...]:
        """The NTK head below pair k (exact), then the searched pairs."""
        return self.ntk[:k] + tuple(float(x) for x in searched)

    def critical_of(self, factors: Sequence[float]) -> int:
        """The first pair at or above the searched lower bound, within the window (the head is below s)."""
        k = next((i for i, x in enumerate(factors) if x >= self.low), len(factors) - 1)
        return min(max(k, self.window[0]), self.window[1])

    def attention(self, value: float) -> float:
        """Searched: clipped to the range and rounded. Fixed: exactly the configured (or default) value."""
        if not self.config.search_attention:
            return float(value)
        low, high = self.config.attention_range
        return float(round(min(high, max(low, value)), self.config.decimals))


def _isotonic(values: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit (pool adjacent violators)."""
    sums: list[float] = []
    counts: list[int] = []
    for v in values.tolist():
        sums.append(v)
        counts.append(1)
        while len(sums) > 1 and sums[-2] / counts[-2] > sums[-1] / counts[-1]:
            s, c = sums.pop(), counts.pop()
            sums[-1] += s
            counts[-1] += c
    return np.concatenate([np.full(c, s / c) for s, c in zip(sums, counts, strict=True)])


# ---------------------------------------------------------------------------------------------- search


class _Search:
    def __init__(
        self,
        config: SearchConfig,
        fitness: Callable[[Candidate], float] | None,
        should_stop: Callable[[], bool],
        fitness_many: Callable[[list[Candidate]], Sequence[float]] | None = None,
        batch_candidates: int = 1,
    ) -> None:
        self.config = config
        self.space = _Space(config)
        self.fitness = fitness
        self.fitness_many = fitness_many
        self.batch = batch_candidates if fitness_many is not None else 1
        self.should_stop = should_stop
        self.rng = np.random.default_rng(config.seed)
        self.cache: dict[tuple, float] = {}
        self.population: list[Evaluated] = []
        self.history: list[GenerationRecord] = []
        self.generation = -1
        self.evaluations = 0
        self.skipped = 0
        self.stale = 0
        self.reference = math.inf

    # -- candidates

    def _candidate(self, factors: np.ndarray, k: int, n_hat: int, attention: float) -> Candidate:
        """From a full factor vector: the NTK head below k, the rest projected onto the searched constraints."""
        searched = self.space.project(np.asarray(factors, dtype=np.float64)[k:])
        return Candidate(self.space.full(searched, k), int(n_hat), self.space.attention(attention), int(k))

    def _move_critical(self, k: int) -> int:
        """Mutation of the split: with the mutation rate, one pair up or down, turned back at the window's edge.

        Draws nothing when the split is fixed, so LongRoPE mode keeps the random stream it always had.
        """
        if not self.space.moves:
            return k
        low, high = self.space.window
        move = self.rng.random() < self.config.mutation_rate
        step = 1 if self.rng.random() < 0.5 else -1
        if not move:
            return k
        return k + step if low <= k + step <= high else k - step

    def mutate(self, parent: Candidate) -> Candidate:
        c, rng, k = self.config, self.rng, parent.critical_dim
        n = c.pairs - k
        mask = rng.random(n) < c.mutation_rate
        mask[rng.integers(n)] = True
        noise = np.exp(rng.normal(0.0, c.mutation_scale, n))
        old = np.asarray(parent.factors[k:], dtype=np.float64)
        searched = np.where(mask, old * noise, old)
        n_hat = parent.n_hat
        pick_n_hat = rng.random() < c.mutation_rate
        new_n_hat = c.n_hat_choices[int(rng.integers(len(c.n_hat_choices)))]
        if pick_n_hat:
            n_hat = new_n_hat
        attention = parent.attention_factor
        nudge = rng.random() < c.mutation_rate
        step = rng.normal(0.0, c.mutation_scale * (c.attention_range[1] - c.attention_range[0]))
        if c.search_attention and nudge:
            attention += step
        # A pair that joins the searched ones starts from its NTK value, which projection lifts to s.
        factors = np.concatenate([np.asarray(parent.factors[:k], dtype=np.float64), searched])
        return self._candidate(factors, self._move_critical(k), n_hat, attention)

    def crossover(self, first: Candidate, second: Candidate) -> Candidate:
        """Pair by pair from either parent (full vectors, as the parents may split differently); the split of one."""
        picks = self.rng.random(self.config.pairs + 2) < 0.5
        factors = np.where(picks[:-2], np.asarray(first.factors), np.asarray(second.factors))
        n_hat = first.n_hat if picks[-2] else second.n_hat
        attention = first.attention_factor if picks[-1] else second.attention_factor
        k = first.critical_dim
        if self.space.moves and self.rng.random() < 0.5:
            k = second.critical_dim
        return self._candidate(factors, k, n_hat, attention)

    def seeds(self) -> list[Candidate]:
        attention = self.space.attention(default_attention(self.config))
        n_hat = self.config.n_hat_choices[0]
        out = []
        for factors in seed_factors(self.config).values():
            out.append(self._candidate(np.asarray(factors), self.space.critical_of(factors), n_hat, attention))
        return out

    # -- evaluation

    def evaluate_all(self, candidates: list[Candidate]) -> list[Evaluated]:
        """Evaluate distinct, not yet cached candidates, in order: ``batch`` at a time through ``fitness_many``
        (one call per chunk, ``should_stop`` asked before each) or one at a time through ``fitness``."""
        out: list[Evaluated] = []
        for start in range(0, len(candidates), self.batch):
            chunk = candidates[start : start + self.batch]
            if self.should_stop():
                raise Cancelled()
            if self.fitness_many is not None:
                values = [float(v) for v in self.fitness_many(list(chunk))]
                if len(values) != len(chunk):
                    raise ValueError(f"fitness_many returned {len(values)} values for {len(chunk)} candidates")
            else:
                assert self.fitness is not None
                values = [float(self.fitness(chunk[0]))]
            for candidate, value in zip(chunk, values, strict=True):
                value = math.inf if math.isnan(value) else value
                self.cache[candidate.key()] = value
                self.evaluations += 1
                out.append(Evaluated(candidate, value))
        return out

    def _fresh(self, candidate: Candidate, pending: set[tuple]) -> bool:
        """Not evaluated yet and not already proposed in this generation (which counts as a repeat)."""
        key = candidate.key()
        if key in self.cache or key in pending:
            return False
        pending.add(key)
        return True

    # -- generations
    #
    # Each generation first proposes all its candidates (a proposal seen before, in the cache or earlier in
    # the same generation, is a repeat and is replaced), then evaluates them together. The random stream is
    # consumed only by proposing, so the order of evaluation, and batching, cannot change the search.

    def initial(self) -> None:
        seeds = self.seeds()
        proposed: list[Candidate] = []
        pending: set[tuple] = set()
        for seed in seeds:
            if len(proposed) < self.config.population and self._fresh(seed, pending):
                proposed.append(seed)
        tries = 0
        while len(proposed) < self.config.population and tries < MAX_TRIES * self.config.population:
            tries += 1
            child = self.mutate(seeds[tries % len(seeds)])
            if not self._fresh(child, pending):
                self.skipped += 1
                continue
            proposed.append(child)
        self.finish_generation(self.evaluate_all(proposed))

    def step(self) -> None:
        parents = self.population[: self.config.parents]
        proposed: list[Candidate] = []
        pending: set[tuple] = set()
        for _ in range(self.config.population - len(parents)):
            for _try in range(MAX_TRIES):
                child = self.breed([p.candidate for p in parents])
                if self._fresh(child, pending):
                    proposed.append(child)
                    break
                self.skipped += 1
        self.finish_generation(parents + self.evaluate_all(proposed))

    def breed(self, parents: list[Candidate]) -> Candidate:
        rng = self.rng
        cross = rng.random() < self.config.crossover_rate
        if cross and len(parents) >= 2:
            first, second = rng.choice(len(parents), 2, replace=False)
            return self.crossover(parents[int(first)], parents[int(second)])
        return self.mutate(parents[int(rng.integers(len(parents)))])

    def finish_generation(self, population: list[Evaluated]) -> None:
        self.population = sorted(population, key=lambda e: e.fitness)  # stable: ties keep their order
        self.generation += 1
        best = self.population[0].fitness
        median = float(np.median([e.fitness for e in self.population]))
        self.history.append(GenerationRecord(self.generation, best, median, self.evaluations))
        tolerance = self.config.early_stop_tolerance * abs(self.reference) if math.isfinite(self.reference) else 0.0
        if best < self.reference - tolerance:
            self.reference = best
            self.stale = 0
        elif self.generation > 0:
            self.stale += 1

    @property
    def stopped_early(self) -> bool:
        return self.config.patience > 0 and self.stale >= self.config.patience

    @property
    def finished(self) -> bool:
        return self.generation >= self.config.generations or self.stopped_early

    # -- state

    def state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "config": self.config.to_json(),
            "generation": self.generation,
            "critical_window": list(self.space.window),
            "population": [e.to_json() for e in self.population],
            "best": self.population[0].to_json(),
            "cache": [Evaluated(Candidate(*key), value).to_json() for key, value in self.cache.items()],
            "rng": _jsonable(self.rng.bit_generator.state),
            "evaluations": self.evaluations,
            "skipped": self.skipped,
            "stale": self.stale,
            "reference": _finite_or_none(self.reference),
            "history": [h.to_json() for h in self.history],
        }

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise SearchStateError(
                f"resume_from: search state version {state.get('version')!r}, this search writes {STATE_VERSION}"
            )
        saved = SearchConfig.from_json(state["config"]).to_json()
        mine = self.config.to_json()
        for name in mine:
            if name not in RESUMABLE_CHANGES and saved[name] != mine[name]:
                raise SearchConfigError(
                    f"differs from the state being resumed ({saved[name]!r} there, {mine[name]!r} here)", name
                )
        self.generation = int(state["generation"])
        self.population = [Evaluated.from_json(e) for e in state["population"]]
        self.cache = {}
        for entry in state["cache"]:
            evaluated = Evaluated.from_json(entry)
            self.cache[evaluated.candidate.key()] = evaluated.fitness
        self.rng.bit_generator.state = state["rng"]
        self.evaluations = int(state["evaluations"])
        self.skipped = int(state["skipped"])
        self.stale = int(state["stale"])
        self.reference = _none_to_inf(state["reference"])
        self.history = [GenerationRecord.from_json(h) for h in state["history"]]

    def result(self) -> SearchResult:
        best = self.population[0]
        return SearchResult(
            factor=self.config.scale,
            factors=list(best.candidate.factors),
            fitness=best.fitness,
            attention_factor=best.candidate.attention_factor,
            n_hat=best.candidate.n_hat,
            mode=self.config.mode,
            critical_dim=best.candidate.critical_dim,
            critical_window=self.space.window,
            history=list(self.history),
            evaluations=self.evaluations,
            skipped=self.skipped,
            stopped_early=self.stopped_early,
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    return value


def search(
    config: SearchConfig,
    fitness: Callable[[Candidate], float] | None,
    *,
    fitness_many: Callable[[list[Candidate]], Sequence[float]] | None = None,
    batch_candidates: int = 8,
    on_generation: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume_from: dict[str, Any] | None = None,
) -> SearchResult:
    """Run (or continue) the search; lower fitness is better.

    ``fitness`` evaluates one candidate. ``fitness_many``, when given, evaluates a list of candidates
    (returning one value each, in order) and is used instead: each generation's new candidates go to it
    ``batch_candidates`` at a time (:func:`batched_perplexity_fitness` runs them as one forward batch).
    Batching changes nothing but speed: the same candidates are proposed and evaluated, and the result,
    history and states are those of a one-at-a-time search (given a fitness_many that agrees with fitness).

    ``on_generation`` receives a JSON-able state after every generation (the initial population is
    generation 0); pass it back as ``resume_from`` to continue. ``should_stop`` is asked before every
    fitness call (each batch, with ``fitness_many``); when it says True, :class:`~gpu_workers.reporter.Cancelled`
    is raised. A resumed search may change only ``generations``, ``patience`` and ``early_stop_tolerance``
    (and the batching, which is not part of the state).
    """
    config.validate()
    if fitness is None and fitness_many is None:
        raise ValueError("give a fitness or a fitness_many")
    if not _is_int(batch_candidates) or batch_candidates < 1:
        raise ValueError(f"batch_candidates must be a whole number of at least 1 (got {batch_candidates!r})")
    run = _Search(config, fitness, should_stop or (lambda: False), fitness_many, batch_candidates)
    if resume_from is not None:
        run.restore(resume_from)
    else:
        run.initial()
        if on_generation is not None:
            on_generation(run.state())
    while not run.finished:
        run.step()
        if on_generation is not None:
            on_generation(run.state())
    return run.result()


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


# ---------------------------------------------------------------------------------------------- model fitness


def candidate_inv_freq(base: RopeFacts, factors: Sequence[float]) -> torch.Tensor:
    """inv_freq_i = 1 / (λ_i · θ^(2i/d)), float32, computed as transformers' longrope computes it."""
    import torch

    dim = base.rotary_dim
    if len(factors) != dim // 2:
        raise ValueError(f"need {dim // 2} factors, one per RoPE dimension pair; got {len(factors)}")
    exponent = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    return 1.0 / (torch.tensor(list(factors), dtype=torch.float32) * float(base.rope_theta) ** exponent)


def _rotary_modules(model: Any) -> list[Any]:
    found = [m for m in model.modules() if hasattr(m, "inv_freq") and hasattr(m, "attention_scaling")]
    if not found:
        raise ValueError("the model has no rotary embedding module (with inv_freq and attention_scaling)")
    for module in found:
        if not isinstance(getattr(module, "rope_type", None), str):
            raise ValueError(f"{type(module).__name__} has per-layer rope types, which the search does not handle")
    return found


@contextmanager
def rope_override(model: Any, base: RopeFacts, candidate: Candidate) -> Iterator[None]:
    """Within the block, the model's rotary embeddings apply ``candidate``; everything is restored after.

    The rotary modules' ``inv_freq`` buffers are overwritten in place and ``attention_scaling`` (which
    transformers multiplies into cos and sin, so logits scale by its square) set to the candidate's; their
    ``rope_type`` is set to ``default`` meanwhile so that transformers' dynamic / longrope update does not
    swap the frequencies back. For n̂ > 0 the modules' forward is replaced by one computing cos/sin with the
    original frequencies at positions < n̂ and the candidate's from n̂ on (Llama layout: cos/sin of the pair
    angles repeated twice); the attention scale applies at every position.
    """
    import torch

    modules = _rotary_modules(model)
    new = candidate_inv_freq(base, candidate.factors)
    original = candidate_inv_freq(base, [1.0] * (base.rotary_dim // 2))
    saved = []
    for module in modules:
        if module.inv_freq.numel() != new.numel():
            raise ValueError(
                f"{type(module).__name__} has {module.inv_freq.numel()} frequencies; the candidate has {new.numel()}"
            )
        saved.append(
            (
                module,
                module.inv_freq.detach().clone(),
                module.attention_scaling,
                module.rope_type,
                module.__dict__.get("forward"),
            )
        )
    try:
        for module in modules:
            module.inv_freq.copy_(new.to(module.inv_freq.device))
            module.attention_scaling = float(candidate.attention_factor)
            module.rope_type = "default"
            if candidate.n_hat > 0:
                module.forward = _mixed_forward(module, original, candidate.n_hat, torch)
        yield
    finally:
        for module, inv_freq, scaling, rope_type, forward in saved:
            module.inv_freq.copy_(inv_freq)
            module.attention_scaling = scaling
            module.rope_type = rope_type
            if forward is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = forward


def _mixed_forward(module: Any, original: Any, n_hat: int, torch: Any) -> Callable[..., Any]:
    def forward(x: Any, position_ids: Any, layer_type: Any = None) -> tuple[Any, Any]:
        with torch.no_grad():
            positions = position_ids[..., None].float()
            scaled = positions * module.inv_freq.to(device=x.device, dtype=torch.float)
            kept = positions * original.to(device=x.device, dtype=torch.float)
            freqs = torch.where(positions < n_hat, kept, scaled)
            emb = torch.cat((freqs, freqs), dim=-1)
            cos = emb.cos() * module.attention_scaling
            sin = emb.sin() * module.attention_scaling
            return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)

    return forward


def perplexity_fitness(
    model: Any, base: RopeFacts, documents: Sequence[Sequence[int]], length: int, device: Any = None
) -> Callable[[Candidate], float]:
    """Perplexity at ``length`` of a loaded model with a candidate applied in place (model loaded once).

    exp of the mean over documents of each document's mean next-token NLL on its first ``length`` tokens
    (the truncate protocol of :func:`gpu_workers.evaluate.perplexity.perplexity_by_length`). Load the model
    with plain RoPE (method ``none``) and pass the base model's RoPE facts: the factors are relative to
    its θ. The model's state is restored after every evaluation.
    """
    from gpu_workers.evaluate.perplexity import token_losses

    windows = _fitness_windows(documents, length)
    if device is None:
        device = next(model.parameters()).device

    def fitness(candidate: Candidate) -> float:
        with rope_override(model, base, candidate):
            nll = [float(token_losses(model, ids, device).double().mean()) for ids in windows]
        value = math.exp(float(np.mean(nll)))
        return value if math.isfinite(value) else math.inf

    return fitness


@contextmanager
def rope_override_rows(model: Any, base: RopeFacts, candidates: Sequence[Candidate], repeats: int) -> Iterator[None]:
    """Within the block, batch row r of a forward pass applies ``candidates[r // repeats]``.

    Every rotary module's forward is replaced by one that computes cos/sin per batch row (Llama layout:
    ``position_ids`` [1 or batch, seq] → cos, sin [batch, seq, d], which ``apply_rotary_pos_emb`` broadcasts
    over the heads), each row with its candidate's inverse frequencies, n̂ and attention scale, so
    ``len(candidates) · repeats`` rows go through the model as one batch. The angles are computed exactly as
    :func:`rope_override` computes them for one candidate. Inputs must have exactly that many rows.
    """
    import torch

    modules = _rotary_modules(model)
    if not candidates or repeats < 1:
        raise ValueError("give at least one candidate and one row per candidate")
    rows = len(candidates) * repeats
    inv = torch.stack([candidate_inv_freq(base, c.factors) for c in candidates]).repeat_interleave(repeats, dim=0)
    scale = torch.tensor([float(c.attention_factor) for c in candidates], dtype=torch.float32)
    scale = scale.repeat_interleave(repeats)[:, None, None]
    n_hat = torch.tensor([c.n_hat for c in candidates], dtype=torch.float32).repeat_interleave(repeats)[:, None, None]
    mixed = any(c.n_hat > 0 for c in candidates)
    original = candidate_inv_freq(base, [1.0] * (base.rotary_dim // 2))
    for module in modules:
        if module.inv_freq.numel() != inv.shape[1]:
            raise ValueError(
                f"{type(module).__name__} has {module.inv_freq.numel()} frequencies; the candidates have {inv.shape[1]}"
            )

    def forward(x: Any, position_ids: Any, layer_type: Any = None) -> tuple[Any, Any]:
        if x.shape[0] != rows:
            raise ValueError(f"the per-row rotary override expects {rows} batch rows, got {x.shape[0]}")
        with torch.no_grad():
            positions = position_ids[..., None].float().expand(rows, -1, -1)  # [rows, seq, 1]
            freqs = positions * inv.to(device=x.device)[:, None, :]  # [rows, seq, pairs]
            if mixed:
                kept = positions * original.to(device=x.device)
                freqs = torch.where(positions < n_hat.to(device=x.device), kept, freqs)
            emb = torch.cat((freqs, freqs), dim=-1)
            factor = scale.to(device=x.device)
            cos = emb.cos() * factor
            sin = emb.sin() * factor
            return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)

    saved = [(module, module.__dict__.get("forward")) for module in modules]
    try:
        for module in modules:
            module.forward = forward
        yield
    finally:
        for module, previous in saved:
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous


def _fitness_windows(documents: Sequence[Sequence[int]], length: int) -> list[list[int]]:
    """Each document's first *length* tokens; every document must have them."""
    if not documents:
        raise ValueError("give at least one document")
    if any(len(doc) < length for doc in documents):
        raise ValueError(f"every document needs at least {length} tokens")
    return [list(doc[:length]) for doc in documents]


def batched_token_losses(model: Any, windows: Sequence[Sequence[int]], device: Any) -> torch.Tensor:
    """Next-token NLL (nats) of equal-length windows in one forward batch: (rows, length − 1), float32 on CPU.

    Row by row the same numbers as :func:`gpu_workers.evaluate.perplexity.token_losses` (up to the float
    rounding a batched matmul may differ by); the lm head runs per row and in chunks, as there.
    """
    import torch

    from gpu_workers.evaluate.perplexity import head_losses

    with torch.no_grad():
        input_ids = torch.tensor([list(w) for w in windows], device=device)
        hidden = model.base_model(input_ids=input_ids).last_hidden_state
        head = model.get_output_embeddings()
        rows = [head_losses(head, hidden[row], input_ids[row, 1:]) for row in range(input_ids.shape[0])]
        return torch.stack(rows).cpu()


def batched_perplexity_fitness(
    model: Any, base: RopeFacts, documents: Sequence[Sequence[int]], length: int, device: Any = None
) -> Callable[[list[Candidate]], list[float]]:
    """:func:`perplexity_fitness` for a list of candidates: K candidates × D documents as one forward batch.

    Row k·D + j is document j under candidate k (per-row frequencies, n̂ and attention scale through
    :func:`rope_override_rows`). Each value equals what :func:`perplexity_fitness` gives that candidate up to
    float rounding (about 1e-6 relative). Memory grows with K·D·length; :func:`search` hands it
    ``batch_candidates`` candidates at a time, so choose that to fit.
    """
    windows = _fitness_windows(documents, length)
    if device is None:
        device = next(model.parameters()).device

    def fitness_many(candidates: list[Candidate]) -> list[float]:
        if not candidates:
            return []
        with rope_override_rows(model, base, candidates, len(windows)):
            losses = batched_token_losses(model, windows * len(candidates), device)
        nll = losses.double().mean(dim=1).reshape(len(candidates), len(windows))
        values = []
        for row in nll.tolist():
            value = math.exp(float(np.mean(row)))
            values.append(value if math.isfinite(value) else math.inf)
        return values

    return fitness_many
