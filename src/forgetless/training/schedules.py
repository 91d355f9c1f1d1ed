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
from forgetless.strategies.base import Batch, ModelOutput, Strategy, TrainingContext
from forgetless.training.brake import StopRule
from forgetless.training.checkpoint import CheckpointError
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

    Checkpoints name the parameters of every level still frozen, so a run resumed mid-task
    unfreezes them at the same steps as the uninterrupted run (the learner restores their
    ``requires_grad=False`` and skips ``before_task``).
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
        self._names: dict[int, str] = {}
        """Name of every model parameter by ``id`` (checkpoints name the frozen levels)."""

    def before_task(self, ctx: TrainingContext) -> None:
        groups = layer_groups(ctx.model)
        self._names = {id(p): n for n, p in ctx.model.named_parameters()}
        self.frozen = []
        for group in groups[:-1][::-1]:  # the level below the head first
            mine = [p for p in group if p.requires_grad]
            for p in mine:
                p.requires_grad_(False)
                p.grad = None
            self.frozen.append(mine)
        self.unfrozen_at.append([])

    def after_step(self, ctx: TrainingContext, batch: Batch, output: ModelOutput) -> bool:
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
        frozen = [[self._names[id(p)] for p in level] for level in self.frozen]
        return {
            "levels_frozen": len(frozen),
            "frozen": frozen,
            "unfrozen_at": [list(s) for s in self.unfrozen_at],
        }

    def load_state_dict(self, state: dict[str, Any], ctx: TrainingContext) -> None:
        """The levels still frozen mid-task, by name, resolved against ``ctx.model`` (none
        between tasks; the learner does not call ``before_task`` again on a mid-task resume)."""
        self.unfrozen_at = [list(s) for s in state["unfrozen_at"]]
        params = dict(ctx.model.named_parameters())
        levels = [list(level) for level in state.get("frozen", [])]
        missing = [n for level in levels for n in level if n not in params]
        if missing:
            raise CheckpointError(f"checkpoint of gradual unfreezing names parameters this model lacks ({missing[:3]})")
        self.frozen = [[params[n] for n in level] for level in levels]
        self._names = {id(p): n for n, p in params.items()}


def _test_accuracies(ctx: TrainingContext, tasks: list[int]) -> np.ndarray:
    """As the accuracy matrix is evaluated (the learner's evaluation, its precision)."""
    if ctx.accuracies is not None:
        return ctx.accuracies(tasks)
    return task_accuracies(
        ctx.model, ctx.scenario, ctx.config.eval_batch_size, tasks=tasks, precision=ctx.config.eval_precision
    )


