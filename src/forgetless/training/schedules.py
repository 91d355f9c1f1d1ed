"""Fine-tuning schedules that compose with every strategy (options of the run config).

Layer-wise learning rates and warmup act through the optimizer and scheduler
(:mod:`forgetless.training.optim`). Schedules that act during training are strategies built
from the run's options and appended to the run's strategies by :func:`schedule_strategies`:

* :class:`GradualUnfreezing` (``--unfreeze-every k``);
* :class:`SafetyBrake`, evaluation-driven stopping (``--stop-if-drop d --eval-every k``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from forgetless.config import RunConfig
from forgetless.errors import ConfigError
from forgetless.strategies.base import Batch, Strategy, TrainingContext
from forgetless.training.evaluation import task_accuracies
from forgetless.training.optim import layer_groups

log = logging.getLogger(__name__)

Evaluate = Callable[[TrainingContext, list[int]], np.ndarray]
"""``evaluate(ctx, tasks)``: accuracy on each of ``tasks`` (the safety brake's monitor)."""


class GradualUnfreezing(Strategy):
    """Gradual unfreezing (Howard & Ruder 2018, ULMFiT, Sec. 3.2).

    At the start of every task only the last depth level (the head, see
    :func:`~forgetless.training.optim.layer_groups`) trains; after every ``every`` optimizer
    steps one more level, from the output towards the input, is unfrozen. Frozen parameters
    have ``requires_grad=False`` and no gradient, so neither Adam's moments nor weight decay
    touch them: they stay bit-identical until unfrozen. Only parameters this schedule froze are
    unfrozen (a strategy's own frozen parameters stay frozen); all are released after the task.
    """

    name = "unfreeze"
    summary = "gradual unfreezing: head first, one more layer group every k steps"

    def __init__(self, every: int):
        super().__init__()
        if every < 1:
            raise ConfigError(f"unfreeze_every must be at least 1 step, got {every}")
        self.every = every
        self.frozen: list[list[torch.nn.Parameter]] = []
        self.unfrozen_at: list[list[int]] = []

    def before_task(self, ctx: TrainingContext) -> None:
        groups = layer_groups(ctx.model)
        self.frozen = []
        for group in groups[:-1][::-1]:  # the level below the head first
            mine = [p for p in group if p.requires_grad]
            for p in mine:
                p.requires_grad_(False)
                p.grad = None
            self.frozen.append(mine)
        self.unfrozen_at.append([])

    def after_step(self, ctx: TrainingContext, batch: Batch, logits: torch.Tensor) -> bool:
        if ctx.step % self.every == 0 and self.frozen:
            for p in self.frozen.pop(0):
                p.requires_grad_(True)
            self.unfrozen_at[-1].append(ctx.step)
        return False

    def after_task(self, ctx: TrainingContext) -> None:
        for group in self.frozen:
            for p in group:
                p.requires_grad_(True)
        self.frozen = []

    def report(self) -> dict[str, Any]:
        return {"every": self.every, "unfrozen_at_steps": [list(s) for s in self.unfrozen_at]}

    def state_dict(self) -> dict[str, Any]:
        return {
            "levels_frozen": len(self.frozen),
            "unfrozen_at": [list(s) for s in self.unfrozen_at],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.unfrozen_at = [list(s) for s in state["unfrozen_at"]]
        # the frozen levels are re-derived by the resumed task's before_task


def _test_accuracies(ctx: TrainingContext, tasks: list[int]) -> np.ndarray:
    """As the accuracy matrix is evaluated (the learner's ``predict`` hooks and precision)."""
    if ctx.accuracies is not None:
        return ctx.accuracies(tasks)
    return task_accuracies(
        ctx.model, ctx.scenario, ctx.config.eval_batch_size, tasks=tasks, precision=ctx.config.eval_precision
    )


class SafetyBrake(Strategy):
    """Evaluation-driven stopping: the "safety brake" of fine-tuning.

    Monitored score: mean accuracy over the earlier tasks (``0..t-1``) of task ``t``, measured
    before the task starts (``reference``) and every ``eval_every`` optimizer steps (and at the
    task's last step). The task stops at the first check where
    ``drop = reference - score > threshold``; the weights are then restored to the *best*
    checkpoint, defined as the last checked state whose drop was within the threshold (the one
    with the most training on the new task that still keeps earlier tasks within the limit; the
    pre-task weights if the very first check crosses). Why and where it stopped is logged and
    reported (``metrics.json``). The first task has no earlier task and is never stopped.

    The monitor is the scenario's evaluation data: use ``--validation`` so that stopping is not
    decided on the test set. ``evaluate`` replaces the monitor (tests, custom "prior
    capability" sets).
    """

    name = "safety_brake"
    summary = "stop a task when earlier tasks' accuracy drops by more than a threshold"

    def __init__(self, threshold: float, eval_every: int, evaluate: Evaluate | None = None):
        super().__init__()
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"stop_if_drop must be an accuracy drop in [0, 1], got {threshold}")
        if eval_every < 1:
            raise ConfigError(f"eval_every must be at least 1 step, got {eval_every}")
        self.threshold = threshold
        self.eval_every = eval_every
        self.evaluate = evaluate or _test_accuracies
        self.reference: float | None = None
        self.best: dict[str, torch.Tensor] | None = None
        self.best_step = 0
        self.last_step = 0
        self.log: dict[str, dict[str, Any]] = {}

    def before_task(self, ctx: TrainingContext) -> None:
        self.best, self.best_step = None, 0
        if ctx.task_index == 0:
            self.reference = None
            return
        self.reference = self._score(ctx)
        self.best = self._snapshot(ctx)
        steps = -(-ctx.task.num_train // ctx.config.batch_size) * (ctx.config.epochs or 1)
        self.last_step = steps
        self.log[str(ctx.task_index)] = {
            "reference": self.reference,
            "threshold": self.threshold,
            "checks": [],
            "stopped_at_step": None,
            "restored_step": None,
        }

    def _score(self, ctx: TrainingContext) -> float:
        return float(np.mean(self.evaluate(ctx, list(range(ctx.task_index)))))

    @staticmethod
    def _snapshot(ctx: TrainingContext) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}

    def after_step(self, ctx: TrainingContext, batch: Batch, logits: torch.Tensor) -> bool:
        if self.reference is None or (ctx.step % self.eval_every and ctx.step != self.last_step):
            return False
        score = self._score(ctx)
        drop = self.reference - score
        entry = self.log[str(ctx.task_index)]
        entry["checks"].append([ctx.step, score])
        if drop <= self.threshold:
            self.best, self.best_step = self._snapshot(ctx), ctx.step
            return False
        assert self.best is not None
        ctx.model.load_state_dict(self.best)
        entry["stopped_at_step"], entry["restored_step"] = ctx.step, self.best_step
        entry["drop"] = drop
        log.warning(
            "safety brake: task %d stopped at step %d: earlier tasks' mean accuracy %.4f is %.4f "
            "below its pre-task value %.4f (threshold %.4f); restored the weights of step %d",
            ctx.task_index,
            ctx.step,
            score,
            drop,
            self.reference,
            self.threshold,
            self.best_step,
        )
        self.reference = None  # nothing more to check in this task
        return True

    def report(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "eval_every": self.eval_every, "tasks": self.log}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "reference": self.reference,
            "best_step": self.best_step,
            "last_step": self.last_step,
            "log": self.log,
        }
        if self.best is not None:
            state["best"] = self.best
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reference = state["reference"]
        self.best_step = state["best_step"]
        self.last_step = state["last_step"]
        self.log = state["log"]
        self.best = state.get("best")


def schedule_strategies(config: RunConfig) -> list[Strategy]:
    """The schedule strategies the options of ``config`` ask for (none by default)."""
    out: list[Strategy] = []
    if config.unfreeze_every is not None:
        out.append(GradualUnfreezing(config.unfreeze_every))
    if config.stop_if_drop is not None:
        out.append(SafetyBrake(config.stop_if_drop, config.eval_every))
    return out
