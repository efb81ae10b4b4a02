"""LongRoPE / LongRoPE2 evolutionary search of per-dimension RoPE rescale factors.

A candidate is one rescale factor λ_i ≥ 1 per RoPE dimension pair (pair i turns at 1 / (λ_i · θ^(2i/d)),
transformers' ``longrope`` long factors), optionally with n̂ (how many initial positions keep the original,
un-interpolated rotation) and an attention (logit) scale. The search is the genetic algorithm of LongRoPE
(Ding et al. 2024): a population seeded from the PI shape (every λ_i = s), the NTK-aware shape (the factors
NTK's larger base implies, λ_i = s^(2i/(d−2))), LongRoPE's YaRN-shaped start
(:func:`~gpu_workers.rope_theory.yarn_ramp_factors`) and YaRN's own frequencies
(:func:`~gpu_workers.search.shapes.yarn_frequency_factors`), filled up with random perturbations of those;
then, each generation, the ``parents`` fittest survive and the rest of the population is refilled by mutation
and crossover of them.

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
needle-driven perplexity…); NaN counts as +inf. :func:`~gpu_workers.search.fitness.perplexity_fitness` builds
one for a loaded transformers model by rewriting its rotary embedding in place, so the model is loaded once
for the whole search. Each distinct candidate is evaluated once (fitness cache); the search stops early when
the best has not improved by more than ``early_stop_tolerance`` (relative) for ``patience`` generations. Given
a batched fitness (``fitness_many``, e.g. :func:`~gpu_workers.search.fitness.batched_perplexity_fitness`,
which runs K candidates × D documents as one forward batch with per-row rotary frequencies), each generation's
new candidates are evaluated together, ``batch_candidates`` at a time, with the same result as one at a time.
After every generation a plain JSON-able state goes to ``on_generation``; ``search(..., resume_from=state)``
continues from it exactly (same RNG stream, cache and counters), so a resumed run ends where an uninterrupted
one would.

The package, one module per idea (this module re-exports the torch-free names):

* :mod:`~gpu_workers.search.config` — :class:`SearchConfig`, its checks and what follows from it alone;
* :mod:`~gpu_workers.search.candidates` — candidates, their fitness, generation records, the result;
* :mod:`~gpu_workers.search.shapes` and :mod:`~gpu_workers.search.seeds` — the known methods' factors, the
  first generation;
* :mod:`~gpu_workers.search.space` — the constraints and the projection onto them;
* :mod:`~gpu_workers.search.genetic` — the generations, the state and :func:`search`;
* :mod:`~gpu_workers.search.fitness` — perplexity fitness on a loaded model. The only module that needs
  torch, so it is imported on its own (``from gpu_workers.search.fitness import ...``): the method table
  checks a search row's settings through :class:`SearchConfig` on the web side, which never loads torch.

Nothing here imports Django or a method family (the search builds on :mod:`gpu_workers.rope_theory`, so the
``longrope_search`` family can validate its settings here without a cycle). The rotary embeddings are
rewritten by :mod:`gpu_workers.rotary`.
"""

from gpu_workers.search.candidates import Candidate, Evaluated, GenerationRecord, SearchResult, to_method_params
from gpu_workers.search.config import (
    MODES,
    SearchConfig,
    SearchConfigError,
    critical_dim,
    critical_window,
    default_attention,
)
from gpu_workers.search.genetic import SearchStateError, search
from gpu_workers.search.seeds import seed_factors
from gpu_workers.search.shapes import ntk_factors, pi_factors, yarn_frequency_factors

__all__ = [
    "MODES",
    "Candidate",
    "Evaluated",
    "GenerationRecord",
    "SearchConfig",
    "SearchConfigError",
    "SearchResult",
    "SearchStateError",
    "critical_dim",
    "critical_window",
    "default_attention",
    "ntk_factors",
    "pi_factors",
    "search",
    "seed_factors",
    "to_method_params",
    "yarn_frequency_factors",
]
