"""Training rows for the demo model's generalisation phase: retrieval over real text, in every format.

A model taught retrieval only after synthetic filler finds 3 of 10 needles in a prose haystack (issue 11):
it learned "copy the number after *pass key is* among sentences about grass and sky", not "find it in
text". So this phase mixes, row by row,

* plain text (language modelling, so perplexity recovers from the synthetic phase);
* needle prompts over **training-split** prose and code, built by the evaluation's own
  :class:`~gpu_workers.data.needle.NeedleBuilder` in each of its formats (passkey sentence, RULER-style
  magic number: single, multi-key, multi-value), so training and evaluation formats cannot drift;
* the synthetic passkey prompts of :mod:`gpu_workers.data.passkey` after text or after random tokens, the
  formats the earlier phases taught, so that skill is kept.

Each row carries two masks: which tokens the language-modelling loss counts (not the random tokens, which
only teach a model to predict noise) and which are answers (the value after the question), so the build
can weight retrieval separately from text. Everything is drawn from one seeded ``random.Random``: the
same seed gives the same rows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from gpu_workers.data import passkey
from gpu_workers.data.needle import NeedleBuilder
from gpu_workers.demo.ruler_rows import RulerPool

NEEDLE_FORMATS: tuple[tuple[str, str], ...] = (
    ("passkey", "single"), ("magic_number", "single"), ("magic_number", "multikey"), ("magic_number", "multivalue"),
)
"""Every (format, variant) the needle evaluation can ask for."""
MIN_NEEDLE_LENGTH = {"single": 128, "multikey": 200, "multivalue": 232}
"""Shortest prompt drawn per variant: instructions, needles, question and answer take at most 100 tokens for
one magic number, 173 for four keys and 203 for four values (demo tokenizer), and the builder wants at least 16
haystack tokens besides."""


@dataclass(frozen=True)
class Row:
    ids: list[int]
    lm: list[bool]
    """Tokens the language-modelling loss counts (as targets)."""
    answer: list[bool]
    """Answer tokens: the value(s) a retrieval prompt asks for."""


@dataclass(frozen=True)
class Mix:
    """Shares of the row kinds in one batch draw (they need not sum to 1: they are weights)."""

    text: float = 0.5
    needle: float = 0.3
    passkey_text: float = 0.12
    passkey_random: float = 0.08
    code_haystack: float = 0.3
    """Of the needle rows, the share with a code haystack (the rest: prose)."""
    full_length: float = 0.5
    """Of the prompt rows, the share that fill the whole context from position 0, as evaluation prompts do;
    the others are shorter and preceded by text, so the needle is met at every distance and offset."""
    end_depths: float = 0.2
    """Of the needle rows, the share with the needle first or last (depth 0 or 1)."""
    ruler: float = 0.0
    """RULER-shaped prompts (:mod:`gpu_workers.demo.ruler_rows`); 0 leaves the draws of a mix without them
    exactly as they were."""


class RowMaker:
    """Draws training rows of exactly *context* tokens from token streams of the training split."""

    def __init__(self, tokenizer: Any, *, context: int, text: torch.Tensor, haystacks: dict[str, list[int]],
                 noise: torch.Tensor, seed: int, mix: Mix = Mix(), ruler: RulerPool | None = None) -> None:
        if mix.ruler and ruler is None:
            raise ValueError("a mix with RULER rows needs a RulerPool")
        self.tokenizer, self.context, self.mix, self.ruler = tokenizer, context, mix, ruler
        self.text, self.noise, self.haystacks = text, noise, haystacks
        self.rng = random.Random(seed)
        self.eos = tokenizer.eos_token_id
        # Builder seeds far from the evaluation's (the run seed, usually 0): other keys, other values.
        self.builders = {(fmt, variant): NeedleBuilder(tokenizer, fmt=fmt, variant=variant, seed=10_000 + seed)
                         for fmt, variant in NEEDLE_FORMATS}
        self.drawn = 0

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, lm mask, answer mask), each (size, context)."""
        rows = [self.row() for _ in range(size)]
        return (torch.tensor([r.ids for r in rows]), torch.tensor([r.lm for r in rows]),
                torch.tensor([r.answer for r in rows]))

    def row(self) -> Row:
        m = self.mix
        kinds, weights = ["text", "needle", "passkey_text", "passkey_random"], [m.text, m.needle, m.passkey_text,
                                                                               m.passkey_random]
        if m.ruler:
            kinds.append("ruler")
            weights.append(m.ruler)
        kind = self.rng.choices(kinds, weights=weights)[0]
        if kind == "text":
            start = self.rng.randrange(0, len(self.text) - self.context - 1)
            ids = self.text[start : start + self.context].tolist()
            return Row(ids, [True] * self.context, [False] * self.context)
        if kind == "ruler":
            assert self.ruler is not None
            prompt, answer = self.ruler.draw(self.rng)
        elif kind == "needle":
            prompt, answer = self.needle_prompt()
        else:
            prompt, answer = self.passkey_prompt()
        return self._front_fill(prompt, answer, random_fill=kind == "passkey_random")

    def _length(self, shortest: int) -> int:
        if self.rng.random() < self.mix.full_length:
            return self.context
        return self.rng.randint(shortest, self.context)

    def _depth(self) -> float:
        """Uniform, plus extra weight on the two ends the evaluation grid always asks (0 and 1)."""
        if self.rng.random() < self.mix.end_depths:
            return self.rng.choice((0.0, 1.0))
        return round(self.rng.random(), 4)

    def passkey_prompt(self) -> tuple[list[int], list[int]]:
        sample = passkey.make_sample(self.tokenizer, self._length(112), self.rng)
        return sample.input_ids, sample.answer_ids

    def needle_prompt(self) -> tuple[list[int], list[int]]:
        """One needle prompt of a random format, length and depth over a random stretch of a haystack stream."""
        fmt, variant = self.rng.choice(NEEDLE_FORMATS)
        builder = self.builders[(fmt, variant)]
        source = "code" if self.rng.random() < self.mix.code_haystack else "prose"
        stream = self.haystacks[source]
        length = self._length(MIN_NEEDLE_LENGTH[variant])
        start = self.rng.randrange(0, len(stream) - length)
        window = stream[start : start + length]
        self.drawn += 1
        task = builder.task(window, length, self._depth(), self.drawn)
        prompt = task.prompt(builder.prefix(window))
        return prompt, self._answer_in_text_order(prompt, task.values, task.answer_ids)

    def _answer_in_text_order(self, prompt: list[int], values: tuple[str, ...], answer_ids: list[int]) -> list[int]:
        """The reference answer, with several values listed in the order the text holds them.

        The evaluation accepts the values in any order; teaching the order of the text gives the model a rule
        it can follow (the builder lists them in the order it drew them, which the text does not show).
        """
        if len(values) == 1:
            return answer_ids
        text = self.tokenizer.decode(prompt)
        ordered = sorted(values, key=text.find)
        return self.tokenizer(" " + ", ".join(ordered), add_special_tokens=False)["input_ids"]

    def _front_fill(self, prompt: list[int], answer: list[int], *, random_fill: bool) -> Row:
        body = prompt + answer
        if len(body) > self.context:
            body, prompt = body[-self.context :], prompt[len(body) - self.context :]
        fill = self.context - len(body)
        front: list[int] = []
        if fill:
            source = self.noise if random_fill else self.text
            start = self.rng.randrange(0, len(source) - fill)
            front = [*source[start : start + fill - 1].tolist(), self.eos]
        ids = front + body
        lm = [not random_fill] * len(front) + [True] * len(body)
        is_answer = [False] * (len(front) + len(prompt)) + [True] * len(answer)
        return Row(ids, lm, is_answer)
