"""LongRoPE / LongRoPE2 *search* as method families: the factors are found during the run.

A search row in the composer carries the search's hyper-parameters; the worker runs
:mod:`gpu_workers.search` on the training documents (never the evaluation ones), then evaluates
the model with the best factors as a plain ``longrope`` method, and the web side saves that result
as a reusable LongRoPE method. Before the search the model is loaded with LongRoPE's YaRN-shaped
starting factors, which is also what the per-dimension chart draws for a search row.
"""

from __future__ import annotations

from typing import Any

from gpu_workers.catalog import SEARCH_DEFAULTS
from gpu_workers.methods import longrope
from gpu_workers.methods.base import FACTOR, Family, MethodError, Param, RopeFacts, RopeSetup, require_factor_above_one

# Defaults: gpu_workers.catalog.SEARCH_DEFAULTS (measured on the demo model, docs/search.md), shared with
# SearchConfig and the API.
D = SEARCH_DEFAULTS
SEARCH_PARAMS = (
    FACTOR,
    Param("population", "Population", int, D.population, "Candidates per generation (the paper: 64).", 4.0),
    Param("parents", "Parents", int, D.parents, "Best candidates kept as parents each generation.", 1.0),
    Param("generations", "Generations", int, D.generations,
          "Generations after the initial population (the paper: 40).", 0.0),
    Param("mutation_rate", "Mutation rate", float, D.mutation_rate, "Chance a mutation touches each searched pair.",
          0.0),
    Param("mutation_scale", "Mutation scale", float, D.mutation_scale, "σ of the multiplicative noise on a factor.",
          0.0, True),
    Param("crossover_rate", "Crossover rate", float, D.crossover_rate, "Share of children made by crossover.", 0.0),
    Param("patience", "Patience", int, D.patience,
          "Stop after this many generations without improvement; 0 = never.", 0.0),
    Param("search_documents", "Search documents", int, D.search_documents,
          "Training documents the fitness is measured on.", 1.0),
    Param("search_length", "Search length", int, None,
          "Tokens per fitness document, more than the original context; blank = the target length.", 16.0),
    Param("seed", "Seed", int, D.seed, "Seed of the search's random choices.", 0.0),
)
SEARCH_ATTENTION = Param("search_attention", "Search attention", int, 0,
                         "1 = also search the attention scale, 0 = keep √(1 + ln s / ln L₀).", 0.0)
SEARCH_KEYS = (*(p.name for p in SEARCH_PARAMS), "search_attention")
CONFIG_FIELDS = {"target_length": "search_length"}
"""SearchConfig fields a row's parameter feeds under another name: its fitness length is the search length
(blank: the target length), so an error about it belongs beside that input."""


# gpu_workers.search is imported when a search row is checked, not with the method table: it brings numpy,
# which the web process has no other need for. (It imports no method family, so there is no cycle to avoid.)


def _checker(mode: str):
    def check(base: RopeFacts, target_length: int, params: dict[str, Any]) -> None:
        from gpu_workers.search import SearchConfigError

        require_factor_above_one(params)
        try:
            search_config(base, target_length, params, mode).validate()
        except SearchConfigError as exc:
            field = CONFIG_FIELDS.get(exc.field, exc.field if exc.field in SEARCH_KEYS else "factor")
            raise MethodError(exc.message[0].upper() + exc.message[1:] + ".", field) from None

    return check


def search_config(base: RopeFacts, target_length: int, params: dict[str, Any], mode: str) -> Any:
    from gpu_workers.search import SearchConfig

    return SearchConfig.for_model(
        base, int(params.get("search_length") or target_length), factor=float(params["factor"]), mode=mode,
        population=int(params.get("population", D.population)), parents=int(params.get("parents", D.parents)),
        generations=int(params.get("generations", D.generations)),
        mutation_rate=float(params.get("mutation_rate", D.mutation_rate)),
        mutation_scale=float(params.get("mutation_scale", D.mutation_scale)),
        crossover_rate=float(params.get("crossover_rate", D.crossover_rate)),
        patience=int(params.get("patience", D.patience)), search_attention=bool(params.get("search_attention", 0)),
        seed=int(params.get("seed", D.seed)),
    )


def build(base: RopeFacts, target_length: int, params: dict[str, Any]) -> RopeSetup:
    return longrope.build(base, target_length, {"factor": params["factor"]})


LONGROPE = Family(
    name="longrope_search",
    label="LongRoPE search",
    help="LongRoPE (Ding et al. 2024): evolutionary search of per-dimension factors, fitness = perplexity at the "
         "search length on training documents; the result is saved as a LongRoPE method.",
    params=SEARCH_PARAMS,
    build=build,
    check=_checker("longrope"),
    length_dependent=True,
)
LONGROPE2 = Family(
    name="longrope2_search",
    label="LongRoPE2 search",
    help="LongRoPE2 (Shang et al. 2025): factors below the critical dimension follow NTK, those above are searched "
         "with needle-driven perplexity as the fitness, and so is the critical dimension (within 2 pairs of the "
         "theory value d_extra/2); optionally the attention scale too.",
    params=(*SEARCH_PARAMS, SEARCH_ATTENTION),
    build=build,
    check=_checker("longrope2"),
    length_dependent=True,
)
