"""The demo-model build script: a step-counted schedule with a deterministic early stop, and its training rows."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gpu_workers.data import builtin_corpus, needle, passkey, ruler
from gpu_workers.data.documents import builtin_corpus_dir
from gpu_workers.demo import DEMO_MODEL_DIR, build_model
from gpu_workers.demo.retrieval_data import Mix, RowMaker
from gpu_workers.demo.ruler_rows import TRAINING_SEED, RulerPool
from gpu_workers.evaluate.ruler import string_match_all


def test_a_phase_stops_when_its_goal_is_reached_and_logs_when(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    stream = torch.randint(0, len(tokenizer), (5000,), generator=torch.Generator().manual_seed(0))
    calls: list[int] = []

    def done() -> bool:
        calls.append(1)
        return len(calls) == 2

    log = build_model.run_phase(model, tokenizer, stream, steps=50, peak_lr=1e-3, passkey_share=0.0, batch=1,
                                seed=0, label="retrieval", done=done, check_every=3)
    assert log[-1]["stopped"] == "goal reached" and log[-1]["step"] == 5 and "seconds" in log[-1]
    assert len(calls) == 2


def test_passkey_training_rows_are_full_length_and_end_with_the_answer() -> None:
    prompt_text = passkey.INTRO + "".join(passkey.FILLER) + passkey.QUESTION + " 0123456789 Remember it."
    tokenizer = build_model.train_tokenizer([prompt_text] * 20, vocab_size=400)
    stream = torch.arange(5000) % len(tokenizer)
    row = build_model.passkey_sequence(tokenizer, stream, random.Random(0))
    assert row.shape == (build_model.CONTEXT,)
    text = tokenizer.decode(row[-12:])
    assert text.strip()[-5:].isdigit()
    sample = passkey.make_sample(tokenizer, 200, random.Random(1), depth=0.5)
    assert len(sample.input_ids) + len(sample.answer_ids) <= 200
    assert sample.answer in tokenizer.decode(sample.input_ids)


def _rows_setup(seed: int = 0) -> tuple[object, RowMaker]:
    words = "the river runs. a lantern glows! code = 1\nwhat is it? " * 40
    tokenizer = build_model.train_tokenizer([words, passkey.INTRO + "".join(passkey.FILLER) + passkey.QUESTION,
                                             needle.MAGIC_INTRO, " One of the special magic numbers for is: 0123456789",
                                             " What are all the the text above? The special magic number are"], 500)
    ids = tokenizer(words * 30, add_special_tokens=False)["input_ids"]
    text = torch.tensor(ids)
    noise = torch.randint(0, len(tokenizer), (5000,), generator=torch.Generator().manual_seed(seed))
    maker = RowMaker(tokenizer, context=build_model.CONTEXT, text=text, haystacks={"prose": ids, "code": ids},
                     noise=noise, seed=seed)
    return tokenizer, maker


def test_generalisation_rows_hold_every_kind_and_are_reproducible() -> None:
    tokenizer, maker = _rows_setup()
    rows = [maker.row() for _ in range(120)]
    assert all(len(r.ids) == len(r.lm) == len(r.answer) == build_model.CONTEXT for r in rows)
    answered = [r for r in rows if any(r.answer)]
    assert 0 < len(answered) < len(rows), "text rows and prompt rows both drawn"
    for r in answered:
        first = r.answer.index(True)
        assert all(r.answer[first:]), "the answer ends the row"
        assert tokenizer.decode(r.ids[first:]).strip().replace(", ", "").isdigit()
    texts = [tokenizer.decode(r.ids) for r in answered]
    assert any("magic numbers for" in t and "are" in t.rsplit("?", 1)[-1] for t in texts), "multi-value drawn"
    assert any(not all(r.lm) for r in rows), "random-token fill is left out of the language-modelling loss"
    _, again = _rows_setup()
    assert [again.row().ids for _ in range(120)] == [r.ids for r in rows], "same seed, same rows"


def test_multi_value_answers_follow_the_text_order() -> None:
    tokenizer, maker = _rows_setup()
    maker.rng.seed(5)
    for _ in range(40):
        prompt, answer = maker.needle_prompt()
        values = tokenizer.decode(answer).strip().split(", ")
        if len(values) > 1:
            text = tokenizer.decode(prompt)
            assert [text.find(f"is: {v}") for v in values] == sorted(text.find(f"is: {v}") for v in values)
            return
    raise AssertionError("no multi-value prompt drawn")


def test_the_answer_term_is_weighted_on_its_own(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    lm = torch.ones_like(ids, dtype=torch.bool)
    answer = torch.zeros_like(lm)
    answer[:, -3:] = True
    plain, lm_loss, answer_loss = build_model.masked_loss(model, ids, lm, answer, answer_weight=0.0)
    weighted, *_ = build_model.masked_loss(model, ids, lm, answer, answer_weight=2.0)
    assert plain.item() == pytest.approx(lm_loss) == pytest.approx(model(input_ids=ids, labels=ids).loss.item())
    assert weighted.item() == pytest.approx(lm_loss + 2.0 * answer_loss)


def _training_prose(count: int = 60) -> list[str]:
    """Training-split prose of the demo corpus (what the build's RULER phase reads)."""
    docs = builtin_corpus.read_jsonl(builtin_corpus.ensure_built(builtin_corpus_dir()) / "train.jsonl")
    return [d["text"] for d in docs if d["source"] == "prose"][:count]


def test_ruler_training_prompts_fit_the_original_context_and_answer_their_own_question() -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(DEMO_MODEL_DIR))
    prose = _training_prose()
    pool = RulerPool(tokenizer, prose, context=256, lengths=(160, 256), samples=3)
    assert ("niah_multiquery", 160) in pool.skipped, "a task whose instructions do not fit a length skips it"
    assert ("niah_single_1", 160) not in pool.skipped
    assert len(pool.pairs) == 3 * (2 * len(ruler.TASK_NAMES) - len(pool.skipped))
    assert all(len(prompt) <= 256 and answer for prompt, answer in pool.pairs)
    # every answer is the reference of its prompt: the scorer gives it full marks
    samples = ruler.generate("niah_multivalue", tokenizer, ruler.HaystackText(tuple(prose), "training prose"),
                             256, TRAINING_SEED, 3, cache=None)
    answers = {tuple(p): a for p, a in pool.pairs}
    for sample in samples:
        assert string_match_all(tokenizer.decode(answers[tuple(sample.prompt_ids)]), sample.answers) == 1.0
    with pytest.raises(ValueError, match="original context"):
        RulerPool(tokenizer, prose, context=256, lengths=(512,), samples=1)


