"""The genetic algorithm of LongRoPE's search: generations of mutation and crossover, resumable exactly.

Each generation keeps the ``parents`` fittest, proposes the rest of the population (mutation of one parent
or crossover of two, projected onto the constraints of :mod:`gpu_workers.search.space`), then evaluates the
new candidates, one at a time or in batches, each distinct candidate once. After every generation the whole
state — population, fitness cache, RNG stream, counters — is plain JSON, and :func:`search` continues from it
exactly where an uninterrupted search would be.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gpu_workers.reporter import Cancelled
from gpu_workers.search.candidates import (
    Candidate,
    Evaluated,
    GenerationRecord,
    SearchResult,
    finite_or_none,
    none_to_inf,
)
from gpu_workers.search.config import SearchConfig, SearchConfigError, default_attention, is_int
from gpu_workers.search.seeds import seed_factors
from gpu_workers.search.space import Space

STATE_VERSION = 2
"""2: candidates carry their critical dimension and the state its window (1 had one fixed critical dim)."""
MAX_TRIES = 20
"""Attempts at a child the cache has not seen before its slot in the generation is given up."""
RESUMABLE_CHANGES = ("generations", "patience", "early_stop_tolerance")
"""Config fields a resumed search may change (to extend or shorten it); every other must match the state."""


class SearchStateError(ValueError):
    """A saved state this code cannot resume (another format version): start the search afresh instead."""


class GeneticSearch:
    """One search in progress: its population, fitness cache, random stream and counters (:func:`search` runs it)."""

    def __init__(
        self,
        config: SearchConfig,
        fitness: Callable[[Candidate], float] | None,
        should_stop: Callable[[], bool],
        fitness_many: Callable[[list[Candidate]], Sequence[float]] | None = None,
        batch_candidates: int = 1,
    ) -> None:
        self.config = config
        self.space = Space(config)
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
            "reference": finite_or_none(self.reference),
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
        self.reference = none_to_inf(state["reference"])
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
    ``batch_candidates`` at a time (:func:`~gpu_workers.search.fitness.batched_perplexity_fitness` runs them
    as one forward batch).
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
    if not is_int(batch_candidates) or batch_candidates < 1:
        raise ValueError(f"batch_candidates must be a whole number of at least 1 (got {batch_candidates!r})")
    run = GeneticSearch(config, fitness, should_stop or (lambda: False), fitness_many, batch_candidates)
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
