"""What a run produced: the accuracy matrix (and a class-IL run's task-IL matrix) and its
timings, and its two serialised forms.

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

from forgetless.metrics import average_accuracy, backward_transfer, summarize


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
    task_il_matrix: np.ndarray | None = None
    """Class-IL runs: ``R[i, j]`` with each test row's argmax restricted to its own task's
    classes (the model told the task), from the same forward passes; ``None`` otherwise."""

    @property
    def wall_seconds(self) -> float:
        return float(sum(self.train_seconds) + self.eval_seconds)

    def record_rows(self, rows: list[np.ndarray], task_il_rows: list[np.ndarray] | None, strategies: list) -> None:
        """Set the matrices from the rows so far and each strategy's :meth:`report` (if any)."""
        self.matrix = np.stack(rows)
        self.task_il_matrix = np.stack(task_il_rows) if task_il_rows else None
        self.report = {s.name: extra for s in strategies if (extra := s.report())}

    def metrics(self, joint: np.ndarray | None = None) -> dict[str, float]:
        """:func:`~forgetless.metrics.summarize` of the matrix, plus ``task_il_acc`` and
        ``task_il_bwt`` where the run has a task-IL matrix."""
        out = summarize(self.matrix, self.baseline, joint)
        if self.task_il_matrix is not None:
            out["task_il_acc"] = average_accuracy(self.task_il_matrix)
            out["task_il_bwt"] = backward_transfer(self.task_il_matrix)
        return out

    def state_dict(self) -> dict[str, Any]:
        """The exact content (tensors and JSON values) for a checkpoint."""
        return {
            "strategy": self.strategy,
            "seed": self.seed,
            "matrix": _exact(self.matrix),
            "baseline": _exact(self.baseline),
            "train_seconds": list(self.train_seconds),
            "eval_seconds": self.eval_seconds,
            "steps": list(self.steps),
            "report": self.report,
            "stopped_early": [[k, v] for k, v in self.stopped_early.items()],
            "task_il_matrix": _exact(self.task_il_matrix),
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
            task_il_matrix=_numpy(state.get("task_il_matrix")),  # absent from older checkpoints
        )

    def to_record(self) -> dict[str, Any]:
        """The run's ``metrics.json`` record (values rounded to 6 decimals, seconds to 4)."""
        return {
            "seed": self.seed,
            "accuracy_matrix": _rounded(self.matrix),
            "random_init_accuracy": _rounded(self.baseline),
            "train_seconds_per_task": [round(s, 4) for s in self.train_seconds],
            "eval_seconds": round(self.eval_seconds, 4),
            "wall_seconds": round(self.wall_seconds, 4),
            "steps_per_task": self.steps,
            "stopped_early": {str(k): v for k, v in self.stopped_early.items()},
            "report": self.report,
            "task_il_matrix": None if self.task_il_matrix is None else _rounded(self.task_il_matrix),
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
            task_il_matrix=_numpy(record.get("task_il_matrix")),
        )


def _rounded(values: np.ndarray) -> list:
    """JSON lists of ``values`` rounded to 6 decimals."""
    return np.asarray(values).round(6).tolist()


def _exact(matrix: np.ndarray | None) -> torch.Tensor | None:
    """A float64 tensor of ``matrix`` (``None`` kept)."""
    return None if matrix is None else torch.from_numpy(np.asarray(matrix, dtype=np.float64))


def _numpy(value: torch.Tensor | list | None) -> np.ndarray | None:
    """A float64 array of a stored tensor or JSON list (``None`` kept)."""
    if value is None:
        return None
    return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value, dtype=np.float64)
