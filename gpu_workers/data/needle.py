"""Needle-in-a-haystack prompts over real text: the haystack is the dataset's held-out documents.

Two needle formats: ``passkey`` (the sentence the demo model was taught, so its grid is not all
zeros) and ``magic_number`` (key word → 7-digit value, in the spirit of RULER, which allows the
multi-key and multi-value variants). Every prompt for a given length and dataset is cut from the
same token stream, so all cells share the haystack tokens before their first needle: the grid can
prefill that prefix once and reuse its KV cache, exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from gpu_workers.data import passkey as passkey_format
from gpu_workers.data.documents import DatasetError, load_documents
from gpu_workers.spec import DatasetSpec

MAGIC_INTRO = (
    "Some special magic numbers are hidden in the text below. Read it all and remember each number: "
    "questions about them follow the text.\n"
)
KEY_WORDS = (
    "apple", "harbor", "violin", "granite", "lantern", "meadow", "falcon", "copper", "orchid", "glacier",
    "saddle", "thunder", "pepper", "compass", "marble", "willow", "ember", "canyon", "velvet", "quartz",
)
DOCUMENT_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class NeedleTask:
    length: int
    depth: float
    sample: int
    prefix_len: int
    """Tokens of ``intro + stream`` this prompt starts with (everything before its first needle)."""
    rest: list[int]
    """The prompt after that prefix: needles, the rest of the haystack, the question."""
    values: tuple[str, ...]
    """What a correct answer contains: one value, or every value of a multi-value needle."""
    answer_ids: list[int]
    """Tokens of the reference answer, for needle-driven perplexity and the decoding budget."""

    def prompt(self, prefix: list[int]) -> list[int]:
        return prefix[: self.prefix_len] + self.rest


def haystack_stream(spec: DatasetSpec, tokenizer: Any, tokens: int) -> list[int]:
    """The first *tokens* tokens of the held-out documents laid end to end."""
    separator = tokenizer(DOCUMENT_SEPARATOR, add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    for doc in load_documents(spec):
        stream += tokenizer(doc["text"], add_special_tokens=False)["input_ids"] + separator
        if len(stream) >= tokens:
            return stream[:tokens]
    raise DatasetError(f"The dataset's documents hold only {len(stream)} tokens; a haystack of {tokens} is needed.")


class NeedleBuilder:
    """Builds the prompts of one grid: a format, a variant and a haystack stream, seeded per cell."""

    def __init__(self, tokenizer: Any, *, fmt: str, variant: str = "single", count: int = 4, seed: int = 0) -> None:
        if variant != "single" and fmt != "magic_number":
            raise ValueError("multi-key and multi-value needles use the magic-number format")
        self.tokenizer, self.fmt, self.variant, self.count, self.seed = tokenizer, fmt, variant, count, seed
        self.intro = self._enc(passkey_format.INTRO if fmt == "passkey" else MAGIC_INTRO)

    def _enc(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _needles(self, rng: random.Random) -> tuple[list[list[int]], list[int], tuple[str, ...], str]:
        """(needles, target first), question, expected values, answer text."""
        if self.fmt == "passkey":
            value = str(rng.randint(10000, 99999))
            needle = self._enc(f" The pass key is {value}. Remember it. {value} is the pass key.")
            return [needle], self._enc(passkey_format.QUESTION), (value,), f" {value}"
        keys = rng.sample(KEY_WORDS, self.count if self.variant == "multikey" else 1)
        values = [str(rng.randint(1_000_000, 9_999_999)) for _ in range(self.count if self.variant != "single" else 1)]
        if self.variant == "multivalue":
            key = keys[0]
            needles = [self._enc(f" One of the special magic numbers for {key} is: {v}.") for v in values]
            question = self._enc(f" What are all the special magic numbers for {key} in the text above? "
                                 f"The special magic numbers for {key} are")
            return needles, question, tuple(values), " " + ", ".join(values)
        pairs = zip(keys, values, strict=True)
        needles = [self._enc(f" One of the special magic numbers for {k} is: {v}.") for k, v in pairs]
        question = self._enc(f" What is the special magic number for {keys[0]} in the text above? "
                             f"The special magic number for {keys[0]} is")
        return needles, question, (values[0],), f" {values[0]}"

    def task(self, stream: list[int], length: int, depth: float, sample: int) -> NeedleTask:
        rng = random.Random(f"needle:{self.seed}:{self.fmt}:{self.variant}:{length}:{depth}:{sample}")
        needles, question, values, answer = self._needles(rng)
        answer_ids = self._enc(answer)
        budget = length - len(self.intro) - sum(map(len, needles)) - len(question) - len(answer_ids)
        if budget < 16:
            raise ValueError(f"a needle prompt does not fit in {length} tokens")
        if len(stream) < budget:
            raise ValueError(f"the haystack stream has {len(stream)} tokens; {budget} are needed")
        # The target needle sits at the asked depth; the others (distractors or further values) at random ones.
        depths = [depth] + [rng.random() for _ in needles[1:]]
        placed = sorted(zip((round(d * budget) for d in depths), range(len(needles)), strict=True))
        rest: list[int] = []
        cursor = placed[0][0]
        for position, index in placed:
            rest += stream[cursor:position] + needles[index]
            cursor = position
        rest += stream[cursor:budget] + question
        return NeedleTask(length, depth, sample, len(self.intro) + placed[0][0], rest, values, answer_ids)

    def prefix(self, stream: list[int]) -> list[int]:
        return self.intro + stream
