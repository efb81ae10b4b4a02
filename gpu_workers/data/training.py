"""Training sequences for a run: the dataset's training documents, length-upsampled and packed.

Only as many documents are tokenized as the run can use: a seeded sample of the training split
large enough (``POOL_FACTOR`` × the tokens the steps consume) for the upsampling strategy to keep
its long/short and per-source statistics meaningful. Mixed-window training (LongRoPE2) gets a
second stream of sequences at the original length; synthetic passkey sequences can be mixed in
at a chosen share, since plain text fine-tuning is known to erase retrieval on small models.
PoSE keeps the sequences as they are (packed at the short training length, in the same order) and
only changes their position ids (:func:`pose_position_ids`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from gpu_workers.data import upsampling
from gpu_workers.data.documents import evaluation_texts, load_training_documents
from gpu_workers.data.passkey import make_sample
from gpu_workers.spec import RunSpec

POOL_FACTOR = 8
MIN_POOL_TOKENS = 200_000


@dataclass
class TrainData:
    long: list[list[int]]
    """Sequences of the training length, one per optimizer micro-batch row."""
    short: list[list[int]] = field(default_factory=list)
    """Sequences of the original length (mixed-window training only)."""
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    """Mixture statistics of the document pool before and after the data strategy."""
    pose_target_length: int = 0
    """PoSE: the length the position ids of ``long`` spread over (the run's target); 0 without PoSE."""


def sequences_needed(spec: RunSpec) -> int:
    t = spec.train
    return t.steps * t.batch_size * t.grad_accum


def _pool(spec: RunSpec, tokenizer: Any, tokens_wanted: int) -> list[upsampling.Doc]:
    exclude: set[str] = set()
    if spec.dataset.kind != "builtin":
        exclude = evaluation_texts(spec.dataset, tokenizer, max(spec.eval.lengths), spec.eval.documents)
    rows = load_training_documents(spec.dataset, exclude)
    return shuffled_pool(rows, tokenizer, tokens_wanted, f"pool:{spec.train.seed}")


def shuffled_pool(rows: list[dict[str, Any]], tokenizer: Any, tokens_wanted: int, seed: str) -> list[upsampling.Doc]:
    """Rows in a seeded random order, tokenized until *tokens_wanted* tokens: only what is used is tokenized."""
    random.Random(seed).shuffle(rows)
    pool, total = [], 0
    for row in rows:
        ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
        pool.append(upsampling.Doc(row["source"], tuple(ids)))
        total += len(ids)
        if total >= tokens_wanted:
            break
    return pool


def _passkey_sequences(tokenizer: Any, length: int, count: int, seed: int, fill: list[list[int]],
                       separator: int) -> list[list[int]]:
    """Passkey prompts with their answers, topped up to exactly *length* tokens with text."""
    out = []
    for i in range(count):
        sample = make_sample(tokenizer, length, random.Random(f"train-passkey:{seed}:{i}"))
        out.append((sample.input_ids + sample.answer_ids + [separator] + fill[i % len(fill)])[:length])
    return out


def _interleave(text: list[list[int]], extra: list[list[int]], share: float, total: int, seed: int) -> list[list[int]]:
    if not extra:
        return text[:total]
    rng = random.Random(f"mix:{seed}")
    out, t, e = [], 0, 0
    for _ in range(total):
        if rng.random() < share and e < len(extra):
            out.append(extra[e])
            e += 1
        else:
            out.append(text[t % len(text)])
            t += 1
    return out


def pose_position_ids(length: int, target_length: int, chunks: int, seed: str | int) -> list[int]:
    """PoSE's position ids for one sequence of ``length`` tokens trained for a ``target_length`` context.

    The sequence is cut into ``chunks`` non-empty chunks at seeded random points; chunk i keeps its own
    consecutive positions shifted by a skip u_i, with u_0 = 0 and u_i drawn uniformly from [u_{i-1},
    target − length] (Zhu et al. 2024), so ids rise strictly, start at 0 and end at most at target − 1, and
    over many sequences every relative distance below the target occurs. Pure: the same arguments give the
    same ids, whatever else has drawn random numbers (a resumed run and every process agree). One chunk
    gives plain positions 0 … length − 1.
    """
    if not 1 <= chunks <= length:
        raise ValueError(f"PoSE needs between 1 and {length} chunks for a {length}-token sequence, not {chunks}")
    if length > target_length:
        raise ValueError(f"a {length}-token sequence cannot spread over a {target_length}-token target")
    rng = random.Random(f"pose:{seed}")
    bounds = [0, *sorted(rng.sample(range(1, length), chunks - 1)), length]
    room = target_length - length
    ids: list[int] = []
    skip = 0
    for i in range(chunks):
        if i:
            skip = rng.randint(skip, room)
        ids.extend(range(bounds[i] + skip, bounds[i + 1] + skip))
    return ids


def build_training_data(spec: RunSpec, tokenizer: Any, original_length: int) -> TrainData:
    t = spec.train
    length = t.length_for(spec.target_length, original_length)
    needed = sequences_needed(spec)
    short_needed = round(needed * t.short_fraction) if t.mixed_windows else 0
    long_needed = needed - short_needed
    wanted = max(MIN_POOL_TOKENS, POOL_FACTOR * (long_needed * length + short_needed * original_length))
    pool = _pool(spec, tokenizer, wanted)
    threshold = t.long_threshold or length
    before = upsampling.mixture_stats(pool, threshold=threshold)
    chosen = upsampling.apply_strategy(
        pool, t.data_strategy, threshold=threshold, keep_short_p=t.keep_short_p,
        sources=list(t.upsample_sources), multiplier=t.upsample_multiplier, original_length=original_length,
        seed=t.seed,
    )
    after = upsampling.mixture_stats(chosen, threshold=threshold, bins=before.bin_edges)
    separator = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    packed = [list(p.tokens) for p in upsampling.pack(chosen, length, seed=t.seed, separator_id=separator)]
    if not packed:
        raise ValueError(f"the training documents hold fewer than {length} tokens after the {t.data_strategy} strategy")
    n_passkey = round(long_needed * t.passkey_fraction)
    passkeys = _passkey_sequences(tokenizer, length, n_passkey, t.seed, packed, separator)
    long = _interleave(packed, passkeys, t.passkey_fraction, long_needed, t.seed)
    short: list[list[int]] = []
    if short_needed:
        short_packed = [list(p.tokens) for p in upsampling.pack(chosen, original_length, seed=t.seed + 1,
                                                                 separator_id=separator)]
        short = [short_packed[i % len(short_packed)] for i in range(short_needed)]
    return TrainData(long, short, before.to_json(), after.to_json(),
                     pose_target_length=spec.target_length if t.pose else 0)


def search_documents(spec: RunSpec, tokenizer: Any, length: int, count: int) -> list[list[int]]:
    """Training documents of at least *length* tokens for a factor search's fitness (never evaluation ones)."""
    exclude: set[str] = set()
    if spec.dataset.kind != "builtin":
        exclude = evaluation_texts(spec.dataset, tokenizer, max(spec.eval.lengths), spec.eval.documents)
    rows = load_training_documents(spec.dataset, exclude)
    random.Random(f"search:{spec.seed}").shuffle(rows)
    picked = []
    for row in rows:
        if len(row["text"]) < length:  # fewer characters than tokens needed: cannot be long enough
            continue
        ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            picked.append(ids[:length])
            if len(picked) == count:
                return picked
    raise ValueError(f"the training documents hold only {len(picked)} documents of {length} tokens; {count} needed")
