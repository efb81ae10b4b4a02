"""LongRoPE / LongRoPE2 factor search: constraints, cache, early stop, resume, and the in-place model fitness."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from gpu_workers import methods, rope_theory, search
from gpu_workers.data.documents import long_documents
from gpu_workers.demo import DEMO_MODEL_DIR
from gpu_workers.device import place
from gpu_workers.evaluate import perplexity
from gpu_workers.loading import LoadedModel, load
from gpu_workers.methods import frequencies
from gpu_workers.methods.longrope import yarn_start_factors
from gpu_workers.reporter import Cancelled
from gpu_workers.rotary import rope_override_rows
from gpu_workers.search import Candidate, SearchConfig, SearchConfigError
from gpu_workers.search.fitness import batched_perplexity_fitness, perplexity_fitness
from gpu_workers.search.genetic import STATE_VERSION
from gpu_workers.spec import DatasetSpec, MethodSpec

CPU = place("cpu")
DEMO = SearchConfig()  # the demo model: d = 32 (16 pairs), θ = 10⁴, 256 → 512 tokens, s = 2


def _hidden(config: SearchConfig) -> np.ndarray:
    """A monotone vector inside the bounds, away from every seed: the synthetic optimum."""
    return np.linspace(1.3, 1.2 * config.scale, config.pairs) ** np.linspace(1.0, 1.05, config.pairs)


class Recorder:
    """A synthetic fitness (squared distance to a hidden vector) that records every call."""

    def __init__(self, config: SearchConfig, flat: bool = False) -> None:
        self.target = _hidden(config)
        self.flat = flat
        self.calls: list[Candidate] = []

    def __call__(self, candidate: Candidate) -> float:
        self.calls.append(candidate)
        if self.flat:
            return 1.0
        return float(np.sum((np.asarray(candidate.factors) - self.target) ** 2))


def _monotone(values: tuple[float, ...]) -> bool:
    return all(a <= b for a, b in itertools.pairwise(values))


# ------------------------------------------------------------------------------------------- config


def test_demo_defaults_validate_and_round_trip_through_json() -> None:
    config = SearchConfig(mode="longrope2", search_attention=True, n_hat_choices=(0, 4), critical_dim=5)
    assert config.validate() is config
    windowed = SearchConfig(mode="longrope2", critical_dim_window=3)
    assert SearchConfig.from_json(json.loads(json.dumps(windowed.to_json()))) == windowed
    assert DEMO.scale == 2.0 and DEMO.pairs == 16
    text = json.dumps(config.to_json(), allow_nan=False)
    assert SearchConfig.from_json(json.loads(text)) == config
    facts = methods.RopeFacts(has_rope=True, head_dim=16, rope_theta=5e5, original_context=64)
    assert SearchConfig.for_model(facts, 256, population=4).validate().scale == 4.0


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"population": 1}, "population"),
        ({"parents": 8}, "parents"),
        ({"mode": "longrope3"}, "mode"),
        ({"factor": 1.0}, "factor"),
        ({"target_length": 256}, "target_length"),
        ({"mutation_rate": 0.0}, "mutation_rate"),
        ({"crossover_rate": 1.5}, "crossover_rate"),
        ({"max_factor_ratio": 0.9}, "max_factor_ratio"),
        ({"attention_range": (1.5, 1.0)}, "attention_range"),
        ({"n_hat_choices": ()}, "n_hat_choices"),
        ({"n_hat_choices": (0, -4)}, "n_hat_choices"),
        ({"critical_dim": 3}, "critical_dim"),  # longrope mode
        ({"mode": "longrope2", "critical_dim": 16}, "critical_dim"),
        ({"mode": "longrope2", "critical_dim_window": -1}, "critical_dim_window"),
        ({"mode": "longrope2", "critical_dim_window": 1.5}, "critical_dim_window"),
        # The search length (target_length) must pass the original context, whatever the factor says.
        ({"factor": 2.0, "target_length": 256}, "target_length"),
        ({"factor": 4.0, "target_length": 200}, "target_length"),
        ({"mode": "longrope2", "factor": 2.0, "target_length": 256}, "target_length"),
        ({"rotary_dim": 31}, "rotary_dim"),
        ({"patience": -1}, "patience"),
    ],
)
def test_validate_names_the_bad_field(changes: dict, field: str) -> None:
    with pytest.raises(SearchConfigError) as err:
        SearchConfig(**changes).validate()
    assert err.value.field == field
    assert str(err.value).startswith(field)


def test_from_json_refuses_unknown_settings() -> None:
    with pytest.raises(SearchConfigError) as err:
        SearchConfig.from_json({**DEMO.to_json(), "temperature": 3})
    assert err.value.field == "temperature"


# ------------------------------------------------------------------------------------------- constraints


def test_initial_population_starts_from_pi_ntk_and_yarn_shapes() -> None:
    fitness = Recorder(DEMO)
    search.search(DEMO, fitness)
    first = [c.factors for c in fitness.calls[:3]]
    assert first[0] == (2.0,) * 16
    ntk = [round(x, 4) for x in search.ntk_factors(32, 2.0)]
    assert list(first[1]) == ntk and ntk[0] == 1.0 and ntk[-1] == 2.0
    facts = methods.RopeFacts(has_rope=True, head_dim=32, rope_theta=10000.0, original_context=256)
    assert list(first[2]) == [round(x, 4) for x in yarn_start_factors(facts, 2.0)]
    # ... and YaRN's own frequencies (transformers' yarn blends inverse frequencies, not factors).
    yarn_inv, _ = frequencies.rope_frequencies("yarn", {"factor": 2.0}, facts, 512)
    original = frequencies.original_frequencies(facts)
    assert list(fitness.calls[3].factors) == [round(o / y, 4) for o, y in zip(original, yarn_inv, strict=True)]
    assert fitness.calls[3].factors != first[2]


def test_yarn_frequency_seed_is_transformers_yarn_at_every_scale() -> None:
    facts = methods.RopeFacts(has_rope=True, head_dim=64, rope_theta=5e5, original_context=512)
    original = frequencies.original_frequencies(facts)
    for factor in (2.0, 4.0, 8.0, 16.0):
        yarn_inv, _ = frequencies.rope_frequencies("yarn", {"factor": factor}, facts, int(512 * factor))
        expected = [o / y for o, y in zip(original, yarn_inv, strict=True)]
        assert search.yarn_frequency_factors(64, 5e5, 512, factor) == pytest.approx(expected, rel=1e-6)


def test_every_candidate_is_monotone_and_within_bounds() -> None:
    config = SearchConfig(
        population=10,
        parents=3,
        generations=6,
        patience=0,
        mutation_scale=0.4,
        search_attention=True,
        attention_range=(1.0, 1.3),
        n_hat_choices=(0, 2, 8),
    )
    fitness = Recorder(config)
    search.search(config, fitness)
    assert len(fitness.calls) > 40
    high = 1.25 * config.scale
    for candidate in fitness.calls:
        assert len(candidate.factors) == 16
        assert _monotone(candidate.factors)
        assert min(candidate.factors) >= 1.0 and max(candidate.factors) <= high
        assert 1.0 <= candidate.attention_factor <= 1.3
        assert candidate.n_hat in (0, 2, 8)
    assert {c.n_hat for c in fitness.calls} == {0, 2, 8}
    assert len({c.attention_factor for c in fitness.calls}) > 3


def _assert_longrope2_split(config: SearchConfig, candidate: Candidate) -> None:
    """Below the candidate's critical dim: the NTK curve exactly (unrounded); from it on: searched, ≥ s."""
    k = candidate.critical_dim
    assert candidate.factors[:k] == tuple(search.ntk_factors(config.rotary_dim, config.scale)[:k])
    assert _monotone(candidate.factors)
    assert min(candidate.factors[k:]) >= config.scale and max(candidate.factors) <= 1.25 * config.scale


