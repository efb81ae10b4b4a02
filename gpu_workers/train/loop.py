"""The training loop: :func:`train` fine-tunes a loaded model in place for ``spec.steps`` optimizer steps.

One optimizer step is ``grad_accum`` micro-steps (:mod:`gpu_workers.train.batches`), gradients clipped and
the schedule of :mod:`gpu_workers.train.recipe` applied; a checkpoint follows every ``checkpoint_every``
steps (:mod:`gpu_workers.train.checkpoint`). Every forward starts from the rotary embedding evaluation starts
from (:func:`gpu_workers.rotary.reset_rotary_cache`), so a dynamic RoPE grown by a long step does not carry
into a short one. With an ``accelerate.Accelerator`` the model is wrapped for distributed data parallelism
and every process runs this loop on its share of each micro-batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gpu_workers.data.training import TrainData
from gpu_workers.reporter import Cancelled
from gpu_workers.rotary import reset_rotary_cache
from gpu_workers.spec import TrainSpec
from gpu_workers.train.batches import check_inputs, forward_inputs, pose_ids, row_indices, rows_at
from gpu_workers.train.checkpoint import (
    CHECKPOINT_VERSION,
    checkpoint_path,
    fingerprint,
    forked_rng,
    load_checkpoint,
    remove_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from gpu_workers.train.lora import wrap_lora
from gpu_workers.train.model_state import ModelSettings, autocast_dtype, enable_checkpointing
from gpu_workers.train.recipe import BETAS, MAX_GRAD_NORM, WEIGHT_DECAY, lr_factor, step_kinds, stream_ordinals

if TYPE_CHECKING:
    import accelerate
    from peft import PeftModel
    from transformers import PreTrainedModel


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


def train(
    model: PreTrainedModel,
    data: TrainData,
    spec: TrainSpec,
    *,
    work_dir: Path | None = None,
    on_step: Callable[[int, float, float], None] = lambda step, loss, lr: None,
    should_stop: Callable[[], bool] = lambda: False,
    accelerator: accelerate.Accelerator | None = None,
) -> tuple[PreTrainedModel, TrainResult]:
    """Train ``model`` in place for ``spec.steps`` optimizer steps; return it (LoRA merged, eval mode) and a summary.

    ``on_step(step, loss, lr)`` follows every optimizer step (``step`` counts from 1; ``loss`` is the mean over
    the step's micro-batches and processes; ``lr`` the rate that step used). ``should_stop()`` is asked before
    every optimizer step, and :class:`~gpu_workers.reporter.Cancelled` raised when it says so (in every process
    when any says so). With ``accelerator`` (one per process, ``accelerate launch``) the model is wrapped for
    distributed data parallelism; without, it trains where it lies. On an exception the model is left a plain
    model again (LoRA adapters dropped unmerged), in eval mode.
    """
    started = time.perf_counter()
    processes = Processes.of(accelerator, model)
    kinds = step_kinds(spec.steps, spec.short_fraction, spec.seed, spec.mixed_windows)
    check_inputs(data, spec, kinds, processes.world)
    path = checkpoint_path(work_dir) if work_dir is not None else None
    run = _Run(model, data, spec, processes, kinds, path)
    with forked_rng(processes.device):
        torch.manual_seed(spec.seed)
        try:
            run.fit(on_step, should_stop)
        finally:
            run.close()
    if path is not None:
        processes.wait()
        if processes.is_main:
            remove_checkpoint(path)
    final = run.losses[-1] if run.losses else math.nan
    return run.model, TrainResult(steps_done=spec.steps, final_loss=final, resumed_from=run.resumed_from,
                                  seconds=time.perf_counter() - started, tokens=run.tokens, losses=run.losses)


@dataclass(frozen=True)
class Processes:
    """Where this process stands among those training together (alone, without an accelerator)."""

    accelerator: accelerate.Accelerator | None
    world: int
    rank: int
    is_main: bool
    device: torch.device

    @classmethod
    def of(cls, accelerator: accelerate.Accelerator | None, model: torch.nn.Module) -> Processes:
        if accelerator is None:
            return cls(None, 1, 0, True, next(model.parameters()).device)
        return cls(accelerator, accelerator.num_processes, accelerator.process_index,
                   accelerator.is_main_process, accelerator.device)

    def prepare(self, net: torch.nn.Module) -> torch.nn.Module:
        return self.accelerator.prepare(net) if self.accelerator is not None else net

    def stop(self, should_stop: Callable[[], bool]) -> bool:
        """Ask ``should_stop``; with several processes, stop all of them when any one was told to."""
        stop = bool(should_stop())
        if self.accelerator is not None and self.world > 1:
            flag = torch.tensor([1.0 if stop else 0.0], device=self.device)
            stop = float(self.accelerator.reduce(flag, reduction="sum").item()) > 0
        return stop

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over the processes (the value itself when alone)."""
        if self.accelerator is not None and self.world > 1:
            return self.accelerator.reduce(value, reduction="mean")
        return value

    def no_sync(self, wrapped: torch.nn.Module, last: bool) -> AbstractContextManager[Any]:
        """Gradients are synchronised on the last micro-step of an optimizer step only."""
        return nullcontext() if last or self.accelerator is None else self.accelerator.no_sync(wrapped)

    def wait(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()


class _Optimization:
    """The trainable parameters (fp32 master weights under autocast) and what steps them."""

    def __init__(self, net: torch.nn.Module, spec: TrainSpec, amp_dtype: torch.dtype | None) -> None:
        self.named = [(name, p) for name, p in net.named_parameters() if p.requires_grad]
        if amp_dtype is not None:  # fp32 master weights for the optimizer; the forward autocasts
            for _, param in self.named:
                param.data = param.data.float()
        self.params = [p for _, p in self.named]
        self.optimizer = torch.optim.AdamW(self.params, lr=spec.learning_rate, betas=BETAS, weight_decay=WEIGHT_DECAY)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, spec.warmup_steps))
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def step(self) -> None:
        """Unscale, clip to :data:`MAX_GRAD_NORM`, step the optimizer, the scaler and the schedule."""
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def state(self) -> dict[str, Any]:
        return {"weights": {n: p.detach().to("cpu", copy=True) for n, p in self.named},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for name, param in self.named:
                param.copy_(state["weights"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])


class _Run:
    """One call of :func:`train`: the model as lent, its trainable view, the streams read, the losses so far."""

    def __init__(self, model: PreTrainedModel, data: TrainData, spec: TrainSpec, processes: Processes,
                 kinds: list[bool], path: Path | None) -> None:
        self.model, self.data, self.spec = model, data, spec
        self.net: torch.nn.Module = model
        self.adapters: PeftModel | None = None
        """The LoRA-wrapped model while it trains (``spec.lora``): ``net`` then."""
        self.processes, self.kinds, self.path = processes, kinds, path
        self.ordinals = stream_ordinals(kinds)
        self.settings = ModelSettings.of(model)
        self.amp_dtype = autocast_dtype(processes.device)
        self.losses: list[float] = []
        self.start, self.tokens = 0, 0
        self.resumed_from: int | None = None
        self.finished = False

    @property
    def turns_checkpointing_on(self) -> bool:
        return self.spec.gradient_checkpointing and not self.settings.checkpointing

    def fit(self, on_step: Callable[[int, float, float], None], should_stop: Callable[[], bool]) -> None:
        spec = self.spec
        self.net = self._trainable()
        self.optimization = _Optimization(self.net, spec, self.amp_dtype)
        self.fingerprint = fingerprint(spec, self.data, [n for n, _ in self.optimization.named],
                                       self.processes.world)
        self._resume()
        self.wrapped = self.processes.prepare(self.net)
        self.net.train()
        with ExitStack() as stack:
            if spec.s2_attn:
                from gpu_workers.train.s2_attn import s2_attention

                stack.enter_context(s2_attention(self.model, spec.s2_group_fraction))
            for step in range(self.start, spec.steps):
                if self.processes.stop(should_stop):
                    raise Cancelled(f"training stopped before step {step + 1} of {spec.steps}")
                lr = self.optimization.lr
                self._step(step)
                self._checkpoint(step + 1)
                on_step(step + 1, self.losses[-1], lr)
        if self.adapters is not None:
            self.model = self.adapters.merge_and_unload()
        self.finished = True

    def close(self) -> None:
        """Whatever happened: the caller's plain model (adapters dropped unless merged), reset, settings back."""
        if self.adapters is not None and not self.finished:
            self.adapters.unload()  # drop the adapters unmerged: the caller gets its plain model back
        reset_rotary_cache(self.model)  # no dynamic cache grown by the last step outlives training
        self.settings.restore(self.model, self.turns_checkpointing_on)

    def _trainable(self) -> torch.nn.Module:
        """On the device, checkpointed if asked, and the parameters that train flagged (LoRA wraps the model)."""
        # transformers decorates PreTrainedModel.to with @functools.wraps(Module.to): mypy then sees it unbound.
        self.model.to(self.processes.device)  # type: ignore[arg-type]
        if self.turns_checkpointing_on:
            enable_checkpointing(self.model)
        if self.spec.lora:
            for param in self.model.parameters():
                param.requires_grad_(False)
            self.adapters = wrap_lora(self.model, self.spec)
            return self.adapters
        for param in self.model.parameters():
            param.requires_grad_(True)
        return self.model

    def _resume(self) -> None:
        state = load_checkpoint(self.path, self.fingerprint) if self.path is not None else None
        if state is None:
            return
        self.optimization.load(state)
        set_rng_state(state["rng"], self.processes.device)
        self.start = self.resumed_from = int(state["step"])
        self.losses = [float(x) for x in state["losses"]]

    def _step(self, step: int) -> None:
        stream = self.data.short if self.kinds[step] else self.data.long
        self.optimization.optimizer.zero_grad(set_to_none=True)
        micro_losses = [self._micro_step(stream, self.ordinals[step], micro) for micro in range(self.spec.grad_accum)]
        self.optimization.step()
        self.losses.append(float(self.processes.mean(torch.stack(micro_losses).mean())))

    def _micro_step(self, stream: list[list[int]], ordinal: int, micro: int) -> torch.Tensor:
        """Forward and backward of this process's rows of one global micro-batch; returns the loss."""
        spec, processes = self.spec, self.processes
        share = slice(processes.rank, None, processes.world)
        indices = row_indices(ordinal, micro, spec)
        rows = rows_at(stream, indices)
        self.tokens += sum(len(r) for r in rows)
        ids = torch.tensor(rows[share], dtype=torch.long, device=processes.device)
        positions = (torch.tensor(pose_ids(spec, self.data, rows, indices)[share], dtype=torch.long,
                                  device=processes.device) if spec.pose else None)
        autocast = torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext()
        reset_rotary_cache(self.model)  # each forward starts from the rotary evaluation starts from
        with processes.no_sync(self.wrapped, micro == spec.grad_accum - 1):
            with autocast:
                loss = self.wrapped(**forward_inputs(ids, positions), use_cache=False).loss
            self.optimization.scaler.scale(loss / spec.grad_accum).backward()
        return loss.detach().float()

    def _checkpoint(self, done: int) -> None:
        """Every ``checkpoint_every`` steps but the last, the main process writes; all wait for it."""
        if self.path is None or done % self.spec.checkpoint_every or done >= self.spec.steps:
            return
        if self.processes.is_main:
            save_checkpoint(self.path, {
                "version": CHECKPOINT_VERSION, "fingerprint": self.fingerprint, "step": done,
                **self.optimization.state(), "rng": rng_state(self.processes.device), "losses": self.losses,
            })
        self.processes.wait()
