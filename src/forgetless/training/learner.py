"""The learner: trains task after task and fills the accuracy matrix.

The hot loop works on in-memory tensors only: a seeded permutation is split into index
batches, each batch is sliced from the task's compact tensors and scaled to floats. Strategies
contribute through the hooks of :class:`~forgetless.strategies.base.Strategy`; the learner only
calls the hooks a strategy overrides, so a plain run costs what a hand-written loop costs.

Checkpoints (:mod:`forgetless.training.checkpoint`) are taken after every task and every
``config.checkpoint_every`` steps (:class:`~.checkpoint.CheckpointEvents`: one integer compare
per step). A restored learner replays exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from forgetless.config import RunConfig
from forgetless.data.scenarios import Scenario
from forgetless.errors import ConfigError
from forgetless.models.flat import flatten_parameters, wants_flat_parameters
from forgetless.models.heads import outputs_seen, set_active_outputs
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
from forgetless.training import distributed
from forgetless.training.augment import training_augmentation
from forgetless.training.compiled import prepare_training
from forgetless.training.evaluation import accuracy_rows
from forgetless.training.nonfinite import NonFiniteWatch, loss_message
from forgetless.training.optim import build_optimizer, build_scheduler
from forgetless.training.precision import Precision
from forgetless.training.result import RunResult

Progress = Callable[[int, int, int], None]
"""``progress(task_index, step, steps_in_task)``, called after every optimizer step."""

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
        self.scenario, self.config, self.seed, self.strategies = scenario, config, seed, strategies
        self.name = name or "+".join(s.name for s in strategies)
        self.device = torch.device(config.device)
        self.generator = torch.Generator().manual_seed(seed)
        self.ctx = TrainingContext(model.to(self.device), scenario, config, self.device, self.generator)
        self.ctx.accuracies, self.ctx.strategies = self.evaluate, strategies
        self.ctx.augment = training_augmentation(
            config.augment, config.augment_padding, scenario.input_shape, self.generator
        )
        for strategy in strategies:
            replacement = strategy.setup(self.ctx)
            if replacement is not None:
                self.ctx.model = replacement.to(self.device)
        self.ctx.model, self._forward = prepare_training(
            self.model, config.channels_last, config.compile, config.device
        )
        use_flat = wants_flat_parameters(
            config.flat_parameters, strategies, scenario.uses_task_id, config.channels_last
        )
        self.flat = flatten_parameters(self.model) if use_flat else None
        """--flat-parameters: the trainable parameters as views of one buffer (:mod:`forgetless.models.flat`)."""
        self.hooks = {h: [s for s in strategies if type(s).overrides(h)] for h in _HOOKS}
        if len(self.hooks["criterion"]) > 1:
            names = " and ".join(s.name for s in self.hooks["criterion"])
            raise ConfigError(f"{names} both replace the base loss (criterion): combine at most one of them")
        self.task_labels = scenario.task_labels()
        """Class-IL: each task's labels, for the task-IL rows; ``None`` otherwise."""
        self.rows: list[np.ndarray] = []
        self.task_il_rows: list[np.ndarray] | None = None if self.task_labels is None else []
        """Class-IL: the task-IL accuracy rows so far, from the same forward passes as ``rows``."""
        self.result = RunResult(self.name, seed, np.zeros((0, 0)), np.zeros(0))
        self.active: int | None = None
        """Class-IL: the head's active outputs (the classes seen so far)."""
        self.on_checkpoint: ckpt.OnCheckpoint | None = None
        """Set by the experiment: called with the state after every task and every
        ``config.checkpoint_every`` steps."""
        self.events = ckpt.CheckpointEvents(config.checkpoint_every)
        self.nonfinite = NonFiniteWatch(self.device, lambda step, value: loss_message(self.name, self.ctx, step, value))
        self.precision = Precision(config.precision, self.device)
        self._resume: ckpt.ResumePoint | None = None
        self._restored = False
        self.dist = distributed.current()
        """Under torchrun, this rank's process group (:mod:`~forgetless.training.distributed`)."""
        self.dist.check_model(self.model)
        self._interrupt_pending = False
        """Data-parallel: a Ctrl-C seen here, not yet agreed by every rank (the next all-reduce)."""

    @property
    def model(self) -> nn.Module:
        return self.ctx.model

    def set_active(self, count: int | None) -> None:
        """Class-IL: let the head's first ``count`` outputs compete (``None``: leave it)."""
        if count is not None:
            self.active = count
            set_active_outputs(self.model, count)

    def evaluate(self, tasks: list[int] | None = None) -> np.ndarray:
        """Accuracy on every task's evaluation set (seen and unseen), as one matrix row.

        ``tasks`` restricts it to some tasks (the safety brake's checks, via ``ctx.accuracies``).
        """
        return accuracy_rows(self.model, self.scenario, self.config.eval_batch_size, tasks, self.config.eval_precision)[
            0
        ]

    # -- training ------------------------------------------------------------------------
    def run(self, progress: Progress | None = None) -> RunResult:
        """Train every task in order; after each, evaluate every task. Returns the result.

        A learner restored with :meth:`load_checkpoint` continues where the checkpoint was taken.
        """
        if not self._restored:
            self.set_active(self.scenario.active_outputs[0] if self.scenario.active_outputs else None)
            self.result.baseline = self.evaluate()
        for task_index in range(len(self.rows), self.scenario.num_tasks):
            self.train_task(task_index, progress)
        return self.result

    def request_interrupt(self) -> None:
        """Ask for a checkpoint after the current step, then :class:`RunInterrupted` (Ctrl-C);
        data-parallel, after the step at which every rank has learnt of it (its all-reduce)."""
        if self.dist.world_size > 1:
            self._interrupt_pending = True
            return
        self.events.interrupt()

    def train_task(self, task_index: int, progress: Progress | None = None) -> None:
        """Train task ``task_index`` with every strategy's contribution, then evaluate."""
        ctx, config = self.ctx, self.config
        resume, self._resume = self._resume, None
        if resume is None:
            ctx.advance(task_index=task_index, step=0, epoch=0)
            for strategy in self.strategies:
                strategy.before_task(ctx)
        for strategy in self.hooks["resume_task"] if resume is not None else ():
            strategy.resume_task(ctx)
        task = self.scenario.tasks[task_index]
        data = TrainingSet(task.train_x, task.train_y, ctx.task_id(task_index))
        for strategy in self.hooks["training_set"]:
            data = strategy.training_set(ctx, data)
        if resume is None:
            self.set_active(outputs_seen(self.scenario.active_outputs, task_index, data.y, self.active))
        started = time.perf_counter() - (resume.elapsed if resume else 0.0)
        steps_per_epoch = math.ceil(len(data) / config.batch_size)
        ctx.advance(steps_in_task=(config.epochs or 1) * steps_per_epoch)
        optimizer = build_optimizer(self.model, config)
        scheduler = build_scheduler(optimizer, config, ctx.steps_in_task)
        if resume is not None:
            resume.check_position(ctx.step, steps_per_epoch)
            resume.restore(optimizer, scheduler, self.generator, self.name, ctx.step)
        self._train_epochs(data, optimizer, scheduler, resume, progress, started)
        self.nonfinite.check()
        for strategy in self.strategies:
            strategy.after_task(ctx)
        self.dist.check_in_sync(self.model, f"after task {task_index}")
        self.result.train_seconds.append(time.perf_counter() - started)
        self.result.steps.append(ctx.step)
        self._record_row()
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.checkpoint_state())
        self.events.after_task(self.name, task_index)

    def _train_epochs(
        self,
        data: TrainingSet,
        optimizer: torch.optim.Optimizer,
        scheduler: ckpt.Scheduler,
        resume: ckpt.ResumePoint | None,
        progress: Progress | None,
        started: float,
    ) -> None:
        """The task's epochs from the start (or from ``resume``), until done or a strategy stops it."""
        ctx, n = self.ctx, len(data)
        self.events.schedule(ctx, self.on_checkpoint is not None)
        self.model.train()
        for epoch in range(resume.epoch if resume else 0, (self.config.epochs or 1) if n else 0):
            ctx.advance(epoch=epoch)
            if resume is not None:
                order, start, resume = resume.order.to(data.y.device), resume.position, None
            else:
                order, start = torch.randperm(n, generator=self.generator).to(data.y.device), 0
            batches = order.split(self.config.batch_size)
            for position in range(start, len(batches)):
                stop = self._step(data, batches[position], optimizer, scheduler)
                if progress is not None:
                    progress(ctx.task_index, ctx.step, ctx.steps_in_task)
                if ctx.global_step >= self.events.next_step:  # the only per-step cost of checkpoints
                    loop = {"epoch": epoch, "position": position + 1, "elapsed": time.perf_counter() - started}
                    self.events.fire(self, loop, order, optimizer, scheduler, stop)
                if stop:
                    self.result.stopped_early[ctx.task_index] = ctx.step
                    return

    def _record_row(self) -> None:
        """Evaluate every task (and, class-IL, the task-IL row from the same passes)."""
        started = time.perf_counter()
        row, task_il_row = accuracy_rows(
            self.model,
            self.scenario,
            self.config.eval_batch_size,
            precision=self.config.eval_precision,
            task_labels=self.task_labels if self.task_il_rows is not None else None,
        )
        self.rows.append(row)
        if self.task_il_rows is not None and task_il_row is not None:
            self.task_il_rows.append(task_il_row)
        self.result.eval_seconds += time.perf_counter() - started
        self.result.record_rows(self.rows, self.task_il_rows, self.strategies)

    # -- checkpoints -----------------------------------------------------------------------
    def checkpoint_state(
        self,
        in_task: dict[str, Any] | None = None,
        order: torch.Tensor | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: ckpt.Scheduler = None,
    ) -> dict[str, Any]:
        """Everything needed to continue this run exactly (:func:`~.checkpoint.capture_learner`)."""
        return ckpt.capture_learner(self, in_task, order, optimizer, scheduler)

    def load_checkpoint(self, state: dict[str, Any]) -> None:
        """Restore :meth:`checkpoint_state` into this freshly built learner; ``run()`` goes on
        (:func:`~.checkpoint.restore_learner`)."""
        self._resume = ckpt.restore_learner(self, state)
        if self.rows:
            self.result.record_rows(self.rows, self.task_il_rows, self.strategies)
        self._restored = True

    # -- one step --------------------------------------------------------------------------
    def _step(
        self, data: TrainingSet, index: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler: ckpt.Scheduler
    ) -> bool:
        """One optimizer step on the rows ``index`` of ``data``; ``True`` if a strategy stops the task."""
        ctx, hooks, model = self.ctx, self.hooks, self.model
        raw = data.x[index]
        task_ids = data.task_ids if not isinstance(data.task_ids, torch.Tensor) else data.task_ids[index]
        batch = Batch(ctx.training_inputs(raw), data.y[index], task_ids, raw)
        ctx.advance(current_size=len(batch))
        for strategy in hooks["replay_batch"]:
            extra = strategy.replay_batch(ctx, batch)
            if extra is not None and len(extra):
                batch = batch.concat(extra)
        with self.precision.autocast():
            output = ModelOutput(*self.dist.forward(self._forward, model, batch.x, batch.task_ids))
            loss = self._base_loss(batch, output)
            for strategy in hooks["loss"]:
                term = strategy.loss(ctx, batch, output)
                if term is not None:
                    loss = loss + term
        self.nonfinite.watch(loss.detach(), ctx.step)
        if self.flat is None:
            optimizer.zero_grad(set_to_none=True)
        else:
            self.flat.zero_grad(optimizer)  # .grad = views of flat.grad, zeroed
        self.precision.backward(loss, optimizer, self._all_reduce if self.dist.world_size > 1 else None)
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

    def _all_reduce(self) -> None:
        """Data-parallel: average the gradient over the ranks (before fp16 unscaling, so every rank
        sees the same overflow); a Ctrl-C on any rank becomes every rank's at this step."""
        if self.dist.reduce_gradients(self.model, self._interrupt_pending) and not self.events.interrupted:
            self.events.interrupt()

    def _base_loss(self, batch: Batch, output: ModelOutput) -> torch.Tensor:
        """The first ``criterion`` hook's loss, else cross-entropy over the whole batch."""
        for strategy in self.hooks["criterion"]:
            loss = strategy.criterion(self.ctx, batch, output)
            if loss is not None:
                return loss
        return F.cross_entropy(output.logits, batch.y)

    def _project(self, batch: Batch) -> None:
        """Let each strategy edit the step's flat gradient in turn, then write it back (flat
        parameters: the gradient buffer is that vector already, nothing is gathered)."""
        direct = self.flat is not None and self.flat.serves_gradient(self.model)
        params = self.flat.params if direct else [p for p in self.model.parameters() if p.grad is not None]
        layout = ParameterLayout(params)
        vector = flat = self.flat.grad if direct else layout.flatten([p.grad for p in params])
        for strategy in self.hooks["project_gradient"]:
            edited = strategy.project_gradient(self.ctx, batch, FlatGradient(flat, layout))
            if edited is not None:
                flat = edited
        if direct and flat is not vector:
            vector.copy_(flat)
        elif not direct:
            for param, part in zip(params, layout.split(flat), strict=True):
                param.grad.copy_(part)