def test_a_given_critical_dim_keeps_every_candidate_split_there() -> None:
    config = SearchConfig(mode="longrope2", population=8, generations=5, patience=0, mutation_scale=0.4,
                          critical_dim=6)
    assert search.critical_window(config) == (6, 6)
    fitness = Recorder(config)
    result = search.search(config, fitness)
    assert result.critical_dim == 6 and result.critical_window == (6, 6)
    for candidate in fitness.calls:
        assert candidate.critical_dim == 6
        _assert_longrope2_split(config, candidate)
    assert len({c.factors[6:] for c in fitness.calls}) == len(fitness.calls)  # the searched part does vary


def test_longrope2_searches_the_critical_dim_in_a_window_around_the_theory_value() -> None:
    # Three seeds, all split at the theory value: any other split below comes from mutation or crossover.
    config = SearchConfig(mode="longrope2", population=3, parents=1, generations=10, patience=0, mutation_scale=0.4)
    theory = rope_theory.critical_dimension(32, 10000.0, 256) // 2
    assert theory == 7 and search.critical_window(config) == (5, 9)  # ±2 pairs by default
    assert rope_theory.longrope2_critical_dim(32, 10000.0, 256) in range(5, 10), "the old fixed split is inside"
    fitness = Recorder(config)
    result = search.search(config, fitness)
    assert [c.critical_dim for c in fitness.calls[:3]] == [7, 7, 7]
    for candidate in fitness.calls:
        assert 5 <= candidate.critical_dim <= 9
        _assert_longrope2_split(config, candidate)
    assert {c.critical_dim for c in fitness.calls[3:]} - {7}, "mutation moves the split"
    best = min(fitness.calls, key=lambda c: float(np.sum((np.asarray(c.factors) - fitness.target) ** 2)))
    assert result.critical_dim == best.critical_dim and result.factors == list(best.factors)
    assert result.to_json()["critical_dim"] == result.critical_dim and result.to_json()["critical_window"] == [5, 9]


