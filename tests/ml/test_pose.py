"""PoSE (positional skip-wise training): the position ids, the forward that gets them, resume, and the spec.

Position ids are a pure function of (length, target, chunks, seed); training feeds them with an all-ones
attention mask so the chunks still attend to each other, and a resumed run must see the same ids.
"""

from __future__ import annotations

import copy
import itertools
import random
from pathlib import Path

import pytest
import torch

from gpu_workers.data.documents import builtin_corpus_dir
from gpu_workers.data.training import TrainData, build_training_data, pose_position_ids
from gpu_workers.device import place
from gpu_workers.loading import LoadedModel, load
from gpu_workers.reporter import Cancelled, MemoryReporter
from gpu_workers.rotary import reset_rotary_cache
from gpu_workers.spec import DatasetSpec, EvalSpec, MethodSpec, RunSpec, SpecError, TrainSpec
from gpu_workers.train import forward_inputs, pose_ids, train
from gpu_workers.train.checkpoint import fingerprint

ORIGINAL = 64
TARGET = 256
PI = MethodSpec("pi", {"factor": 4.0})


# --- the position ids -------------------------------------------------------------------------------------


def _runs(ids: list[int]) -> int:
    """Maximal runs of consecutive ids: the chunks whose skip actually moved them."""
    return 1 + sum(b - a != 1 for a, b in itertools.pairwise(ids))


@pytest.mark.parametrize("chunks", [1, 2, 3, 5])
def test_pose_ids_rise_within_chunks_start_at_zero_and_stay_inside_the_target(chunks: int) -> None:
    for seed in range(300):
        ids = pose_position_ids(ORIGINAL, TARGET, chunks, seed)
        assert len(ids) == ORIGINAL and ids[0] == 0 and max(ids) <= TARGET - 1
        assert all(b > a for a, b in itertools.pairwise(ids))  # strictly increasing, chunk to chunk too
        assert _runs(ids) <= chunks
    # Two skips coincide only when a draw repeats the one before (each u_i is drawn from [u_{i-1}, room], so late
    # chunks often reach the ceiling); otherwise every chunk shows as its own run of consecutive ids.
    runs = [_runs(pose_position_ids(ORIGINAL, TARGET, chunks, seed)) for seed in range(300)]
    assert max(runs) == chunks and sum(r == chunks for r in runs) > 0.6 * len(runs)
    if chunks == 1:
        assert pose_position_ids(ORIGINAL, TARGET, 1, 7) == list(range(ORIGINAL))


def test_pose_ids_are_seeded_and_leave_every_other_random_stream_alone() -> None:
    random.seed(11)
    expected_next = random.random()
    random.seed(11)
    first = pose_position_ids(ORIGINAL, TARGET, 3, "0:17")
    assert random.random() == expected_next
    assert pose_position_ids(ORIGINAL, TARGET, 3, "0:17") == first
    assert len({tuple(pose_position_ids(ORIGINAL, TARGET, 3, f"0:{i}")) for i in range(50)}) > 45


def test_pose_ids_cover_the_whole_target_range_over_many_sequences() -> None:
    seen: set[int] = set()
    largest = 0
    for seed in range(3000):
        ids = pose_position_ids(ORIGINAL, TARGET, 2, seed)
        seen.update(ids)
        largest = max(largest, ids[-1])
    assert seen == set(range(TARGET)) and largest == TARGET - 1


def test_pose_ids_refuse_what_cannot_be_cut_or_spread() -> None:
    with pytest.raises(ValueError, match="cannot spread"):
        pose_position_ids(300, TARGET, 2, 0)
    with pytest.raises(ValueError, match="chunks"):
        pose_position_ids(4, TARGET, 5, 0)
    assert pose_position_ids(TARGET, TARGET, 2, 0) == list(range(TARGET))  # no room: plain positions


# --- the spec ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("settings", "field", "message"), [
    ({"pose": True, "pose_chunks": 0}, "pose_chunks", "PoSE chunks must be between 1 and 16"),
    ({"pose": True, "pose_chunks": 17}, "pose_chunks", "PoSE chunks must be between 1 and 16"),
    ({"pose": True, "s2_attn": True}, "s2_attn", "S2-Attn cannot be combined with PoSE"),
    ({"pose": True, "mixed_windows": True}, "mixed_windows", "mixed context windows cannot be combined with PoSE"),
])
def test_train_spec_names_the_bad_pose_setting(settings: dict, field: str, message: str) -> None:
    with pytest.raises(SpecError, match=message) as caught:
        TrainSpec(mode="finetune", **settings)
    assert caught.value.field == field


