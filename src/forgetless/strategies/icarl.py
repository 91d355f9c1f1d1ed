"""iCaRL (Rebuffi et al. 2017, "iCaRL: Incremental Classifier and Representation Learning").

Class-incremental learning with a fixed budget of ``K`` exemplars (``--buffer-size``):

* **Training set** (Alg. 3): the task's rows together with every exemplar kept so far.
* **Loss** (Alg. 3): binary cross-entropy over the outputs seen so far, one sigmoid per output,
  with targets ``onehot(y)`` for the new classes and, for the classes of earlier tasks, the
  previous model's outputs ``sigmoid(g_old(x))`` (distillation); averaged over rows, summed over
  outputs. It replaces the learner's cross-entropy through the ``criterion`` hook.
* **Exemplars** (Alg. 4, 5): after each task every class seen keeps ``m = K // classes seen``
  exemplars; older sets are cut to their first ``m`` (they are ordered by herding), the new
  classes' sets chosen by herding: ``p_k = argmin_x || mu - (phi(x) + sum_{j<k} phi(p_j)) / k ||``
  on L2-normalised features ``phi``, ``mu`` the class mean of the task's rows.
* **Classification** (Alg. 1): nearest mean of exemplars, ``y* = argmin_y || phi(x) - mu_y ||``,
  ``mu_y`` the (re-normalised) mean feature of class ``y``'s exemplars. The model's head is
  wrapped in :class:`NearestMeanHead`: training still reads the linear head's logits; in eval
  mode the head scores each class by ``-||phi(x) - mu_y||^2``, so every evaluation (the accuracy
  matrix, the brake's checks) classifies as the paper does. ``classifier=logits`` keeps the
  linear head instead (the "hybrid1" variant of the paper's Table 1).

Exemplars hold their compact inputs (``uint8`` images stay ``uint8``); the means live in the
head's buffers (saved with the model), exemplars and the previous model in the strategy's state.
Needs a model with a separate backbone and head (:class:`~forgetless.models.model.ContinualModel`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from forgetless.errors import ConfigError
from forgetless.models.heads import INACTIVE_LOGIT, IncrementalHead
from forgetless.models.model import ContinualModel
from forgetless.strategies import register
from forgetless.strategies.base import Batch, ModelOutput, Strategy, TrainingContext, TrainingSet, frozen_copy


class ICaRLParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    buffer_size: int = Field(500, ge=1, description="exemplar budget K over all classes (--buffer-size)")
    classifier: Literal["nme", "logits"] = Field(
        "nme", description="nme: nearest mean of exemplars (the paper); logits: the trained linear head"
    )


class NearestMeanHead(nn.Module):
    """The model's head, scoring by nearest mean of exemplars in eval mode (module docstring)."""

    def __init__(self, head: nn.Module, num_classes: int, width: int) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("means", torch.zeros(num_classes, width))
        self.register_buffer("has_mean", torch.zeros(num_classes, dtype=torch.bool))

    def forward(self, features: torch.Tensor, task_ids: torch.Tensor | int | None = None) -> torch.Tensor:
        if self.training or not bool(self.has_mean.any()):
            return self.head(features, task_ids)
        distances = torch.cdist(F.normalize(features.float(), dim=1), self.means).square()
        return torch.where(self.has_mean, -distances, torch.full_like(distances, INACTIVE_LOGIT))