def test_critical_window_is_a_setting_clipped_to_the_pairs() -> None:
    assert search.critical_window(SearchConfig(mode="longrope2", critical_dim_window=0)) == (7, 7)
    assert search.critical_window(SearchConfig(mode="longrope2", critical_dim_window=20)) == (0, 15)
    assert search.critical_window(SearchConfig()) == (0, 0), "longrope mode searches every pair"
    # Every pair turned in training (d_extra = d): the theory value is clipped so one pair is left to search.
    wide = SearchConfig(mode="longrope2", rotary_dim=8, rope_theta=100.0, original_context=4096, target_length=8192)
    assert rope_theory.critical_dimension(8, 100.0, 4096) == 8 and search.critical_window(wide) == (1, 3)


def test_longrope2_seeds_are_distinct_shapes_and_split_points() -> None:
    config = SearchConfig(mode="longrope2", population=8, generations=0)
    seeds = search.seed_factors(config)
    assert list(seeds)[:3] == ["pi", "ntk", "yarn"]
    assert len({tuple(v) for v in seeds.values()}) == len(seeds) >= 3
    s, high = config.scale, 1.25 * config.scale
    assert seeds["pi"][7:] == [s] * 9  # PI-shaped: s on every searched pair
    assert seeds["ntk"][7:9] == [round(s * s ** (2 * j / 30), 4) for j in range(2)]  # NTK's growth continued past s
    assert seeds["yarn"][7] == s and seeds["yarn"][-1] == high  # a ramp from s to the upper bound
    # The initial population (before any mutation) is the seeds, in order, at several critical dims.
    fitness = Recorder(config)
    search.search(config, fitness)
    initial = fitness.calls[: len(seeds)]
    assert [list(c.factors) for c in initial] == list(seeds.values())
    assert len({c.factors for c in initial}) >= 3
    assert {c.critical_dim for c in initial} == {5, 6, 7, 8, 9}
    assert initial[0].critical_dim == initial[1].critical_dim == initial[2].critical_dim == 7
    for candidate in initial:
        _assert_longrope2_split(config, candidate)


def test_longrope_mode_seeds_are_unchanged() -> None:
    seeds = search.seed_factors(DEMO)
    assert list(seeds) == ["pi", "ntk", "yarn", "yarn_freq"]
    assert len({tuple(v) for v in seeds.values()}) == 4


# ------------------------------------------------------------------------------------------- behaviour


def test_same_seed_same_search_and_another_seed_another() -> None:
    config = SearchConfig(generations=5, patience=0)
    one = search.search(config, Recorder(config))
    two = search.search(config, Recorder(config))
    other = search.search(SearchConfig(generations=5, patience=0, seed=1), Recorder(config))
    assert one.to_json() == two.to_json()
    assert other.to_json()["history"] != one.to_json()["history"]


def test_fitness_cache_never_evaluates_a_vector_twice() -> None:
    # Coarse rounding on 4 pairs makes repeats frequent, so the cache is exercised.
    config = SearchConfig(
        rotary_dim=8, decimals=1, population=8, parents=3, generations=8, patience=0, n_hat_choices=(0, 4)
    )
    fitness = Recorder(config)
    result = search.search(config, fitness)
    keys = [c.key() for c in fitness.calls]
    assert len(keys) == len(set(keys))
    assert result.evaluations == len(keys) == result.history[-1].evaluations
    assert result.skipped > 0


