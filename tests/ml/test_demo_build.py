"""The demo-model build script's schedule: step-counted, with a deterministic early stop."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gpu_workers.data import passkey
from gpu_workers.demo import build_model


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
