"""LongRoPE / LongRoPE2 *search* as method families: the factors are found during the run.

A search row in the composer carries the search's hyper-parameters; the worker runs
:mod:`gpu_workers.search` on the training documents (never the evaluation ones), then evaluates
the model with the best factors as a plain ``longrope`` method, and the web side saves that result
as a reusable LongRoPE method. Before the search the model is loaded with LongRoPE's YaRN-shaped
starting factors, which is also what the per-dimension chart draws for a search row.
"""

from __future__ import annotations

from typing import Any

from gpu_workers.methods import longrope
from gpu_workers.methods.base import FACTOR, Family, MethodError, Param, RopeFacts, RopeSetup, require_factor_above_one

# Defaults measured on the demo model (docs/search.md, benches/search_vs_baselines.py): with 4 documents,
# 4 generations and patience 2 the search barely left its YaRN seed and did not beat YaRN ×8 on held-out
# documents; 8 documents, up to 10 generations and patience 3 do, at 4× and 8×, in 1–3 min on 2 CPU cores.
SEARCH_PARAMS = (
    FACTOR,
    Param("population", "Population", int, 8, "Candidates per generation (the paper: 64).", 4.0),
    Param("parents", "Parents", int, 3, "Best candidates kept as parents each generation.", 1.0),
    Param("generations", "Generations", int, 10, "Generations after the initial population (the paper: 40).", 0.0),
    Param("mutation_rate", "Mutation rate", float, 0.3, "Chance a mutation touches each searched pair.", 0.0),
    Param("mutation_scale", "Mutation scale", float, 0.1, "σ of the multiplicative noise on a factor.", 0.0, True),
    Param("crossover_rate", "Crossover rate", float, 0.5, "Share of children made by crossover.", 0.0),
    Param("patience", "Patience", int, 3, "Stop after this many generations without improvement; 0 = never.", 0.0),
    Param("search_documents", "Search documents", int, 8, "Training documents the fitness is measured on.", 1.0),
    Param("search_length", "Search length", int, None,
          "Tokens per fitness document, more than the original context; blank = the target length.", 16.0),
    Param("seed", "Seed", int, 0, "Seed of the search's random choices.", 0.0),
)
SEARCH_ATTENTION = Param("search_attention", "Search attention", int, 0,
                         "1 = also search the attention scale, 0 = keep √(1 + ln s / ln L₀).", 0.0)
SEARCH_KEYS = tuple(p.name for p in SEARCH_PARAMS) + ("search_attention",)
CONFIG_FIELDS = {"target_length": "search_length"}
"""SearchConfig fields a row's parameter feeds under another name: its fitness length is the search length
(blank: the target length), so an error about it belongs beside that input."""


# gpu_workers.search is imported when a search row is checked, not with the method table: it brings numpy,
# which the web process has no other need for. (It imports no method family, so there is no cycle to avoid.)


def _checker(mode: str):  # noqa: ANN202 - a closure per mode
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
        population=int(params.get("population", 8)), parents=int(params.get("parents", 3)),
        generations=int(params.get("generations", 10)), mutation_rate=float(params.get("mutation_rate", 0.3)),
        mutation_scale=float(params.get("mutation_scale", 0.1)),
        crossover_rate=float(params.get("crossover_rate", 0.5)),
        patience=int(params.get("patience", 3)), search_attention=bool(params.get("search_attention", 0)),
        seed=int(params.get("seed", 0)),
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
