"""Perplexity-evaluation throughput against a bare forward pass, and one pass vs one pass per length.

Run by hand and paste the output into docs/evaluation.md:

    .venv/bin/python -m benches.eval_throughput

Why: perplexity is the suite's most expensive evaluation, so its bookkeeping (the chunked lm head,
cross-entropy, the per-document cumulative sums, the bootstrap) should cost little beside the model
itself; the goal is at least 0.9 of the tokens/s of a bare ``model(input_ids)`` over the same tokens.
And for a RoPE that does not depend on the input length, one pass at the longest length yields every
shorter length; this measures what that saves over a pass per length and checks the numbers agree.
Baseline and candidate run interleaved (order alternating per repeat) because the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch

from benches.machine import cpu_model
from gpu_workers.data.documents import long_documents
from gpu_workers.demo import DEMO_MODEL_DIR
from gpu_workers.device import Placement, place
from gpu_workers.evaluate.perplexity import LengthResult, perplexity_by_length
from gpu_workers.loading import LoadedModel, load
from gpu_workers.spec import DatasetSpec, MethodSpec


def parse_lengths(text: str) -> tuple[int, ...]:
    return tuple(sorted({int(n) for n in text.split(",")}))


def machine_line(placement: Placement) -> str:
    """What the numbers were measured on: a bench result without it cannot be compared."""
    import transformers

    if placement.is_cuda:
        where = f"GPU {torch.cuda.get_device_name()} ({str(placement.dtype).removeprefix('torch.')})"
    else:
        where = f"CPU {cpu_model()}, {torch.get_num_threads()} threads (fp32)"
    return f"machine: {where}; torch {torch.__version__}, transformers {transformers.__version__}"


def load_line() -> str:
    """The shared machine's load: a bench run beside other work is slower, and its spread says how much."""
    try:
        return "load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average: unknown"


def command_line(module: str) -> str:
    return shlex.join(["python", "-m", module, *sys.argv[1:]])


def setup(args: argparse.Namespace, target_length: int) -> tuple[Placement, LoadedModel]:
    """Place, set threads, silence the weight-loading bar, load the demo model with the method applied."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    placement = place(args.device)
    if not placement.is_cuda:
        torch.set_num_threads(args.threads)
    method = MethodSpec(args.method, {"factor": args.factor})
    return placement, load(str(DEMO_MODEL_DIR), method, target_length, placement)


def timed(placement: Placement, work: Callable[[], object]) -> float:
    if placement.is_cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    work()
    if placement.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - started


def interleaved(placement: Placement, repeats: int, first: Callable[[], object],
                second: Callable[[], object]) -> tuple[list[float], list[float]]:
    """Seconds of *first* and *second* per repeat, run back to back with the order swapped every repeat."""
    a, b = [], []
    for repeat in range(repeats):
        if repeat % 2 == 0:
            a.append(timed(placement, first))
            b.append(timed(placement, second))
        else:
            b.append(timed(placement, second))
            a.append(timed(placement, first))
    return a, b


def median_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over repeats of the per-repeat ratio: pairs measured side by side share the machine's load."""
    return statistics.median(n / d for n, d in zip(numerator, denominator, strict=True))


def throughput_row(label: str, tokens: int, bare: Sequence[float], ev: Sequence[float]) -> str:
    ratios = sorted(b / e for b, e in zip(bare, ev, strict=True))
    return (f"| {label} | {tokens:,} | {tokens / statistics.median(bare):,.0f} | {tokens / statistics.median(ev):,.0f} "
            f"| {median_ratio(bare, ev):.3f} | {ratios[0]:.3f}–{ratios[-1]:.3f} | {min(bare) / min(ev):.3f} |")


