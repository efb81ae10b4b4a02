"""The factor vectors the search's first generation starts from: the known methods' shapes, constrained."""

from __future__ import annotations

import numpy as np

from gpu_workers import rope_theory
from gpu_workers.search.config import SearchConfig, critical_dim
from gpu_workers.search.shapes import ntk_factors, pi_factors, yarn_frequency_factors
from gpu_workers.search.space import Space


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
    space = Space(config)
    if config.mode != "longrope2":
        shapes = {
            "pi": pi_factors(config.rotary_dim, config.scale),
            "ntk": ntk_factors(config.rotary_dim, config.scale),
            "yarn": rope_theory.yarn_ramp_factors(
                config.rotary_dim, config.rope_theta, config.original_context, config.scale
            ),
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
