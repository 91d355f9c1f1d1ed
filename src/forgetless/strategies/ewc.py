"""EWC: elastic weight consolidation (Kirkpatrick et al. 2017, PNAS, eq. 3).

After task ``t`` the diagonal Fisher ``F_t`` and the parameters ``theta*_t`` are stored; while
training every later task the loss gains one term per earlier task:

    L(theta) = L_B(theta) + sum_{t < now} (lambda / 2) * sum_i F_{t,i} (theta_i - theta*_{t,i})^2

so memory grows linearly with the number of tasks (two parameter-sized vectors per task, kept as
the paper has them: each task's Fisher stays inspectable, ``penalty.term_dicts(t)``; see
``online-ewc`` for the constant-size variant). The cost per step does not have to grow with it:
by default (``merge_terms``) the terms are evaluated through one exact equivalent,
``sum_i S_i (theta_i - mu_i)^2 + C`` with ``S = sum_t F_t`` and ``mu = sum_t F_t theta*_t / S``
(:meth:`AnchoredPenalty._merged`), the same loss value and gradient at the cost of a single
term; ``merge_terms=False`` evaluates term by term. This is still EWC, not Online EWC: every
task keeps its own anchor's pull (``online-ewc`` keeps only the latest anchor and decays old
Fishers). The Fisher is estimated on
``fisher_samples`` training inputs of the task, with per-sample squared gradients computed in
batch (:mod:`forgetless.strategies._fisher`): ``sampled`` (labels drawn from the model, as in
the paper; default), ``empirical`` (data labels) or ``exact`` (expectation over classes).

Defaults (``ewc_lambda``) were chosen on a validation split: docs/tuning-regularization.md.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from forgetless.strategies import register
from forgetless.strategies._fisher import fisher_diagonal
from forgetless.strategies._penalty import PenaltyStrategy, snapshot
from forgetless.strategies.base import ImportanceSample, TrainingContext


class FisherParams(BaseModel):
    """Fisher estimation options shared by EWC and Online EWC."""

    model_config = ConfigDict(extra="forbid")

    ewc_lambda: float = Field(10000.0, ge=0.0, description="penalty strength lambda (eq. 3)")
    fisher: Literal["sampled", "empirical", "exact"] = Field(
        "sampled", description="sampled (model labels, the paper's), empirical or exact"
    )
    fisher_samples: int = Field(1024, ge=1, description="training inputs the Fisher is taken on")


def estimate_fisher(ctx: TrainingContext, params: FisherParams) -> dict:
    """Diagonal Fisher of the current model on a sample of the task just learned
    (``ctx.importance_samples``: its training data, or a fine-tune's general data)."""

    def fisher(s: ImportanceSample) -> dict:
        return fisher_diagonal(
            s.module,
            s.x,
            s.task_id,
            y=s.y,
            kind=params.fisher,
            generator=ctx.generator,
            names=s.names,
            chunk_size=s.chunk_size,
        )

    return PenaltyStrategy.importance(ctx, params.fisher_samples, fisher)


class EWCParams(FisherParams):
    merge_terms: bool = Field(
        True, description="evaluate the per-task terms as one exact merged term (constant cost per step)"
    )


@register
class EWC(PenaltyStrategy):
    name = "ewc"
    family = "regularization"
    speed_target = 1.3
    summary = "elastic weight consolidation: Fisher-weighted penalty toward every earlier task's optimum"
    Params = EWCParams
    stacks = ("run", "finetune")

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.penalty.merge = self.params.merge_terms

    def penalty_scale(self, ctx: TrainingContext) -> float:
        return self.params.ewc_lambda / 2.0

    def after_task(self, ctx: TrainingContext) -> None:
        self.penalty.add_term(estimate_fisher(ctx, self.params), snapshot(ctx.model))

    def expected_terms(self, tasks_done: int) -> int:
        """One term per finished task (eq. 3's sum over tasks)."""
        return tasks_done
