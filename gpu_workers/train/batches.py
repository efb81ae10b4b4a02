"""What one micro-step feeds the model: its rows of the data streams, PoSE position ids, the forward's inputs.

``spec.batch_size`` is the *global* number of sequences of one micro-step; with N processes each takes rows
``rank::N`` of it. Rows are numbered by their index in the stream (not wrapped), so a resumed or multi-process
run feeds every row exactly what a single uninterrupted run does.
"""

from __future__ import annotations

import torch

from gpu_workers.data.training import TrainData, pose_position_ids
from gpu_workers.spec import TrainSpec


def row_indices(ordinal: int, micro: int, spec: TrainSpec) -> list[int]:
    """Stream indices of the global micro-batch ``micro`` of the ``ordinal``-th step that reads a stream.

    Not wrapped: a row read a second time (a stream shorter than the steps) keeps a distinct index, so PoSE
    draws it fresh position ids.
    """
    start = (ordinal * spec.grad_accum + micro) * spec.batch_size
    return [start + j for j in range(spec.batch_size)]


def rows_at(stream: list[list[int]], indices: list[int]) -> list[list[int]]:
    """The rows at ``indices``, wrapping around the stream."""
    return [stream[i % len(stream)] for i in indices]


def pose_ids(spec: TrainSpec, data: TrainData, rows: list[list[int]], indices: list[int]) -> list[list[int]]:
    """PoSE position ids of ``rows`` (stream indices ``indices``): a function of the seed and the index only."""
    return [pose_position_ids(len(row), data.pose_target_length, spec.pose_chunks, f"{spec.seed}:{index}")
            for row, index in zip(rows, indices, strict=True)]


def forward_inputs(ids: torch.Tensor, position_ids: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The model inputs of one training forward (``labels`` = ``input_ids``, no cache).

    With position ids (PoSE) an all-ones attention mask goes along: transformers otherwise takes every jump in
    the ids for the start of another packed sequence and masks attention across it, isolating the chunks.
    """
    inputs = {"input_ids": ids, "labels": ids}
    if position_ids is not None:
        inputs["position_ids"] = position_ids
        inputs["attention_mask"] = torch.ones_like(ids)
    return inputs


def check_inputs(data: TrainData, spec: TrainSpec, kinds: list[bool], world: int) -> None:
    """Refuse, before anything changes, data and settings the loop cannot train on."""
    if spec.batch_size % world:
        raise ValueError(f"the batch size {spec.batch_size} (global, per micro-step) must split evenly across "
                         f"{world} processes")
    if not all(kinds) and not data.long:
        raise ValueError("no long training sequences")
    if any(kinds) and not data.short:
        raise ValueError("mixed-window training needs short sequences (TrainData.short)")
    if spec.pose:
        _check_pose(data, spec)
    if spec.s2_attn:
        from gpu_workers.train.s2_attn import group_size_for

        for stream in (data.long, data.short if any(kinds) else []):
            if stream:
                group_size_for(len(stream[0]), spec.s2_group_fraction)


def _check_pose(data: TrainData, spec: TrainSpec) -> None:
    length = len(data.long[0])
    if data.pose_target_length <= length:
        raise ValueError(f"PoSE spreads position ids over the target length, so it trains at a shorter window: "
                         f"the target is {data.pose_target_length} tokens and the training length {length}")
    if length < spec.pose_chunks:
        raise ValueError(f"PoSE cannot cut {length}-token sequences into {spec.pose_chunks} chunks")
