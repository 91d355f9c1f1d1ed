"""Supermasks in superposition (Wortsman et al. 2020, "Supermasks in Superposition", NeurIPS),
task-IL variant (their "GG" setting: task id given at train and test time).

The weights are fixed at random (signed Kaiming constant, Ramanujan et al. 2020, Sec. 3) and
never trained; biases are zero. Each task learns one binary mask per weight layer with
edge-popup (Ramanujan et al. 2020, "What's Hidden in a Randomly Weighted Neural Network?",
Algorithm 1): a real score per weight, the mask keeps the top ``keep_fraction`` of scores per
layer, and the gradient passes straight through the top-k selection to the scores
(``dL/ds = dL/d(w * m) * w``). After the task the mask is stored at one bit per weight and the
scores are discarded. Old tasks' outputs depend on their stored masks and the fixed weights
only, so they are bit-identical after later tasks (BWT = 0). Needs the task id.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.func import functional_call

from forgetless.strategies import register
from forgetless.strategies._isolation import (
    IsolationStrategy,
    TaskRoutedModel,
    multi_head_of,
    pack_bits,
    set_trainable,
    unpack_bits,
    weight_names,
)
from forgetless.strategies.base import TrainingContext


class TopKMask(torch.autograd.Function):
    """Edge-popup's mask: 1 for the ``k`` largest scores, 0 elsewhere; straight-through gradient."""

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, k: int) -> torch.Tensor:  # noqa: D102
        mask = torch.zeros_like(scores, memory_format=torch.contiguous_format)  # view(-1) below
        mask.view(-1)[torch.topk(scores.reshape(-1), k, sorted=False).indices] = 1.0
        return mask

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        return grad, None


def _key(name: str) -> str:
    return name.replace(".", "_")


class SupermaskModel(TaskRoutedModel):
    """Fixed random weights; task ``t`` multiplies every weight layer by its mask ``t``."""

    def __init__(self, model: nn.Module, keep_fraction: float):
        super().__init__()
        backbone, head = multi_head_of(model, "supermask")
        self.net = model
        self.keep_fraction = keep_fraction
        self.backbone_names = ["backbone." + n for n in weight_names(backbone)]
        self.scores = nn.ParameterDict()
        """Scores of the task being trained (empty between tasks)."""
        self.training_task = -1
        self.masks = nn.ModuleDict()
        """``masks[str(t)]`` holds task ``t``'s packed masks as buffers."""
        self._unpacked: dict[int, dict[str, torch.Tensor]] = {}
        self._randomise()

    @torch.no_grad()
    def _randomise(self) -> None:
        """Signed Kaiming constant weights, scaled for the kept fraction; biases zero."""
        for module in self.net.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                fan_in = module.weight[0].numel()
                std = math.sqrt(2.0 / (fan_in * self.keep_fraction))
                module.weight.copy_(torch.sign(torch.randn_like(module.weight)) * std)
                if module.bias is not None:
                    module.bias.zero_()
        set_trainable(self.net, False)

    def names_for(self, task: int) -> list[str]:
        return self.backbone_names + [f"head.heads.{task}.weight"]

    def start_task(self, task: int) -> None:
        """Fresh scores (edge-popup's Kaiming-uniform init) for ``task``."""
        self.scores = nn.ParameterDict()
        for name in self.names_for(task):
            weight = self.net.get_parameter(name)
            score = torch.empty_like(weight)
            nn.init.kaiming_uniform_(score, a=math.sqrt(5))
            self.scores[_key(name)] = nn.Parameter(score)
        self.training_task = task

    @torch.no_grad()
    def finish_task(self) -> None:
        """Binarise the scores of the training task into packed masks; drop the scores."""
        task = self.training_task
        store = nn.Module()
        for name in self.names_for(task):
            mask = self._train_mask(name).bool()
            store.register_buffer(_key(name), pack_bits(mask))
        self.masks[str(task)] = store
        self.scores = nn.ParameterDict()
        self.training_task = -1

    def _train_mask(self, name: str) -> torch.Tensor:
        score = self.scores[_key(name)]
        return TopKMask.apply(score, max(1, round(self.keep_fraction * score.numel())))

    def stored_masks(self, task: int) -> dict[str, torch.Tensor]:
        if task not in self._unpacked:
            store = self.masks[str(task)]
            self._unpacked[task] = {
                name: unpack_bits(getattr(store, _key(name)), self.net.get_parameter(name).shape)
                for name in self.names_for(task)
            }
        return self._unpacked[task]

    def forward_task(self, x: torch.Tensor, task: int) -> torch.Tensor:
        if task == self.training_task:
            weights = {n: self.net.get_parameter(n) * self._train_mask(n) for n in self.names_for(task)}
        elif str(task) in self.masks:
            weights = {n: torch.where(m, self.net.get_parameter(n), 0.0) for n, m in self.stored_masks(task).items()}
        else:  # an unseen task: the plain random network
            weights = {}
        return functional_call(self.net, weights, (x, task))

    def mask_bytes(self) -> dict[int, int]:
        return {int(t): sum(b.numel() for b in store.buffers()) for t, store in self.masks.items()}

    def structure(self) -> dict[str, Any]:
        return {"tasks": sorted(int(t) for t in self.masks), "training": self.training_task}

    def grow_to(self, structure: dict[str, Any]) -> None:
        for task in structure["tasks"]:
            if str(task) not in self.masks:
                store = nn.Module()
                for name in self.names_for(task):
                    size = math.ceil(self.net.get_parameter(name).numel() / 8)
                    store.register_buffer(_key(name), torch.zeros(size, dtype=torch.uint8))
                self.masks[str(task)] = store
        self._unpacked.clear()
        if structure["training"] >= 0:
            self.start_task(structure["training"])

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._unpacked.clear()


class SupermaskParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keep_fraction: float = Field(
        0.5,
        gt=0.0,
        lt=1.0,
        description="fraction of each layer's weights a mask keeps (edge-popup k)",
    )


@register
class Supermask(IsolationStrategy):
    name = "supermask"
    family = "isolation"
    summary = "supermasks (SupSup): fixed random weights, one learned binary mask per task (task-IL)"
    Params = SupermaskParams
    model: SupermaskModel

    def build(self, ctx: TrainingContext) -> SupermaskModel:
        return SupermaskModel(ctx.model, self.params.keep_fraction)

    def grow(self, ctx: TrainingContext) -> None:
        self.model.start_task(ctx.task_index)

    def trainable_for(self, task: int) -> list[nn.Module]:
        return [self.model.scores]

    def after_task(self, ctx: TrainingContext) -> None:
        self.model.finish_task()
        super().after_task(ctx)

    def storage_bytes(self) -> int:
        return 4 * sum(p.numel() for p in self.model.net.parameters()) + sum(self.model.mask_bytes().values())

    def report(self) -> dict[str, Any]:
        out = super().report()
        per_task = self.model.mask_bytes()
        out["mask_bytes_per_task"] = {str(t): b for t, b in sorted(per_task.items())}
        out["mask_bytes"] = sum(per_task.values())
        out["fixed_random_weights"] = sum(p.numel() for p in self.model.net.parameters())
        return out
