"""Synthetic passkey-retrieval samples (landmark-attention style filler).

The same builder feeds the demo model's retrieval pretraining phase and the passkey evaluation,
so a model is tested on exactly the format it was taught. Pieces are tokenized separately and
concatenated, which makes a sample's length exact in tokens and independent of BPE merges across
piece boundaries.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about the important information there."
)
FILLER = (
    " The grass is green.",
    " The sky is blue.",
    " The sun is yellow.",
    " Here we go.",
    " There and back again.",
)
QUESTION = " What is the pass key? The pass key is"


@dataclass(frozen=True)
class PasskeySample:
    input_ids: list[int]
    """Prompt tokens, ending right before the answer."""
    answer: str
    """The key as text, e.g. ``"40213"``."""
    answer_ids: list[int]
    """Tokens of ``" " + answer`` — what a model should produce next."""
    depth: float


@lru_cache(maxsize=8)
def _pieces(tokenizer: Any) -> tuple[list[int], list[list[int]], list[int]]:
    def enc(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    return enc(INTRO), [enc(s) for s in FILLER], enc(QUESTION)


def make_sample(tokenizer: Any, length: int, rng: random.Random, depth: float | None = None) -> PasskeySample:
    """A prompt of at most *length* tokens (answer included) with the key at *depth* ∈ [0, 1]."""
    intro, fillers, question = _pieces(tokenizer)
    key = str(rng.randint(10000, 99999))
    enc = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    key_ids = enc(f" The pass key is {key}. Remember it. {key} is the pass key.")
    answer_ids = enc(f" {key}")
    budget = length - len(intro) - len(key_ids) - len(question) - len(answer_ids)
    if budget < 0:
        raise ValueError(f"a passkey sample needs more than {length} tokens")
    filler: list[list[int]] = []
    used = 0
    index = 0
    while used + len(fillers[index % len(fillers)]) <= budget:
        piece = fillers[index % len(fillers)]
        filler.append(piece)
        used += len(piece)
        index += 1
    depth = rng.random() if depth is None else depth
    split = round(depth * len(filler))
    before = [t for piece in filler[:split] for t in piece]
    after = [t for piece in filler[split:] for t in piece]
    ids = intro + before + key_ids + after + question
    return PasskeySample(input_ids=ids, answer=key, answer_ids=answer_ids, depth=depth)