def test_pose_trains_at_the_original_context_unless_told_otherwise() -> None:
    assert TrainSpec(pose=True).length_for(TARGET, ORIGINAL) == ORIGINAL
    assert TrainSpec(pose=True, train_length=128).length_for(TARGET, ORIGINAL) == 128
    assert TrainSpec().length_for(TARGET, ORIGINAL) == TARGET and TrainSpec().length_for(TARGET) == TARGET
    with pytest.raises(ValueError, match="original context"):
        TrainSpec(pose=True).length_for(TARGET)


def _run_spec(model_dir: Path | str, train_spec: TrainSpec) -> RunSpec:
    return RunSpec(run_id="pose", model_source=str(model_dir), dataset=DatasetSpec(), method=PI,
                   target_length=TARGET, eval=EvalSpec(lengths=(ORIGINAL,), documents=1), train=train_spec)


def test_a_spec_written_before_pose_reads_with_pose_off(tiny_model_dir: Path) -> None:
    data = _run_spec(tiny_model_dir, TrainSpec(mode="finetune", steps=3, warmup_steps=1)).to_json()
    for key in ("pose", "pose_chunks"):
        del data["train"][key]
    spec = RunSpec.from_json(data)
    assert (spec.train.pose, spec.train.pose_chunks, spec.train.steps) == (False, 2, 3)
    round_trip = _run_spec(tiny_model_dir, TrainSpec(mode="finetune", pose=True, pose_chunks=4))
    assert RunSpec.from_json(round_trip.to_json()) == round_trip


def test_the_training_data_is_packed_at_the_original_context_and_spreads_over_the_target(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTEXTLAB_CORPUS_DIR", str(builtin_corpus_dir()))
    loaded = load(str(tiny_model_dir), PI, TARGET, place("cpu"))
    spec = _run_spec(tiny_model_dir, TrainSpec(mode="finetune", steps=3, warmup_steps=1, batch_size=2, pose=True))
    data = build_training_data(spec, loaded.tokenizer, ORIGINAL)
    assert data.pose_target_length == TARGET and len(data.long) == 6 and {len(r) for r in data.long} == {ORIGINAL}
    plain_spec = TrainSpec(mode="finetune", steps=3, warmup_steps=1, batch_size=2, train_length=ORIGINAL)
    plain = build_training_data(_run_spec(tiny_model_dir, plain_spec), loaded.tokenizer, ORIGINAL)
    assert plain.long == data.long and plain.pose_target_length == 0  # PoSE leaves the data (and its order) alone


# --- training ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pi(tiny_model_dir: Path) -> LoadedModel:
    return load(str(tiny_model_dir), PI, TARGET, place("cpu"))


def _data(vocab: int, rows: int = 4) -> TrainData:
    g = torch.Generator().manual_seed(3)
    return TrainData(long=torch.randint(0, vocab, (rows, ORIGINAL), generator=g).tolist(), pose_target_length=TARGET)


def _spec(**kwargs: object) -> TrainSpec:
    return TrainSpec(**{"mode": "finetune", "steps": 6, "warmup_steps": 1, "learning_rate": 3e-3, "pose": True,
                        "pose_chunks": 2, **kwargs})


def test_pose_training_feeds_the_spread_position_ids_and_learns(tiny_pi: LoadedModel) -> None:
    model = copy.deepcopy(tiny_pi.model)
    data, spec = _data(model.config.vocab_size, rows=2), _spec(steps=8, batch_size=2)
    seen: list[torch.Tensor] = []
    handle = model.model.rotary_emb.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(kwargs["position_ids"].clone()), with_kwargs=True)
    try:
        _, result = train(model, data, spec)
    finally:
        handle.remove()
    assert len(seen) == 8
    for step, positions in enumerate(seen):
        indices = [step * 2, step * 2 + 1]  # the stream of 2 rows wraps; every pass draws fresh skips
        rows = [data.long[i % 2] for i in indices]
        assert positions.tolist() == pose_ids(spec, data, rows, indices)
        assert positions.shape == (2, ORIGINAL) and int(positions.max()) >= ORIGINAL  # spread past the window
    assert seen[0].tolist() != seen[1].tolist()
    assert result.losses[-1] < result.losses[0] - 0.1


