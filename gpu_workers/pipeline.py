"""One run, start to end: load → apply the method → run the chosen evaluations → report.

``reporter.should_stop()`` is checked between steps and inside every loop over documents, samples
and needles, so a cancel lands within one forward pass. Each evaluation gets an equal slice of the
progress bar and reports its wall time as ``<evaluation>_seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gpu_workers import device as devices
from gpu_workers import protocol as protocols
from gpu_workers.data.documents import long_documents
from gpu_workers.data.needle import NeedleBuilder, haystack_stream
from gpu_workers.device import Placement
from gpu_workers.evaluate import memory, needle, passkey, perplexity
from gpu_workers.evaluate.retention import Retention, original_rope
from gpu_workers.loading import LoadedModel, load
from gpu_workers.methods.frequencies import original_rotary
from gpu_workers.reporter import Cancelled, Measurement, Reporter
from gpu_workers.spec import EVALUATIONS, MIN_PROMPT_LENGTH, MethodSpec, RunSpec, SpecError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

LOAD_SHARE = 0.1
"""Fraction of the progress bar given to loading, the rest to evaluation."""

Progress = Callable[[float, str], None]


def _stop_if_cancelled(reporter: Reporter) -> None:
    if reporter.should_stop():
        raise Cancelled()


class StampingReporter:
    """Passes every event through, stamping measurements with the protocol key of the step that made them."""

    def __init__(self, inner: Reporter) -> None:
        self.inner = inner
        self.key: str | None = None

    def progress(self, fraction: float, message: str) -> None:
        self.inner.progress(fraction, message)

    def log(self, line: str) -> None:
        self.inner.log(line)

    def measurement(self, measurement: Measurement) -> None:
        if self.key is not None and measurement.protocol_key is None:
            measurement = replace(measurement, protocol_key=self.key)
        self.inner.measurement(measurement)

    def artifact(self, kind: str, path: str) -> None:
        self.inner.artifact(kind, path)

    def protocol(self, facts: dict[str, Any]) -> None:
        self.inner.protocol(facts)

    def should_stop(self) -> bool:
        return self.inner.should_stop()


@dataclass
class Context:
    spec: RunSpec
    loaded: LoadedModel
    placement: Placement
    reporter: Reporter
    base_reference: tuple[float, float | None] | None = None
    """Short-context numbers of the base model, taken before training changes the weights."""
    key_tokens: list[torch.Tensor] | None = None
    """LongPPL's key tokens per evaluation document, judged by the base model before training."""

    @property
    def model(self) -> PreTrainedModel:
        return self.loaded.model

    @property
    def device(self) -> torch.device:
        return self.placement.device

    def emit(self, measurements: list[Measurement]) -> None:
        for m in measurements:
            self.reporter.measurement(m)


def _counter(total: int, progress: Progress, what: str) -> Callable[[], None]:
    done = [0]

    def tick() -> None:
        done[0] += 1
        progress(done[0] / max(total, 1), f"{done[0]}/{total} {what}")

    return tick


def _perplexity(ctx: Context, progress: Progress) -> None:
    ev = ctx.spec.eval
    docs = long_documents(ctx.spec.dataset, ctx.loaded.tokenizer, max(ev.lengths), ev.documents)
    common: dict[str, Any] = dict(device=ctx.device, length_dependent=ctx.loaded.length_dependent,
                                  should_stop=ctx.reporter.should_stop, seed=ctx.spec.seed,
                                  on_document=lambda done, total: progress(done / total, f"{done}/{total} windows"))
    if ev.protocol == "sliding":
        results = perplexity.sliding_perplexity_by_length(ctx.model, docs, ev.lengths, stride=ev.stride, **common)
    else:
        results = perplexity.perplexity_by_length(ctx.model, docs, ev.lengths, **common)
    for m in perplexity.to_measurements(results):
        ctx.reporter.measurement(m)
        ctx.reporter.log(f"ppl@{m.context_length} ({ev.protocol}) = {m.value:.2f} [{m.ci_low:.2f}, {m.ci_high:.2f}]")


def _evaluation_documents(ctx: Context) -> list[list[int]]:
    ev = ctx.spec.eval
    return long_documents(ctx.spec.dataset, ctx.loaded.tokenizer, max(ev.lengths), ev.documents)