def normalized_features(model: ContinualModel, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """``phi(x)``: the backbone's features, L2-normalised, in eval mode and without gradient."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            parts = [F.normalize(model.backbone(x[i : i + chunk]).float(), dim=1) for i in range(0, len(x), chunk)]
    finally:
        model.train(was_training)
    return torch.cat(parts) if parts else x.new_zeros(0, 0)


def herding(features: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of ``count`` rows chosen by herding (Alg. 4), in the order chosen.

    Step ``k`` takes the row ``x`` minimising ``|| mu - (phi(x) + S) / k ||`` (``S``: the sum of
    the rows chosen so far, ``mu``: the mean of all rows); a row is chosen at most once. Expanded,
    that is ``||phi(x)||^2 - 2 phi(x) . (k mu - S)`` plus a constant, so each step is one
    matrix-vector product (``Phi S`` grows by ``Phi phi(p)``) and an argmin.
    """
    count = min(count, len(features))
    squares = features.square().sum(1)
    toward_mean = features @ features.mean(0)
    toward_chosen = torch.zeros_like(toward_mean)
    taken = torch.zeros(len(features), dtype=torch.bool, device=features.device)
    chosen = torch.empty(count, dtype=torch.long, device=features.device)
    for k in range(count):
        gaps = (squares - 2 * ((k + 1) * toward_mean - toward_chosen)).masked_fill_(taken, float("inf"))
        pick = gaps.argmin()
        chosen[k] = pick
        taken[pick] = True
        toward_chosen += features @ features[pick]
    return chosen


@register
class ICaRL(Strategy):
    name = "icarl"
    family = "replay"
    speed_target = 2.0
    summary = "iCaRL: herding exemplars, sigmoid distillation, nearest-mean-of-exemplars classifier"
    scenarios = ("class",)
    Params = ICaRLParams

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.old_model: nn.Module | None = None
        self.exemplar_x: torch.Tensor | None = None
        self.exemplar_y: torch.Tensor | None = None
        """Exemplars grouped by class, each class's in herding order."""

    def setup(self, ctx: TrainingContext) -> None:
        model = ctx.model
        if not isinstance(model, ContinualModel) or not isinstance(model.head, IncrementalHead):
            raise ConfigError(
                f"icarl needs a model with a separate backbone and head (its nearest-mean classifier reads "
                f"the features), not {type(model).__name__}: use a built-in --model or pass a backbone"
            )
        classes = ctx.scenario.active_outputs[-1] if ctx.scenario.active_outputs else ctx.scenario.head_sizes[0]
        if self.params.buffer_size < classes:
            raise ConfigError(
                f"icarl keeps m = K // classes seen exemplars of every class: --buffer-size {self.params.buffer_size} "
                f"is fewer than the {classes} classes of this run (m would be 0): give --buffer-size {classes} or more"
            )
        if self.params.classifier == "nme":
            width = model.head.linear.in_features  # class-IL: one IncrementalHead
            model.head = NearestMeanHead(model.head, ctx.scenario.head_sizes[0], width).to(ctx.device)

    def before_task(self, ctx: TrainingContext) -> None:
        self.old_model = None if ctx.task_index == 0 else frozen_copy(ctx.model)

    def training_set(self, ctx: TrainingContext, data: TrainingSet) -> TrainingSet:
        if self.exemplar_x is None or not len(self.exemplar_y):
            return data
        x = torch.cat([data.x, self.exemplar_x.to(data.x.device)])
        return TrainingSet(x, torch.cat([data.y, self.exemplar_y.to(data.y.device)]), data.task_ids)

    def criterion(self, ctx: TrainingContext, batch: Batch, output: ModelOutput) -> torch.Tensor:
        """Alg. 3: sigmoid cross-entropy, old outputs' targets from the previous model."""
        seen = ctx.scenario.active_outputs[ctx.task_index]
        logits = output.logits[:, :seen].float()
        targets = F.one_hot(batch.y, seen).to(logits.dtype)
        if self.old_model is not None:
            past = ctx.scenario.active_outputs[ctx.task_index - 1]
            with torch.no_grad():
                old = _linear_logits(self.old_model, batch.x)[:, :past]
            targets[:, :past] = torch.sigmoid(old.float())
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / len(batch)

    def after_task(self, ctx: TrainingContext) -> None:
        """Alg. 5 then 4: cut the old sets to ``m`` each, herd ``m`` for each new class, then the means."""
        task = ctx.scenario.tasks[ctx.task_index]
        classes = sorted({int(c) for c in task.train_y.unique().tolist()})
        old_classes = [] if self.exemplar_y is None else sorted(set(self.exemplar_y.tolist()) - set(classes))
        per_class = self.params.buffer_size // max(1, len(old_classes) + len(classes))
        xs, ys = [], []
        for label in old_classes:
            rows = (self.exemplar_y == label).nonzero().flatten()[:per_class]
            xs.append(self.exemplar_x[rows])
            ys.append(self.exemplar_y[rows])
        model = ctx.model
        for label in classes:
            rows = (task.train_y == label).nonzero().flatten()
            features = normalized_features(model, ctx.prepare(task.train_x[rows]).to(ctx.device))
            chosen = rows[herding(features, per_class).to(rows.device)]
            xs.append(task.train_x[chosen.to(task.train_x.device)].cpu())
            ys.append(task.train_y[chosen].cpu())
        self.exemplar_x, self.exemplar_y = torch.cat(xs), torch.cat(ys)
        self._update_means(ctx)

    def _update_means(self, ctx: TrainingContext) -> None:
        head = ctx.model.head
        if not isinstance(head, NearestMeanHead) or self.exemplar_y is None:
            return
        features = normalized_features(ctx.model, ctx.prepare(self.exemplar_x).to(ctx.device))
        labels = self.exemplar_y.to(ctx.device)
        sums = torch.zeros_like(head.means).index_add_(0, labels, features)
        counts = torch.bincount(labels, minlength=len(head.means))
        head.means.copy_(F.normalize(sums / counts.clamp(min=1)[:, None], dim=1))
        head.has_mean.copy_(counts > 0)

    def report(self) -> dict[str, Any]:
        if self.exemplar_y is None:
            return {}
        counts = torch.bincount(self.exemplar_y)
        return {"exemplars": int(len(self.exemplar_y)), "per_class": int(counts[counts > 0].min())}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.exemplar_y is not None:
            state["exemplar_x"], state["exemplar_y"] = self.exemplar_x.clone(), self.exemplar_y.clone()
        if self.old_model is not None:
            state["old_model"] = {k: v.clone() for k, v in self.old_model.state_dict().items()}
        return state

    def load_state_dict(self, state: dict[str, Any], ctx: TrainingContext) -> None:
        self.exemplar_x, self.exemplar_y = state.get("exemplar_x"), state.get("exemplar_y")
        if (self.exemplar_x is None) != (self.exemplar_y is None) or (
            self.exemplar_y is not None and len(self.exemplar_x) != len(self.exemplar_y)
        ):
            raise ValueError("exemplar_x and exemplar_y must both be there, with one label per exemplar")
        self.old_model = None
        if "old_model" in state:
            self.old_model = frozen_copy(ctx.model)
            self.old_model.load_state_dict(state["old_model"])


def _linear_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The trained head's logits (the distillation targets), also of a model whose head scores
    by nearest mean in eval mode."""
    head = model.head
    inner = head.head if isinstance(head, NearestMeanHead) else head
    return inner(model.backbone(x), None)
