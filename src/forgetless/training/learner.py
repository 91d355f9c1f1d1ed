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
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from forgetless.config import RunConfig
from forgetless.data.scenarios import Scenario
from forgetless.models.heads import IncrementalHead
from forgetless.strategies.base import Batch, Strategy, TrainingContext, TrainingSet
from forgetless.training import checkpoint as ckpt
from forgetless.training.augment import crop_flip, default_padding
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


@dataclass
class _ResumePoint:
    """Where a mid-task checkpoint stopped: the rest of the task is replayed from here."""

    task_index: int
    epoch: int
    position: int
    """Index of the next batch in the epoch's permutation."""
    order: torch.Tensor
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    rng: dict[str, Any]
    elapsed: float


_HOOKS = (
    "training_set",
    "replay_batch",
    "loss",
    "project_gradient",
    "before_step",
    "after_step",
    "predict",
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
        self.hooks = {h: [s for s in strategies if type(s).overrides(h)] for h in _HOOKS}
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
        self._resume: _ResumePoint | None = None
        self._interrupted = False
        self._next_event = _NEVER
        self.nonfinite = NonFiniteWatch(self.device, self._nonfinite_message)
        self.precision = Precision(config.precision, self.device)

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

    def evaluate(self, tasks: list[int] | None = None) -> np.ndarray:
        """Accuracy on every task's evaluation set (seen and unseen), as one matrix row.

        ``tasks`` restricts it to some tasks (the safety brake's checks, via ``ctx.accuracies``).
        """
        return self._evaluate(tasks)[0]

    def _evaluate(self, tasks: list[int] | None = None, task_il: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`evaluate`, and with ``task_il`` the task-IL row of a class-IL run (else ``None``)."""
        predict = None
        if self.hooks["predict"]:
            strategy = self.hooks["predict"][0]

            def predict(x: torch.Tensor, task_index: int) -> torch.Tensor:
                out = strategy.predict(self.ctx, x, task_index)
                return out if out is not None else self.model(x, self.ctx.task_id(task_index))

        return accuracy_rows(
            self.model,
            self.scenario,
            self.config.eval_batch_size,
            predict,
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
            first = scenario.active_outputs[0] if scenario.active_outputs else None
            self._set_active_outputs(first)
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
        previous = getattr(self, "_active", 0)
        self._active = max(seen, previous)
        return self._active

    def _check_active(self, active: Any, task_index: int) -> None:
        """A checkpoint's active-output count must lie between what the task has and the head."""
        outputs = self.scenario.active_outputs
        if not isinstance(active, int) or not outputs:
            return
        low = outputs[min(task_index, len(outputs)) - 1] if task_index > 0 else 0  # at least the tasks done
        high = max(outputs)
        if not low <= active <= high:
            raise ckpt.CheckpointError(
                f"checkpoint learner.json: loop.active is {active}, but at task {task_index} a class-IL "
                f"head has {low} to {high} active outputs: the checkpoint was edited; start the run again"
            )

    def train_task(self, task_index: int, progress: Progress | None = None) -> None:
        """Train task ``task_index`` with every strategy's contribution, then evaluate."""
        ctx, config, scenario = self.ctx, self.config, self.scenario
        task = scenario.tasks[task_index]
        resume, self._resume = self._resume, None
        if resume is None:
            ctx.task_index, ctx.step, ctx.epoch = task_index, 0, 0
            for strategy in self.strategies:
                strategy.before_task(ctx)
        data = TrainingSet(task.train_x, task.train_y, ctx.task_id(task_index))
        for strategy in self.hooks["training_set"]:
            data = strategy.training_set(ctx, data)
        if resume is None:
            self._set_active_outputs(self._active_outputs_for(task_index, data))

        started = time.perf_counter() - (resume.elapsed if resume else 0.0)
        epochs = config.epochs or 1
        n = len(data)
        steps_per_epoch = math.ceil(n / config.batch_size) if n else 0
        total = epochs * steps_per_epoch
        ctx.steps_in_task = total
        optimizer = build_optimizer(self.model, config)
        scheduler = build_scheduler(optimizer, config, total)
        if resume is not None:
            self._restore_task(resume, optimizer, scheduler)
        self._schedule_next_event()
        stop = False
        self.model.train()
        for epoch in range(resume.epoch if resume else 0, epochs if n else 0):
            ctx.epoch = epoch
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
        """Everything needed to continue this run exactly (tensors and JSON values).

        Between tasks (``in_task`` None) the next task starts afresh; inside a task the epoch,
        the epoch's permutation ``order``, the next batch's position and the optimizer and
        schedule states are kept too.
        """
        ctx, result = self.ctx, self.result
        loop: dict[str, Any] = {
            "task_index": ctx.task_index if in_task else len(self.rows),
            "in_task": in_task is not None,
            "step": ctx.step,
            "global_step": ctx.global_step,
            "active": getattr(self, "_active", None),
            "trainable": [p.requires_grad for p in self.model.parameters()],
            **(in_task or {}),
        }
        return {
            "model": self.model.state_dict(),
            "strategy_names": [s.name for s in self.strategies],
            "strategies": [s.state_dict() for s in self.strategies],
            "optimizer": None
            if optimizer is None
            else {
                "optimizer": optimizer.state_dict(),
                "scheduler": None if scheduler is None else scheduler.state_dict(),
            },
            "loop": loop,
            "order": order,
            "rng": ckpt.capture_rng(self.generator),
            "precision": self.precision.state_dict(),
            "extras": dict(ctx.extras),
            "result": {
                "baseline": torch.from_numpy(np.asarray(result.baseline, dtype=np.float64)),
                "rows": [torch.from_numpy(np.asarray(r, dtype=np.float64)) for r in self.rows],
                "task_il_rows": None
                if self.task_il_rows is None
                else [torch.from_numpy(np.asarray(r, dtype=np.float64)) for r in self.task_il_rows],
                "train_seconds": list(result.train_seconds),
                "eval_seconds": result.eval_seconds,
                "steps": list(result.steps),
                "stopped_early": [[k, v] for k, v in result.stopped_early.items()],
            },
        }

    def load_checkpoint(self, state: dict[str, Any]) -> None:
        """Restore :meth:`checkpoint_state` into this freshly built learner; ``run()`` goes on.

        Strategies are restored first (an architecture method may rebuild its model from its
        state), then the model weights; the RNG states last, when the loop resumes.
        """
        names = [s.name for s in self.strategies]
        if state.get("strategy_names") != names:
            raise ckpt.CheckpointError(
                f"checkpoint holds strategies {state.get('strategy_names')}, this run has {names}"
            )
        try:
            for strategy, strategy_state in zip(self.strategies, state["strategies"]):
                strategy.load_state_dict(strategy_state)
            missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
            if missing or unexpected:
                raise ckpt.CheckpointError(
                    f"checkpoint weights do not fit the model of {self.name} (missing "
                    f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
                )
            loop, result = state["loop"], state["result"]
            for param, trainable in zip(self.model.parameters(), loop["trainable"], strict=True):
                param.requires_grad_(trainable)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise ckpt.CheckpointError(
                f"checkpoint state does not fit {self.name}: {type(error).__name__}: {error}"
            ) from None
        ctx = self.ctx
        ctx.task_index, ctx.step = loop["task_index"], loop["step"]
        ctx.global_step, ctx.epoch = loop["global_step"], loop.get("epoch", 0)
        ctx.extras.update(state.get("extras") or {})
        self.precision.load_state_dict(state.get("precision") or {})
        if loop["active"] is not None:
            self._check_active(loop["active"], loop["task_index"])
            self._active = loop["active"]
            self._set_active_outputs(self._active)
        self.result.baseline = result["baseline"].numpy()
        self.rows = [row.numpy() for row in result["rows"]]
        task_il_rows = result.get("task_il_rows")
        if self.task_labels is None or (task_il_rows is None and self.rows):
            self.task_il_rows = None  # not class-IL, or a checkpoint from before task-IL rows
        else:
            self.task_il_rows = [row.numpy() for row in task_il_rows or []]
        self.result.train_seconds = list(result["train_seconds"])
        self.result.eval_seconds = float(result["eval_seconds"])
        self.result.steps = list(result["steps"])
        self.result.stopped_early = {int(k): int(v) for k, v in result["stopped_early"]}
        if self.rows:
            self._finish_matrix()
        self._restored = True
        if loop["in_task"]:
            optimizer = state["optimizer"] or {}
            self._resume = _ResumePoint(
                task_index=loop["task_index"],
                epoch=loop["epoch"],
                position=loop["position"],
                order=state["order"],
                optimizer=optimizer.get("optimizer"),
                scheduler=optimizer.get("scheduler"),
                rng=state["rng"],
                elapsed=float(loop["elapsed"]),
            )
        else:
            ckpt.restore_rng(state["rng"], self.generator)

    def _restore_task(
        self,
        resume: _ResumePoint,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    ) -> None:
        """Put a rebuilt task's optimizer, schedule and RNGs back where the checkpoint was."""
        try:
            optimizer.load_state_dict(resume.optimizer)
            if scheduler is not None and resume.scheduler is not None:
                scheduler.load_state_dict(resume.scheduler)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise ckpt.CheckpointError(f"checkpoint optimizer state does not fit {self.name}: {error}") from None
        ckpt.restore_rng(resume.rng, self.generator)

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
        ctx.current_size = len(batch)
        for strategy in hooks["replay_batch"]:
            extra = strategy.replay_batch(ctx, batch)
            if extra is not None and len(extra):
                batch = batch.concat(extra)
        with self.precision.autocast():
            logits = model(batch.x, batch.task_ids)
            loss = F.cross_entropy(logits, batch.y)
            for strategy in hooks["loss"]:
                term = strategy.loss(ctx, batch, logits)
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
        ctx.step += 1
        ctx.global_step += 1
        stop = False
        for strategy in hooks["after_step"]:
            stop = bool(strategy.after_step(ctx, batch, logits)) or stop
        return stop

    def _nonfinite_message(self, step: int, value: float) -> str:
        return (
            f"the loss became {value} at task {self.ctx.task_index}, step {step} "
            f"({self.name}): lower the learning rate (--lr) or the strategy's weight "
            f"(e.g. --set ewc.ewc_lambda=...); results of completed tasks were kept"
        )

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
