"""L2-SP: an L2 penalty toward the starting point (Li, Grandvalet & Davoine 2018, ICML, eq. 3).

    Omega(w) = (alpha / 2) * ||w_S - w0_S||^2 + (beta / 2) * ||w_new||^2

``w0`` is the starting point and ``S`` the parameters that existed (were trained) there; new
parameters (a classifier head the start point did not train) only get weight decay ``beta``.

In a continual stream the starting point of each task is the model the earlier tasks left
(``anchor="previous"``, default): from the second task on, ``w0`` = the parameters when the
task starts; parameters that no earlier task changed (heads of tasks not trained yet in
task-IL) count as new and get ``beta``. No penalty on the first task (nothing to keep yet),
unless the run starts from pretrained weights (``ctx.pretrained``, a fine-tune): those count
as trained, so a fine-tune anchors them at the pretrained values and leaves a new head free.
``anchor="initial"`` keeps the parameters the run started from (a pretrained model) as
``w0`` for every task, the first included, with ``alpha`` on every parameter (to put ``beta``
on a new head of a pretrained model, use :class:`~forgetless.strategies._penalty.
AnchoredPenalty` with a name filter). "Changed" is judged per parameter tensor.
Defaults chosen on a validation split: docs/tuning-regularization.md.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from forgetless.strategies import register
from forgetless.strategies._penalty import PenaltyStrategy, per_scenario, snapshot
from forgetless.strategies.base import TrainingContext

ALPHA_DEFAULTS = {"task": 1.0, "domain": 0.01, "class": 0.01}
"""Default ``alpha`` per scenario, from the validation search."""


class L2SPParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha: float | None = Field(
        None, ge=0.0, description="weight toward the start point w0; unset: 1 task-IL, else 0.01"
    )
    beta: float = Field(0.0, ge=0.0, description="weight decay of parameters new at the start")
    anchor: Literal["previous", "initial"] = Field(
        "previous", description="w0 = parameters at each task's start, or at the run's start"
    )


@register
class L2SP(PenaltyStrategy):
    name = "l2sp"
    family = "regularization"
    speed_target = 1.3
    summary = "L2-SP: uniform L2 penalty toward the starting point (+ decay of new parameters)"
    Params = L2SPParams
    stacks = ("run", "finetune")

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.trained: set[str] = set()
        self.task_start: dict[str, torch.Tensor] = {}

    def penalty_scale(self, ctx: TrainingContext) -> float:
        return 0.5

    def term_weight(self) -> None:
        """alpha toward the start point, beta for new parameters: two weights."""
        return None

    def before_task(self, ctx: TrainingContext) -> None:
        alpha = per_scenario(self.params.alpha, ALPHA_DEFAULTS, ctx.scenario.kind)
        start = snapshot(ctx.model)
        self.task_start = start
        self.trained |= ctx.pretrained & start.keys()
        if self.params.anchor == "initial":
            if not self.penalty.terms and (ctx.task_index == 0 or ctx.pretrained):
                self.penalty.add_term(None, start, weight=alpha)
            return
        self.penalty.clear()
        if ctx.task_index == 0 and not self.trained:
            return
        existing = {n: v for n, v in start.items() if n in self.trained}
        new = [n for n in start if n not in self.trained]
        if existing:
            self.penalty.add_term(None, existing, weight=alpha)
        if new and self.params.beta > 0:
            self.penalty.add_term(None, None, weight=self.params.beta, names=new)

    @torch.no_grad()
    def after_task(self, ctx: TrainingContext) -> None:
        for n, p in ctx.model.named_parameters():
            if n in self.task_start and not torch.equal(p, self.task_start[n]):
                self.trained.add(n)
        self.task_start = {}

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "trained": sorted(self.trained),
            "task_start": dict(self.task_start),
        }

    def load_state_dict(self, state: dict[str, Any], ctx: TrainingContext) -> None:
        super().load_state_dict(state, ctx)
        self.trained = set(state["trained"])
        self.task_start = {n: v.clone() for n, v in state["task_start"].items()}