def test_flat_fitness_stops_early() -> None:
    config = SearchConfig(generations=20, patience=3)
    result = search.search(config, Recorder(config, flat=True))
    assert result.stopped_early
    assert [h.generation for h in result.history] == [0, 1, 2, 3]
    never = search.search(SearchConfig(generations=5, patience=0), Recorder(config, flat=True))
    assert not never.stopped_early and len(never.history) == 6


def test_search_finds_a_hidden_optimum() -> None:
    config = SearchConfig(population=16, parents=4, generations=40, patience=0)
    result = search.search(config, Recorder(config))
    first = result.history[0].best
    assert result.fitness == result.history[-1].best < 0.1 * first
    bests = [h.best for h in result.history]
    assert bests == sorted(bests, reverse=True)  # parents survive, so the best never worsens


def test_should_stop_cancels_before_an_evaluation() -> None:
    fitness = Recorder(DEMO)
    checks = []

    def should_stop() -> bool:
        checks.append(1)
        return len(checks) > 11

    with pytest.raises(Cancelled):
        search.search(DEMO, fitness, should_stop=should_stop)
    assert len(fitness.calls) == 11


def test_resume_after_cancel_equals_an_uninterrupted_run() -> None:
    config = SearchConfig(
        population=8, parents=3, generations=6, patience=0, search_attention=True, n_hat_choices=(0, 4)
    )
    full_states: list[dict] = []
    full = search.search(config, Recorder(config), on_generation=full_states.append)
    assert [s["generation"] for s in full_states] == list(range(7))

    states: list[dict] = []
    stop_at = full_states[3]["evaluations"] + 2  # inside generation 4
    first = Recorder(config)
    with pytest.raises(Cancelled):
        search.search(config, first, on_generation=states.append, should_stop=lambda: len(first.calls) >= stop_at)
    saved = json.loads(json.dumps(states[-1], allow_nan=False))  # as a database would keep it
    assert saved["generation"] == 3 and saved == full_states[3]

    rest = Recorder(config)
    resumed = search.search(config, rest, resume_from=saved)
    assert resumed.to_json() == full.to_json()
    assert len(rest.calls) == full.evaluations - saved["evaluations"]
    assert not {c.key() for c in rest.calls} & {c.key() for c in first.calls[: saved["evaluations"]]}


def test_a_longrope2_search_with_a_moving_split_resumes_exactly() -> None:
    config = SearchConfig(mode="longrope2", population=8, parents=3, generations=6, patience=0, mutation_scale=0.3)
    full_states: list[dict] = []
    full = search.search(config, Recorder(config), on_generation=full_states.append)
    assert full_states[0]["version"] == STATE_VERSION == 2
    assert full_states[0]["critical_window"] == [5, 9]
    assert {e["critical_dim"] for e in full_states[-1]["cache"]} >= {5, 9}
    saved = json.loads(json.dumps(full_states[2], allow_nan=False))
    rest = Recorder(config)
    resumed = search.search(config, rest, resume_from=saved)
    assert resumed.to_json() == full.to_json()
    assert len(rest.calls) == full.evaluations - saved["evaluations"]
    with pytest.raises(SearchConfigError) as err:
        search.search(SearchConfig(**{**config.__dict__, "critical_dim_window": 1}), Recorder(config),
                      resume_from=saved)
    assert err.value.field == "critical_dim_window"


def test_a_state_of_an_older_format_is_refused_as_such() -> None:
    states: list[dict] = []
    search.search(DEMO, Recorder(DEMO), on_generation=states.append)
    old = {**states[0], "version": 1}
    with pytest.raises(search.SearchStateError, match="version 1"):
        search.search(DEMO, Recorder(DEMO), resume_from=old)


