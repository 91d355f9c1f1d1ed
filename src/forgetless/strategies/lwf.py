"""LwF: learning without forgetting (Li & Hoiem 2017, TPAMI, eqs. 2-4).

Before each new task the model is copied and frozen. On the current task's inputs ``x`` (rows
``[0, ctx.current_size)`` of the batch; replayed rows that composed strategies append are not
distilled) the old model's outputs are soft targets:

    L = L_new + alpha * T^2 * KL( softmax(y_old / T) || softmax(y_new / T) )

(the paper's ``lambda_o`` is ``alpha``; the ``T^2`` factor keeps gradient scales comparable
across temperatures, Hinton et al. 2015; the KL equals the paper's modified cross-entropy up
to a constant). Which outputs:

* multi-head (task-IL): every old head ``j < t`` on the current inputs, ``model(x, j)`` (with a
  :class:`~forgetless.models.ContinualModel` the learner hands over the backbone features of
  the training forward, ``output.features``, so each old head costs one head forward);
* single head (class-/domain-IL): the outputs that were active in the old model (those not at
  ``INACTIVE_LOGIT``); outputs of classes that arrive with the new task are left out.

On the first task there is no old model: the strategy does nothing (documented no-op).
Defaults (``alpha``, ``temperature``) chosen on a validation split:
docs/tuning-regularization.md.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from forgetless.models import INACTIVE_LOGIT, ContinualModel
from forgetless.strategies import register
from forgetless.strategies.base import Batch, ModelOutput, Strategy, TrainingContext, frozen_copy


class LwFParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(1.0, ge=0.0, description="weight lambda_o of the distillation term")
    temperature: float = Field(2.0, gt=0.0, description="softmax temperature T")


def distillation(old_logits: torch.Tensor, new_logits: torch.Tensor, temperature: float):
    """``T^2 * KL(softmax(old/T) || softmax(new/T))`` averaged over rows, on the outputs that
    are active (not ``INACTIVE_LOGIT``) in every row of ``old_logits``."""
    active = (old_logits > INACTIVE_LOGIT / 2).all(0)
    old, new = old_logits[:, active], new_logits[:, active]
    target = F.log_softmax(old / temperature, dim=1)
    log_probs = F.log_softmax(new / temperature, dim=1)
    kl = F.kl_div(log_probs, target, reduction="batchmean", log_target=True)
    return kl * temperature**2


@register
class LwF(Strategy):
    name = "lwf"
    family = "distillation"
    speed_target = 1.3
    summary = "learning without forgetting: distil the previous model's outputs on new data"
    Params = LwFParams

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.old_model: nn.Module | None = None

    def before_task(self, ctx: TrainingContext) -> None:
        self.old_model = None if ctx.task_index == 0 else frozen_copy(ctx.model)

    def loss(self, ctx: TrainingContext, batch: Batch, output: ModelOutput) -> torch.Tensor | None:
        if self.old_model is None or ctx.task_index == 0 or self.params.alpha == 0:
            return None
        rows = ctx.current_size or len(batch)
        x = batch.x[:rows]
        temperature = self.params.temperature
        if not ctx.scenario.uses_task_id:
            with torch.no_grad():
                old = self.old_model(x, None)
            return self.params.alpha * distillation(old, output.logits[:rows], temperature)
        model = ctx.model
        features = output.features[:rows] if output.features is not None else None
        with torch.no_grad():
            old_features = self.old_model.features(x) if isinstance(self.old_model, ContinualModel) else None
        total = output.logits.new_zeros(())
        for j in range(ctx.task_index):
            task_id = ctx.task_id(j)
            with torch.no_grad():
                if old_features is not None:
                    old = self.old_model.head(old_features, task_id)
                else:
                    old = self.old_model(x, task_id)
            new = model.head(features, task_id) if features is not None else model(x, task_id)
            total = total + distillation(old, new, temperature)
        return self.params.alpha * total

    def report(self) -> dict[str, Any]:
        if self.old_model is None:
            return {}
        size = sum(t.numel() * t.element_size() for t in self.old_model.state_dict().values())
        return {"old_model_bytes": int(size)}

    def state_dict(self) -> dict[str, Any]:
        if self.old_model is None:
            return {}
        return {"old_model": {k: v.clone() for k, v in self.old_model.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any], ctx: TrainingContext) -> None:
        """Restore the frozen old model: a copy of the run's model holding the saved weights."""
        self.old_model = None
        if "old_model" in state:
            self.old_model = frozen_copy(ctx.model)
            self.old_model.load_state_dict(state["old_model"])
