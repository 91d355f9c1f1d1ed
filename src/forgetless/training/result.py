"""What a run produced: the accuracy matrix and its timings (shared by learner and checkpoints)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class RunResult:
    """What one run (one strategy combination, one seed) produced."""

    strategy: str
    seed: int
    matrix: np.ndarray
    """``R[i, j]``: accuracy on task ``j`` after training task ``i``."""
    baseline: np.ndarray
    """Accuracy on each task of the randomly initialised model (for forward transfer)."""
    train_seconds: list[float] = field(default_factory=list)
    eval_seconds: float = 0.0
    steps: list[int] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    stopped_early: dict[int, int] = field(default_factory=dict)
    """Task index -> step at which a strategy asked the learner to stop that task."""

    @property
    def wall_seconds(self) -> float:
        return float(sum(self.train_seconds) + self.eval_seconds)