def test_resume_may_extend_generations_but_not_change_the_search() -> None:
    config = SearchConfig(generations=2, patience=0)
    states: list[dict] = []
    short = search.search(config, Recorder(config), on_generation=states.append)
    longer = search.search(SearchConfig(generations=4, patience=0), Recorder(config), resume_from=states[-1])
    straight = search.search(SearchConfig(generations=4, patience=0), Recorder(config))
    assert len(short.history) == 3 and longer.to_json() == straight.to_json()
    with pytest.raises(SearchConfigError) as err:
        search.search(SearchConfig(generations=4, mutation_scale=0.2), Recorder(config), resume_from=states[-1])
    assert err.value.field == "mutation_scale"


def test_result_becomes_longrope_method_params() -> None:
    result = search.search(DEMO, Recorder(DEMO))
    params = search.to_method_params(result)
    facts = methods.RopeFacts(has_rope=True, head_dim=32, rope_theta=10000.0, original_context=256)
    clean = methods.validate("longrope", params, facts, 512)
    assert clean["long_factor"] == result.factors and clean["factor"] == 2.0
    assert clean["attention_factor"] == result.attention_factor == math.sqrt(1 + math.log(2) / math.log(256))
    fixed = search.search(SearchConfig(attention_factor=0.9, generations=1), Recorder(DEMO))
    assert fixed.attention_factor == 0.9  # a fixed attention factor is used as given, outside the searched range
    with pytest.raises(ValueError, match="n̂"):
        search.to_method_params(search.SearchResult(**{**result.__dict__, "n_hat": 4}))


# ------------------------------------------------------------------------------------------- batching


class Batched:
    """``fitness_many`` over a :class:`Recorder`: records every batch it is handed."""

    def __init__(self, single: Recorder) -> None:
        self.single = single
        self.batches: list[list[Candidate]] = []

    def __call__(self, candidates: list[Candidate]) -> list[float]:
        self.batches.append(list(candidates))
        return [self.single(c) for c in candidates]


BATCH_CONFIGS = [
    SearchConfig(population=10, parents=3, generations=6, patience=0, search_attention=True, n_hat_choices=(0, 4)),
    SearchConfig(rotary_dim=8, decimals=1, population=8, parents=3, generations=8, patience=0),  # many repeats
    SearchConfig(mode="longrope2", population=8, generations=5, patience=2),
]


@pytest.mark.parametrize("config", BATCH_CONFIGS, ids=["attention+n_hat", "repeats", "longrope2"])
@pytest.mark.parametrize("batch", [1, 3, 8, 100])
def test_batched_search_equals_the_one_at_a_time_search(config: SearchConfig, batch: int) -> None:
    one_states: list[dict] = []
    one = Recorder(config)
    straight = search.search(config, one, on_generation=one_states.append)
    states: list[dict] = []
    many = Batched(Recorder(config))
    batched = search.search(config, None, fitness_many=many, batch_candidates=batch, on_generation=states.append)
    assert batched.to_json() == straight.to_json()
    assert states == one_states  # same states, so either can resume the other
    assert many.single.calls == one.calls  # the same candidates, in the same order
    assert all(1 <= len(b) <= batch for b in many.batches)
    # A generation's new candidates are batched together: one call per generation when they fit.
    if batch >= config.population:
        assert len(many.batches) == len(straight.history)
    if config.rotary_dim == 8:
        assert straight.skipped > 0  # repeats inside a generation are caught before the batch is evaluated


def test_a_batched_fitness_is_preferred_and_a_fitness_is_required() -> None:
    single = Recorder(DEMO)
    many = Batched(Recorder(DEMO))
    search.search(DEMO, single, fitness_many=many, batch_candidates=4)
    assert single.calls == [] and len(many.batches) > 1
    with pytest.raises(ValueError, match="fitness"):
        search.search(DEMO, None)
    with pytest.raises(ValueError, match="batch_candidates"):
        search.search(DEMO, None, fitness_many=many, batch_candidates=0)
    with pytest.raises(ValueError, match="returned 1 values for 2"):
        search.search(DEMO, None, fitness_many=lambda cs: [1.0], batch_candidates=2)


def test_nan_from_a_batched_fitness_counts_as_infinitely_bad() -> None:
    def many(candidates: list[Candidate]) -> list[float]:
        return [math.nan if c.factors[0] == 2.0 else 1.0 for c in candidates]  # the PI seed is "NaN"

    result = search.search(SearchConfig(generations=1), None, fitness_many=many, batch_candidates=3)
    assert result.fitness == 1.0 and result.factors[0] != 2.0
    assert json.loads(json.dumps(result.to_json(), allow_nan=False))


