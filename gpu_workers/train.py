"""The training step of a run: fine-tune (fully or with LoRA) the model a method was applied to.

Choices, each following the context-extension papers unless said otherwise:

* **Optimizer**: AdamW, β = (0.9, 0.95), no weight decay (PI, YaRN and LongLoRA all train this way).
* **Schedule**: linear warm-up over ``warmup_steps`` then a *constant* learning rate (PI, YaRN and
  LongLoRA's ``constant_with_warmup``). A cosine decay would flatter short runs, but the runs are compared
  with each other at equal steps, and a constant rate keeps a resumed or extended run on the same curve.
* **Batches**: ``spec.batch_size`` is the *global* number of sequences of one micro-step; with N accelerate
  processes each takes rows ``rank::N`` of it, so the gradient (DDP's mean of the processes' means) is the
  one a single process computes on the whole micro-batch (all rows have the training length). An optimizer
  step is ``grad_accum`` micro-steps; gradients are clipped to norm 1.0.
* **Data order**: ``data.long`` is consumed in order. With mixed windows (LongRoPE2), a seeded choice of
  ``round(steps × short_fraction)`` optimizer steps are *short* steps: they take ``data.short`` rows (the
  original length) in order. A stream shorter than its steps need (``build_training_data`` rounds the share
  per row, the schedule per step) wraps around to its start.
* **RoPE while training**: every sequence trains with exactly the RoPE (frequencies and attention scale) the
  method uses for that length at evaluation, so nothing is swapped: transformers' rotary embedding already
  picks LongRoPE's short factors within the original context and resets dynamic NTK to its original base for
  a short input. What it does not do is shrink a dynamic cache grown by a long step for a following step of
  exactly the original length (its reset needs ``seq_len < original``), where evaluation, which calls
  :func:`~gpu_workers.evaluate.perplexity.reset_rotary_cache` before each pass, computes the original base;
  so that reset runs before every forward here too (and once more at the end, leaving the model as loaded).
  Mixed windows for a method whose RoPE does not change with the length are refused before training
  (:mod:`gpu_workers.mixed_windows`).
* **PoSE** (Zhu et al. 2024): each sequence of the (short) training length gets the position ids of
  :func:`gpu_workers.data.training.pose_position_ids`, chunks skipped forward over ``data.pose_target_length``;
  they are seeded by the run's seed and the row's index in the stream, so a resumed or multi-process run
  feeds every row the ids a single uninterrupted run does. The forward gets an explicit all-ones attention
  mask besides: without one, transformers reads jumps in position ids as boundaries of packed sequences and
  would stop the chunks attending to each other. A length-dependent RoPE sees ``max(position_ids) + 1``,
  PoSE's intent; with several rows per micro-batch that is the largest of their spans (transformers
  computes one rotary per forward pass).
* **LoRA** (peft): rank/alpha from the spec on the attention projections; with
  ``train_embeddings_and_norms`` the input embeddings and every norm layer train too (LongLoRA). The
  adapters are merged afterwards, so the returned model is the caller's plain transformers model.
* **Precision**: on CUDA the forward runs under autocast (bf16, fp16 with a grad scaler where bf16 is
  missing) while the trainable parameters are held in fp32 for the optimizer and cast back after; the CPU
  path is plain fp32. Full fine-tuning of a bf16 model therefore holds fp32 weights while it trains.
* **Checkpoints**: every ``checkpoint_every`` steps, ``work_dir/train/checkpoint.pt`` gets the trainable
  weights, optimizer, scheduler, grad-scaler and torch RNG states, the step and the losses so far — written
  to a temporary file and renamed over the previous one, so a worker killed mid-write leaves the last good
  checkpoint. A later call with the same ``work_dir`` (a retried run whose worker died) resumes from it;
  a checkpoint written for other settings or data is ignored (and overwritten). After a successful run the
  checkpoint is **deleted**: it holds only what training needs (for LoRA: adapters, not a model), the
  trained model is the caller's to save, and a retry of a finished run — whose model was lost with its
  worker — must redo the training rather than skip to a model that is nowhere.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gpu_workers.data.training import TrainData, pose_position_ids
from gpu_workers.evaluate.perplexity import reset_rotary_cache
from gpu_workers.reporter import Cancelled
from gpu_workers.spec import TrainSpec

if TYPE_CHECKING:
    import accelerate

BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.0
MAX_GRAD_NORM = 1.0
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj")
"""Attention projections LoRA adapts: Llama-style names, plus Phi-3's fused ``qkv_proj``; those present are used."""
CHECKPOINT_DIR = "train"
CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_VERSION = 1


