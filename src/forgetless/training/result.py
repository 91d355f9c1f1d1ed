"""What a run produced: the accuracy matrix and its timings, and its two serialised forms.

* :meth:`RunResult.state_dict` / :meth:`RunResult.from_state`: exact (float64 tensors), for
  checkpoints (``experiment.*`` of a checkpoint holds the runs already finished);
* :meth:`RunResult.to_record` / :meth:`RunResult.from_record`: the ``metrics.json`` record,
  rounded to 6 decimals, read back when a run folder is resumed without a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


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

    def state_dict(self) -> dict[str, Any]:
        """The exact content (tensors and JSON values) for a checkpoint."""
        return {
            "strategy": self.strategy,
            "seed": self.seed,
            "matrix": torch.from_numpy(np.asarray(self.matrix, dtype=np.float64)),
            "baseline": torch.from_numpy(np.asarray(self.baseline, dtype=np.float64)),
            "train_seconds": list(self.train_seconds),
            "eval_seconds": self.eval_seconds,
            "steps": list(self.steps),
            "report": self.report,
            "stopped_early": [[k, v] for k, v in self.stopped_early.items()],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RunResult:
        """Inverse of :meth:`state_dict`."""
        return cls(
            strategy=state["strategy"],
            seed=int(state["seed"]),
            matrix=state["matrix"].numpy(),
            baseline=state["baseline"].numpy(),
            train_seconds=list(state["train_seconds"]),
            eval_seconds=float(state["eval_seconds"]),
            steps=list(state["steps"]),
            report=state["report"],
            stopped_early={int(k): int(v) for k, v in state["stopped_early"]},
        )

    def to_record(self) -> dict[str, Any]:
        """The run's ``metrics.json`` record (values rounded to 6 decimals, seconds to 4)."""
        return {
            "seed": self.seed,
            "accuracy_matrix": np.asarray(self.matrix).round(6).tolist(),
            "random_init_accuracy": np.asarray(self.baseline).round(6).tolist(),
            "train_seconds_per_task": [round(s, 4) for s in self.train_seconds],
            "eval_seconds": round(self.eval_seconds, 4),
            "wall_seconds": round(self.wall_seconds, 4),
            "steps_per_task": self.steps,
            "stopped_early": {str(k): v for k, v in self.stopped_early.items()},
            "report": self.report,
        }

    @classmethod
    def from_record(cls, strategy: str, record: dict[str, Any]) -> RunResult:
        """A run read back from its ``metrics.json`` record (rounded values)."""
        return cls(
            strategy=strategy,
            seed=int(record["seed"]),
            matrix=np.asarray(record["accuracy_matrix"], dtype=np.float64),
            baseline=np.asarray(record["random_init_accuracy"], dtype=np.float64),
            train_seconds=list(record.get("train_seconds_per_task", [])),
            eval_seconds=float(record.get("eval_seconds", 0.0)),
            steps=list(record.get("steps_per_task", [])),
            report=record.get("report", {}),
            stopped_early={int(k): v for k, v in record.get("stopped_early", {}).items()},
        )