def test_should_stop_is_asked_before_each_batch() -> None:
    many = Batched(Recorder(DEMO))
    checks = []

    def should_stop() -> bool:
        checks.append(1)
        return len(checks) > 3

    with pytest.raises(Cancelled):
        search.search(DEMO, None, fitness_many=many, batch_candidates=3, should_stop=should_stop)
    # Generation 0 (8 candidates) is 3 + 3 + 2; the 4th check, before generation 1's first batch, stops it.
    assert [len(b) for b in many.batches] == [3, 3, 2]


def test_a_batched_search_resumes_a_cancelled_one_exactly() -> None:
    config = SearchConfig(
        population=8, parents=3, generations=6, patience=0, search_attention=True, n_hat_choices=(0, 4)
    )
    full = search.search(config, Recorder(config))
    states: list[dict] = []
    first = Batched(Recorder(config))
    with pytest.raises(Cancelled):
        search.search(
            config,
            None,
            fitness_many=first,
            batch_candidates=2,
            on_generation=states.append,
            should_stop=lambda: len(first.batches) >= 9,  # inside generation 2
        )
    saved = json.loads(json.dumps(states[-1], allow_nan=False))
    assert saved["generation"] == 1
    rest = Batched(Recorder(config))
    resumed = search.search(config, None, fitness_many=rest, batch_candidates=5, resume_from=saved)
    assert resumed.to_json() == full.to_json()
    assert len(rest.single.calls) == full.evaluations - saved["evaluations"]


# ------------------------------------------------------------------------------------------- model fitness


@pytest.fixture(scope="module")
def demo() -> tuple[LoadedModel, list[list[int]]]:
    """The shipped demo model (trained, so its perplexity responds to the RoPE) with plain RoPE, and 2 texts."""
    base = load(str(DEMO_MODEL_DIR), MethodSpec("none"), 512, CPU)
    return base, long_documents(DatasetSpec(), base.tokenizer, 512, 2)


FACTORS = [round(1.0 + 1.3 * (i / 15) ** 1.5, 4) for i in range(16)]  # monotone, 1 … 2.3, one per pair


def test_in_place_fitness_equals_the_loaded_longrope_model(demo: tuple[LoadedModel, list[list[int]]]) -> None:
    base, docs = demo
    facts = base.facts.rope
    before = perplexity.token_losses(base.model, docs[0], CPU.device)
    fitness = perplexity_fitness(base.model, facts, docs, 512)
    candidate = Candidate(tuple(FACTORS), 0, 1.1)
    value = fitness(candidate)

    params = {"factor": 2.0, "long_factor": FACTORS, "attention_factor": 1.1}
    loaded = load(str(DEMO_MODEL_DIR), MethodSpec("longrope", params), 512, CPU)
    expected = perplexity.perplexity_by_length(loaded.model, docs, [512], device=CPU.device, length_dependent=True)
    assert value == pytest.approx(expected[0].perplexity, rel=1e-6)
    # The model is as it was, and the candidate did change the number.
    assert torch.equal(perplexity.token_losses(base.model, docs[0], CPU.device), before)
    plain = perplexity.perplexity_by_length(base.model, docs, [512], device=CPU.device, length_dependent=False)
    assert value != pytest.approx(plain[0].perplexity, rel=1e-2)
    # A longrope-loaded model can be searched in place too (its own long/short switch is paused meanwhile).
    assert perplexity_fitness(loaded.model, facts, docs, 512)(candidate) == pytest.approx(value, rel=1e-6)


def test_n_hat_keeps_initial_positions_at_the_original_rotation(demo: tuple[LoadedModel, list[list[int]]]) -> None:
    base, docs = demo
    fitness = perplexity_fitness(base.model, base.facts.rope, docs, 512)
    plain = perplexity.perplexity_by_length(base.model, docs, [512], device=CPU.device, length_dependent=False)
    # Position 0 has angle 0 whatever the frequency, so n̂ = 1 is n̂ = 0 (but through our own cos/sin path).
    assert fitness(Candidate(tuple(FACTORS), 1, 1.1)) == pytest.approx(
        fitness(Candidate(tuple(FACTORS), 0, 1.1)), rel=1e-6
    )
    # n̂ covering every position, with no attention scale, is the base model.
    assert fitness(Candidate(tuple(FACTORS), 512, 1.0)) == pytest.approx(plain[0].perplexity, rel=1e-6)
    partial = fitness(Candidate(tuple(FACTORS), 64, 1.0))
    assert partial != pytest.approx(plain[0].perplexity, rel=1e-3)
    assert partial != pytest.approx(fitness(Candidate(tuple(FACTORS), 0, 1.0)), rel=1e-3)
    assert "forward" not in base.model.model.rotary_emb.__dict__  # the override is gone afterwards