@dataclass
class TrainResult:
    steps_done: int
    """Optimizer steps the model has had, counting those before a resume."""
    final_loss: float
    resumed_from: int | None
    """The checkpoint's step when this call resumed, else ``None``."""
    seconds: float
    """Wall time of this call."""
    tokens: int
    """Tokens trained on in this call, over all processes (``tokens / seconds`` is the throughput)."""
    losses: list[float] = field(default_factory=list)
    """Loss of every optimizer step, 1 … ``steps_done`` (restored from the checkpoint on resume)."""


def step_kinds(steps: int, short_fraction: float, seed: int, mixed: bool) -> list[bool]:
    """For each optimizer step, whether it is a short (original-length) step.

    A seeded sample of exactly ``round(steps × short_fraction)`` steps, so that the share is exact and the
    schedule is the same in every process and on every resume.
    """
    if not mixed:
        return [False] * steps
    short = set(random.Random(f"mixed-windows:{seed}").sample(range(steps), round(steps * short_fraction)))
    return [i in short for i in range(steps)]


def lr_factor(step: int, warmup_steps: int) -> float:
    """Multiplier of the learning rate at optimizer step ``step`` (0-based): linear warm-up, then constant."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


def checkpoint_path(work_dir: Path) -> Path:
    return Path(work_dir) / CHECKPOINT_DIR / CHECKPOINT_FILE


# --- model preparation ------------------------------------------------------------------------------------


def _embeddings_and_norms(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The input embeddings (and the head tied to them) and every norm layer's own parameters."""
    params = list(model.get_input_embeddings().parameters())
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("Norm"):
            params += list(module.parameters(recurse=False))
    return params


def _lora_targets(model: torch.nn.Module) -> list[str]:
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    targets = [t for t in LORA_TARGETS if t in names]
    if not targets:
        raise ValueError(f"LoRA found none of the attention projections {LORA_TARGETS} in this model")
    return targets


def _wrap_lora(model: torch.nn.Module, spec: TrainSpec) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=spec.lora_rank, lora_alpha=spec.lora_alpha, target_modules=_lora_targets(model),
                        lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        # peft reads transformers' deprecated ``is_gradient_checkpointing`` (v5 renamed it): noise, not a problem.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        net = get_peft_model(model, config)
    if spec.train_embeddings_and_norms:
        for param in _embeddings_and_norms(model):
            param.requires_grad_(True)
    return net


def _enable_checkpointing(model: torch.nn.Module) -> None:
    # transformers v5 renamed gradient checkpointing to activation checkpointing; non-reentrant checkpoints
    # work with frozen inputs (LoRA) and with DDP.
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _disable_checkpointing(model: torch.nn.Module) -> None:
    if hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()
    if hasattr(model, "disable_input_require_grads"):
        model.disable_input_require_grads()


def _checkpointing_on(model: torch.nn.Module) -> bool:
    return any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


# --- checkpoints ------------------------------------------------------------------------------------------


POSE_SETTINGS = ("pose", "pose_chunks")


