"""PackNet (Mallya & Lazebnik 2018, "PackNet: Adding Multiple Tasks to a Single Network by
Iterative Pruning", CVPR).

Every backbone weight has an *owner*: the task that kept it, or *free* (the owner map's largest
value; ``uint8`` maps up to 255 tasks, ``int16`` beyond: :func:`owner_dtype`). Task ``t`` trains
only the free weights (owned ones are frozen: gradients zeroed before the step and their values
restored after it, so neither momentum nor weight decay can move them). After the task, the free
weights are pruned by magnitude layer by layer (Sec. 3 of the paper): the largest
``1 - prune_ratio`` fraction becomes owned by ``t``, the rest is set to zero and stays free for
later tasks; the kept weights are then retrained briefly with the pruned ones held at zero.
Inference for task ``t`` uses the weights owned by tasks ``<= t`` (everything else masked to
zero), so old tasks' outputs are bit-identical after later tasks (BWT = 0). Biases are trained on
the first task only and then frozen, as in the paper. Needs the task id. Retraining uses the
run's optimizer (:func:`~forgetless.training.optim.build_optimizer`: Adam or SGD, momentum,
weight decay, layer-wise rates), and a non-finite loss in it raises ``NumericalError`` as in the
learner.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.func import functional_call

from forgetless.errors import ConfigError, NumericalError
from forgetless.strategies import register
from forgetless.strategies._isolation import (
    IsolationStrategy,
    TaskRoutedModel,
    count,
    multi_head_of,
    set_trainable,
    weight_names,
)
from forgetless.strategies.base import Batch, ModelOutput, TrainingContext
from forgetless.training.optim import build_optimizer


def owner_dtype(num_tasks: int) -> torch.dtype:
    """The narrowest owner dtype holding task indices ``0..num_tasks-1`` below its free value
    (its largest): ``uint8`` up to 255 tasks, one byte per weight, else ``int16``."""
    for dtype in (torch.uint8, torch.int16):
        if num_tasks <= torch.iinfo(dtype).max:
            return dtype
    raise ConfigError(f"packnet supports at most {torch.iinfo(torch.int16).max} tasks, got {num_tasks}")


class PackNetModel(TaskRoutedModel):
    """The backbone with an owner map per weight layer; task ``t`` sees owners ``<= t``.

    Owners are ``uint8`` for up to 255 tasks and ``int16`` beyond (:func:`owner_dtype`); a
    weight no task has kept yet holds :attr:`free`, the dtype's largest value.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, num_tasks: int):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.names = weight_names(backbone)
        dtype = owner_dtype(num_tasks)
        self.free = torch.iinfo(dtype).max
        """Owner value of a weight no task has kept yet."""
        for i, name in enumerate(self.names):
            weight = backbone.get_parameter(name)
            self.register_buffer(f"owner_{i}", torch.full_like(weight, self.free, dtype=dtype))
        self.register_buffer("training_task", torch.tensor(0))
        """Free weights are live for this task (the one training) and unseen ones."""

    def owners(self) -> list[torch.Tensor]:
        return [getattr(self, f"owner_{i}") for i in range(len(self.names))]

    def live_mask(self, index: int, task: int) -> torch.Tensor:
        owner = self.owners()[index]
        live = owner <= task
        if task >= int(self.training_task):
            live |= owner == self.free
        return live

    def forward_task(self, x: torch.Tensor, task: int) -> torch.Tensor:
        weights = {
            name: torch.where(self.live_mask(i, task), self.backbone.get_parameter(name), 0.0)
            for i, name in enumerate(self.names)
        }
        return self.head(functional_call(self.backbone, weights, (x,)), task)

    def structure(self) -> dict[str, Any]:
        return {}


class PackNetParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prune_ratio: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="fraction of a task's free weights released after it, in (0, 1); default: "
        "an equal share of the capacity per task (task t of T keeps 1/(T-t) of the free weights)",
    )
    retrain_steps: int = Field(50, ge=0, description="optimizer steps of retraining after pruning")