def test_a_short_search_on_the_demo_model_gives_loadable_factors(demo: tuple[LoadedModel, list[list[int]]]) -> None:
    base, docs = demo
    config = SearchConfig.for_model(base.facts.rope, 512, population=4, parents=2, generations=1)
    result = search.search(config, perplexity_fitness(base.model, base.facts.rope, docs[:1], 512))
    assert result.evaluations >= 4 and len(result.factors) == 16
    assert result.fitness <= result.history[0].best
    loaded = load(str(DEMO_MODEL_DIR), MethodSpec("longrope", search.to_method_params(result)), 512, CPU)
    again = perplexity.perplexity_by_length(loaded.model, docs[:1], [512], device=CPU.device, length_dependent=True)
    assert again[0].perplexity == pytest.approx(result.fitness, rel=1e-6)


def test_batched_fitness_equals_the_single_fitness_per_candidate(demo: tuple[LoadedModel, list[list[int]]]) -> None:
    base, docs = demo
    facts = base.facts.rope
    before = perplexity.token_losses(base.model, docs[0], CPU.device)
    single = perplexity_fitness(base.model, facts, docs, 512)
    many = batched_perplexity_fitness(base.model, facts, docs, 512)
    candidates = [
        Candidate(tuple(FACTORS), 0, 1.1),
        Candidate(tuple(search.pi_factors(32, 2.0)), 0, 1.0),
        Candidate(tuple(FACTORS), 64, 1.0),  # n̂ in one row only
        Candidate(tuple(search.ntk_factors(32, 2.0)), 0, 1.25),
    ]
    values = many(candidates)
    assert values == pytest.approx([single(c) for c in candidates], rel=1e-5)
    assert len(set(values)) == 4  # every row really had its own frequencies / scale
    assert many(candidates[2:3]) == pytest.approx(values[2:3], rel=1e-5)  # batch company does not matter
    assert many([]) == []
    assert "forward" not in base.model.model.rotary_emb.__dict__
    assert torch.equal(perplexity.token_losses(base.model, docs[0], CPU.device), before)


def test_the_per_row_override_refuses_a_batch_of_another_size(demo: tuple[LoadedModel, list[list[int]]]) -> None:
    base, docs = demo
    with (
        rope_override_rows(base.model, base.facts.rope, [Candidate(tuple(FACTORS), 0, 1.0)] * 2, 2),
        pytest.raises(ValueError, match="expects 4 batch rows, got 1"),
    ):
        perplexity.token_losses(base.model, docs[0][:64], CPU.device)
    assert "forward" not in base.model.model.rotary_emb.__dict__


def test_a_batched_search_on_the_demo_model_matches_the_one_at_a_time_one(
    demo: tuple[LoadedModel, list[list[int]]],
) -> None:
    base, docs = demo
    facts = base.facts.rope
    config = SearchConfig.for_model(facts, 512, population=6, parents=2, generations=2, patience=0)
    straight = search.search(config, perplexity_fitness(base.model, facts, docs[:1], 512))
    many = batched_perplexity_fitness(base.model, facts, docs[:1], 512)
    batched = search.search(config, None, fitness_many=many, batch_candidates=4)
    assert batched.factors == straight.factors and batched.evaluations == straight.evaluations
    assert [h.best for h in batched.history] == pytest.approx([h.best for h in straight.history], rel=1e-5)
    assert [h.median for h in batched.history] == pytest.approx([h.median for h in straight.history], rel=1e-5)


def test_the_search_step_batches_by_a_token_budget() -> None:
    from gpu_workers.search_step import BATCH_TOKENS, batch_candidates

    assert batch_candidates(torch.device("cpu"), 4, 1024) == 1, "batching candidates did not pay on a CPU"
    assert batch_candidates(torch.device("cpu"), 64, 4096) == 1  # never less than one candidate
    assert batch_candidates(torch.device("cuda"), 4, 1024) == BATCH_TOKENS["cuda"] // 4096