def test_pose_chunks_attend_to_each_other(tiny_pi: LoadedModel) -> None:
    model = tiny_pi.model
    ids = torch.randint(0, model.config.vocab_size, (1, ORIGINAL), generator=torch.Generator().manual_seed(1))
    positions = torch.tensor([pose_position_ids(ORIGINAL, TARGET, 2, "attend")])
    cut = next(i for i in range(1, ORIGINAL) if positions[0, i] - positions[0, i - 1] != 1)
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] + 1) % model.config.vocab_size
    with torch.no_grad():  # use_cache=False as in training: only then does transformers look for packing
        a = model(**forward_inputs(ids, positions), use_cache=False).logits
        b = model(**forward_inputs(changed, positions), use_cache=False).logits
        bare_a = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        bare_b = model(input_ids=changed, position_ids=positions, use_cache=False).logits
    # The second chunk sees the first one's tokens (no block-diagonal "packed sequences" mask) ...
    assert not torch.allclose(a[0, cut:], b[0, cut:], atol=1e-5)
    # ... which it would not without forward_inputs' all-ones mask: the reason the mask is there.
    assert torch.allclose(bare_a[0, cut:], bare_b[0, cut:], atol=1e-5)


def test_dynamic_ntk_under_pose_sees_the_spread_length(tiny_model_dir: Path) -> None:
    loaded = load(str(tiny_model_dir), MethodSpec("dynamic_ntk", {"factor": 4.0}), TARGET, place("cpu"))
    model, rotary = loaded.model, loaded.model.model.rotary_emb
    data = _data(model.config.vocab_size, rows=3)
    seen: list[tuple[int, torch.Tensor]] = []
    handle = rotary.register_forward_hook(lambda module, args, kwargs, out: seen.append(
        (int(kwargs["position_ids"].max()) + 1, module.inv_freq.clone())), with_kwargs=True)
    try:
        train(model, data, _spec(steps=3))
    finally:
        handle.remove()
    for spread, inv_freq in seen:
        reset_rotary_cache(model)
        with torch.no_grad():
            rotary(torch.zeros(1, spread, 1), position_ids=torch.arange(spread)[None])  # evaluation at that length
        assert torch.allclose(inv_freq, rotary.inv_freq), spread
    reset_rotary_cache(model)


def test_a_resumed_pose_run_sees_the_same_position_ids(tiny_pi: LoadedModel, tmp_path: Path) -> None:
    data, spec = _data(tiny_pi.model.config.vocab_size), _spec(steps=4, checkpoint_every=2)
    _, whole = train(copy.deepcopy(tiny_pi.model), data, spec, work_dir=tmp_path / "straight")
    work = tmp_path / "resumed"
    with pytest.raises(Cancelled):
        train(copy.deepcopy(tiny_pi.model), data, spec, work_dir=work,
              should_stop=MemoryReporter(stop_after_checks=3).should_stop)
    _, resumed = train(copy.deepcopy(tiny_pi.model), data, spec, work_dir=work)
    assert resumed.resumed_from == 2 and resumed.losses == pytest.approx(whole.losses, abs=1e-6)


def test_pose_is_part_of_the_checkpoint_fingerprint_only_when_on() -> None:
    data = _data(100)
    plain = fingerprint(TrainSpec(mode="finetune"), TrainData(data.long), ["w"], 1)
    assert "pose" not in plain  # checkpoints written before PoSE still resume
    on = fingerprint(TrainSpec(mode="finetune", pose=True), data, ["w"], 1)
    assert on != fingerprint(TrainSpec(mode="finetune", pose=True, pose_chunks=3), data, ["w"], 1)
    assert on != fingerprint(TrainSpec(mode="finetune", pose=True),
                              TrainData(data.long, pose_target_length=2 * TARGET), ["w"], 1)


def test_pose_refuses_a_window_that_is_not_shorter_than_the_target(tiny_pi: LoadedModel) -> None:
    data = TrainData(long=[[1] * ORIGINAL], pose_target_length=ORIGINAL)
    with pytest.raises(ValueError, match="shorter window"):
        train(copy.deepcopy(tiny_pi.model), data, _spec(steps=1))
