"""RULER task generation time, and scoring time against the bare greedy decoding it needs.

Run by hand and paste the output into docs/evaluation.md:

    .venv/bin/python -m benches.ruler_generation

Why: a run builds its RULER prompts before evaluating anything, on the worker, with the model's own
tokenizer; the goal is at most 10 s for the full set (13 tasks × 256, 512, 1024, 2048 tokens × 50 samples)
on two CPU cores, so generation never dominates a short run. Each repeat starts cold: the module's
tokenizer, stream and vocabulary memos are emptied and no sample cache is used (the haystack documents
are read once, outside the timing, as a pipeline reads them once per run). And the answering side
(``answer_samples`` + ``score_by_task_and_length``: grouping, the shared-prefix cache, decoding the text,
string matching) should cost about what the greedy decoding alone costs: compared, interleaved, with a
bare loop of ``greedy_decode`` from scratch over the same prompts and budgets, on a small subset.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict

from benches.eval_throughput import command_line, interleaved, load_line, machine_line, median_ratio, setup
from gpu_workers.data import ruler
from gpu_workers.data.documents import builtin_corpus_dir
from gpu_workers.evaluate import ruler as scoring
from gpu_workers.evaluate.greedy import greedy_decode
from gpu_workers.spec import DatasetSpec


def cold() -> None:
    """Forget every memo the generators keep between calls, so a repeat measures a first run."""
    ruler._KITS.clear()
    ruler._VOCABULARIES.clear()
    ruler._TOKENIZER_HASHES.clear()
    ruler.DEFAULT_CACHE.clear()


def generate_all(tokenizer: object, haystack: ruler.HaystackText, lengths: list[int], samples: int
                 ) -> tuple[float, dict[str, float], int]:
    """Seconds in all, seconds per task, prompts built."""
    per_task: dict[str, float] = defaultdict(float)
    count = 0
    started = time.perf_counter()
    for length in lengths:
        for name in ruler.TASK_NAMES:
            t = time.perf_counter()
            count += len(ruler.generate(name, tokenizer, haystack, length, 0, samples, cache=None))
            per_task[name] += time.perf_counter() - t
    return time.perf_counter() - started, dict(per_task), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (ignored on CUDA)")
    parser.add_argument("--method", default="yarn", help="a length-independent RoPE method (for the scoring part)")
    parser.add_argument("--factor", type=float, default=8.0)
    parser.add_argument("--lengths", default="256,512,1024,2048")
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--score-lengths", default="256,512", help="lengths of the scoring subset")
    parser.add_argument("--score-samples", type=int, default=2, help="samples per task and length, scoring subset")
    args = parser.parse_args()
    lengths = sorted({int(n) for n in args.lengths.split(",")})
    score_lengths = sorted({int(n) for n in args.score_lengths.split(",")})

    os.environ.setdefault("CONTEXTLAB_CORPUS_DIR", str(builtin_corpus_dir()))
    placement, loaded = setup(args, max(lengths))
    model, tokenizer, device = loaded.model, loaded.tokenizer, placement.device
    started = time.perf_counter()
    haystack = ruler.HaystackText.from_dataset(DatasetSpec())
    read_s = time.perf_counter() - started

    print(f"command: {command_line('benches.ruler_generation')}")
    print(machine_line(placement))
    print(f"at start: {load_line()}")
    print(f"haystack: the demo corpus's {haystack.name!r} documents ({len(haystack.documents)}), read in "
          f"{read_s:.2f} s (outside the timings)\n")

    totals, per_task_runs, count = [], [], 0
    for _ in range(args.repeats):
        cold()
        seconds, per_task, count = generate_all(tokenizer, haystack, lengths, args.samples)
        totals.append(seconds)
        per_task_runs.append(per_task)
    cached_started = time.perf_counter()
    for length in lengths:
        for name in ruler.TASK_NAMES:
            ruler.generate(name, tokenizer, haystack, length, 0, args.samples)
    cached_first = time.perf_counter() - cached_started
    cached_started = time.perf_counter()
    for length in lengths:
        for name in ruler.TASK_NAMES:
            ruler.generate(name, tokenizer, haystack, length, 0, args.samples)
    cached = time.perf_counter() - cached_started

    print(f"### Generation: {len(ruler.TASK_NAMES)} tasks × {', '.join(map(str, lengths))} × {args.samples} "
          f"samples = {count:,} prompts, {args.repeats} cold repeats\n")
    print("| task | seconds (median) | share |")
    print("|---|---|---|")
    medians = {n: statistics.median(run[n] for run in per_task_runs) for n in ruler.TASK_NAMES}
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.2f} | {seconds / sum(medians.values()):.0%} |")
    print(f"| **all** | **{statistics.median(totals):.2f}** (min {min(totals):.2f}, max {max(totals):.2f}) | |\n")
    print(f"target ≤ 10 s: {'met' if statistics.median(totals) <= 10 else 'missed'}; "
          f"{count / statistics.median(totals):,.0f} prompts/s; warm memos, no sample cache "
          f"{cached_first:.2f} s; from the in-memory sample cache {cached * 1000:.1f} ms\n")

    subset = ruler.generate_suite(tokenizer, haystack, score_lengths, 0, args.score_samples)
    budgets = [scoring.decoding_budget(s) for s in subset]
    answers: list[scoring.RulerAnswer] = []

    def scored() -> None:
        answers[:] = scoring.answer_samples(model, tokenizer, subset, device=device,
                                            length_dependent=loaded.length_dependent)
        scoring.score_by_task_and_length(answers)

    bare_tokens: list[list[int]] = []

    def bare() -> None:
        bare_tokens[:] = [greedy_decode(model, s.prompt_ids, b, device) for s, b in zip(subset, budgets, strict=True)]

    bare()  # warm-up: kernels, allocator
    scored()
    score_s, bare_s = interleaved(placement, args.repeats, scored, bare)
    reused = sum(scoring._reusable(s) for s in subset) if not loaded.length_dependent else 0
    prompt_tokens = sum(len(s.prompt_ids) for s in subset)
    print(f"### Answering and scoring vs bare greedy decoding: {len(subset)} prompts "
          f"({len(ruler.TASK_NAMES)} tasks × {', '.join(map(str, score_lengths))} × {args.score_samples}), "
          f"{sum(budgets):,} decode steps, method {args.method} ×{args.factor:g}\n")
    print("| protocol | prompts from a shared prefix | wall s (median) | min s | max s |")
    print("|---|---|---|---|---|")
    print(f"| bare `greedy_decode` from scratch | 0 / {len(subset)} | {statistics.median(bare_s):.2f} | "
          f"{min(bare_s):.2f} | {max(bare_s):.2f} |")
    print(f"| `answer_samples` + `score_by_task_and_length` | {reused} / {len(subset)} | "
          f"{statistics.median(score_s):.2f} | {min(score_s):.2f} | {max(score_s):.2f} |")
    print(f"\nscoring / bare: {median_ratio(score_s, bare_s):.2f}× (median of per-repeat ratios; best-of "
          f"{min(score_s) / min(bare_s):.2f}×); {prompt_tokens:,} prompt tokens")
    same = sum(a.tokens == b for a, b in zip(answers, bare_tokens, strict=True))
    print(f"identical greedy tokens: {same}/{len(subset)}; mean score "
          f"{sum(a.score for a in answers) / len(answers):.2f}")
    print(f"at end: {load_line()}")


if __name__ == "__main__":
    main()
