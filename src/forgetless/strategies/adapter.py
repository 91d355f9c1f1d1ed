"""Per-task bottleneck adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for
NLP", Sec. 2.1 and Fig. 2): after every stage of the frozen backbone,

    h <- h + W_up f(W_down h)

with a ``bottleneck``-wide hidden layer, ``f = ReLU`` and ``W_up`` initialised to zero so each
adapter starts as the identity. Vector features get ``Linear`` adapters, feature maps ``1x1``
convolutions. The backbone trains on the first task and is frozen afterwards (or is pretrained
and frozen from the start); every later task trains only its adapters and its head, so old
tasks' outputs are bit-identical (BWT = 0). Needs the task id.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from forgetless.strategies import register
from forgetless.strategies._isolation import (
    FrozenBackboneParams,
    FrozenBackboneStrategy,
    TaskModules,
    multi_head_of,
    split_stages,
)
from forgetless.strategies.base import TrainingContext


class Bottleneck(nn.Module):
    """``h + up(relu(down(h)))`` over the channels (4-D input) or features (2-D input)."""

    def __init__(self, width: int, bottleneck: int, spatial: bool):
        super().__init__()
        layer = (lambda i, o: nn.Conv2d(i, o, 1)) if spatial else nn.Linear
        self.down = layer(width, bottleneck)
        self.up = layer(bottleneck, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(torch.relu(self.down(h)))


class AdapterTaskModel(TaskModules):
    """The backbone run stage by stage, with task ``t``'s adapters after each stage."""

    def __init__(self, backbone: nn.Module, head: nn.Module, input_shape: tuple[int, ...], bottleneck: int):
        super().__init__()
        prefix, stages = split_stages(backbone, "adapter")
        self.backbone = backbone
        self.prefix = prefix
        self.stages = stages
        self.head = head
        self.bottleneck = bottleneck
        self.adapters = nn.ModuleDict()
        with torch.no_grad():  # the shape after every stage decides the adapter kind
            h = torch.zeros(1, *input_shape, device=next(backbone.parameters()).device)
            self.stage_shapes = []
            for module in prefix:
                h = module(h)
            for stage in stages:
                for module in stage:
                    h = module(h)
                self.stage_shapes.append(tuple(h.shape[1:]))

    def backbone_module(self) -> nn.Module:
        return self.backbone

    def tasks(self) -> list[int]:
        return sorted(int(t) for t in self.adapters)

    def add_task(self, task: int) -> None:
        device = next(self.backbone.parameters()).device
        self.adapters[str(task)] = nn.ModuleList(
            Bottleneck(shape[0], self.bottleneck, spatial=len(shape) == 3) for shape in self.stage_shapes
        ).to(device)

    def task_modules(self, task: int) -> list[nn.Module]:
        return [self.adapters[str(task)]]

    def forward_task(self, x: torch.Tensor, task: int) -> torch.Tensor:
        adapters = self.adapters[str(task)] if str(task) in self.adapters else None
        h = x
        for module in self.prefix:
            h = module(h)
        for i, stage in enumerate(self.stages):
            for module in stage:
                h = module(h)
            if adapters is not None:
                h = adapters[i](h)
        return self.head(h, task)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Stage ``i`` with every task's adapter ``i``, input to output; then the heads."""
        groups = []
        for i, stage in enumerate(self.stages):
            params = [p for m in stage for p in m.parameters()]
            params += [p for adapters in self.adapters.values() for p in adapters[i].parameters()]
            groups.append(params)
        groups.append(list(self.head.parameters()))
        return groups


class AdapterParams(FrozenBackboneParams):
    bottleneck: int = Field(32, ge=1, description="hidden width of each adapter")


@register
class Adapter(FrozenBackboneStrategy):
    name = "adapter"
    family = "isolation"
    summary = "per-task bottleneck adapters (Houlsby) on a backbone frozen after the first task (task-IL)"
    Params = AdapterParams
    model: AdapterTaskModel

    def build(self, ctx: TrainingContext) -> AdapterTaskModel:
        backbone, head = multi_head_of(ctx.model, self.name)
        return AdapterTaskModel(backbone, head, ctx.scenario.input_shape, self.params.bottleneck)