@register
class PackNet(IsolationStrategy):
    name = "packnet"
    family = "isolation"
    summary = "PackNet: prune by magnitude after each task, freeze the kept weights (task-IL)"
    Params = PackNetParams
    model: PackNetModel

    def build(self, ctx: TrainingContext) -> PackNetModel:
        backbone, head = multi_head_of(ctx.model, self.name)
        self.capacity_left: list[float] = []
        self.kept_per_task: list[int] = []
        return PackNetModel(backbone, head, ctx.scenario.num_tasks)

    def weights(self) -> list[nn.Parameter]:
        return [self.model.backbone.get_parameter(n) for n in self.model.names]

    def trainable_for(self, task: int) -> list[nn.Module]:
        if task == 0:
            return [self.model.backbone, self.model.head.heads[task]]
        return [self.model.head.heads[task]]

    def before_task(self, ctx: TrainingContext) -> None:
        self.model.training_task.fill_(ctx.task_index)
        super().before_task(ctx)
        for weight in self.weights():  # only the free entries of the weights train
            weight.requires_grad_(True)
        self._snapshot = [w.detach().clone() for w in self.weights()]

    # -- keeping owned weights frozen -----------------------------------------------------
    def _trainable_masks(self, owner_value: int) -> list[torch.Tensor]:
        return [owner == owner_value for owner in self.model.owners()]

    def _mask_gradients(self, masks: list[torch.Tensor]) -> None:
        for weight, mask in zip(self.weights(), masks):
            if weight.grad is not None:
                weight.grad.mul_(mask)

    @torch.no_grad()
    def _restore(self, masks: list[torch.Tensor]) -> None:
        for weight, mask, frozen in zip(self.weights(), masks, self._snapshot):
            weight.copy_(torch.where(mask, weight, frozen))

    def before_step(self, ctx: TrainingContext) -> None:
        self._mask_gradients(self._trainable_masks(self.model.free))

    def after_step(self, ctx: TrainingContext, batch: Batch, output: ModelOutput) -> bool:
        self._restore(self._trainable_masks(self.model.free))
        return False

    # -- pruning --------------------------------------------------------------------------
    def keep_fraction(self, ctx: TrainingContext) -> float:
        if self.params.prune_ratio is not None:
            return 1.0 - self.params.prune_ratio
        return 1.0 / (ctx.scenario.num_tasks - ctx.task_index)

    @torch.no_grad()
    def prune(self, task: int, keep: float) -> int:
        """Give the top ``keep`` of each layer's free weights to ``task``; zero the rest."""
        kept, free_value = 0, self.model.free
        for weight, owner in zip(self.weights(), self.model.owners()):
            free = owner == free_value
            n_keep = round(keep * int(free.sum()))
            magnitude = torch.where(free, weight.abs(), -1.0).reshape(-1)
            top = torch.topk(magnitude, n_keep).indices if n_keep else magnitude.new_zeros(0).long()
            owner.copy_(owner.flatten().index_fill(0, top, task).view(owner.shape))  # any memory format
            weight.masked_fill_(owner == free_value, 0.0)
            kept += n_keep
        return kept

    def retrain(self, ctx: TrainingContext, task: int) -> None:
        """A few steps on the kept weights of ``task`` (pruned ones held at zero), with the
        run's optimizer; a non-finite loss raises :class:`NumericalError` (read once, at the end,
        so that an accelerator is not synchronised every step)."""
        steps = self.params.retrain_steps
        data = ctx.task
        if not steps or not data.num_train:
            return
        model, config = self.model, ctx.config
        optimizer = build_optimizer(model, config)  # frozen parameters get no gradient: skipped
        masks = self._trainable_masks(task)
        self._snapshot = [w.detach().clone() for w in self.weights()]
        model.train()
        losses = []
        for _ in range(steps):
            index = torch.randint(data.num_train, (config.batch_size,), generator=ctx.generator)
            index = index.to(data.train_y.device)
            logits = model(ctx.prepare(data.train_x[index]), ctx.task_id(task))
            loss = F.cross_entropy(logits, data.train_y[index])
            losses.append(loss.detach())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self._mask_gradients(masks)
            optimizer.step()
            self._restore(masks)
        values = torch.stack(losses).float().cpu()
        bad = torch.nonzero(~torch.isfinite(values)).flatten()
        if len(bad):
            step = int(bad[0])
            raise NumericalError(
                f"the loss became {float(values[step])} at task {task}, step {step} of PackNet's "
                "retraining: lower the learning rate (--lr) or packnet.retrain_steps; results of "
                "completed tasks were kept"
            )

    def after_task(self, ctx: TrainingContext) -> None:
        task = ctx.task_index
        self.kept_per_task.append(self.prune(task, self.keep_fraction(ctx)))
        self.retrain(ctx, task)
        set_trainable(self.model, False)
        free = sum(int((o == self.model.free).sum()) for o in self.model.owners())
        self.capacity_left.append(free / sum(o.numel() for o in self.model.owners()))
        super().after_task(ctx)

    def owner_map_bytes(self) -> int:
        return sum(o.numel() * o.element_size() for o in self.model.owners())

    def storage_bytes(self) -> int:
        return 4 * count(self.model.parameters()) + self.owner_map_bytes()

    def report(self) -> dict[str, Any]:
        out = super().report()
        out["capacity_left_after_task"] = list(self.capacity_left)
        out["weights_kept_per_task"] = list(self.kept_per_task)
        out["owner_map_bytes"] = self.owner_map_bytes()
        return out

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["capacity_left"] = list(self.capacity_left)
        state["kept_per_task"] = list(self.kept_per_task)
        return state

    def load_state_dict(self, state: dict[str, Any], ctx: TrainingContext) -> None:
        super().load_state_dict(state, ctx)
        self.capacity_left = list(state["capacity_left"])
        self.kept_per_task = list(state["kept_per_task"])
        for weight in self.weights():
            weight.requires_grad_(True)
        self._snapshot = [w.detach().clone() for w in self.weights()]
