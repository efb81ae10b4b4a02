"""Needle grid from one shared-prefix KV cache against every cell run from scratch.

Run by hand and paste the output into docs/evaluation.md:

    .venv/bin/python -m benches.needle_reuse

Why: a lengths × depths × samples grid is the suite's longest evaluation after perplexity. Every
prompt is cut from one haystack stream, so for a RoPE that does not depend on the input length all
cells can copy one prefilled cache of ``intro + haystack`` up to their first needle and run only the
rest (``answer_tasks(reuse_prefix=True)``). This measures the time and the prefill tokens that saves
and checks the answers (greedy token lists) are the same as the naive per-cell run's. Both ways run
interleaved (order alternating per repeat) because the machine is shared.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence

from benches.eval_throughput import (
    command_line,
    interleaved,
    load_line,
    machine_line,
    median_ratio,
    parse_lengths,
    setup,
)
from gpu_workers.data.needle import NeedleBuilder, NeedleTask, haystack_stream
from gpu_workers.evaluate.needle import (
    EXTRA_DECODE_TOKENS,
    REUSE_MIN_PREFIX_SHARE,
    NeedleAnswer,
    answer_tasks,
    grid_tasks,
)
from gpu_workers.spec import DatasetSpec


def _reused(task: NeedleTask) -> bool:
    return task.prefix_len >= REUSE_MIN_PREFIX_SHARE * (task.prefix_len + len(task.rest))


def prefill_tokens(tasks: Sequence[NeedleTask], reuse: bool) -> int:
    """Prompt tokens run through the model (decode steps apart), as ``answer_tasks`` chooses per cell."""
    if not reuse:
        return sum(t.prefix_len + len(t.rest) for t in tasks)
    shared = [t for t in tasks if _reused(t)]
    head = max((t.prefix_len for t in shared), default=0)
    return head + sum(len(t.rest) if _reused(t) else t.prefix_len + len(t.rest) for t in tasks)


def decode_steps(tasks: Sequence[NeedleTask]) -> int:
    """Single-token forward passes after each prompt (the same either way)."""
    return sum(len(t.answer_ids) + EXTRA_DECODE_TOKENS - 1 for t in tasks)


class TaskClock:
    """Per-task seconds from answer_tasks' own hooks: should_stop() runs before the shared prefill and before
    every task, on_task() after every task, so each task's time excludes the prefill."""

    def __init__(self) -> None:
        self.marks: list[float] = []
        self.tasks: list[float] = []

    def should_stop(self) -> bool:
        self.marks.append(time.perf_counter())
        return False

    def on_task(self) -> None:
        self.tasks.append(time.perf_counter() - self.marks[-1])

    def prefill_seconds(self) -> float:
        """The shared prefill: between the first check (before it) and the second (before the first task)."""
        return self.marks[1] - self.marks[0]