def longppl_windows(ctx: Context) -> tuple[int, int]:
    """(long, short) windows of LongPPL's evaluator: the original context (or the longest length, when shorter)
    and the short window; refused when the short one is not shorter."""
    long_window = protocols.longppl_long_window(ctx.spec, ctx.loaded.facts.original_context)
    short_window = protocols.longppl_short_window(ctx.spec, long_window)
    if short_window >= long_window:
        raise SpecError(f"the LongPPL short window ({short_window} tokens) must be shorter than the evaluator's "
                            f"window, the original context capped at the longest length ({long_window})",
                            "longppl_short_window")
    return long_window, short_window


def _key_tokens(ctx: Context, progress: Progress | None = None) -> list[torch.Tensor]:
    """Key tokens judged by the base model: these weights (before training) with the checkpoint's own RoPE."""
    from gpu_workers.evaluate import longppl

    ev = ctx.spec.eval
    long_window, short_window = longppl_windows(ctx)
    report = progress or (lambda fraction, message: None)
    with original_rope(ctx.model, *original_rotary(ctx.loaded.facts.rope)):
        masks = longppl.key_token_masks(
            ctx.model, _evaluation_documents(ctx), long_window=long_window, short_window=short_window,
            gain=ev.longppl_gain, bound=ev.longppl_bound, device=ctx.device, should_stop=ctx.reporter.should_stop,
            on_document=lambda done, total: report(0.5 * done / total, f"{done}/{total} documents judged"),
        )
    found = sum(int(m.sum()) for m in masks)
    total = sum(m.numel() for m in masks)
    ctx.reporter.log(f"LongPPL key tokens: {found} of {total} ({found / max(total, 1):.1%}), base model windows "
                     f"{long_window} / {short_window}")
    return masks


def _longppl(ctx: Context, progress: Progress) -> None:
    from gpu_workers.evaluate import longppl

    if ctx.key_tokens is None:
        ctx.key_tokens = _key_tokens(ctx, progress)
    ev = ctx.spec.eval
    results = longppl.longppl_by_length(
        ctx.model, _evaluation_documents(ctx), ctx.key_tokens, ev.lengths, device=ctx.device,
        length_dependent=ctx.loaded.length_dependent, should_stop=ctx.reporter.should_stop, seed=ctx.spec.seed,
        on_document=lambda done, total: progress(0.5 + 0.5 * done / total, f"{done}/{total} windows"),
    )
    ctx.emit(longppl.to_measurements(results))
    ctx.reporter.log("LongPPL: " + ", ".join(
        f"{r.length}: {r.longppl:.2f} ({r.key_tokens} key tokens)" if r.longppl is not None else f"{r.length}: -"
        for r in results))


def _ruler(ctx: Context, progress: Progress) -> None:
    from gpu_workers.data.ruler import HaystackText, generate_suite
    from gpu_workers.evaluate import ruler

    ev = ctx.spec.eval
    progress(0.0, "generating the tasks")
    samples = generate_suite(ctx.loaded.tokenizer, HaystackText.from_dataset(ctx.spec.dataset), ev.lengths,
                             ctx.spec.seed, ev.ruler_samples, tasks=ev.ruler_tasks)
    reuse = not ctx.loaded.length_dependent
    answers = ruler.answer_samples(
        ctx.model, ctx.loaded.tokenizer, samples, device=ctx.device,
        max_new_tokens=ev.ruler_max_new_tokens or None, length_dependent=ctx.loaded.length_dependent,
        reuse_prefix=reuse, should_stop=ctx.reporter.should_stop,
        on_sample=_counter(len(samples), progress, "RULER prompts"),
    )
    scores = ruler.score_by_task_and_length(answers)
    scores += ruler.group_measurements(scores)
    scores += ruler.effective_lengths(scores, ctx.loaded.facts.original_context, ev.ruler_threshold)
    ctx.emit(scores)
    average = ruler.scores_by_length(scores)
    effective = next((m.value for m in scores if m.metric == ruler.EFFECTIVE_LENGTH_METRIC), None)
    ctx.reporter.log(
        f"RULER ({len(ev.ruler_tasks)} tasks, {ev.ruler_samples} samples, shared prefix cache: {reuse}): "
        + ", ".join(f"{n}: {v:.2f}" for n, v in sorted(average.items()))
        + (f"; effective length {int(effective)} at {ev.ruler_threshold:g} × the original-context score"
           if effective is not None else "; no effective length (the first length already falls short)")
    )


