"""The learning-rate schedule over rounds (federated) or epochs (centralized): one pure function both use."""

from __future__ import annotations

import math

LR_SCHEDULES = ("constant", "cosine")  # the configuration checks `lr_schedule` against these, once


def scheduled_lr(lr: float, rnd: int, rounds: int, schedule: str, warmup: int = 0) -> float:
    """The learning rate in round (or epoch) `rnd` (1-based): after `warmup` rounds of linear warm-up (lr * rnd /
    (warmup + 1), so no round trains at 0), constant, or cosine-decayed from lr to lr / 10 over the remaining rounds,
    which steadies the last rounds of non-IID training."""
    if rnd <= warmup:
        return lr * rnd / (warmup + 1)
    rnd, rounds = rnd - warmup, rounds - warmup
    if schedule == "constant" or rounds <= 1:
        return lr
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (rnd - 1) / (rounds - 1))))
