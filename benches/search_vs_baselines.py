"""Acceptance of the LongRoPE search: searched factors against YaRN and PI at the same factor, no fine-tuning.

Run by hand and paste the output into docs/search.md:

    .venv/bin/python -m benches.search_vs_baselines

For each scale s (default 4× and 8×, i.e. 1,024 and 2,048 tokens on the demo model) the search runs as a
run's search step runs it — the composer's defaults (``gpu_workers/methods/longrope_search.py``), fitness
on *training* documents, several candidates per forward batch — and the best factors are then loaded as
transformers' ``longrope`` method (``to_method_params``) and evaluated, like YaRN ×s and PI ×s, on held-out
evaluation documents (default 16) at the target length: perplexity with its bootstrap 95% interval, and,
paired over the same documents, the ratio to YaRN's perplexity (exp of the mean per-document NLL
difference, bootstrap 95% interval) and on how many documents the method beats YaRN. With
``--modes longrope,longrope2`` the LongRoPE2 search (critical dimension, needle-driven fitness) runs too.
``--seeds`` repeats the search with other seeds of its random choices (same documents); ``--set`` overrides
composer settings (e.g. ``--set generations=4,patience=2,search_documents=4``, the earlier defaults), and
``--drop-seed yarn_freq`` searches without the YaRN-frequency seed (an ablation).
"""

from __future__ import annotations

import argparse
import shlex
import time
from typing import Any

import numpy as np
import torch

from benches.search_efficiency import CPU, DEFAULTS, load_base, machine_line, training_documents
from gpu_workers import search
from gpu_workers.data.documents import long_documents
from gpu_workers.demo import DEMO_MODEL_DIR
from gpu_workers.evaluate.perplexity import token_losses
from gpu_workers.evaluate.stats import bootstrap_ci
from gpu_workers.loading import load
from gpu_workers.methods.longrope_search import search_config
from gpu_workers.rotary import reset_rotary_cache
from gpu_workers.search.fitness import batched_perplexity_fitness
from gpu_workers.search_step import batch_candidates, needle_fitness
from gpu_workers.spec import DatasetSpec, MethodSpec


def doc_nll(family: str, params: dict[str, Any], length: int, docs: list[list[int]]) -> np.ndarray:
    """Per-document mean next-token NLL at ``length`` (the truncate protocol), the method loaded as a run loads it."""
    loaded = load(str(DEMO_MODEL_DIR), MethodSpec(family, params), length, CPU)
    out = []
    for doc in docs:
        reset_rotary_cache(loaded.model)
        out.append(float(token_losses(loaded.model, doc[:length], CPU.device).double().mean()))
    return np.asarray(out)


