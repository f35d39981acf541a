"""Model selection and early stopping on the server's validation split (`select_best`, `early_stop`).

The round whose global model scores best on the *validation* split is kept as best.safetensors, so the test figure
a run reports is never the one it was chosen on. A round improves on the best so far when its figure is better by
more than `min_delta` (higher for `max`, lower for `min`; a tie keeps the earlier round), Lightning's
`EarlyStopping` rule; `patience` evaluated rounds without an improvement end the run. The first evaluated round
always sets the best. The state is three numbers, kept in every checkpoint, so a resumed run selects and stops
exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional


def resolve_mode(metric: str, mode: str) -> str:
    """`auto`: min for a loss, max for every other figure (accuracy, F1, VQA accuracy)."""
    if mode != "auto":
        return mode
    return "min" if metric == "loss" or metric.endswith("_loss") else "max"


def improves(value: float, best: Optional[float], mode: str, min_delta: float) -> bool:
    """Whether `value` beats `best` by more than `min_delta` in direction `mode` (a first value always does; a
    non-finite one never does)."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value - min_delta > best if mode == "max" else value + min_delta < best


@dataclass
class Selection:
    """The best round so far of one run, and the evaluated rounds since it improved."""

    metric: str  # a figure of the server's validation evaluation (accuracy, loss, macro_f1, ...)
    mode: str = "max"  # max | min
    patience: int = 0  # 0: never stop early
    min_delta: float = 0.0
    best_round: int = 0  # 0: none yet
    best: Optional[float] = None
    since: int = 0  # evaluated rounds since the best one

    def update(self, rnd: int, figures: dict[str, float]) -> bool:
        """Take round `rnd`'s validation figures; True when it is the new best."""
        value = float(figures.get(self.metric, math.nan))
        if improves(value, self.best, self.mode, self.min_delta):
            self.best_round, self.best, self.since = rnd, value, 0
            return True
        self.since += 1
        return False

    def exhausted(self) -> bool:
        """Whether `patience` evaluated rounds have passed without an improvement."""
        return self.patience > 0 and self.since >= self.patience

    def reason(self) -> str:
        return (
            f"early stop: val_{self.metric} did not improve by more than {self.min_delta:g} in {self.since} evaluated "
            f"rounds (early_stop.patience={self.patience}); the best is round {self.best_round} "
            f"(val_{self.metric}={self.best:.4f}), kept in best.safetensors"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"best_round": self.best_round, "best": self.best, "since": self.since}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_round, self.best, self.since = int(state["best_round"]), state["best"], int(state["since"])