class SafetyBrake(Strategy):
    """Evaluation-driven stopping: the "safety brake" of fine-tuning, by the one
    :class:`~forgetless.training.brake.StopRule` that the Hugging Face callback applies too.

    Monitored: the accuracy of every earlier task (``0..t-1``) of task ``t``, measured before
    the task starts (the references) and every ``eval_every`` optimizer steps (and at the
    task's last step, ``ctx.steps_in_task``: that of the set the learner trains on,
    ``training_set`` hooks included), with the new task's own accuracy. The task stops at the
    first check where some earlier task has dropped by more than ``threshold``; the run is then
    restored to the best acceptable check (the best new-task accuracy among the checks where
    every earlier task was within the threshold, the latest on ties; the pre-task state if the
    very first check crosses). Restored are the weights and every other strategy's state
    (through ``state_dict``/``load_state_dict``: SI's path integral, replay memories), so the
    undone steps leave no trace; each check keeps one copy of both. Why and where it stopped is
    logged and reported (``metrics.json``). The first task has no earlier task and is never
    stopped.

    The brake must run after every other strategy (:func:`schedule_strategies` is appended
    last): its pre-task copy is taken once the others have prepared the task.

    The monitor is the scenario's evaluation data: use ``--validation`` so that stopping is not
    decided on the test set. ``evaluate`` replaces the monitor (tests, custom "prior
    capability" sets).
    """

    name = "safety_brake"
    summary = "stop a task when an earlier task's accuracy drops by more than a threshold"

    def __init__(self, threshold: float, eval_every: int, evaluate: Evaluate | None = None):
        super().__init__()
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"stop_if_drop must be an accuracy drop in [0, 1], got {threshold}")
        if eval_every < 1:
            raise ConfigError(f"eval_every must be at least 1 step, got {eval_every}")
        self.threshold = threshold
        self.rule = StopRule(threshold)
        self.eval_every = eval_every
        self.evaluate = evaluate or _test_accuracies
        self.reference: list[float] | None = None
        """Each earlier task's accuracy before the current task (None: nothing to check)."""
        self.best: dict[str, torch.Tensor] | None = None
        """Model weights at the best check."""
        self.best_strategies: list[dict[str, Any]] | None = None
        """Every other strategy's ``state_dict()`` at the best check, in the run's order."""
        self.best_step = 0
        self.best_score: float | None = None
        """The new task's accuracy at the best check."""
        self.log: dict[str, dict[str, Any]] = {}

    def before_task(self, ctx: TrainingContext) -> None:
        self.best, self.best_strategies, self.best_step = None, None, 0
        if ctx.task_index == 0:
            self.reference = None
            return
        earlier, new = self._scores(ctx)
        self.reference = earlier
        self.best_score = new
        self._keep_best(ctx, 0)
        self.log[str(ctx.task_index)] = {
            "reference": self.reference,
            "threshold": self.threshold,
            "checks": [],
            "stopped_at_step": None,
            "restored_step": None,
        }

    def _scores(self, ctx: TrainingContext) -> tuple[list[float], float]:
        """Each earlier task's accuracy, and the current task's."""
        scores = [float(v) for v in self.evaluate(ctx, list(range(ctx.task_index + 1)))]
        return scores[:-1], scores[-1]

    def _others(self, ctx: TrainingContext) -> list[Strategy]:
        return [s for s in ctx.strategies if s is not self]

    def _keep_best(self, ctx: TrainingContext, step: int) -> None:
        """Copy the weights and every other strategy's state as the best point (``step``)."""
        self.best = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
        self.best_strategies = [_copy_tree(s.state_dict()) for s in self._others(ctx)]
        self.best_step = step

    def _restore_best(self, ctx: TrainingContext) -> None:
        """Back to the best point: strategies first (an architecture method may rebuild its
        model from its state, as when a checkpoint is loaded), then the weights."""
        assert self.best is not None
        others = self._others(ctx)
        if self.best_strategies is not None:  # None: a checkpoint from before they were kept
            if len(others) != len(self.best_strategies):
                raise RuntimeError("safety brake: the run's strategies changed during the task")
            for strategy, state in zip(others, self.best_strategies):
                strategy.load_state_dict(_copy_tree(state), ctx)
        ctx.model.load_state_dict(self.best)

    def after_step(self, ctx: TrainingContext, batch: Batch, output: ModelOutput) -> bool:
        if self.reference is None or (ctx.step % self.eval_every and ctx.step != ctx.steps_in_task):
            return False
        earlier, new = self._scores(ctx)
        drops = {str(task): reference - score for task, (reference, score) in enumerate(zip(self.reference, earlier))}
        worst_task, worst = self.rule.worst(drops)
        entry = self.log[str(ctx.task_index)]
        entry["checks"].append([ctx.step, worst, new])
        if self.rule.acceptable(drops):
            if self.rule.better(new, self.best_score):
                self.best_score = new
                self._keep_best(ctx, ctx.step)
            return False
        self._restore_best(ctx)
        entry["stopped_at_step"], entry["restored_step"] = ctx.step, self.best_step
        entry["drop"], entry["worst_task"] = worst, int(worst_task)
        log.warning(
            "safety brake: task %d stopped at step %d: task %s's accuracy %.4f is %.4f below its "
            "pre-task value %.4f (threshold %.4f); restored the weights of step %d",
            ctx.task_index,
            ctx.step,
            worst_task,
            earlier[int(worst_task)],
            worst,
            self.reference[int(worst_task)],
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
            "best_score": self.best_score,
            "log": self.log,
        }
        if self.best is not None:
            state["best"] = self.best
        if self.best_strategies is not None:
            state["best_strategies"] = self.best_strategies
        return state

    def load_state_dict(self, state: dict[str, Any], ctx: TrainingContext) -> None:
        self.reference = state["reference"]
        self.best_step = state["best_step"]
        self.best_score = state.get("best_score")
        self.log = state["log"]
        self.best = state.get("best")
        self.best_strategies = state.get("best_strategies")


def _copy_tree(value: Any) -> Any:
    """A deep copy of a ``state_dict()``: nested dicts, lists and tuples; tensors cloned."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):
        return {k: _copy_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copy_tree(v) for v in value)
    return value


def schedule_strategies(config: RunConfig) -> list[Strategy]:
    """The schedule strategies the options of ``config`` ask for (none by default)."""
    out: list[Strategy] = []
    if config.unfreeze_every is not None:
        out.append(GradualUnfreezing(config.unfreeze_every))
    if config.stop_if_drop is not None:
        out.append(SafetyBrake(config.stop_if_drop, config.eval_every))
    return out
