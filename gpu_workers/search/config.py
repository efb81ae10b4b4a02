"""Every hyper-parameter of a factor search, checked, and the facts that follow from them alone.

:class:`SearchConfig` is plain data with a JSON round trip (a saved search state carries it); its checks raise
:class:`SearchConfigError` naming the field, which the ``longrope_search`` method family turns into a form
error. Pure math: the numbers derived here (the length scale, the critical-dimension window, the factor
bounds, the default attention scale) come from :mod:`gpu_workers.rope_theory`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from gpu_workers import rope_theory
from gpu_workers.catalog import SEARCH_DEFAULTS

if TYPE_CHECKING:
    from gpu_workers.methods.base import RopeFacts

MODES = ("longrope", "longrope2")


class SearchConfigError(ValueError):
    """A bad search setting; ``field`` names it."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class SearchConfig:
    """Every hyper-parameter of a factor search. The RoPE facts default to the demo model's (d = 32, 256 → 512
    tokens); the genetic algorithm's to :data:`gpu_workers.catalog.SEARCH_DEFAULTS`, the composer's."""

    rotary_dim: int = 32
    rope_theta: float = 10000.0
    original_context: int = 256
    target_length: int = 512
    """The evaluation length the fitness uses; with ``factor`` blank, s = target_length / original_context."""
    factor: float | None = None
    mode: str = "longrope"
    population: int = SEARCH_DEFAULTS.population
    parents: int = SEARCH_DEFAULTS.parents
    generations: int = SEARCH_DEFAULTS.generations
    """Generations after the initial population (0 = evaluate the initial population only)."""
    mutation_rate: float = SEARCH_DEFAULTS.mutation_rate
    """Probability that a mutation touches each searched pair (at least one always changes), n̂ and attention."""
    mutation_scale: float = SEARCH_DEFAULTS.mutation_scale
    """σ of the log-normal multiplicative noise on a factor; attention noise is σ · (attention range width)."""
    crossover_rate: float = SEARCH_DEFAULTS.crossover_rate
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
    patience: int = SEARCH_DEFAULTS.patience
    """Stop after this many generations without improvement; 0 = never stop early."""
    early_stop_tolerance: float = 1e-3
    """Relative improvement of the best fitness that counts as one."""
    decimals: int = 4
    seed: int = SEARCH_DEFAULTS.seed

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
            is_int(self.rotary_dim) and self.rotary_dim >= 4 and self.rotary_dim % 2 == 0,
            "rotary_dim",
            "must be an even whole number of at least 4",
        )
        need(is_number(self.rope_theta) and self.rope_theta > 1, "rope_theta", "must be a number greater than 1")
        need(
            is_int(self.original_context) and self.original_context >= 8,
            "original_context",
            "must be a whole number of at least 8",
        )
        need(
            is_int(self.target_length) and self.target_length >= 2,
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
            need(is_number(self.factor) and self.factor > 1, "factor", "must be a number greater than 1")
        need(self.mode in MODES, "mode", f"must be one of {', '.join(MODES)}")
        need(is_int(self.population) and self.population >= 2, "population", "must be a whole number of at least 2")
        need(
            is_int(self.parents) and 1 <= self.parents < self.population,
            "parents",
            "must be at least 1 and less than population",
        )
        need(is_int(self.generations) and self.generations >= 0, "generations", "must be a whole number ≥ 0")
        need(is_number(self.mutation_rate) and 0 < self.mutation_rate <= 1, "mutation_rate", "must be in (0, 1]")
        need(is_number(self.mutation_scale) and 0 < self.mutation_scale <= 2, "mutation_scale", "must be in (0, 2]")
        need(is_number(self.crossover_rate) and 0 <= self.crossover_rate <= 1, "crossover_rate", "must be in [0, 1]")
        need(
            is_number(self.max_factor_ratio) and self.max_factor_ratio >= 1,
            "max_factor_ratio",
            "must be a number of at least 1",
        )
        need(isinstance(self.search_attention, bool), "search_attention", "must be true or false")
        rng = self.attention_range
        need(
            isinstance(rng, tuple) and len(rng) == 2 and all(is_number(v) for v in rng) and 0 < rng[0] <= rng[1],
            "attention_range",
            "must be two numbers 0 < low ≤ high",
        )
        need(
            self.attention_factor is None or (is_number(self.attention_factor) and self.attention_factor > 0),
            "attention_factor",
            "must be blank or a positive number",
        )
        choices = self.n_hat_choices
        need(
            isinstance(choices, tuple)
            and len(choices) > 0
            and all(is_int(n) and n >= 0 for n in choices)
            and len(set(choices)) == len(choices),
            "n_hat_choices",
            "must be distinct whole numbers ≥ 0, at least one",
        )
        need(self.critical_dim is None or self.mode == "longrope2", "critical_dim", "applies to longrope2 mode only")
        need(
            self.critical_dim is None or (is_int(self.critical_dim) and 0 <= self.critical_dim < self.pairs),
            "critical_dim",
            f"must be blank or a pair index in [0, {self.pairs - 1}]",
        )
        need(
            is_int(self.critical_dim_window) and self.critical_dim_window >= 0,
            "critical_dim_window",
            "must be a whole number of pairs ≥ 0",
        )
        need(is_int(self.patience) and self.patience >= 0, "patience", "must be a whole number ≥ 0")
        need(
            is_number(self.early_stop_tolerance) and self.early_stop_tolerance >= 0,
            "early_stop_tolerance",
            "must be a number ≥ 0",
        )
        need(is_int(self.decimals) and 1 <= self.decimals <= 8, "decimals", "must be a whole number in [1, 8]")
        need(is_int(self.seed), "seed", "must be a whole number")
        need(lower_bound(self) <= upper_bound(self), "max_factor_ratio", "leaves no room above the lower bound")
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


def is_int(value: Any) -> bool:
    """A whole number (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite number (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


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
    """The attention scale of the seeds (and of every candidate when it is not searched)."""
    if config.attention_factor is not None:
        return float(config.attention_factor)
    return rope_theory.longrope_attention_factor(config.scale, config.original_context)


def lower_bound(config: SearchConfig) -> float:
    """The smallest searched factor, rounded up to the config's decimals: 1, or s in LongRoPE2 mode."""
    low = config.scale if config.mode == "longrope2" else 1.0
    unit = 10.0**config.decimals
    return math.ceil(round(low * unit, 6)) / unit


def upper_bound(config: SearchConfig) -> float:
    """The largest factor, ``max_factor_ratio`` · s, rounded down to the config's decimals."""
    unit = 10.0**config.decimals
    return math.floor(round(config.max_factor_ratio * config.scale * unit, 6)) / unit