def run_search(
    mode: str, scale: int, seed: int, base: Any, search_docs: list[list[int]], settings: dict[str, Any]
) -> tuple[Any, float]:
    length = 256 * scale
    facts = base.facts.rope
    params = {**settings, "factor": float(scale), "seed": seed}
    config = search_config(facts, length, params, mode)
    started = time.perf_counter()
    if mode == "longrope":
        many = batched_perplexity_fitness(base.model, facts, search_docs, length)
        batch = batch_candidates(CPU.device, len(search_docs), length)
        result = search.search(config, None, fitness_many=many, batch_candidates=batch)
    else:
        result = search.search(config, needle_fitness(base, facts, search_docs, length))
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="4,8")
    parser.add_argument("--documents", type=int, default=16, help="held-out evaluation documents")
    parser.add_argument("--modes", default="longrope")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--set", default="", help="search settings overriding the composer's, e.g. generations=4")
    parser.add_argument("--drop-seed", default="", help="ablation: leave this seed shape out (e.g. yarn_freq)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.drop_seed:
        seed_factors = search.seed_factors  # the search's own seeds, less one shape
        search.seed_factors = lambda config: {  # type: ignore[assignment]
            k: v for k, v in seed_factors(config).items() if k != args.drop_seed
        }
    overrides = {k: int(v) if v.lstrip("-").isdigit() else float(v)
                 for k, v in (item.split("=") for item in args.set.split(",") if item)}
    settings = {**DEFAULTS, **overrides}
    torch.set_num_threads(args.threads)
    scales = [int(s) for s in args.scales.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    modes = args.modes.split(",")
    print(machine_line())
    print("command: .venv/bin/python -m benches.search_vs_baselines " + " ".join(
        f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in vars(args).items() if v != ""))
    shown = {k: v for k, v in settings.items() if k not in ("factor", "seed", "search_length")}
    where = f"composer defaults overridden by {overrides}" if overrides else "composer defaults"
    print(f"search settings ({where}): {shown}, search length = target length\n")

    base = load_base(256 * max(scales))
    heldout = long_documents(DatasetSpec(), base.tokenizer, 256 * max(scales), args.documents)
    for scale in scales:
        length = 256 * scale
        search_docs = training_documents(base, length, int(settings["search_documents"]))
        rows: list[tuple[str, np.ndarray, str]] = []
        for family, label in (("none", "none (plain RoPE)"), ("pi", f"PI ×{scale}"), ("yarn", f"YaRN ×{scale}"),
                              ("longrope", f"LongRoPE ×{scale} start factors (unsearched)")):
            params = {} if family == "none" else {"factor": float(scale)}
            rows.append((label, doc_nll(family, params, length, heldout), "—"))
        # YaRN's own frequencies through transformers' longrope, i.e. with √(1 + ln s / ln L₀) as attention
        # factor instead of YaRN's 0.1·ln s + 1: the search's yarn_freq seed, and what the attention choice costs.
        facts = base.facts.rope
        yarn_freq = search.yarn_frequency_factors(facts.rotary_dim, facts.rope_theta, facts.original_context, scale)
        rows.append((f"YaRN ×{scale} frequencies as longrope (longrope's attention factor)",
                     doc_nll("longrope", {"factor": float(scale), "long_factor": yarn_freq}, length, heldout), "—"))
        for mode in modes:
            for seed in seeds:
                result, seconds = run_search(mode, scale, seed, base, search_docs, settings)
                name = "LongRoPE" if mode == "longrope" else "LongRoPE2"
                dropped = f", without the {args.drop_seed} seed" if args.drop_seed else ""
                label = f"{name} ×{scale} searched (seed {seed}{dropped})"
                how = (f"{seconds:.0f} s, {result.evaluations} evaluations, {len(result.history) - 1} generations"
                       f"{' (stopped early)' if result.stopped_early else ''}, search fitness {result.fitness:.2f}")
                rows.append((label, doc_nll("longrope", search.to_method_params(result), length, heldout), how))
                print(f"{label}: {how}; factors {[round(x, 3) for x in result.factors]}, "
                      f"attention {result.attention_factor:.4f}", flush=True)
        yarn = rows[2][1]
        print(f"\n### {scale}× ({length} tokens), {len(search_docs)} training documents for the search, "
              f"{len(heldout)} held-out documents for the evaluation\n")
        print(f"| method | ppl@{length} [95% CI] | ÷ YaRN, paired [95% CI] | docs below YaRN | search |")
        print("|---|---|---|---|---|")
        for label, nll, how in rows:
            ppl = float(np.exp(nll.mean()))
            low, high = bootstrap_ci(nll)
            diff = nll - yarn
            ratio = float(np.exp(diff.mean()))
            r_low, r_high = bootstrap_ci(diff)
            paired = "—" if nll is yarn else f"{ratio:.3f} [{r_low:.3f}–{r_high:.3f}]"
            below = "—" if nll is yarn else f"{int((diff < 0).sum())}/{len(diff)}"
            print(f"| {label} | {ppl:.2f} [{low:.1f}–{high:.1f}] | {paired} | {below} | {how} |")
        print(flush=True)


if __name__ == "__main__":
    main()