def test_ruler_rows_join_the_mix_only_when_weighted() -> None:
    class Pool:
        def draw(self, rng: random.Random) -> tuple[list[int], list[int]]:
            return [7] * 20, [8, 9]

    tokenizer, plain = _rows_setup()
    _, with_pool = _rows_setup()
    with_pool.ruler = Pool()  # type: ignore[assignment]
    assert [with_pool.row().ids for _ in range(60)] == [plain.row().ids for _ in range(60)], \
        "a pool with no weight changes no draw (the generalisation phase's rows stay as they were)"
    _, mixed = _rows_setup()
    mixed.mix, mixed.ruler = Mix(ruler=1.0), Pool()  # type: ignore[assignment]
    rows = [mixed.row() for _ in range(80)]
    drawn = [r for r in rows if r.ids[-22:] == [7] * 20 + [8, 9]]
    assert drawn and all(r.answer[-2:] == [True, True] and not any(r.answer[:-2]) for r in drawn)
    assert all(len(r.ids) == build_model.CONTEXT for r in rows)
    with pytest.raises(ValueError, match="RulerPool"):
        RowMaker(tokenizer, context=build_model.CONTEXT, text=torch.arange(1000), haystacks={}, noise=torch.arange(10),
                 seed=0, mix=Mix(ruler=0.5))
