"""What a number was measured *under*, recorded with it: the evaluation protocol of a run.

Why: two perplexities at 1,024 tokens are only comparable when the same documents (same dataset, same
count, same minimum length — documents must hold the longest length, so the longest length picks them),
the same protocol and stride, the same tokenizer, the same BOS handling, the same seed and the same numerics
(dtype, device kind, attention kernel) produced them. A leaderboard that ranks a sliding-window perplexity
against a truncated one, or a RULER average over 4 tasks against one over 13, ranks protocols, not methods.

So every run records a *protocol*: facts common to all its evaluations plus one section per evaluation, and
a short key per evaluation (a digest of the common facts and that evaluation's section). Each measurement
carries the key of the evaluation that produced it; the leaderboard only ranks measurements with the same key,
and pages state the facts under each chart. Library versions are recorded but not in the key: a transformers
upgrade should not split every leaderboard, and the page still shows them.

Torch-free apart from reading the loaded model's config, so the web side can describe a stored protocol.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from gpu_workers import catalog
from gpu_workers.spec import EVALUATIONS, RunSpec

BOS_HANDLING = "none"
"""Documents and prompts are tokenized with ``add_special_tokens=False``: no BOS (or EOS) token is added."""
KEY_CHARS = 12
SEARCH_AND_TRAINING = catalog.STEPS
"""Steps that report numbers (fitness, loss) that no leaderboard ranks: their measurements carry no key."""


def _document_facts(spec: RunSpec) -> dict[str, Any]:
    ev = spec.eval
    return {
        "perplexity_protocol": ev.protocol,
        "stride": ev.stride if ev.protocol == "sliding" else None,
        "documents": ev.documents,
        "document_min_tokens": max(ev.lengths),
    }


def evaluation_sections(spec: RunSpec, original_context: int) -> dict[str, dict[str, Any]]:
    """One section per evaluation the run does: the settings that change what its numbers mean."""
    ev, haystack = spec.eval, spec.dataset.haystack
    needles = {"haystack": haystack, "needle_depths": list(ev.needle_depths), "needle_samples": ev.needle_samples,
               "needle_variant": ev.needle_variant, "needle_format": ev.needle_format,
               "needle_count": ev.needle_count}
    sections: dict[str, dict[str, Any]] = {
        "perplexity": _document_facts(spec),
        "longppl": {**_document_facts(spec), "perplexity_protocol": "truncate", "stride": None,
                    "evaluator": "the base checkpoint with its original RoPE",
                    "long_window": longppl_long_window(spec, original_context),
                    "short_window": longppl_short_window(spec, longppl_long_window(spec, original_context)),
                    "gain": ev.longppl_gain, "bound": ev.longppl_bound},
        "passkey": {"passkey_samples": ev.passkey_samples,
                    "passkey_depth": "random" if ev.passkey_depth is None else ev.passkey_depth},
        "needle": needles,
        "needle_perplexity": {**needles, "needle_variant": "single"},
        "ruler": {"haystack": haystack, "ruler_tasks": list(ev.ruler_tasks), "ruler_samples": ev.ruler_samples,
                  "ruler_threshold": ev.ruler_threshold, "ruler_max_new_tokens": ev.ruler_max_new_tokens,
                  "generator_version": _ruler_generator_version()},
        "retention": {"documents": ev.documents, "document_min_tokens": max(ev.lengths),
                      "retention_length": retention_length(original_context, ev.lengths),
                      "passkey_samples": ev.passkey_samples if ev.wants("passkey") else None},
        "memory": {},
    }
    return {name: sections[name] for name in EVALUATIONS if ev.wants(name)}


def retention_length(original_context: int, lengths: tuple[int, ...]) -> int:
    """The original context, or the longest evaluated length when every length lies inside it.

    A real checkpoint's original context (8,192 for SmolLM2, 128K for Llama-3.1) is often longer than an
    experiment's lengths; retention then compares at the longest length evaluated, still inside the window
    the model was trained on, with the perplexity curve's own documents.
    """
    return min(original_context, max(lengths))


def longppl_long_window(spec: RunSpec, original_context: int) -> int:
    """LongPPL's evaluator reads the original context, or the longest length when every length is shorter."""
    return min(original_context, max(spec.eval.lengths))


SHORT_WINDOW_RATIO = 8
"""LongPPL's default short window is the evaluator's window ÷ 8: the paper's 4K against 32K. On the demo model
(256 tokens, so 32) that marks 0.4% of tokens as key tokens at the paper's thresholds; ÷ 4 marked 0.01%."""


