"""The learner: trains task after task and fills the accuracy matrix.

The hot loop works on in-memory tensors only: a seeded permutation is split into index
batches, each batch is sliced from the task's compact tensors and scaled to floats. Strategies
contribute through the hooks of :class:`~forgetless.strategies.base.Strategy`; the learner only
calls the hooks a strategy overrides, so a plain run costs what a hand-written loop costs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from forgetless.config import RunConfig
from forgetless.data.scenarios import Scenario
from forgetless.errors import NumericalError
from forgetless.models.heads import IncrementalHead
from forgetless.strategies.base import Batch, Strategy, TrainingContext, TrainingSet
from forgetless.training.evaluation import task_accuracies
from forgetless.training.optim import build_optimizer, build_scheduler

Progress = Callable[[int, int, int], None]
"""``progress(task_index, step, steps_in_task)``, called after every optimizer step."""

_HOOKS = (
    "training_set",
    "replay_batch",
    "loss",
    "project_gradient",
    "before_step",
    "after_step",
    "predict",
)


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
        for strategy in strategies:
            replacement = strategy.setup(self.ctx)
            if replacement is not None:
                self.ctx.model = replacement.to(self.device)
        self.hooks = {h: [s for s in strategies if type(s).overrides(h)] for h in _HOOKS}
        self.rows: list[np.ndarray] = []
        self.result = RunResult(self.name, seed, np.zeros((0, 0)), np.zeros(0))

    @property
    def model(self) -> nn.Module:
        return self.ctx.model

    # -- evaluation ----------------------------------------------------------------------
    def _set_active_outputs(self, count: int | None) -> None:
        if count is None:
            return
        for module in self.model.modules():
            if isinstance(module, IncrementalHead):
                module.set_active_outputs(count)

    def evaluate(self) -> np.ndarray:
        """Accuracy on every task's evaluation set (seen and unseen), as one matrix row."""
        predict = None
        if self.hooks["predict"]:
            strategy = self.hooks["predict"][0]

            def predict(x: torch.Tensor, task_index: int) -> torch.Tensor:
                out = strategy.predict(self.ctx, x, task_index)
                return out if out is not None else self.model(x, self.ctx.task_id(task_index))

        return task_accuracies(self.model, self.scenario, self.config.eval_batch_size, predict)

    # -- training ------------------------------------------------------------------------
    def run(self, progress: Progress | None = None) -> RunResult:
        """Train every task in order; after each, evaluate every task. Returns the result."""
        scenario = self.scenario
        self._set_active_outputs(scenario.active_outputs[0] if scenario.active_outputs else None)
        self.result.baseline = self.evaluate()
        for task_index in range(len(self.rows), scenario.num_tasks):
            self.train_task(task_index, progress)
        return self.result

    def _active_outputs_for(self, task_index: int, data: TrainingSet) -> int | None:
        scenario = self.scenario
        if not scenario.active_outputs:
            return None
        seen = scenario.active_outputs[task_index]
        if len(data):
            seen = max(seen, int(data.y.max()) + 1)
        previous = getattr(self, "_active", 0)
        self._active = max(seen, previous)
        return self._active

    def train_task(self, task_index: int, progress: Progress | None = None) -> None:
        """Train task ``task_index`` with every strategy's contribution, then evaluate."""
        ctx, config, scenario = self.ctx, self.config, self.scenario
        task = scenario.tasks[task_index]
        ctx.task_index, ctx.step, ctx.epoch = task_index, 0, 0
        for strategy in self.strategies:
            strategy.before_task(ctx)
        data = TrainingSet(task.train_x, task.train_y, ctx.task_id(task_index))
        for strategy in self.hooks["training_set"]:
            data = strategy.training_set(ctx, data)
        self._set_active_outputs(self._active_outputs_for(task_index, data))

        started = time.perf_counter()
        epochs = config.epochs or 1
        n = len(data)
        steps_per_epoch = math.ceil(n / config.batch_size) if n else 0
        total = epochs * steps_per_epoch
        optimizer = build_optimizer(self.model, config)
        scheduler = build_scheduler(optimizer, config, total)
        stop = False
        self.model.train()
        for epoch in range(epochs if n else 0):
            ctx.epoch = epoch
            order = torch.randperm(n, generator=self.generator).to(data.y.device)
            for index in order.split(config.batch_size):
                stop = self._step(data, index, optimizer, scheduler)
                if progress is not None:
                    progress(task_index, ctx.step, total)
                if stop:
                    self.result.stopped_early[task_index] = ctx.step
                    break
            if stop:
                break
        for strategy in self.strategies:
            strategy.after_task(ctx)
        self.result.train_seconds.append(time.perf_counter() - started)
        self.result.steps.append(ctx.step)

        started = time.perf_counter()
        self.rows.append(self.evaluate())
        self.result.eval_seconds += time.perf_counter() - started
        self._finish_matrix()

    def _finish_matrix(self) -> None:
        self.result.matrix = np.stack(self.rows)
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
        batch = Batch(self.scenario.to_float(raw), data.y[index], task_ids, raw)
        ctx.current_size = len(batch)
        for strategy in hooks["replay_batch"]:
            extra = strategy.replay_batch(ctx, batch)
            if extra is not None and len(extra):
                batch = batch.concat(extra)
        logits = model(batch.x, batch.task_ids)
        loss = F.cross_entropy(logits, batch.y)
        for strategy in hooks["loss"]:
            term = strategy.loss(ctx, batch, logits)
            if term is not None:
                loss = loss + term
        if not torch.isfinite(loss):
            raise NumericalError(
                f"the loss became {loss.item()} at task {ctx.task_index}, step {ctx.step} "
                f"({self.name}): lower the learning rate (--lr) or the strategy's weight "
                f"(e.g. --set ewc.ewc_lambda=...); results of completed tasks were kept"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if hooks["project_gradient"]:
            self._project(batch)
        for strategy in hooks["before_step"]:
            strategy.before_step(ctx)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        ctx.step += 1
        ctx.global_step += 1
        stop = False
        for strategy in hooks["after_step"]:
            stop = bool(strategy.after_step(ctx, batch, logits)) or stop
        return stop

    def _project(self, batch: Batch) -> None:
        """Flatten the gradient, let each strategy edit it in turn, write it back."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        for strategy in self.hooks["project_gradient"]:
            edited = strategy.project_gradient(self.ctx, batch, flat)
            if edited is not None:
                flat = edited
        offset = 0
        for p in params:
            size = p.numel()
            p.grad.copy_(flat[offset : offset + size].view_as(p))
            offset += size
