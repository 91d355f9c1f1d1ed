"""The learner: trains task after task and fills the accuracy matrix.

The hot loop works on in-memory tensors only: a seeded permutation is split into index
batches, each batch is sliced from the task's compact tensors and scaled to floats. Strategies
contribute through the hooks of :class:`~forgetless.strategies.base.Strategy`; the learner only
calls the hooks a strategy overrides, so a plain run costs what a hand-written loop costs.

Checkpoints (:mod:`forgetless.training.checkpoint`) are taken after every task and every
``config.checkpoint_every`` steps; the loop checks one integer per step for them. A learner
restored with :meth:`Learner.load_checkpoint` replays exactly the batches the uninterrupted run
would have seen (same permutation, same position, same generator state).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from forgetless.config import RunConfig
from forgetless.data.scenarios import Scenario
from forgetless.errors import ConfigError
from forgetless.models.heads import IncrementalHead
from forgetless.strategies.base import (
    Batch,
    FlatGradient,
    ModelOutput,
    ParameterLayout,
    Strategy,
    TrainingContext,
    TrainingSet,
)
from forgetless.training import checkpoint as ckpt
from forgetless.training.augment import crop_flip, default_padding
from forgetless.training.compiled import channels_last_batch, training_forward, uses_convolutions
from forgetless.training.evaluation import accuracy_rows
from forgetless.training.nonfinite import NonFiniteWatch
from forgetless.training.optim import build_optimizer, build_scheduler
from forgetless.training.precision import Precision
from forgetless.training.result import RunResult

Progress = Callable[[int, int, int], None]
"""``progress(task_index, step, steps_in_task)``, called after every optimizer step."""

OnCheckpoint = Callable[[dict[str, Any]], None]
"""``on_checkpoint(state)``: persist :meth:`Learner.checkpoint_state` (the experiment does)."""

_NEVER = sys.maxsize


_HOOKS = (
    "resume_task",
    "training_set",
    "replay_batch",
    "criterion",
    "loss",
    "project_gradient",
    "before_step",
    "after_step",
)


class Learner:
    """Train ``model`` on ``scenario`` task by task with ``strategies`` composed.

    >>> learner = Learner(scenario, model, make_strategies("ewc+er"), config)
    >>> result = learner.run()          # result.matrix is the accuracy matrix
    """

    def __init__(
        self,
        scenario: Scenario,
        model: nn.Module,
        strategies: list[Strategy],
        config: RunConfig,
        seed: int = 0,
        name: str = "",
    ):
        self.scenario = scenario
        self.config = config
        self.seed = seed
        self.name = name or "+".join(s.name for s in strategies)
        self.device = torch.device(config.device)
        self.strategies = strategies
        self.generator = torch.Generator().manual_seed(seed)
        self.ctx = TrainingContext(
            model=model.to(self.device),
            scenario=scenario,
            config=config,
            device=self.device,
            generator=self.generator,
        )
        self.ctx.accuracies = self.evaluate
        if config.augment == "crop-flip":
            padding = config.augment_padding
            padding = default_padding(scenario.input_shape) if padding is None else padding
            self.ctx.augment = partial(crop_flip, padding=padding, generator=self.generator)
        self.ctx.strategies = self.strategies
        for strategy in strategies:
            replacement = strategy.setup(self.ctx)
            if replacement is not None:
                self.ctx.model = replacement.to(self.device)
        self._channels_last = config.channels_last and uses_convolutions(self.model)  # --channels-last
        if self._channels_last:
            self.ctx.model = self.model.to(memory_format=torch.channels_last)
        self._forward = training_forward(config.compile, config.device)  # --compile: training.compiled
        self.hooks = {h: [s for s in strategies if type(s).overrides(h)] for h in _HOOKS}
        if len(self.hooks["criterion"]) > 1:
            names = " and ".join(s.name for s in self.hooks["criterion"])
            raise ConfigError(f"{names} both replace the base loss (criterion): combine at most one of them")
        self.rows: list[np.ndarray] = []
        self.task_labels = scenario.task_labels()
        """Class-IL: each task's labels, for the task-IL rows; ``None`` otherwise."""
        self.task_il_rows: list[np.ndarray] | None = None if self.task_labels is None else []
        """Class-IL: the task-IL accuracy rows so far, from the same forward passes as ``rows``."""
        self.result = RunResult(self.name, seed, np.zeros((0, 0)), np.zeros(0))
        self.on_checkpoint: OnCheckpoint | None = None
        """Set by the experiment: called with the state after every task and every
        ``config.checkpoint_every`` steps."""
        self._restored = False
        self.active: int | None = None
        """Class-IL: the head's active outputs (the classes seen so far)."""
        self._resume: ckpt.ResumePoint | None = None
        self._interrupted = False
        self._next_event = _NEVER
        self.nonfinite = NonFiniteWatch(self.device, self._nonfinite_message)
        self.precision = Precision(config.precision, self.device)

    @property
    def model(self) -> nn.Module:
        return self.ctx.model

    # -- evaluation ----------------------------------------------------------------------
    def set_active(self, count: int | None) -> None:
        """Class-IL: let the head's first ``count`` outputs compete (``None``: leave it)."""
        if count is None:
            return
        self.active = count
        for module in self.model.modules():
            if isinstance(module, IncrementalHead):
                module.set_active_outputs(count)

    def evaluate(self, tasks: list[int] | None = None) -> np.ndarray:
        """Accuracy on every task's evaluation set (seen and unseen), as one matrix row.

        ``tasks`` restricts it to some tasks (the safety brake's checks, via ``ctx.accuracies``).
        """
        return self._evaluate(tasks)[0]

    def _evaluate(self, tasks: list[int] | None = None, task_il: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`evaluate`, and with ``task_il`` the task-IL row of a class-IL run (else ``None``)."""
        return accuracy_rows(
            self.model,
            self.scenario,
            self.config.eval_batch_size,
            tasks=tasks,
            precision=self.config.eval_precision,
            task_labels=self.task_labels if task_il and self.task_il_rows is not None else None,
        )

    # -- training ------------------------------------------------------------------------
    def run(self, progress: Progress | None = None) -> RunResult:
        """Train every task in order; after each, evaluate every task. Returns the result.

        A learner restored with :meth:`load_checkpoint` continues where the checkpoint was taken.
        """
        scenario = self.scenario
        if not self._restored:
            self.set_active(scenario.active_outputs[0] if scenario.active_outputs else None)
            self.result.baseline = self.evaluate()
        for task_index in range(len(self.rows), scenario.num_tasks):
            self.train_task(task_index, progress)
        return self.result

    def request_interrupt(self) -> None:
        """Ask for a checkpoint after the current step, then :class:`RunInterrupted` (Ctrl-C)."""
        self._interrupted = True
        self._next_event = 0

    def _active_outputs_for(self, task_index: int, data: TrainingSet) -> int | None:
        scenario = self.scenario
        if not scenario.active_outputs:
            return None
        seen = scenario.active_outputs[task_index]
        if len(data):
            seen = max(seen, int(data.y.max()) + 1)
        return max(seen, self.active or 0)

    def train_task(self, task_index: int, progress: Progress | None = None) -> None:
        """Train task ``task_index`` with every strategy's contribution, then evaluate."""
        ctx, config, scenario = self.ctx, self.config, self.scenario
        task = scenario.tasks[task_index]
        resume, self._resume = self._resume, None
        if resume is None:
            ctx.advance(task_index=task_index, step=0, epoch=0)
            for strategy in self.strategies:
                strategy.before_task(ctx)
        else:
            for strategy in self.hooks["resume_task"]:
                strategy.resume_task(ctx)
        data = TrainingSet(task.train_x, task.train_y, ctx.task_id(task_index))
        for strategy in self.hooks["training_set"]:
            data = strategy.training_set(ctx, data)
        if resume is None:
            self.set_active(self._active_outputs_for(task_index, data))

        started = time.perf_counter() - (resume.elapsed if resume else 0.0)
        epochs = config.epochs or 1
        n = len(data)
        steps_per_epoch = math.ceil(n / config.batch_size) if n else 0
        total = epochs * steps_per_epoch
        ctx.advance(steps_in_task=total)
        optimizer = build_optimizer(self.model, config)
        scheduler = build_scheduler(optimizer, config, total)
        if resume is not None:
            resume.check_position(ctx.step, steps_per_epoch)
            resume.restore(optimizer, scheduler, self.generator, self.name, ctx.step)
        self._schedule_next_event()
        stop = False
        self.model.train()
        for epoch in range(resume.epoch if resume else 0, epochs if n else 0):
            ctx.advance(epoch=epoch)
            if resume is not None:
                order, start, resume = resume.order.to(data.y.device), resume.position, None
            else:
                order, start = torch.randperm(n, generator=self.generator).to(data.y.device), 0
            batches = order.split(config.batch_size)
            for position in range(start, len(batches)):
                stop = self._step(data, batches[position], optimizer, scheduler)
                if progress is not None:
                    progress(task_index, ctx.step, total)
                if ctx.global_step >= self._next_event:  # the only per-step cost of checkpoints
                    self._step_event(epoch, position + 1, order, optimizer, scheduler, started, stop)
                if stop:
                    self.result.stopped_early[task_index] = ctx.step
                    break
            if stop:
                break
        self.nonfinite.check()
        for strategy in self.strategies:
            strategy.after_task(ctx)
        self.result.train_seconds.append(time.perf_counter() - started)
        self.result.steps.append(ctx.step)

        started = time.perf_counter()
        row, task_il_row = self._evaluate(task_il=True)
        self.rows.append(row)
        if self.task_il_rows is not None and task_il_row is not None:
            self.task_il_rows.append(task_il_row)
        self.result.eval_seconds += time.perf_counter() - started
        self._finish_matrix()
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.checkpoint_state())
        if self._interrupted:
            raise ckpt.RunInterrupted(f"Ctrl-C after task {task_index} of {self.name}")

    # -- checkpoints -----------------------------------------------------------------------
    def _schedule_next_event(self) -> None:
        """The global step at which the loop must next look up: a checkpoint or an interrupt."""
        ctx, every = self.ctx, self.config.checkpoint_every
        self._next_event = _NEVER
        if every and self.on_checkpoint is not None:
            self._next_event = ctx.global_step + every - ctx.step % every
        if self._interrupted:
            self._next_event = 0

    def _step_event(
        self,
        epoch: int,
        position: int,
        order: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        started: float,
        stop: bool,
    ) -> None:
        """A mid-task checkpoint (every ``checkpoint_every`` steps, or on Ctrl-C)."""
        ctx, every = self.ctx, self.config.checkpoint_every
        self.nonfinite.check()  # never checkpoint weights a non-finite step has touched
        due = self._interrupted or bool(every and ctx.step % every == 0)
        # a step that stopped the task is followed at once by the end-of-task checkpoint
        if due and not stop and self.on_checkpoint is not None:
            loop = {"epoch": epoch, "position": position, "elapsed": time.perf_counter() - started}
            self.on_checkpoint(self.checkpoint_state(loop, order, optimizer, scheduler))
            if self._interrupted:
                raise ckpt.RunInterrupted(f"Ctrl-C at task {ctx.task_index}, step {ctx.step} of {self.name}")
        self._schedule_next_event()

    def checkpoint_state(
        self,
        in_task: dict[str, Any] | None = None,
        order: torch.Tensor | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ) -> dict[str, Any]:
        """Everything needed to continue this run exactly (:func:`~.checkpoint.capture_learner`)."""
        return ckpt.capture_learner(self, in_task, order, optimizer, scheduler)

    def load_checkpoint(self, state: dict[str, Any]) -> None:
        """Restore :meth:`checkpoint_state` into this freshly built learner; ``run()`` goes on
        (:func:`~.checkpoint.restore_learner`)."""
        self._resume = ckpt.restore_learner(self, state)
        if self.rows:
            self._finish_matrix()
        self._restored = True

    def _finish_matrix(self) -> None:
        self.result.matrix = np.stack(self.rows)
        self.result.task_il_matrix = np.stack(self.task_il_rows) if self.task_il_rows else None
        report: dict[str, Any] = {}
        for strategy in self.strategies:
            extra = strategy.report()
            if extra:
                report[strategy.name] = extra
        self.result.report = report

    def _step(
        self,
        data: TrainingSet,
        index: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    ) -> bool:
        ctx, hooks, model = self.ctx, self.hooks, self.model
        raw = data.x[index]
        task_ids = data.task_ids if not isinstance(data.task_ids, torch.Tensor) else data.task_ids[index]
        batch = Batch(ctx.training_inputs(raw), data.y[index], task_ids, raw)
        ctx.advance(current_size=len(batch))
        for strategy in hooks["replay_batch"]:
            extra = strategy.replay_batch(ctx, batch)
            if extra is not None and len(extra):
                batch = batch.concat(extra)
        if self._channels_last:
            batch.x = channels_last_batch(batch.x)
        with self.precision.autocast():
            output = ModelOutput(*self._forward(model, batch.x, batch.task_ids))
            loss = self._base_loss(batch, output)
            for strategy in hooks["loss"]:
                term = strategy.loss(ctx, batch, output)
                if term is not None:
                    loss = loss + term
        self.nonfinite.watch(loss.detach(), ctx.step)
        optimizer.zero_grad(set_to_none=True)
        self.precision.backward(loss, optimizer)
        if hooks["project_gradient"]:
            self._project(batch)
        for strategy in hooks["before_step"]:
            strategy.before_step(ctx)
        self.precision.step(optimizer)
        if scheduler is not None:
            scheduler.step()
        ctx.advance(step=ctx.step + 1, global_step=ctx.global_step + 1)
        stop = False
        for strategy in hooks["after_step"]:
            stop = bool(strategy.after_step(ctx, batch, output)) or stop
        return stop

    def _base_loss(self, batch: Batch, output: ModelOutput) -> torch.Tensor:
        """The first ``criterion`` hook's loss, else cross-entropy over the whole batch."""
        for strategy in self.hooks["criterion"]:
            loss = strategy.criterion(self.ctx, batch, output)
            if loss is not None:
                return loss
        return F.cross_entropy(output.logits, batch.y)

    def _nonfinite_message(self, step: int, value: float) -> str:
        return (
            f"the loss became {value} at task {self.ctx.task_index}, step {step} "
            f"({self.name}): lower the learning rate (--lr) or the strategy's weight "
            f"(e.g. --set ewc.ewc_lambda=...); results of completed tasks were kept"
        )

    def _project(self, batch: Batch) -> None:
        """Flatten the gradient, let each strategy edit it in turn, write it back."""
        layout = ParameterLayout([p for p in self.model.parameters() if p.grad is not None])
        flat = layout.flatten([p.grad for p in layout.params])
        for strategy in self.hooks["project_gradient"]:
            edited = strategy.project_gradient(self.ctx, batch, FlatGradient(flat, layout))
            if edited is not None:
                flat = edited
        for param, part in zip(layout.params, layout.split(flat), strict=True):
            param.grad.copy_(part)