def _passkey(ctx: Context, progress: Progress) -> None:
    ev = ctx.spec.eval
    tick = _counter(len(ev.lengths) * ev.passkey_samples, progress, "passkey prompts")
    results = passkey.passkey_by_length(
        ctx.model, ctx.loaded.tokenizer, ev.lengths, ev.passkey_samples, device=ctx.device,
        length_dependent=ctx.loaded.length_dependent, depth=ev.passkey_depth, seed=ctx.spec.seed,
        should_stop=ctx.reporter.should_stop, on_sample=tick,
    )
    ctx.emit(passkey.to_measurements(results, ev.passkey_depth))
    ctx.reporter.log("passkey: " + ", ".join(f"{r.length}: {r.accuracy:.0%}" for r in results))


def _needle_setup(ctx: Context, variant: str) -> tuple[NeedleBuilder, list[int], list]:
    ev = ctx.spec.eval
    builder = NeedleBuilder(ctx.loaded.tokenizer, fmt=ev.needle_format, variant=variant, count=ev.needle_count,
                            seed=ctx.spec.seed)
    # Seeded by the run's seed: every run of an experiment reads the same haystack, so cells compare methods.
    stream = haystack_stream(ctx.spec.dataset, ctx.loaded.tokenizer, max(ev.lengths), seed=ctx.spec.seed)
    ctx.reporter.log(f"needle haystack: {ctx.spec.dataset.haystack!r} documents, shuffled with seed {ctx.spec.seed}")
    tasks = needle.grid_tasks(builder, stream, ev.lengths, ev.needle_depths, ev.needle_samples)
    return builder, builder.prefix(stream), tasks


def _needle(ctx: Context, progress: Progress) -> None:
    _, prefix, tasks = _needle_setup(ctx, ctx.spec.eval.needle_variant)
    reuse = not ctx.loaded.length_dependent
    answers = needle.answer_tasks(
        ctx.model, ctx.loaded.tokenizer, prefix, tasks, device=ctx.device, reuse_prefix=reuse,
        length_dependent=ctx.loaded.length_dependent, should_stop=ctx.reporter.should_stop,
        on_task=_counter(len(tasks), progress, "needles"),
    )
    cells = needle.summarise_grid(answers)
    ctx.emit(needle.grid_measurements(cells))
    ctx.reporter.log(f"needle grid: {len(cells)} cells, {len(tasks)} prompts, shared prefix cache: {reuse}")


def _needle_perplexity(ctx: Context, progress: Progress) -> None:
    _, prefix, tasks = _needle_setup(ctx, "single")
    ctx.emit(needle.needle_perplexity(
        ctx.model, prefix, tasks, device=ctx.device, length_dependent=ctx.loaded.length_dependent,
        seed=ctx.spec.seed, should_stop=ctx.reporter.should_stop,
        on_task=_counter(len(tasks), progress, "needle answers scored"),
    ))


def retention_length(ctx: Context) -> int:
    return protocols.retention_length(ctx.loaded.facts.original_context, ctx.spec.eval.lengths)


def _short_context(ctx: Context) -> tuple[float, float | None]:
    """Perplexity (and passkey accuracy) at the retention length, as the model computes now."""
    ev, n = ctx.spec.eval, retention_length(ctx)
    # The perplexity curve's own documents (each reaches the longest length), cut at the original length.
    docs = [d[:n] for d in long_documents(ctx.spec.dataset, ctx.loaded.tokenizer, max(ev.lengths), ev.documents)]
    ppl = perplexity.perplexity_by_length(
        ctx.model, docs, [n], device=ctx.device, length_dependent=ctx.loaded.length_dependent,
        should_stop=ctx.reporter.should_stop, seed=ctx.spec.seed,
    )[0].perplexity
    if not (ev.wants("passkey") and n >= MIN_PROMPT_LENGTH):
        return ppl, None
    key = passkey.passkey_accuracy(ctx.model, ctx.loaded.tokenizer, n, ev.passkey_samples, device=ctx.device,
                                   length_dependent=ctx.loaded.length_dependent, seed=ctx.spec.seed,
                                   should_stop=ctx.reporter.should_stop)
    return ppl, key.accuracy


