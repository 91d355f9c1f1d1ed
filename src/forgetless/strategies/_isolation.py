"""Shared mechanics of the parameter-isolation strategies (progressive, PackNet, supermask, LoRA,
adapters).

* :class:`TaskRoutedModel`: a replacement model with the usual ``model(x, task_ids)`` signature
  that routes every input to the parameters of its task (``task_ids`` an int or a tensor);
* :func:`split_stages`: a ``Sequential`` backbone cut into *stages* (a weight layer and the
  parameter-free modules that follow it), the unit at which columns connect and adapters sit;
* :func:`pack_bits` / :func:`unpack_bits`: binary masks stored at one bit per weight;
* :class:`IsolationStrategy`: the strategy side (task-IL only, freezing, reports, checkpoints);
* :class:`FrozenBackboneStrategy`: LoRA and adapters (backbone trained on the first task or
  pretrained, then frozen; one small module per later task).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from forgetless.errors import ConfigError
from forgetless.models.heads import MultiHead
from forgetless.strategies.base import Strategy, TrainingContext

WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)
"""Layers whose weights the isolation methods split, mask or adapt."""

FLOAT_BYTES = 4


# -- models -------------------------------------------------------------------------------
class TaskRoutedModel(nn.Module):
    """``forward(x, task_ids)`` that sends every input through the parameters of its task.

    Subclasses implement :meth:`forward_task` for a batch of one task. Old tasks' outputs are a
    function of frozen tensors only, so they stay bit-identical while later tasks train.
    """

    def forward_task(self, x: torch.Tensor, task: int) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, task_ids: torch.Tensor | int | None = None) -> torch.Tensor:
        if task_ids is None:
            raise ValueError(f"{type(self).__name__} needs the task id of each input (task-IL)")
        if isinstance(task_ids, int):
            return self.forward_task(x, task_ids)
        tasks = torch.unique(task_ids).tolist()
        if len(tasks) == 1:
            return self.forward_task(x, int(tasks[0]))
        parts = [(task_ids == t, self.forward_task(x[task_ids == t], int(t))) for t in tasks]
        out = parts[0][1].new_empty((x.shape[0], parts[0][1].shape[1]))
        for rows, logits in parts:
            out[rows] = logits
        return out

    def structure(self) -> dict[str, Any]:
        """JSON description of what was grown (columns, adapters, masks) for checkpoints."""
        return {}

    def grow_to(self, structure: dict[str, Any]) -> None:
        """Re-create the modules and buffers ``structure`` describes (before loading weights)."""


def multi_head_of(model: nn.Module, method: str) -> tuple[nn.Module, MultiHead]:
    """The ``(backbone, head)`` of a ContinualModel with one head per task."""
    backbone, head = getattr(model, "backbone", None), getattr(model, "head", None)
    if backbone is None or not isinstance(head, MultiHead):
        raise ConfigError(
            f"{method} needs a model with a backbone and one head per task (task-IL): "
            f"use --scenario task with the built-in mlp or cnn model"
        )
    _refuse_unsupported_layers(backbone, method)
    return backbone, head


def _refuse_unsupported_layers(backbone: nn.Module, method: str) -> None:
    """Exact isolation (old tasks' outputs bit-identical) holds only where every backbone
    parameter is in a Linear/Conv2d layer and no module keeps running statistics: the affine
    parameters and running means of a batch norm are shared by every task and would drift (a
    reduced ResNet-18 under PackNet lost 5 points of task 0, supermask 43)."""
    for name, module in backbone.named_modules():
        if isinstance(module, WEIGHT_LAYERS):
            continue
        own = [p for p, _ in module.named_parameters(recurse=False)]
        stats = [b for b, _ in module.named_buffers(recurse=False) if b.startswith("running_")]
        if own or stats:
            kind = "running statistics" if stats else "parameters"
            raise ConfigError(
                f"{method} isolates tasks exactly only in backbones whose parameters are all in Linear/Conv2d "
                f"layers; layer {name or '(the backbone)'} ({type(module).__name__}) has {kind} shared by every task: "
                "use the mlp or cnn model, or a method that does not isolate parameters (e.g. er, ewc)"
            )


def split_stages(backbone: nn.Module, method: str) -> tuple[list[nn.Module], list[list[nn.Module]]]:
    """Cut a ``Sequential`` backbone into ``(prefix, stages)``.

    ``prefix`` holds the parameter-free modules before the first weight layer (``Flatten``);
    every stage starts with a weight layer (``Linear``/``Conv2d``) followed by the parameter-free
    modules up to the next one (activation, pooling, flatten).
    """
    if not isinstance(backbone, nn.Sequential):
        raise ConfigError(f"{method} needs a Sequential backbone (the built-in mlp or cnn model)")
    prefix: list[nn.Module] = []
    stages: list[list[nn.Module]] = []
    for module in backbone:
        if isinstance(module, WEIGHT_LAYERS):
            stages.append([module])
        elif any(True for _ in module.parameters()):
            raise ConfigError(
                f"{method} supports backbones of Linear/Conv2d layers and parameter-free modules; "
                f"{type(module).__name__} has parameters: use the built-in mlp or cnn model"
            )
        elif stages:
            stages[-1].append(module)
        else:
            prefix.append(module)
    if not stages:
        raise ConfigError(f"{method} found no Linear/Conv2d layer in the backbone")
    return prefix, stages


def weight_names(module: nn.Module) -> list[str]:
    """Names (as in ``named_parameters``) of the weights of every Linear/Conv2d in ``module``."""
    return [
        f"{name}.weight" if name else "weight" for name, m in module.named_modules() if isinstance(m, WEIGHT_LAYERS)
    ]


def count(parameters: Any) -> int:
    return sum(p.numel() for p in parameters)


def set_trainable(module: nn.Module, trainable: bool) -> None:
    """Freeze (or unfreeze) every parameter of ``module``; frozen ones lose their gradient."""
    for p in module.parameters():
        p.requires_grad_(trainable)
        if not trainable:
            p.grad = None


# -- bit masks ----------------------------------------------------------------------------
_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A boolean tensor as ``uint8`` bytes, eight entries per byte (``ceil(numel / 8)`` bytes)."""
    flat = mask.reshape(-1).to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros((-flat.numel()) % 8)])
    return (flat.view(-1, 8) * _BIT_WEIGHTS.to(flat.device)).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the boolean tensor of ``shape``."""
    bits = packed.unsqueeze(1).bitwise_and(_BIT_WEIGHTS.to(packed.device)).ne(0)
    return bits.reshape(-1)[: math.prod(shape)].reshape(shape)


# -- strategies ---------------------------------------------------------------------------
class IsolationStrategy(Strategy):
    """Base of the parameter-isolation strategies: replaces the model, needs task ids.

    Subclasses implement :meth:`build` (the replacement model) and :meth:`trainable_for`
    (the modules trained on a task; everything else is frozen, ``requires_grad=False``, so the
    optimizer leaves it bit-identical). Checkpoints hold the grown structure and the weights.
    """

    scenarios = ("task",)
    model: TaskRoutedModel

    def build(self, ctx: TrainingContext) -> TaskRoutedModel:
        raise NotImplementedError

    def trainable_for(self, task: int) -> list[nn.Module]:
        raise NotImplementedError

    def grow(self, ctx: TrainingContext) -> None:
        """Add what task ``ctx.task_index`` needs (a column, an adapter) before it trains."""

    def setup(self, ctx: TrainingContext) -> nn.Module:
        self.model = self.build(ctx)
        self.parameters_after_task: list[int] = []
        self.trained_per_task: list[int] = []
        return self.model

    def before_task(self, ctx: TrainingContext) -> None:
        self.grow(ctx)
        self.freeze_all_but(ctx.task_index)
        self.trained_per_task.append(count(p for p in self.model.parameters() if p.requires_grad))

    def freeze_all_but(self, task: int) -> None:
        set_trainable(self.model, False)
        for module in self.trainable_for(task):
            set_trainable(module, True)

    def after_task(self, ctx: TrainingContext) -> None:
        self.parameters_after_task.append(count(self.model.parameters()))

    def storage_bytes(self) -> int:
        """Bytes needed to evaluate every task learned so far (float32 weights + masks)."""
        return FLOAT_BYTES * count(self.model.parameters())

    def report(self) -> dict[str, Any]:
        return {
            "parameters": count(self.model.parameters()),
            "parameters_after_task": list(self.parameters_after_task),
            "trained_parameters_per_task": list(self.trained_per_task),
            "storage_bytes": self.storage_bytes(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "structure": self.model.structure(),
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "parameters_after_task": list(self.parameters_after_task),
            "trained_per_task": list(self.trained_per_task),
        }

    def load_state_dict(self, state: dict[str, Any], ctx: TrainingContext) -> None:
        self.model.grow_to(state["structure"])
        self.model.load_state_dict(state["model"])
        self.parameters_after_task = list(state["parameters_after_task"])
        self.trained_per_task = list(state["trained_per_task"])
        if self.trained_per_task:
            self.freeze_all_but(len(self.trained_per_task) - 1)


class FrozenBackboneParams(BaseModel):
    """Shared options of LoRA and bottleneck adapters."""

    model_config = ConfigDict(extra="forbid")
    train_first_task: bool = Field(
        True,
        description="train the whole backbone on the first task, then freeze it; False: the "
        "backbone is pretrained and frozen from the start (the first task gets a module too)",
    )


class FrozenBackboneStrategy(IsolationStrategy):
    """Backbone frozen after the first task (or from the start); one small module per task.

    Task 0 uses the bare backbone when ``train_first_task``; every other task ``t`` trains only
    its own module and head ``t``. Subclasses provide the wrapper (:class:`TaskModules`).
    """

    def grow(self, ctx: TrainingContext) -> None:
        task = ctx.task_index
        if self.uses_module(task) and not self.model.has_task(task):
            self.model.add_task(task)

    def uses_module(self, task: int) -> bool:
        return task > 0 or not self.params.train_first_task  # type: ignore[attr-defined]

    def trainable_for(self, task: int) -> list[nn.Module]:
        modules: list[nn.Module] = [self.model.head.heads[task]]
        if self.uses_module(task):
            modules += self.model.task_modules(task)
        else:
            modules.append(self.model.backbone_module())
        return modules

    def report(self) -> dict[str, Any]:
        out = super().report()
        per_task = {t: [p for m in self.model.task_modules(t) for p in m.parameters()] for t in self.model.tasks()}
        in_modules = {id(p) for params in per_task.values() for p in params}
        backbone = self.model.backbone_module().parameters()
        out["backbone_parameters"] = count(p for p in backbone if id(p) not in in_modules)
        out["module_parameters_per_task"] = {str(t): count(params) for t, params in per_task.items()}
        return out


class TaskModules(TaskRoutedModel):
    """Interface of the wrappers used by :class:`FrozenBackboneStrategy`."""

    head: MultiHead

    def backbone_module(self) -> nn.Module:
        raise NotImplementedError

    def has_task(self, task: int) -> bool:
        return task in self.tasks()

    def tasks(self) -> list[int]:
        raise NotImplementedError

    def add_task(self, task: int) -> None:
        raise NotImplementedError

    def task_modules(self, task: int) -> list[nn.Module]:
        raise NotImplementedError

    def structure(self) -> dict[str, Any]:
        return {"tasks": self.tasks()}

    def grow_to(self, structure: dict[str, Any]) -> None:
        for task in structure["tasks"]:
            if not self.has_task(task):
                self.add_task(task)
