"""Needle-in-a-haystack prompts over real text: the haystack is the dataset's held-out documents.

The haystack is natural text by default: the documents of the dataset's *haystack source* (the demo
corpus's ``prose``, whatever source a user picked for their data, or ``all``), laid end to end in a
seeded shuffled order, so a grid is not one or two Python files because the held-out split lists code
first, and two seeds give two different haystacks while one seed always gives the same.

Two needle formats: ``passkey`` (the sentence the demo model was taught, so its grid is not all
zeros) and ``magic_number`` (key word → 7-digit value, in the spirit of RULER, which allows the
multi-key and multi-value variants). Every prompt for a given length and dataset is cut from the
same token stream, so all cells share the haystack tokens before their first needle: the grid can
prefill that prefix once and reuse its KV cache, exactly.

A needle goes in between two whole haystack tokens, at the sentence or line end nearest its depth
whose text, decoded and tokenized again, still holds the needle's tokens unchanged: the model reads
the needle as the tokenizer would have cut it in real text, never a word split around it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from gpu_workers.data import passkey as passkey_format
from gpu_workers.data.documents import DatasetError, haystack_documents
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


SENTENCE_ENDS = (".", "!", "?", "\n")
"""A needle goes after a token whose text ends like this (then it reads as a sentence of its own)."""
SENTENCE_REACH = 64
"""How far (tokens) a needle may move from its asked position to reach a sentence or line end."""
TOKEN_REACH = 16
"""Failing that, how far it may move to reach any place where it re-tokenizes intact."""
CONTEXT_TOKENS = 8
"""Haystack tokens either side that the re-tokenization check decodes with the needle."""


def haystack_order(count: int, seed: int) -> list[int]:
    """The seeded order haystack documents are laid in: the same for one seed, another for another."""
    order = list(range(count))
    random.Random(f"haystack:{seed}").shuffle(order)
    return order


def haystack_stream(spec: DatasetSpec, tokenizer: Any, tokens: int, seed: int = 0) -> list[int]:
    """The first *tokens* tokens of the haystack source's documents, in :func:`haystack_order` for *seed*.

    Each document is tokenized whole and documents are joined by a blank line, so no token straddles two
    documents; the needle positions are chosen later, by :meth:`NeedleBuilder.task`.
    """
    separator = tokenizer(DOCUMENT_SEPARATOR, add_special_tokens=False)["input_ids"]
    docs = haystack_documents(spec)
    stream: list[int] = []
    for index in haystack_order(len(docs), seed):
        stream += tokenizer(docs[index]["text"], add_special_tokens=False)["input_ids"] + separator
        if len(stream) >= tokens:
            return stream[:tokens]
    raise DatasetError(
        f"The dataset's {spec.haystack!r} documents hold only {len(stream)} tokens; "
        f"a haystack of {tokens} is needed."
    )


class NeedleBuilder:
    """Builds the prompts of one grid: a format, a variant and a haystack stream, seeded per cell."""

    def __init__(self, tokenizer: Any, *, fmt: str, variant: str = "single", count: int = 4, seed: int = 0) -> None:
        if variant != "single" and fmt != "magic_number":
            raise ValueError("multi-key and multi-value needles use the magic-number format")
        self.tokenizer, self.fmt, self.variant, self.count, self.seed = tokenizer, fmt, variant, count, seed
        self.intro = self._enc(passkey_format.INTRO if fmt == "passkey" else MAGIC_INTRO)
        self._pieces: tuple[list[int], list[str]] | None = None

    def _enc(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _token_texts(self, stream: list[int]) -> list[str]:
        """Each stream token's own text, decoded once per stream (a grid asks for it in every cell)."""
        if self._pieces is None or self._pieces[0] is not stream:
            self._pieces = (stream, self.tokenizer.batch_decode([[t] for t in stream]))
        return self._pieces[1]

    def _intact(self, left: list[int], needle: list[int], right: list[int]) -> bool:
        """Whether *needle* between these tokens survives decoding and tokenizing again unchanged."""
        ids = self._enc(self.tokenizer.decode(left + needle + right))
        n = len(needle)
        return any(ids[i : i + n] == needle for i in range(len(ids) - n + 1))

    def _insertion_point(self, stream: list[int], target: int, budget: int, needle: list[int],
                         after: list[int]) -> int:
        """The place nearest *target* (in ``0..budget``) to put *needle* without cutting into a word.

        First choice: right after a sentence or line end within :data:`SENTENCE_REACH` tokens; then any
        place within :data:`TOKEN_REACH` where the needle re-tokenizes intact; else *target* itself (a
        tokenizer for which nothing passes, e.g. an empty or one-token haystack).
        """
        pieces = self._token_texts(stream)
        tail = stream[:budget] + after  # what follows the needle at the last positions: the question

        def intact(p: int) -> bool:
            left = self.intro[-CONTEXT_TOKENS:] if p == 0 else stream[max(0, p - CONTEXT_TOKENS) : p]
            return self._intact(left, needle, tail[p : p + CONTEXT_TOKENS])

        def near(reach: int) -> list[int]:
            return sorted(range(max(0, target - reach), min(budget, target + reach) + 1),
                          key=lambda p: (abs(p - target), p))

        def sentence_end(p: int) -> bool:
            if p == 0:
                return True  # right after the instructions, which end a sentence
            before = pieces[p - 1]
            if before.endswith("\n"):
                return True
            if not before.rstrip(" \t").endswith(SENTENCE_ENDS):
                return False
            # "4.14" or ".\\" also end in a full stop: a sentence ends only where a space follows. Decoding the
            # pair keeps the space a lone SentencePiece token would lose.
            pair = self.tokenizer.decode(tail[p - 1 : p + 1])
            return pair[len(before):][:1].isspace()

        for p in near(SENTENCE_REACH):
            if sentence_end(p) and intact(p):
                return p
        for p in near(TOKEN_REACH):
            if intact(p):
                return p
        return target

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
        # The target needle sits at the asked depth; the others (distractors or further values) at random ones,
        # each moved to the nearest place it can go in whole (see _insertion_point).
        depths = [depth] + [rng.random() for _ in needles[1:]]
        positions = [self._insertion_point(stream, round(d * budget), budget, needles[i], question)
                     for i, d in enumerate(depths)]
        placed = sorted(zip(positions, range(len(needles)), strict=True))
        rest: list[int] = []
        cursor = placed[0][0]
        for position, index in placed:
            rest += stream[cursor:position] + needles[index]
            cursor = position
        rest += stream[cursor:budget] + question
        return NeedleTask(length, depth, sample, len(self.intro) + placed[0][0], rest, values, answer_ids)

    def prefix(self, stream: list[int]) -> list[int]:
        return self.intro + stream