def _base_reference(ctx: Context) -> tuple[float, float | None]:
    """The base model's short-context numbers: these weights with the original RoPE."""
    with original_rope(ctx.model, *original_rotary(ctx.loaded.facts.rope)):
        return _short_context(ctx)


def _retention(ctx: Context, progress: Progress) -> None:
    ev, n = ctx.spec.eval, retention_length(ctx)
    if ctx.base_reference is None:
        ctx.base_reference = _base_reference(ctx)
    base_ppl, base_key = ctx.base_reference
    progress(0.5, "base model measured")
    ppl, key = _short_context(ctx)
    result = Retention(n, ppl, base_ppl, key, base_key)
    ctx.emit(result.measurements(ev.documents, ev.passkey_samples if key is not None else None))
    ctx.reporter.log(f"retention at {n}: ppl {ppl:.2f} vs base {base_ppl:.2f} (ratio {result.perplexity_ratio:.3f})")


def _memory(ctx: Context, progress: Progress) -> None:
    costs = memory.measure_lengths(ctx.model, ctx.loaded.facts, ctx.spec.eval.lengths, ctx.placement,
                                   length_dependent=ctx.loaded.length_dependent, seed=ctx.spec.seed,
                                   should_stop=ctx.reporter.should_stop)
    ctx.emit(memory.to_measurements(costs))


RUNNERS: dict[str, Callable[[Context, Progress], None]] = {
    "perplexity": _perplexity,
    "longppl": _longppl,
    "passkey": _passkey,
    "needle": _needle,
    "needle_perplexity": _needle_perplexity,
    "ruler": _ruler,
    "retention": _retention,
    "memory": _memory,
}
assert tuple(RUNNERS) == EVALUATIONS


STEP_WEIGHTS = {"search": 4.0, "train": 4.0}
"""Progress-bar weight of the optional steps, against 1 per evaluation."""


def _search(ctx: Context, progress: Progress) -> None:
    from gpu_workers.search_step import run_search

    params = run_search(ctx.spec, ctx.loaded, ctx.reporter, progress)
    method = MethodSpec("longrope", params)
    del ctx.loaded.model
    ctx.loaded = load(ctx.spec.model_source, method, ctx.spec.target_length, ctx.placement)
    ctx.reporter.log(f"evaluating the searched factors as LongRoPE: {ctx.loaded.model.config.rope_parameters}")


def _train_in_processes(ctx: Context, on_step: Callable[[int, float, float], None]) -> None:
    """N processes via accelerate (or torchrun); the trained weights come back through the work directory."""
    from transformers import AutoModelForCausalLM

    from gpu_workers.train.launch import launch

    ctx.reporter.log(f"training in {ctx.spec.train_processes} processes")
    result = launch(ctx.spec, on_step=on_step, should_stop=ctx.reporter.should_stop)
    trained = Path(ctx.spec.work_dir) / "trained"
    model = AutoModelForCausalLM.from_pretrained(trained, dtype=ctx.placement.dtype, attn_implementation="sdpa",
                                                 local_files_only=True)
    # transformers decorates PreTrainedModel.to with @functools.wraps(Module.to): mypy then sees it unbound.
    ctx.loaded.model = model.to(ctx.placement.device).eval()  # type: ignore[arg-type]
    ctx.reporter.log(f"trained {result['steps_done']} steps in {result['seconds']:.1f} s across "
                     f"{result['processes']} processes; final loss {result['final_loss']:.3f}")


