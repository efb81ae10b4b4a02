"""The training step of a run: fine-tune (fully or with LoRA) the model a method was applied to.

One module per idea: :mod:`~gpu_workers.train.loop` (:func:`train`), :mod:`~gpu_workers.train.recipe` (optimizer
settings, schedule, short steps), :mod:`~gpu_workers.train.batches` (rows, PoSE ids, inputs),
:mod:`~gpu_workers.train.checkpoint`, :mod:`~gpu_workers.train.lora`, :mod:`~gpu_workers.train.model_state`
(precision, checkpointing, putting the caller's settings back), :mod:`~gpu_workers.train.s2_attn` (LongLoRA's
attention), :mod:`~gpu_workers.train.cli` (``python -m gpu_workers.train.cli``, what ``accelerate launch`` runs)
and :mod:`~gpu_workers.train.launch` (a worker starting N processes and following them).

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
  :func:`~gpu_workers.rotary.reset_rotary_cache` before each pass, computes the original base;
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

from gpu_workers.train.batches import forward_inputs, pose_ids
from gpu_workers.train.checkpoint import checkpoint_path
from gpu_workers.train.loop import TrainResult, train
from gpu_workers.train.recipe import lr_factor, step_kinds

# Not the CLI or the launcher: ``python -m gpu_workers.train.cli`` must find its module not yet imported.
__all__ = ["TrainResult", "checkpoint_path", "forward_inputs", "lr_factor", "pose_ids", "step_kinds", "train"]
