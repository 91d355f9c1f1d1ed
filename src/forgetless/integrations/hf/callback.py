"""``ForgettingCallback``: a ``transformers.TrainerCallback`` that guards kept capabilities.

Every ``eval_every`` optimizer steps it evaluates the tracker's capabilities. With
``stop_if_drop`` set it keeps an in-memory copy of the trainable weights at the best acceptable
evaluation (every capability's drop ``<= stop_if_drop``; among those the best new-task metric,
or the latest when there is none) and, at the first evaluation where some capability drops by
more than the threshold, stops training and restores that copy (evaluation-driven stopping, a
form of early stopping: Prechelt 1998, applied to the old capabilities instead of validation loss).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from forgetless.errors import ConfigError
from forgetless.integrations.hf.tracker import CapabilityTracker

Listener = Callable[[dict[str, Any]], None]


class ForgettingCallback(TrainerCallback):
    """Track capabilities during ``Trainer.train()``; optionally stop and restore the best weights."""

    def __init__(
        self,
        tracker: CapabilityTracker,
        stop_if_drop: float | None = None,
        restore_best: bool = True,
        listeners: list[Listener] | None = None,
    ) -> None:
        if stop_if_drop is not None and stop_if_drop < 0:
            raise ConfigError(f"stop_if_drop must be >= 0, got {stop_if_drop}")
        self.tracker = tracker
        self.stop_if_drop = stop_if_drop
        self.restore_best = restore_best
        self.listeners = list(listeners or [])
        self.stopped_at: int | None = None
        self.best_record: dict[str, Any] | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.final_record: dict[str, Any] | None = None
        self._tracked: list[str] = []

    # -- helpers ------------------------------------------------------------------------------
    def acceptable(self, record: dict[str, Any]) -> bool:
        if self.stop_if_drop is None:
            return True
        return self.tracker.max_drop(record)[1] <= self.stop_if_drop

    def _better(self, record: dict[str, Any]) -> bool:
        task = self.tracker.task
        if self.best_record is None or task is None or record["task"] is None:
            return True
        new, old = record["task"], self.best_record["task"]
        return new >= old if task.higher_is_better else new <= old

    def _snapshot(self, model: nn.Module) -> dict[str, torch.Tensor]:
        params = dict(model.named_parameters())
        return {n: params[n].detach().to("cpu", copy=True) for n in self._tracked}

    def _restore(self, model: nn.Module) -> None:
        assert self.best_weights is not None
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self.best_weights.items():
                params[name].copy_(value.to(params[name].device))

    def _evaluate(self, model: nn.Module, step: int) -> dict[str, Any]:
        record = self.tracker.evaluate(model, step)
        for listener in self.listeners:
            listener(record)
        return record

    def _consider(self, model: nn.Module, record: dict[str, Any], control: TrainerControl) -> None:
        guarding = self.stop_if_drop is not None and self.restore_best
        if self.acceptable(record):
            if self._better(record):
                self.best_record = record
                if guarding:
                    self.best_weights = self._snapshot(model)
            return
        if self.stop_if_drop is not None:
            self.stopped_at = record["step"]
            control.should_training_stop = True
            if guarding and self.best_weights is not None:
                self._restore(model)
                self.final_record = {**self.best_record, "restored_at": record["step"]}

    # -- Trainer events -----------------------------------------------------------------------
    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        assert model is not None
        self._tracked = [n for n, p in model.named_parameters() if p.requires_grad]
        if not self.tracker.history:
            self._consider(model, self._evaluate(model, state.global_step), control)

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        assert model is not None
        if self.stopped_at is None and self.tracker.due(state.global_step):
            self._consider(model, self._evaluate(model, state.global_step), control)

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        assert model is not None
        if self.stopped_at is None:
            if self.tracker.after["step"] != state.global_step:
                self._evaluate(model, state.global_step)
            self.final_record = self.tracker.after
        elif self.final_record is None:  # stopped, nothing to restore
            self.final_record = self.tracker.after

    def summary(self) -> dict[str, Any]:
        out = self.tracker.summary(self.final_record)
        out["stopped_at"] = self.stopped_at
        out["restored_step"] = (
            self.final_record["step"]
            if self.final_record and self.stopped_at is not None and self.restore_best
            else None
        )
        out["stop_if_drop"] = self.stop_if_drop
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "tracker": self.tracker.state_dict(),
            "stopped_at": self.stopped_at,
            "best_record": self.best_record,
            "best_weights": self.best_weights,
            "final_record": self.final_record,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state["tracker"])
        self.stopped_at = state["stopped_at"]
        self.best_record = state["best_record"]
        self.best_weights = state["best_weights"]
        self.final_record = state["final_record"]