def _train(ctx: Context, progress: Progress) -> None:
    from gpu_workers.data.training import build_training_data
    from gpu_workers.mixed_windows import check as check_mixed_windows
    from gpu_workers.train import train

    spec, facts = ctx.spec, ctx.loaded.facts
    steps = spec.train.steps
    if spec.train.mixed_windows:  # the composer refuses these; a spec written by hand or by an API client is not
        check_mixed_windows(spec.method.family, facts.rope)

    def on_step(step: int, loss: float, lr: float) -> None:
        ctx.reporter.measurement(Measurement("train_loss", loss, step=step))
        progress(step / steps, f"step {step}/{steps}, loss {loss:.3f}")

    if spec.train_processes > 1:
        _train_in_processes(ctx, on_step)
        return
    data = build_training_data(spec, ctx.loaded.tokenizer, facts.original_context)
    pose = f", PoSE positions over {data.pose_target_length}" if spec.train.pose else ""
    ctx.reporter.log(f"training ({spec.train.mode}): {len(data.long)} sequences of "
                     f"{spec.train.length_for(spec.target_length, facts.original_context)} tokens, "
                     f"{len(data.short)} short, {spec.train.data_strategy} data{pose}")
    work = Path(spec.work_dir) if spec.work_dir else None
    model, result = train(ctx.model, data, spec.train, work_dir=work, on_step=on_step,
                          should_stop=ctx.reporter.should_stop)
    ctx.loaded.model = model.eval()
    resumed = f", resumed from step {result.resumed_from}" if result.resumed_from else ""
    ctx.reporter.log(f"trained {result.steps_done} steps in {result.seconds:.1f} s{resumed}; "
                     f"final loss {result.final_loss:.3f}")


def run(spec: RunSpec, outer: Reporter) -> None:
    from gpu_workers.search_step import SEARCH_MODES

    reporter = StampingReporter(outer)
    torch.manual_seed(spec.seed)
    placement = devices.place(spec.device)
    dtype = str(placement.dtype).removeprefix("torch.")
    reporter.progress(0.0, f"loading {spec.model_source} on {placement.device} ({dtype})")
    loaded = load(spec.model_source, spec.method, spec.target_length, placement)
    reporter.log(f"method {spec.method.family} {loaded.params}; rope_parameters {loaded.model.config.rope_parameters}")
    _stop_if_cancelled(reporter)
    facts = protocols.for_loaded(spec, loaded, placement)
    reporter.protocol(facts)
    keys = facts["keys"]
    ctx = Context(spec, loaded, placement, reporter)
    if spec.eval.wants("longppl"):
        longppl_windows(ctx)  # a bad short window fails before any search or training
    steps: list[tuple[str, Callable[[Context, Progress], None], float]] = []
    if spec.method.family in SEARCH_MODES:
        steps.append(("search", _search, STEP_WEIGHTS["search"]))
    if spec.train.enabled:
        if spec.eval.wants("retention"):
            reporter.progress(LOAD_SHARE, "retention: measuring the base model before training")
            ctx.base_reference = _base_reference(ctx)
        if spec.eval.wants("longppl"):
            reporter.progress(LOAD_SHARE, "LongPPL: the base model judges the key tokens before training")
            ctx.key_tokens = _key_tokens(ctx)
        steps.append(("train", _train, STEP_WEIGHTS["train"]))
    steps += [(name, RUNNERS[name], 1.0) for name in spec.eval.suite]
    total = sum(weight for _, _, weight in steps)
    start = LOAD_SHARE
    for name, runner, weight in steps:
        share = (1 - LOAD_SHARE) * weight / total

        def progress(fraction: float, message: str, start: float = start, name: str = name,
                     share: float = share) -> None:
            reporter.progress(start + share * min(fraction, 1.0), f"{name}: {message}")

        start += share
        reporter.key = keys.get(name)
        progress(0.0, "starting")
        _stop_if_cancelled(reporter)
        if name != "memory":
            devices.reset_peak_memory(placement)
        started = time.perf_counter()
        runner(ctx, progress)
        seconds = time.perf_counter() - started
        reporter.measurement(Measurement(f"{name}_seconds", seconds, context_length=max(spec.eval.lengths)))
        if name == "perplexity":
            peak = devices.peak_memory_mb(placement)
            if peak is not None:
                reporter.measurement(
                    Measurement("perplexity_peak_memory_mb", peak, context_length=max(spec.eval.lengths))
                )
    reporter.progress(1.0, "done")
