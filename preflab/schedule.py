"""The learning-rate schedule every trainer uses: linear warm-up, then constant or cosine decay.

    lr(t) = lr * (t + 1) / W                                          for t < W   (warm-up)
    lr(t) = lr                                                         decay = "constant"
    lr(t) = lr * (f + (1 - f) * (1 + cos(pi * (t - W) / (T - W))) / 2)  decay = "cosine"

with W the warm-up steps, T the total steps and f the floor (the fraction of ``lr`` the cosine
ends at). Lessons 01 (SFT), 04 (reward model), 06 (PPO) and 07 (DPO) train with it.
"""

from __future__ import annotations

import math

DECAYS = ("constant", "cosine")


def lr_at(step: int, total: int, lr: float, warmup_steps: int = 0, decay: str = "constant",
          floor: float = 0.0) -> float:
    """The learning rate at ``step`` (0-based) of ``total`` (see the module docstring). Lessons 01, 04, 06 and 07 (every trainer)."""
    if decay not in DECAYS:
        raise ValueError(f"unknown decay {decay!r}: choose one of {DECAYS}")
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if decay == "constant":
        return lr
    # Two spellings of one formula, each as its trainer first computed it, so that earlier runs
    # reproduce bit for bit (they differ only in rounding, at 1e-16).
    if floor == 0:
        return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total - warmup_steps)))
    frac = (step - warmup_steps) / max(1, total - warmup_steps)
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))


def set_lr(optimizer, lr: float) -> None:
    """Write ``lr`` into every parameter group of ``optimizer``. Lessons 01, 04, 06 and 07 (every trainer)."""
    for g in optimizer.param_groups:
        g["lr"] = lr
