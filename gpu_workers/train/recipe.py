"""The fixed choices of every training run (the optimizer's settings, the schedule, which steps are short).

Each follows the context-extension papers (PI, YaRN and LongLoRA all train this way): AdamW with
β = (0.9, 0.95) and no weight decay, gradients clipped to norm 1.0, a linear warm-up then a constant rate.
"""

from __future__ import annotations

import random

BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.0
MAX_GRAD_NORM = 1.0


def step_kinds(steps: int, short_fraction: float, seed: int, mixed: bool) -> list[bool]:
    """For each optimizer step, whether it is a short (original-length) step.

    A seeded sample of exactly ``round(steps × short_fraction)`` steps, so that the share is exact and the
    schedule is the same in every process and on every resume.
    """
    if not mixed:
        return [False] * steps
    short = set(random.Random(f"mixed-windows:{seed}").sample(range(steps), round(steps * short_fraction)))
    return [i in short for i in range(steps)]


def stream_ordinals(kinds: list[bool]) -> list[int]:
    """For each step, how many earlier steps read the same stream (short or long): where in it the step reads."""
    ordinals, seen = [], [0, 0]
    for short in kinds:
        ordinals.append(seen[short])
        seen[short] += 1
    return ordinals


def lr_factor(step: int, warmup_steps: int) -> float:
    """Multiplier of the learning rate at optimizer step ``step`` (0-based): linear warm-up, then constant."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)
