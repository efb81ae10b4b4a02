"""What a data strategy does to a dataset's mixture, computed on a token-budgeted sample for a web page.

Tokenizing a whole corpus per page view is out of the question (the demo corpus is 187 MB), so the
preview draws a seeded sample of the training documents up to a token budget, caches it per
(dataset, tokenizer, budget), and applies the strategy to that — the same functions a training run
uses, on less data.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from gpu_workers.data import upsampling
from gpu_workers.data.documents import load_training_documents
from gpu_workers.data.training import shuffled_pool
from gpu_workers.spec import DatasetSpec
from gpu_workers.tokenizer_files import load_light_tokenizer

PREVIEW_TOKENS = 1_000_000


@lru_cache(maxsize=8)
def sample(spec: DatasetSpec, tokenizer_source: str, budget: int = PREVIEW_TOKENS, seed: int = 0
           ) -> tuple[upsampling.Doc, ...]:
    # The web process draws this preview: tokenizer.json through `tokenizers`, not transformers (no torch).
    tokenizer = load_light_tokenizer(tokenizer_source)
    return tuple(shuffled_pool(load_training_documents(spec), tokenizer, budget, f"preview:{seed}"))


def preview(spec: DatasetSpec, tokenizer_source: str, *, strategy: str, threshold: int, keep_short_p: float,
            sources: list[str], multiplier: float, original_length: int, seed: int = 0,
            budget: int = PREVIEW_TOKENS) -> dict[str, Any]:
    """{"before": MixtureStats JSON, "after": …, "sampled_documents": n} for one strategy."""
    docs = list(sample(spec, tokenizer_source, budget, seed))
    before = upsampling.mixture_stats(docs, threshold=threshold)
    chosen = upsampling.apply_strategy(docs, strategy, threshold=threshold, keep_short_p=keep_short_p,
                                       sources=sources, multiplier=multiplier, original_length=original_length,
                                       seed=seed)
    after = upsampling.mixture_stats(chosen, threshold=threshold, bins=before.bin_edges)
    return {"before": before.to_json(), "after": after.to_json(), "sampled_documents": len(docs)}