def by_cell(tasks: Sequence[NeedleTask], clocks: Sequence[TaskClock]) -> dict[tuple[int, float], float]:
    """Median over repeats of each (length, depth) cell's seconds, its samples summed."""
    per_repeat: dict[tuple[int, float], list[float]] = defaultdict(list)
    for clock in clocks:
        cells: dict[tuple[int, float], float] = defaultdict(float)
        for task, seconds in zip(tasks, clock.tasks, strict=True):
            cells[(task.length, task.depth)] += seconds
        for key, seconds in cells.items():
            per_repeat[key].append(seconds)
    return {key: statistics.median(values) for key, values in per_repeat.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (ignored on CUDA)")
    parser.add_argument("--method", default="yarn", help="a length-independent RoPE method")
    parser.add_argument("--factor", type=float, default=8.0)
    parser.add_argument("--format", choices=("passkey", "magic_number"), default="passkey")
    parser.add_argument("--lengths", default="512,1024,2048,4096")
    parser.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    parser.add_argument("--samples", type=int, default=2, help="prompts per (length, depth) cell")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    lengths = parse_lengths(args.lengths)
    depths = [float(d) for d in args.depths.split(",")]

    placement, loaded = setup(args, max(lengths))
    if loaded.length_dependent:
        parser.error(f"{args.method} is length-dependent: a shared prefix cache is not exact for it")
    model, tokenizer, device = loaded.model, loaded.tokenizer, placement.device
    builder = NeedleBuilder(tokenizer, fmt=args.format)
    stream = haystack_stream(DatasetSpec(), tokenizer, max(lengths))
    prefix = builder.prefix(stream)
    tasks = grid_tasks(builder, stream, lengths, depths, args.samples)

    print(f"command: {command_line('benches.needle_reuse')}")
    print(machine_line(placement))
    print(f"at start: {load_line()}")
    print(f"model: the demo model, method {args.method} ×{args.factor:g}; {args.format} needles, "
          f"lengths {', '.join(map(str, lengths))} × depths {', '.join(f'{d:g}' for d in depths)} × "
          f"{args.samples} samples = {len(tasks)} prompts; {args.repeats} interleaved repeats, medians reported\n")

    answers: dict[bool, list[NeedleAnswer]] = {}
    clocks: dict[bool, list[TaskClock]] = {True: [], False: []}

    def grid(reuse: bool) -> None:
        clock = TaskClock()
        answers[reuse] = answer_tasks(model, tokenizer, prefix, tasks, device=device, reuse_prefix=reuse,
                                      should_stop=clock.should_stop, on_task=clock.on_task)
        clocks[reuse].append(clock)

    grid(True)  # warm-up at every length
    clocks[True].clear()
    shared, naive = interleaved(placement, args.repeats, lambda: grid(True), lambda: grid(False))

    print("| protocol | prefill tokens | decode steps | wall s (median) | min s | max s |")
    print("|---|---|---|---|---|---|")
    for label, reuse, seconds in (("naive: every cell from scratch", False, naive),
                                  ("shared prefix KV cache", True, shared)):
        print(f"| {label} | {prefill_tokens(tasks, reuse):,} | {decode_steps(tasks):,} | "
              f"{statistics.median(seconds):.2f} | {min(seconds):.2f} | {max(seconds):.2f} |")
    print(f"\nspeed-up: {median_ratio(naive, shared):.2f}× (median of per-repeat ratios; best-of "
          f"{min(naive) / min(shared):.2f}×); prefill tokens "
          f"{prefill_tokens(tasks, False) / prefill_tokens(tasks, True):.2f}× fewer with the shared prefix")

    naive_cells, shared_cells = by_cell(tasks, clocks[False]), by_cell(tasks, clocks[True])
    prefill_s = statistics.median(c.prefill_seconds() for c in clocks[True])
    print(f"\nWhere the time goes: naive s / shared s per (length, depth) cell, {args.samples} samples summed, "
          f"medians over repeats; the shared prefill of {max(t.prefix_len for t in tasks):,} tokens "
          f"({prefill_s:.2f} s) is outside the cells.\n")
    print("| length | " + " | ".join(f"depth {d:g}" for d in depths) + " | all depths |")
    print("|---|" + "---|" * (len(depths) + 1))
    for n in lengths:
        pairs = [(naive_cells[(n, d)], shared_cells[(n, d)]) for d in depths]
        pairs.append((sum(a for a, _ in pairs), sum(b for _, b in pairs)))
        print(f"| {n} | " + " | ".join(f"{a:.2f} / {b:.2f} ({a / b:.1f}×)" for a, b in pairs) + " |")
    print()

    same = [a.tokens == b.tokens for a, b in zip(answers[True], answers[False], strict=True)]
    print(f"identical answers (greedy token lists): {sum(same)}/{len(same)}")
    for a, b, ok in zip(answers[True], answers[False], same, strict=True):
        if not ok:
            print(f"  differs at length {a.task.length}, depth {a.task.depth:g}, sample {a.task.sample}: "
                  f"shared {a.text!r} vs naive {b.text!r}")
    for reuse in (False, True):
        exact = sum(a.exact for a in answers[reuse])
        print(f"exact matches ({'shared' if reuse else 'naive'}): {exact}/{len(tasks)}; by length: "
              + ", ".join(f"{n}: {sum(a.exact for a in answers[reuse] if a.task.length == n)}" for n in lengths))
    print(f"at end: {load_line()}")
    if not all(same):
        raise SystemExit("the shared-prefix answers differ from the naive ones")


if __name__ == "__main__":
    main()
