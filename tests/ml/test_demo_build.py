"""The demo-model build script: a step-counted schedule with a deterministic early stop, and its training rows."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gpu_workers.data import needle, passkey
from gpu_workers.demo import build_model
from gpu_workers.demo.retrieval_data import RowMaker


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
