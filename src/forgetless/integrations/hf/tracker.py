"""Track every kept capability (and the new task's metric) over a fine-tune; summarise forgetting.

The summary speaks the core's vocabulary: a before/after table (rows: before and after the
fine-tune, columns: the capabilities and the new task, like the accuracy matrix ``R``), the
drop of each capability, its backward transfer (``after - before``, sign flipped for perplexity
so that negative always means forgotten;
:func:`forgetless.metrics.backward_transfer` on that 2-row matrix) and its forgetting
``max over evaluations - final`` (Chaudhry et al. 2018, eq. 2, taken over the evaluation points).
Every capability also gets its drop in both forms (``drop_abs``, ``drop_rel``:
:meth:`~forgetless.integrations.hf.capabilities.Capability.drops`), its side figures before and
after (``choice``: ``acc``, ``acc_norm``, their standard errors) and its facts (``choice``:
``items``, ``chance``). A capability whose step-0 score is within 2 standard errors of its chance
level (or below it) is named in ``warnings`` (and logged when measured): its drops cannot be told
from noise.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from torch import nn

from forgetless.errors import ConfigError, NumericalError
from forgetless.integrations.hf.capabilities import Capability
from forgetless.metrics import backward_transfer

_logger = logging.getLogger(__name__)
CHANCE_STDERRS = 2.0
"""A baseline within this many standard errors of chance is warned about."""


def at_chance(capability: Capability, score: float, figures: dict[str, Any]) -> str | None:
    """The one-line warning when ``score`` (the metric at step 0) is within
    :data:`CHANCE_STDERRS` standard errors of the capability's chance level, or below that,
    else ``None``."""
    chance = capability.facts().get("chance")
    stderr = figures.get(f"{capability.metric}_stderr")
    if chance is None or stderr is None or score - chance > CHANCE_STDERRS * stderr:
        return None
    items = capability.facts().get("items")
    where = f"{capability.name}: the baseline {capability.metric} {score:.3f}"
    if score < chance - CHANCE_STDERRS * stderr:
        return (
            f"{where} is below chance ({chance:.3f}) by more than {CHANCE_STDERRS:g} standard errors ({stderr:.3f}) "
            f"on {items} items: check the answers (0-based indices, letters A, B, ...) and the prompt format"
        )
    return (
        f"{where} is within {CHANCE_STDERRS:g} standard errors ({stderr:.3f}) of chance ({chance:.3f}) on {items} "
        "items: its drops cannot be told from noise; use more items (--choice-size), an easier set, or a stronger "
        "model"
    )


class CapabilityTracker:
    """Evaluates capabilities every ``eval_every`` steps and records their curves.

    ``task`` (optional) is the new task's metric, recorded but never counted as forgetting.
    """

    def __init__(self, capabilities: list[Capability], task: Capability | None = None, eval_every: int = 50) -> None:
        if not capabilities:
            raise ConfigError("no capability to keep: give at least one --keep KIND:DATA")
        names = [c.name for c in capabilities]
        if len(set(names)) != len(names):
            raise ConfigError(f"capability names must be unique, got {names}")
        if eval_every < 1:
            raise ConfigError(f"eval_every must be >= 1, got {eval_every}")
        self.capabilities = capabilities
        self.task = task
        self.eval_every = eval_every
        self.history: list[dict[str, Any]] = []
        self.prepared = False

    def prepare(self, model: nn.Module) -> None:
        """Prepare every capability on the model before fine-tuning (once)."""
        if not self.prepared:
            for capability in [*self.capabilities, *([self.task] if self.task else [])]:
                capability.prepare(model)
            self.prepared = True

    def due(self, step: int) -> bool:
        return step % self.eval_every == 0

    def evaluate(self, model: nn.Module, step: int) -> dict[str, Any]:
        """Evaluate all capabilities (and the task), append the record and return it."""
        self.prepare(model)
        start = time.perf_counter()
        scores = {c.name: c.evaluate(model) for c in self.capabilities}
        record: dict[str, Any] = {"step": int(step), "scores": scores}
        figures = {c.name: c.figures() for c in self.capabilities}
        if any(figures.values()):
            record["figures"] = {name: values for name, values in figures.items() if values}
        record["task"] = self.task.evaluate(model) if self.task is not None else None
        self._check_finite(record)
        before = self.history[0]["scores"] if self.history else scores
        record["drops"] = {c.name: c.drop(before[c.name], scores[c.name]) for c in self.capabilities}
        record["eval_seconds"] = time.perf_counter() - start
        if not self.history:
            for capability in self.capabilities:
                warning = at_chance(capability, scores[capability.name], figures[capability.name])
                if warning:
                    _logger.warning(warning)
        self.history.append(record)
        return record

    @staticmethod
    def _check_finite(record: dict[str, Any]) -> None:
        """A NaN or infinite score means the weights diverged: stop before any report is written
        (a report of NaN would replace a good one under ``--force``)."""
        values = {**record["scores"], **({"the new task": record["task"]} if record["task"] is not None else {})}
        for name, value in values.items():
            if not np.isfinite(value):
                raise NumericalError(
                    f"the fine-tune diverged: {name} scored {value} at step {record['step']} (the weights hold "
                    "NaN or infinite values): lower --lr or add --warmup-steps; no report was written"
                )

    @property
    def before(self) -> dict[str, Any]:
        return self.history[0]

    @property
    def after(self) -> dict[str, Any]:
        return self.history[-1]

    @staticmethod
    def max_drop(record: dict[str, Any]) -> tuple[str, float]:
        name = max(record["drops"], key=record["drops"].get)
        return name, record["drops"][name]

    def summary(self, final: dict[str, Any] | None = None) -> dict[str, Any]:
        """Before/after per capability, drop, BWT-style change and forgetting over the curve."""
        if not self.history:
            raise RuntimeError("no evaluation recorded yet")
        final = final or self.after
        out: dict[str, Any] = {"capabilities": {}, "steps": [r["step"] for r in self.history], "warnings": []}
        for capability in self.capabilities:
            name = capability.name
            curve = [r["scores"][name] for r in self.history]
            before, after = curve[0], final["scores"][name]
            best = max(curve) if capability.higher_is_better else min(curve)
            sign = 1.0 if capability.higher_is_better else -1.0
            matrix = np.array([[before, 0.0], [after, 0.0]]) * sign
            drop_abs, drop_rel = capability.drops(before, after)
            entry: dict[str, Any] = {
                "metric": capability.metric,
                "higher_is_better": capability.higher_is_better,
                "before": before,
                "after": after,
                "drop": capability.drop(before, after),
                "drop_abs": drop_abs,
                "drop_rel": drop_rel,
                "max_drop": max(capability.drop(before, v) for v in curve),
                "bwt": backward_transfer(matrix),  # negative = forgotten
                "forgetting": capability.drop(best, after),
                "curve": curve,
            }
            figures = [r.get("figures", {}).get(name) for r in self.history]
            if any(figures):
                first, last = figures[0] or {}, final.get("figures", {}).get(name) or {}
                entry["figures_before"], entry["figures_after"] = first, last
                entry["stderr_before"] = first.get(f"{capability.metric}_stderr")
                entry["stderr_after"] = last.get(f"{capability.metric}_stderr")
                entry["stderr_curve"] = [(f or {}).get(f"{capability.metric}_stderr") for f in figures]
            entry.update(capability.facts())
            warning = at_chance(capability, before, figures[0] or {})
            entry["at_chance"] = warning is not None
            if warning:
                out["warnings"].append(warning)
            out["capabilities"][name] = entry
        if self.task is not None:
            task_curve = [r["task"] for r in self.history]
            out["task"] = {
                "metric": self.task.metric,
                "name": self.task.name,
                "before": task_curve[0],
                "after": final["task"],
                "curve": task_curve,
            }
        drops = [v["drop"] for v in out["capabilities"].values()]
        out["mean_drop"] = float(np.mean(drops))
        out["worst_drop"] = float(np.max(drops))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": self.history,
            "prepared": self.prepared,
            "capabilities": {c.name: c.state_dict() for c in self.capabilities},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state["history"])
        self.prepared = bool(state["prepared"])
        for capability in self.capabilities:
            capability.load_state_dict(state["capabilities"].get(capability.name, {}))
