"""One run, start to end: load → apply the method → evaluate → report.

``reporter.should_stop()`` is checked between steps and inside every loop over documents, so a
cancel lands within one forward pass.
"""

from __future__ import annotations

import time

import torch

from gpu_workers import device as devices
from gpu_workers.data.documents import long_documents
from gpu_workers.evaluate import perplexity
from gpu_workers.loading import load
from gpu_workers.reporter import Cancelled, Measurement, Reporter
from gpu_workers.spec import RunSpec

LOAD_SHARE = 0.1
"""Fraction of the progress bar given to loading, the rest to evaluation."""


def _checkpoint(reporter: Reporter) -> None:
    if reporter.should_stop():
        raise Cancelled()


def run(spec: RunSpec, reporter: Reporter) -> None:
    torch.manual_seed(spec.seed)
    placement = devices.place(spec.device)
    dtype = str(placement.dtype).removeprefix("torch.")
    reporter.progress(0.0, f"loading {spec.model_source} on {placement.device} ({dtype})")
    loaded = load(spec.model_source, spec.method, spec.target_length, placement)
    reporter.log(f"method {spec.method.family} {loaded.params}; rope_parameters {loaded.model.config.rope_parameters}")
    _checkpoint(reporter)

    longest = max(spec.eval.lengths)
    docs = long_documents(spec.dataset, loaded.tokenizer, longest, spec.eval.documents)
    reporter.progress(LOAD_SHARE, f"evaluating perplexity on {len(docs)} documents at {list(spec.eval.lengths)}")
    _checkpoint(reporter)

    def on_document(done: int, total: int) -> None:
        reporter.progress(LOAD_SHARE + (1 - LOAD_SHARE) * done / total, f"perplexity: {done}/{total} windows")

    devices.reset_peak_memory(placement)
    started = time.perf_counter()
    results = perplexity.perplexity_by_length(
        loaded.model, docs, spec.eval.lengths, device=placement.device,
        length_dependent=loaded.length_dependent, should_stop=reporter.should_stop,
        on_document=on_document, seed=spec.seed,
    )
    seconds = time.perf_counter() - started
    for measurement in perplexity.to_measurements(results):
        reporter.measurement(measurement)
        reporter.log(f"ppl@{measurement.context_length} = {measurement.value:.2f} "
                     f"[{measurement.ci_low:.2f}, {measurement.ci_high:.2f}]")
    reporter.measurement(Measurement("eval_seconds", seconds, context_length=longest, samples=len(docs)))
    peak = devices.peak_memory_mb(placement)
    if peak is not None:
        reporter.measurement(Measurement("peak_memory_mb", peak, context_length=longest))
    reporter.progress(1.0, "done")
