"""Per-task LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", Eq. 3):
``h = W0 x + (alpha / r) B A x`` with ``W0`` frozen and one rank-``r`` pair ``(A, B)`` per task.

Built on the ``peft`` library (``LoraConfig`` with ``target_modules`` naming our backbone's
``nn.Linear``/``nn.Conv2d`` layers; one named adapter per task, selected with ``set_adapter``).
The backbone trains on the first task and is frozen afterwards (``train_first_task``), or is
taken as pretrained and frozen from the start. Task ``t``'s outputs depend only on ``W0``, its
own adapter and its head, all frozen once the task is done: BWT = 0 exactly. Needs the task id.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from pydantic import Field
from torch import nn

from forgetless.extras import require
from forgetless.strategies import register
from forgetless.strategies._isolation import (
    FrozenBackboneParams,
    FrozenBackboneStrategy,
    TaskModules,
    multi_head_of,
    weight_names,
)
from forgetless.strategies.base import TrainingContext


def _adapter_name(task: int) -> str:
    return f"task_{task}"


class LoraTaskModel(TaskModules):
    """``head_t(backbone(x))`` with LoRA adapter ``task_t`` active (no adapter: bare backbone)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, rank: int, alpha: float, dropout: float):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.targets = [name.removesuffix(".weight") for name in weight_names(backbone)]
        self.rank, self.alpha, self.dropout = rank, alpha, dropout
        self._tasks: list[int] = []

    def backbone_module(self) -> nn.Module:
        return self.backbone

    def tasks(self) -> list[int]:
        return list(self._tasks)

    def add_task(self, task: int) -> None:
        peft = require("peft", "strategy 'lora'")
        LoraConfig, get_peft_model = peft.LoraConfig, peft.get_peft_model
        config = LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.targets,
        )
        with preserved_requires_grad(self):
            if not self._tasks:
                self.backbone = get_peft_model(self.backbone, config, adapter_name=_adapter_name(task))
            else:
                self.backbone.add_adapter(_adapter_name(task), config)
        self._tasks.append(task)

    def task_modules(self, task: int) -> list[nn.Module]:
        name = _adapter_name(task)
        return [
            module[name]
            for path, module in self.backbone.named_modules()
            if isinstance(module, nn.ModuleDict) and name in module and path.rsplit(".", 1)[-1].startswith("lora_")
        ]

    def forward_task(self, x: torch.Tensor, task: int) -> torch.Tensor:
        if task in self._tasks:
            if self.backbone.active_adapter != _adapter_name(task):
                with preserved_requires_grad(self):  # peft's set_adapter also unfreezes
                    self.backbone.set_adapter(_adapter_name(task))
            context: Any = nullcontext()
        else:
            context = self.backbone.disable_adapter() if self._tasks else nullcontext()
        with context:
            features = self.backbone(x)
        return self.head(features, task)


class preserved_requires_grad:  # noqa: N801 - used as a context manager
    """Restore every parameter's ``requires_grad`` flag on exit (peft changes them)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __enter__(self) -> None:
        self.flags = {id(p): p.requires_grad for p in self.module.parameters()}

    def __exit__(self, *exc: object) -> None:
        for p in self.module.parameters():
            p.requires_grad_(self.flags.get(id(p), False))


class LoraParams(FrozenBackboneParams):
    rank: int = Field(8, ge=1, description="rank r of each task's adapter")
    alpha: float = Field(16.0, gt=0.0, description="LoRA scaling numerator (scale = alpha / rank)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter's input")


@register
class Lora(FrozenBackboneStrategy):
    name = "lora"
    family = "isolation"
    requires = ("peft",)
    summary = "per-task LoRA adapters (peft) on a backbone frozen after the first task (task-IL)"
    Params = LoraParams
    model: LoraTaskModel

    def build(self, ctx: TrainingContext) -> LoraTaskModel:
        backbone, head = multi_head_of(ctx.model, self.name)
        p = self.params
        return LoraTaskModel(backbone, head, p.rank, p.alpha, p.dropout)