@torch.no_grad()
def bare_forward(model: torch.nn.Module, documents: Sequence[Sequence[int]], length: int,
                 device: torch.device) -> None:
    """The reference: full logits of each document's first *length* tokens, nothing else."""
    for doc in documents:
        model(input_ids=torch.tensor([list(doc[:length])], device=device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (ignored on CUDA)")
    parser.add_argument("--method", default="yarn", help="a length-independent RoPE method")
    parser.add_argument("--factor", type=float, default=4.0)
    parser.add_argument("--documents", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lengths", default="256,512,1024,2048,4096", help="throughput lengths")
    parser.add_argument("--grid", default="256,512,1024,2048,4096", help="lengths of the one-pass comparison")
    args = parser.parse_args()
    lengths, grid = parse_lengths(args.lengths), parse_lengths(args.grid)
    longest = max(lengths + grid)

    placement, loaded = setup(args, longest)
    if loaded.length_dependent:
        parser.error(f"{args.method} is length-dependent: one pass cannot serve several lengths")
    model, device = loaded.model, placement.device
    docs = long_documents(DatasetSpec(), loaded.tokenizer, longest, args.documents)

    print(f"command: {command_line('benches.eval_throughput')}")
    print(machine_line(placement))
    print(f"at start: {load_line()}")
    print(f"model: the demo model, method {args.method} ×{args.factor:g}; {len(docs)} held-out "
          f"documents of ≥ {longest} tokens; {args.repeats} interleaved repeats, medians reported\n")

    def evaluate(window: Sequence[int], length_dependent: bool) -> list[LengthResult]:
        return perplexity_by_length(model, docs, window, device=device, length_dependent=length_dependent)

    # Warm-up: allocator, kernels and thread pools, at the longest length.
    bare_forward(model, docs[:1], longest, device)
    evaluate([longest], False)

    print("### Throughput: perplexity_by_length (one length) vs bare forward\n")
    print("| length | tokens | bare tok/s | eval tok/s | eval / bare (median) | range over repeats | best-of ratio |")
    print("|---|---|---|---|---|---|---|")
    all_bare = [0.0] * args.repeats
    all_eval = [0.0] * args.repeats
    for n in lengths:
        bare, ev = interleaved(placement, args.repeats, lambda n=n: bare_forward(model, docs, n, device),
                               lambda n=n: evaluate([n], False))
        all_bare = [t + s for t, s in zip(all_bare, bare, strict=True)]
        all_eval = [t + s for t, s in zip(all_eval, ev, strict=True)]
        print(throughput_row(str(n), n * len(docs), bare, ev), flush=True)
    print(throughput_row("all", sum(lengths) * len(docs), all_bare, all_eval) + "\n")

    print(f"### Multi-length perplexity at {', '.join(map(str, grid))}: one pass vs one pass per length\n")
    results: dict[bool, list[LengthResult]] = {}

    def run(length_dependent: bool) -> None:
        results[length_dependent] = evaluate(grid, length_dependent)

    one, per = interleaved(placement, args.repeats, lambda: run(False), lambda: run(True))
    print("| protocol | forward tokens | wall s (median) | min s | max s |")
    print("|---|---|---|---|---|")
    print(f"| one pass at {max(grid)} (`length_dependent=False`) | {max(grid) * len(docs):,} | "
          f"{statistics.median(one):.2f} | {min(one):.2f} | {max(one):.2f} |")
    print(f"| one pass per length (`length_dependent=True`) | {sum(grid) * len(docs):,} | "
          f"{statistics.median(per):.2f} | {min(per):.2f} | {max(per):.2f} |")
    print(f"\nper-length / one-pass time: {median_ratio(per, one):.2f}× (median of per-repeat ratios; "
          f"best-of {min(per) / min(one):.2f}×; token ratio {sum(grid) / max(grid):.2f}×)")
    pairs = list(zip(results[False], results[True], strict=True))
    diffs = [abs(a.perplexity - b.perplexity) / b.perplexity for a, b in pairs]
    print("perplexities (one pass vs per length): "
          + ", ".join(f"{a.length}: {a.perplexity:.3f} vs {b.perplexity:.3f}" for a, b in pairs))
    print(f"max relative difference: {max(diffs):.2e}")
    print(f"at end: {load_line()}")


if __name__ == "__main__":
    main()
