"""Online EWC (Schwarz et al. 2018, "Progress & Compress", section 2.2, p. 5).

One running Fisher and one anchor, so the penalty's size does not grow with the tasks:

    F*_t = gamma * F*_{t-1} + F_t,      theta* = parameters after task t
    L(theta) = L_B(theta) + (lambda / 2) * sum_i gamma * F*_{t,i} (theta_i - theta*_i)^2

(the paper applies ``gamma`` once more when the penalty is used, ``||.||_{gamma F*}``;
``gamma = 1`` is EWC with summed Fishers and the latest anchor). The Fisher is estimated as in
:mod:`forgetless.strategies.ewc`. Defaults chosen on a validation split:
docs/tuning-regularization.md.
"""

from __future__ import annotations

import torch
from pydantic import Field

from forgetless.strategies import register
from forgetless.strategies._penalty import PenaltyStrategy, per_scenario, snapshot
from forgetless.strategies.base import TrainingContext
from forgetless.strategies.ewc import FisherParams, estimate_fisher

LAMBDA_DEFAULTS = {"task": 10000.0, "domain": 1000.0, "class": 1000.0}
"""Default ``ewc_lambda`` per scenario, from the validation search."""


class OnlineEWCParams(FisherParams):
    ewc_lambda: float | None = Field(
        None, ge=0.0, description="penalty strength lambda; unset: 10000 task-IL, else 1000"
    )
    gamma: float = Field(1.0, ge=0.0, le=1.0, description="decay of the running Fisher")


@register
class OnlineEWC(PenaltyStrategy):
    name = "online-ewc"
    family = "regularization"
    speed_target = 1.3
    summary = "online EWC: one running Fisher (decay gamma) and one anchor, constant memory"
    Params = OnlineEWCParams
    stacks = ("run", "finetune")

    def penalty_scale(self, ctx: TrainingContext) -> float:
        return per_scenario(self.params.ewc_lambda, LAMBDA_DEFAULTS, ctx.scenario.kind) / 2.0

    @property
    def fisher(self) -> dict[str, torch.Tensor] | None:
        """The running Fisher ``F*`` (``None`` before the first task ends)."""
        return self.penalty.term_dicts(0)[0] if self.penalty.terms else None

    def term_weight(self) -> float:
        """The running Fisher's term carries gamma (eq. 8's decay of the previous sum)."""
        return self.params.gamma

    def expected_terms(self, tasks_done: int) -> int:
        """One consolidated term once a task has finished."""
        return min(tasks_done, 1)

    def after_task(self, ctx: TrainingContext) -> None:
        new = estimate_fisher(ctx, self.params)
        old = self.fisher
        if old is not None:
            new = {n: self.params.gamma * old[n] + f if n in old else f for n, f in new.items()}
        self.penalty.clear()
        self.penalty.add_term(new, snapshot(ctx.model), weight=self.params.gamma)
