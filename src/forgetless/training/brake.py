"""The stop-and-restore rule, one for both stacks.

Evaluation-driven stopping (early stopping, Prechelt 1998, applied to what the model must keep
instead of a validation loss). At every check the monitored items, the earlier tasks of a
continual run (:class:`forgetless.training.schedules.SafetyBrake`) or the kept capabilities of a
fine-tune (:class:`forgetless.integrations.hf.callback.ForgettingCallback`), each have a drop
from their reference (the value before the task started; higher is worse). Then:

* a check is **acceptable** when its *worst* drop is within the threshold: every earlier task,
  every kept capability, not their mean (a mean would let one task collapse while the others
  hold);
* training stops at the first check that is not acceptable, and goes back to the **best**
  acceptable check: the one with the best score on the new task (the task being trained; on
  ties, or when there is no such score, the latest). Before the first check the best is the
  starting point.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class StopRule:
    """``threshold`` on the worst drop (``None``: never stop); see the module docstring."""

    threshold: float | None

    @staticmethod
    def worst(drops: Mapping[str, float]) -> tuple[str, float]:
        """The monitored item with the largest drop, and that drop (``("", 0.0)`` for none)."""
        if not drops:
            return "", 0.0
        name = max(drops, key=lambda key: drops[key])
        return name, float(drops[name])

    def acceptable(self, drops: Mapping[str, float]) -> bool:
        return self.threshold is None or self.worst(drops)[1] <= self.threshold

    @staticmethod
    def better(score: float | None, best: float | None, higher_is_better: bool = True) -> bool:
        """Whether an acceptable check with new-task ``score`` replaces the best one so far."""
        if score is None or best is None:
            return True
        return score >= best if higher_is_better else score <= best