def _fingerprint(spec: TrainSpec, data: TrainData, trainable: list[str], world: int) -> str:
    """What a checkpoint must match to be resumed: settings (all but the checkpoint interval) and data.

    PoSE's settings and the length its positions spread over count only when PoSE is on, so a checkpoint
    written before PoSE existed still resumes (its fingerprint had neither).
    """
    settings = {k: v for k, v in asdict(spec).items() if k != "checkpoint_every"}
    if spec.pose:
        settings["pose_target_length"] = data.pose_target_length
    else:
        for key in POSE_SETTINGS:
            settings.pop(key, None)
    rows = hashlib.sha256()
    for stream in (data.long, data.short):
        rows.update(f"{len(stream)}:".encode())
        for row in stream[:2] + stream[-2:]:
            rows.update(",".join(map(str, row)).encode() + b";")
    return json.dumps({"settings": settings, "rows": rows.hexdigest(), "trainable": trainable, "world": world},
                      sort_keys=True, default=list)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write to a temporary file in the same directory, then rename over the last checkpoint (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated file cannot come from the atomic write, but a disk can fail
        warnings.warn(f"ignoring unreadable training checkpoint {path}: {exc}", stacklevel=3)
        return None
    if state.get("version") != CHECKPOINT_VERSION or state.get("fingerprint") != fingerprint:
        warnings.warn(f"ignoring training checkpoint {path}: it was written for other settings or data",
                      stacklevel=3)
        return None
    return state


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextmanager
def _forked_rng(device: torch.device) -> Iterator[None]:
    """Seeding inside training must not move the caller's random streams."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


# --- the loop ---------------------------------------------------------------------------------------------


def _row_indices(ordinal: int, micro: int, spec: TrainSpec) -> list[int]:
    """Stream indices of the global micro-batch ``micro`` of the ``ordinal``-th step that reads a stream.

    Not wrapped: a row read a second time (a stream shorter than the steps) keeps a distinct index, so PoSE
    draws it fresh position ids.
    """
    start = (ordinal * spec.grad_accum + micro) * spec.batch_size
    return [start + j for j in range(spec.batch_size)]


def _rows(stream: list[list[int]], indices: list[int]) -> list[list[int]]:
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


def _check_inputs(data: TrainData, spec: TrainSpec, kinds: list[bool], world: int) -> None:
    if spec.batch_size % world:
        raise ValueError(f"the batch size {spec.batch_size} (global, per micro-step) must split evenly across "
                         f"{world} processes")
    if not all(kinds) and not data.long:
        raise ValueError("no long training sequences")
    if any(kinds) and not data.short:
        raise ValueError("mixed-window training needs short sequences (TrainData.short)")
    if spec.pose:
        length = len(data.long[0])
        if data.pose_target_length <= length:
            raise ValueError(f"PoSE spreads position ids over the target length, so it trains at a shorter window: "
                             f"the target is {data.pose_target_length} tokens and the training length {length}")
        if length < spec.pose_chunks:
            raise ValueError(f"PoSE cannot cut {length}-token sequences into {spec.pose_chunks} chunks")
    if spec.s2_attn:
        from gpu_workers.s2_attn import group_size_for

        for stream in (data.long, data.short if any(kinds) else []):
            if stream:
                group_size_for(len(stream[0]), spec.s2_group_fraction)


def train(
    model: torch.nn.Module,
    data: TrainData,
    spec: TrainSpec,
    *,
    work_dir: Path | None = None,
    on_step: Callable[[int, float, float], None] = lambda step, loss, lr: None,
    should_stop: Callable[[], bool] = lambda: False,
    accelerator: accelerate.Accelerator | None = None,
) -> tuple[torch.nn.Module, TrainResult]:
    """Train ``model`` in place for ``spec.steps`` optimizer steps; return it (LoRA merged, eval mode) and a summary.

    ``on_step(step, loss, lr)`` follows every optimizer step (``step`` counts from 1; ``loss`` is the mean over
    the step's micro-batches and processes; ``lr`` the rate that step used). ``should_stop()`` is asked before
    every optimizer step, and :class:`~gpu_workers.reporter.Cancelled` raised when it says so (in every process
    when any says so). With ``accelerator`` (one per process, ``accelerate launch``) the model is wrapped for
    distributed data parallelism; without, it trains where it lies. On an exception the model is left a plain
    model again (LoRA adapters dropped unmerged), in eval mode.
    """
    started = time.perf_counter()
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    is_main = accelerator.is_main_process if accelerator is not None else True
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    kinds = step_kinds(spec.steps, spec.short_fraction, spec.seed, spec.mixed_windows)
    _check_inputs(data, spec, kinds, world)
    ordinals, seen = [], [0, 0]
    for short in kinds:
        ordinals.append(seen[short])
        seen[short] += 1

    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    checkpointing_before = _checkpointing_on(model)
    amp_dtype = _autocast_dtype(device)
    net: torch.nn.Module = model
    path = checkpoint_path(work_dir) if work_dir is not None else None
    finished = False
    with _forked_rng(device):
        torch.manual_seed(spec.seed)
        try:
            model.to(device)
            if spec.gradient_checkpointing and not checkpointing_before:
                _enable_checkpointing(model)
            if spec.lora:
                for param in model.parameters():
                    param.requires_grad_(False)
                net = _wrap_lora(model, spec)
            else:
                for param in model.parameters():
                    param.requires_grad_(True)
            named = [(name, p) for name, p in net.named_parameters() if p.requires_grad]
            if amp_dtype is not None:  # fp32 master weights for the optimizer; the forward autocasts
                for _, param in named:
                    param.data = param.data.float()
            params = [p for _, p in named]
            optimizer = torch.optim.AdamW(params, lr=spec.learning_rate, betas=BETAS, weight_decay=WEIGHT_DECAY)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, spec.warmup_steps))
            scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

            fingerprint = _fingerprint(spec, data, [n for n, _ in named], world)
            start, losses, resumed_from = 0, [], None
            state = _load_checkpoint(path, fingerprint) if path is not None else None
            if state is not None:
                with torch.no_grad():
                    for name, param in named:
                        param.copy_(state["weights"][name])
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
                if state["scaler"]:
                    scaler.load_state_dict(state["scaler"])
                _set_rng_state(state["rng"], device)
                start = resumed_from = int(state["step"])
                losses = [float(x) for x in state["losses"]]

            wrapped = accelerator.prepare(net) if accelerator is not None else net
            net.train()
            tokens = 0
            with ExitStack() as stack:
                if spec.s2_attn:
                    from gpu_workers.s2_attn import s2_attention

                    stack.enter_context(s2_attention(model, spec.s2_group_fraction))
                for step in range(start, spec.steps):
                    if _stop(should_stop, accelerator, device):
                        raise Cancelled(f"training stopped before step {step + 1} of {spec.steps}")
                    stream = data.short if kinds[step] else data.long
                    lr = optimizer.param_groups[0]["lr"]
                    optimizer.zero_grad(set_to_none=True)
                    micro_losses = []
                    for micro in range(spec.grad_accum):
                        indices = _row_indices(ordinals[step], micro, spec)
                        rows = _rows(stream, indices)
                        tokens += sum(len(r) for r in rows)
                        ids = torch.tensor(rows[rank::world], dtype=torch.long, device=device)
                        positions = (torch.tensor(pose_ids(spec, data, rows, indices)[rank::world],
                                                  dtype=torch.long, device=device) if spec.pose else None)
                        last = micro == spec.grad_accum - 1
                        sync = nullcontext() if last or accelerator is None else accelerator.no_sync(wrapped)
                        autocast = (torch.autocast("cuda", dtype=amp_dtype) if amp_dtype is not None
                                    else nullcontext())
                        reset_rotary_cache(model)  # each forward starts from the rotary evaluation starts from
                        with sync:
                            with autocast:
                                loss = wrapped(**forward_inputs(ids, positions), use_cache=False).loss
                            scaler.scale(loss / spec.grad_accum).backward()
                        micro_losses.append(loss.detach().float())
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    step_loss = torch.stack(micro_losses).mean()
                    if accelerator is not None and world > 1:
                        step_loss = accelerator.reduce(step_loss, reduction="mean")
                    losses.append(float(step_loss))
                    done = step + 1
                    if path is not None and done % spec.checkpoint_every == 0 and done < spec.steps:
                        if is_main:
                            _save_checkpoint(path, {
                                "version": CHECKPOINT_VERSION, "fingerprint": fingerprint, "step": done,
                                "weights": {n: p.detach().to("cpu", copy=True) for n, p in named},
                                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                "scaler": scaler.state_dict(), "rng": _rng_state(device), "losses": losses,
                            })
                        if accelerator is not None:
                            accelerator.wait_for_everyone()
                    on_step(done, losses[-1], lr)
            if spec.lora:
                model = net.merge_and_unload()
            finished = True
        finally:
            if spec.lora and not finished and net is not model:
                net.unload()  # drop the adapters unmerged: the caller gets its plain model back
            reset_rotary_cache(model)  # no dynamic cache grown by the last step outlives training
            _restore(model, requires_grad, dtypes, spec.gradient_checkpointing and not checkpointing_before)
    if path is not None:
        if accelerator is not None:
            accelerator.wait_for_everyone()
        if is_main:
            path.unlink(missing_ok=True)
            try:
                path.parent.rmdir()
            except OSError:
                pass  # something else lives there
    final = losses[-1] if losses else math.nan
    return model, TrainResult(steps_done=spec.steps, final_loss=final, resumed_from=resumed_from,
                              seconds=time.perf_counter() - started, tokens=tokens, losses=losses)


def _stop(should_stop: Callable[[], bool], accelerator: accelerate.Accelerator | None, device: torch.device) -> bool:
    """Ask ``should_stop``; with several processes, stop all of them when any one was told to."""
    stop = bool(should_stop())
    if accelerator is not None and accelerator.num_processes > 1:
        flag = torch.tensor([1.0 if stop else 0.0], device=device)
        stop = float(accelerator.reduce(flag, reduction="sum").item()) > 0
    return stop


def _restore(model: torch.nn.Module, requires_grad: dict[str, bool], dtypes: dict[str, torch.dtype],
             disable_checkpointing: bool) -> None:
    """Back to the caller's settings: parameter flags and dtypes, checkpointing, eval mode."""
    for name, param in model.named_parameters():
        if name in dtypes and param.dtype != dtypes[name]:
            param.data = param.data.to(dtypes[name])
        param.requires_grad_(requires_grad.get(name, True))
    if disable_checkpointing:
        _disable_checkpointing(model)
    model.eval()
