"""``ForgettingCallback``: a ``transformers.TrainerCallback`` that guards kept capabilities.

Every ``eval_every`` optimizer steps it evaluates the tracker's capabilities. With
``stop_if_drop`` set it keeps an in-memory copy of the trainable weights at the best acceptable
evaluation (every capability's drop within its threshold; among those the best new-task
metric, or the latest when there is none) and, at the first evaluation where some capability
drops by more than its threshold, stops training and restores that copy (evaluation-driven
stopping, a form of early stopping: Prechelt 1998, applied to the old capabilities instead of
validation loss). ``stop_if_drop`` is one number for every capability or one per kind / full
name (``"perplexity=0.2,choice=0.05"`` or ``{"perplexity": 0.2, "choice": 0.05}``:
:func:`~forgetless.training.brake.parse_thresholds`); a drop is relative for perplexity and
absolute for accuracies (:mod:`~forgetless.integrations.hf.capabilities.base`).

**Logs.** Every evaluation goes through ``Trainer.log`` (so into ``trainer.state.log_history``
and every ``report_to`` integration) at its step as ``keep/<capability>`` (the metric),
``forget/<capability>`` (its drop from step 0: relative for perplexity, absolute for
accuracies), ``forget/worst`` (the largest drop) and ``task/<task>`` (the new task's metric,
when the tracker has one); a stop logs ``forget/stopped_at_step`` and ``forget/restored_step``.
A :class:`~forgetless.integrations.hf.trainer.ForgettingTrainerMixin` trainer
(``ForgetlessTrainer``, ``ForgetlessSFTTrainer``) attaches its callbacks itself; under a plain
``Trainer`` or TRL ``SFTTrainer`` the callback finds, when training begins, the trainer whose
``train()`` called it (a callback is handed the model, optimizer and loaders, never the
trainer; ``callback.attach(trainer)`` says it explicitly). Unattached, the entries reach
``log_history`` only (no integration sees them) and a warning says so. The entries go through
``Trainer.log`` itself, not a subclass's ``log`` (TRL's would fold its averaged training
metrics into them), and leave the step's own training-loss log in place. Each ``Trainer.evaluate()`` also carries
``eval_keep_<capability>``, ``eval_forget_<capability>``, ``eval_forget_worst`` (and
``eval_task_<task>``), measured at that step, so that ``metric_for_best_model`` and
``EarlyStoppingCallback`` can use them (with a plain ``Trainer``: list this callback before
``EarlyStoppingCallback``).

**Checkpoints.** At each Trainer save the callback writes its state into the checkpoint folder:
``forgetless_callback.json`` / ``.safetensors`` (the tracker's ``state_dict``: every record so
far, the step-0 baseline first, and the fitted heads; the best record, the stop step) and
``forgetless_best.safetensors`` (the best weights, under the model's parameter names). Nothing
is pickled. When ``trainer.train(resume_from_checkpoint=...)`` resumes, a new callback (with a
tracker of the same capabilities) loads that state back at ``on_train_begin``, so the report of
the resumed run is the one of an uninterrupted run. The folder is the one given to ``train``
(known to a ``ForgettingTrainerMixin`` trainer, or set ``callback.resume_from``), else
``args.resume_from_checkpoint``, else ``<output_dir>/checkpoint-<step>``; a resume from a
checkpoint without that state is refused (its "before" would be the resumed model).
"""

from __future__ import annotations

import inspect
import json
import logging
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from forgetless.integrations.hf.tracker import CapabilityTracker
from forgetless.training.brake import StopRule, parse_thresholds

Listener = Callable[[dict[str, Any]], None]
STATE_NAME = "forgetless_callback"
"""``<checkpoint>/forgetless_callback.json`` + ``.safetensors``: the callback's state."""
BEST_WEIGHTS_NAME = "forgetless_best.safetensors"
"""``<checkpoint>/forgetless_best.safetensors``: the best weights (parameter name -> tensor)."""

_logger = logging.getLogger(__name__)