def default_short_window(long_window: int) -> int:
    return max(16, long_window // SHORT_WINDOW_RATIO)


def longppl_short_window(spec: RunSpec, long_window: int) -> int:
    """The evaluator's short window: the setting, or :func:`default_short_window`."""
    return spec.eval.longppl_short_window or default_short_window(long_window)


def _ruler_generator_version() -> int:
    from gpu_workers.data.ruler import GENERATOR_VERSION

    return GENERATOR_VERSION


def describe_device(device: Any) -> str:
    """``cpu`` or ``cuda (NVIDIA H200)``: the kind is in the key, the name only on the page."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def build(spec: RunSpec, *, tokenizer_digest: str, dtype: str, device: str, attn_implementation: str,
          original_context: int, versions: dict[str, str] | None = None) -> dict[str, Any]:
    """The protocol of one run: ``common`` facts, per-evaluation ``evaluations`` sections and their ``keys``."""
    dataset = spec.dataset
    common = {
        "dataset": f"{dataset.kind}:{dataset.path}" if dataset.path else dataset.kind,
        "text_field": dataset.text_field if dataset.kind != "builtin" else None,
        "bos": BOS_HANDLING,
        "tokenizer_hash": tokenizer_digest[:KEY_CHARS],
        "seed": spec.seed,
        "dtype": dtype,
        "device": device.split(" ")[0],
        "attn_implementation": attn_implementation,
    }
    sections = evaluation_sections(spec, original_context)
    return {
        "common": common,
        "evaluations": sections,
        "keys": {name: protocol_key(common, section) for name, section in sections.items()},
        "device_name": device,
        "versions": dict(versions or {}),
    }


def protocol_key(common: dict[str, Any], section: dict[str, Any]) -> str:
    payload = json.dumps({"common": common, "section": section}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:KEY_CHARS]


def for_loaded(spec: RunSpec, loaded: Any, placement: Any) -> dict[str, Any]:
    """The protocol of a run on a loaded model (its tokenizer, config and placement)."""
    import torch
    import transformers

    from gpu_workers.data.ruler import tokenizer_hash

    config = loaded.model.config
    return build(
        spec,
        tokenizer_digest=tokenizer_hash(loaded.tokenizer),
        dtype=str(placement.dtype).removeprefix("torch."),
        device=describe_device(placement.device),
        attn_implementation=str(getattr(config, "_attn_implementation", None) or "eager"),
        original_context=loaded.facts.original_context,
        versions={"torch": torch.__version__, "transformers": transformers.__version__},
    )


LABELS = {
    "perplexity_protocol": "protocol", "stride": "stride", "documents": "documents",
    "document_min_tokens": "documents of at least (tokens)", "evaluator": "evaluator",
    "long_window": "evaluator window", "short_window": "short window", "gain": "key-token loss drop >",
    "bound": "key-token loss <", "passkey_samples": "passkey samples", "passkey_depth": "passkey depth",
    "haystack": "haystack", "needle_depths": "depths", "needle_samples": "needles per cell",
    "needle_variant": "variant", "needle_format": "format", "needle_count": "needles",
    "ruler_tasks": "tasks", "ruler_samples": "samples per task and length", "ruler_threshold": "threshold",
    "ruler_max_new_tokens": "answer tokens", "generator_version": "generator version",
    "retention_length": "at length", "dataset": "dataset", "text_field": "text field", "bos": "BOS added",
    "tokenizer_hash": "tokenizer", "seed": "seed", "dtype": "dtype", "device": "device",
    "attn_implementation": "attention",
}


def _value(name: str, value: Any) -> str:
    if name == "ruler_tasks" and isinstance(value, list):
        return f"{len(value)} ({', '.join(value)})" if len(value) < 13 else "all 13"
    if name == "ruler_max_new_tokens" and value == 0:
        return "answer + 8"
    if isinstance(value, list):
        return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def describe(protocol: dict[str, Any], evaluation: str) -> str:
    """One line for a page: the evaluation's settings, then the common facts (blank for an unknown protocol)."""
    section = (protocol.get("evaluations") or {}).get(evaluation)
    if section is None:
        return ""
    common = protocol.get("common") or {}
    parts = [f"{LABELS.get(k, k)} {_value(k, v)}" for k, v in section.items() if v is not None]
    parts += [f"{LABELS.get(k, k)} {_value(k, v)}" for k, v in common.items() if v is not None]
    key = (protocol.get("keys") or {}).get(evaluation, "")
    return f"{'; '.join(parts)} · key {key}" if key else "; ".join(parts)
