"""MAS: memory aware synapses (Aljundi et al. 2018, ECCV, eqs. 3-4).

Importance needs no labels: after each task,

    Omega_ij = 1/N sum_n | d ||F(x_n)||_2^2 / d theta_ij |          (eq. 4, per sample)

on ``samples`` training inputs of the task (``F`` = the logits; labels are never read), in
batch via :mod:`forgetless.strategies._fisher`. Importances of successive tasks are combined
by a running mean over tasks (``accumulate="mean"``, default: the penalty's scale stays that of
one task) or summed (``"sum"``). While training later tasks:

    L(theta) = L_n(theta) + lambda * sum_ij Omega_ij (theta_ij - theta*_ij)^2     (eq. 3)

with ``theta*`` the parameters after the previous task. Defaults chosen on a validation split:
docs/tuning-regularization.md.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from forgetless.strategies import register
from forgetless.strategies._fisher import mas_importance
from forgetless.strategies._penalty import PenaltyStrategy, per_scenario, snapshot
from forgetless.strategies.base import TrainingContext

LAMBDA_DEFAULTS = {"task": 10.0, "domain": 0.1, "class": 0.1}
"""Default ``mas_lambda`` per scenario, from the validation search."""


class MASParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mas_lambda: float | None = Field(
        None, ge=0.0, description="penalty strength lambda (eq. 3); unset: 10 task-IL, else 0.1"
    )
    samples: int = Field(1024, ge=1, description="training inputs importance is taken on")
    accumulate: Literal["mean", "sum"] = Field("mean", description="how tasks' Omegas combine")


@register
class MAS(PenaltyStrategy):
    name = "mas"
    family = "regularization"
    speed_target = 1.3
    summary = "memory aware synapses: label-free importance from output sensitivity"
    Params = MASParams
    stacks = ("run", "finetune")

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.tasks_seen = 0

    def penalty_scale(self, ctx: TrainingContext) -> float:
        return per_scenario(self.params.mas_lambda, LAMBDA_DEFAULTS, ctx.scenario.kind)

    def expected_terms(self, tasks_done: int) -> int:
        """One consolidated term once a task has finished."""
        return min(tasks_done, 1)

    def after_task(self, ctx: TrainingContext) -> None:
        new = self.importance(
            ctx,
            self.params.samples,
            lambda s: mas_importance(s.module, s.x, s.task_id, names=s.names, chunk_size=s.chunk_size),
        )
        if self.penalty.terms:
            old = self.penalty.term_dicts(0)[0]
            k = self.tasks_seen
            if self.params.accumulate == "mean":
                new = {n: (k * old[n] + v) / (k + 1) if n in old else v for n, v in new.items()}
            else:
                new = {n: old[n] + v if n in old else v for n, v in new.items()}
        self.tasks_seen += 1
        self.penalty.clear()
        self.penalty.add_term(new, snapshot(ctx.model))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "tasks_seen": self.tasks_seen}

    def load_state_dict(self, state: dict[str, Any], ctx: TrainingContext) -> None:
        super().load_state_dict(state, ctx)
        self.tasks_seen = int(state["tasks_seen"])