class ForgettingCallback(TrainerCallback):
    """Track capabilities during ``Trainer.train()``; optionally stop and restore the best weights."""

    def __init__(
        self,
        tracker: CapabilityTracker,
        stop_if_drop: float | str | dict[str, float] | None = None,
        restore_best: bool = True,
        listeners: list[Listener] | None = None,
    ) -> None:
        self.tracker = tracker
        self.stop_if_drop = parse_thresholds(stop_if_drop)
        self.rule = StopRule(self.stop_if_drop)
        self.rule.check_names([c.name for c in tracker.capabilities])
        self.stopped_by: list[dict[str, float | str]] = []
        """Each capability past its threshold at the stop: ``capability``, ``drop``, ``threshold``."""
        self.restore_best = restore_best
        self.listeners = list(listeners or [])
        self.stopped_at: int | None = None
        self.best_record: dict[str, Any] | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.final_record: dict[str, Any] | None = None
        self.resume_from: str | None = None
        """Checkpoint folder the next ``train()`` resumes from (set by ``ForgettingTrainerMixin.train``)."""
        self._tracked: list[str] = []
        self._trainer: weakref.ref[Any] | None = None
        self._running = False
        self._warned = False

    def attach(self, trainer: Any) -> ForgettingCallback:
        """Log through ``trainer.log`` (``log_history`` and every ``report_to`` integration)."""
        self._trainer = weakref.ref(trainer)
        return self

    def _find_trainer(self, depth: int = 12) -> None:
        """Attach to the ``Trainer`` whose ``train()`` is calling this callback, found among the
        calling frames' ``self`` (a callback is handed no trainer); only a trainer whose own
        callback handler holds this callback counts. Unfound: :meth:`_log` warns once."""
        frame = inspect.currentframe()
        for _ in range(depth):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                return
            owner = frame.f_locals.get("self")
            handler = getattr(owner, "callback_handler", None)
            if isinstance(owner, Trainer) and self in getattr(handler, "callbacks", ()):
                self.attach(owner)
                return

    # -- helpers ------------------------------------------------------------------------------
    @property
    def guarding(self) -> bool:
        return self.stop_if_drop is not None and self.restore_best

    def acceptable(self, record: dict[str, Any]) -> bool:
        """Every kept capability within its ``stop_if_drop`` (:class:`~forgetless.training.brake.StopRule`)."""
        return self.rule.acceptable(record["drops"])

    def _better(self, record: dict[str, Any]) -> bool:
        task = self.tracker.task
        if self.best_record is None or task is None:
            return True
        return StopRule.better(record["task"], self.best_record["task"], task.higher_is_better)

    def _snapshot(self, model: nn.Module) -> dict[str, torch.Tensor]:
        params = dict(model.named_parameters())
        return {n: params[n].detach().to("cpu", copy=True) for n in self._tracked}

    def _restore(self, model: nn.Module) -> None:
        assert self.best_weights is not None
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self.best_weights.items():
                params[name].copy_(value.to(params[name].device))

    def _log(self, state: TrainerState, logs: dict[str, float]) -> None:
        trainer = self._trainer() if self._trainer is not None else None
        if trainer is not None:
            # Trainer.log itself: a subclass's log (TRL's) would merge and reset its averaged training
            # metrics into this entry; and on_log clears should_log, which would drop this step's loss log
            if isinstance(trainer, Trainer):
                should_log = trainer.control.should_log
                Trainer.log(trainer, dict(logs))
                trainer.control.should_log = should_log
            else:
                trainer.log(dict(logs))
            return
        state.log_history.append({**logs, "step": state.global_step})
        if not self._warned:
            self._warned = True
            _logger.warning(
                "ForgettingCallback is not attached to its Trainer: its figures reach trainer.state.log_history "
                "only, no report_to integration; use ForgetlessTrainer / ForgettingTrainerMixin or call "
                "callback.attach(trainer)"
            )

    def metrics(self, record: dict[str, Any], prefix: str = "") -> dict[str, float]:
        """The logged figures of ``record``: ``keep/…``, ``forget/…`` (``prefix="eval_"``: ``eval_keep_…``),
        and each capability's side figures as ``keep/<name>/<figure>`` (``choice``: ``acc``,
        ``acc_norm`` and their standard errors; ``eval_keep_<name>_<figure>``)."""
        keep, forget, task = (
            ("keep/", "forget/", "task/") if not prefix else (f"{prefix}keep_", f"{prefix}forget_", f"{prefix}task_")
        )
        joint = "/" if not prefix else "_"
        out = {f"{keep}{name}": float(value) for name, value in record["scores"].items()}
        for name, figures in record.get("figures", {}).items():
            numbers = {k: v for k, v in figures.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            out.update({f"{keep}{name}{joint}{k}": float(v) for k, v in numbers.items()})
        out.update({f"{forget}{name}": float(value) for name, value in record["drops"].items()})
        out[f"{forget}worst"] = float(self.tracker.max_drop(record)[1])
        if self.tracker.task is not None and record["task"] is not None:
            out[f"{task}{self.tracker.task.name}"] = float(record["task"])
        return out

    def _evaluate(self, model: nn.Module, state: TrainerState) -> dict[str, Any]:
        record = self.tracker.evaluate(model, state.global_step)
        for listener in self.listeners:
            listener(record)
        self._log(state, self.metrics(record))
        return record

    def _consider(self, model: nn.Module, record: dict[str, Any], state: TrainerState, control: TrainerControl) -> None:
        if self.acceptable(record):
            if self._better(record):
                self.best_record = record
                if self.guarding:
                    self.best_weights = self._snapshot(model)
            return
        if self.stop_if_drop is not None:
            self.stopped_at = record["step"]
            self.stopped_by = [
                {"capability": name, "drop": drop, "threshold": limit}
                for name, drop, limit in self.rule.crossed(record["drops"])
            ]
            control.should_training_stop = True
            event = {"forget/stopped_at_step": record["step"]}
            if self.guarding and self.best_weights is not None:
                self._restore(model)
                self.final_record = {**self.best_record, "restored_at": record["step"]}
                event["forget/restored_step"] = self.best_record["step"]
            self._log(state, event)

    # -- checkpoints ----------------------------------------------------------------------------
    def save(self, folder: str | Path, step: int) -> None:
        """Write the state into a checkpoint folder (JSON + safetensors; nothing pickled)."""
        from safetensors.torch import save

        from forgetless.io import write_synced
        from forgetless.training.checkpoint import write_tree

        folder = Path(folder)
        state = self.state_dict()
        best = state.pop("best_weights")
        state["global_step"] = int(step)
        state["has_best_weights"] = best is not None
        if best is not None:
            write_synced(folder / BEST_WEIGHTS_NAME, save({n: t.contiguous() for n, t in best.items()}))
        write_tree(folder, STATE_NAME, state)

    def load(self, folder: str | Path) -> None:
        """Load the state :meth:`save` wrote (the tracker must keep the same capabilities)."""
        from forgetless.training.checkpoint import CheckpointError, load_tensors, read_tree

        folder = Path(folder)
        state = read_tree(folder, STATE_NAME)
        history = state["tracker"]["history"]
        saved = sorted(history[0]["scores"]) if history else []
        names = sorted(c.name for c in self.tracker.capabilities)
        if saved != names:
            raise CheckpointError(
                f"{folder}: the checkpoint tracked capabilities {saved}, this tracker keeps {names}: "
                "resume with the same --keep capabilities"
            )
        state["best_weights"] = load_tensors(folder / BEST_WEIGHTS_NAME) if state["has_best_weights"] else None
        self.load_state_dict(state)

    def _resume_folder(self, args: TrainingArguments, step: int) -> Path:
        from forgetless.training.checkpoint import CheckpointError

        given = [self.resume_from, getattr(args, "resume_from_checkpoint", None)]
        candidates = [Path(c) for c in given if isinstance(c, (str, Path)) and c]
        candidates.append(Path(args.output_dir) / f"checkpoint-{step}")
        for folder in candidates:
            path = folder / f"{STATE_NAME}.json"
            try:
                saved = json.loads(path.read_text(encoding="utf-8")).get("data", {}).get("global_step")
            except (OSError, ValueError, AttributeError):
                continue
            if saved == step:
                return folder
        raise CheckpointError(
            f"resuming at step {step}, but no forgetless state ({STATE_NAME}.json) of that step is in "
            f"{', '.join(str(c) for c in dict.fromkeys(candidates))}: this checkpoint was not saved with a "
            "ForgettingCallback, so the report would take the resumed model as 'before'; start over, or "
            "set callback.resume_from to the checkpoint folder"
        )

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
        if self._trainer is None:
            self._find_trainer()
        self._tracked = [n for n, p in model.named_parameters() if p.requires_grad]
        self._running = True
        if state.global_step > 0:  # resumed from a checkpoint
            self.load(self._resume_folder(args, state.global_step))
        elif not self.tracker.history:
            self._consider(model, self._evaluate(model, state), state, control)

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        assert model is not None
        if self.stopped_at is not None:  # resumed from a checkpoint saved at the stop: undo the step
            control.should_training_stop = True
            if self.guarding and self.best_weights is not None:
                self._restore(model)
        elif self.tracker.due(state.global_step):
            self._consider(model, self._evaluate(model, state), state, control)

    def eval_metrics(
        self, model: nn.Module, state: TrainerState, control: TrainerControl, prefix: str = "eval"
    ) -> dict[str, float]:
        """``<prefix>_keep_<capability>`` & co. for ``Trainer.evaluate()`` at this step (evaluated
        now when this step has no record yet; the restored record after a stop)."""
        record = None
        history = self.tracker.history
        if self._running and self.stopped_at is None and (not history or history[-1]["step"] != state.global_step):
            record = self._evaluate(model, state)
            self._consider(model, record, state, control)
        if record is None:
            record = self.final_record if self.stopped_at is not None and self.final_record else None
            record = record or (history[-1] if history else None)
        return self.metrics(record, f"{prefix}_") if record is not None else {}

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        # A ForgettingTrainerMixin trainer has put them in already (and logged them); a plain
        # Trainer has not: add them to the metrics it returns and to its last log entry.
        if metrics is None or model is None:
            return
        prefix = next((k[: -len("_runtime")] for k in metrics if k.endswith("_runtime")), "eval")
        if f"{prefix}_forget_worst" in metrics:
            return
        extra = self.eval_metrics(model, state, control, prefix)
        metrics.update(extra)
        last = state.log_history[-1] if state.log_history else {}
        if last.get("step") == state.global_step and f"{prefix}_runtime" in last:
            last.update(extra)

    def on_save(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if args.should_save and self.tracker.history and folder.is_dir():
            self.save(folder, state.global_step)

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        assert model is not None
        self._running = False
        if args.load_best_model_at_end and state.best_model_checkpoint is not None:
            # the Trainer has just loaded its best checkpoint: report the record of that step
            at_best = [r for r in self.tracker.history if r["step"] == state.best_global_step]
            self.final_record = at_best[-1] if at_best else self._evaluate(model, state)
        elif self.stopped_at is None:
            if self.tracker.after["step"] != state.global_step:
                self._evaluate(model, state)
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
        out["stopped_by"] = list(self.stopped_by)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "tracker": self.tracker.state_dict(),
            "stopped_at": self.stopped_at,
            "stopped_by": self.stopped_by,
            "best_record": self.best_record,
            "best_weights": self.best_weights,
            "final_record": self.final_record,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state["tracker"])
        self.stopped_at = state["stopped_at"]
        self.stopped_by = list(state.get("stopped_by", []))
        self.best_record = state["best_record"]
        self.best_weights = state["best_weights"]
        self.final_record = state["final_record"]
