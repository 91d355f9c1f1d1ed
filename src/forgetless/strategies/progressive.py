"""Progressive neural networks (Rusu et al. 2016, "Progressive Neural Networks", arXiv:1606.04671).

Task ``k`` gets a new column, a fresh copy of the backbone; stage ``i`` of column ``k`` reads its
own previous stage and, through lateral connections, the previous stage of every earlier column
(Eq. 1 of the paper, with linear laterals ``U``)::

    h_i^(k) = f( W_i^(k) h_(i-1)^(k) + sum_(j<k) U_i^(k:j) h_(i-1)^(j) )

Earlier columns and their laterals are frozen, so old tasks' outputs never change (BWT = 0
exactly); the price is linear growth of the parameter count with the number of tasks. Lateral
connections are a weight layer of the same kind as ``W_i`` (Linear, or a Conv2d of the same
geometry) without bias; the paper's non-linear adapters are left out. Needs the task id.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from forgetless.strategies import register
from forgetless.strategies._isolation import (
    IsolationStrategy,
    TaskRoutedModel,
    count,
    multi_head_of,
    split_stages,
)
from forgetless.strategies.base import TrainingContext


def _lateral_like(layer: nn.Module) -> nn.Module:
    """A bias-free layer mapping the input of ``layer`` to its output shape."""
    if isinstance(layer, nn.Linear):
        return nn.Linear(layer.in_features, layer.out_features, bias=False)
    assert isinstance(layer, nn.Conv2d)
    return nn.Conv2d(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,  # type: ignore[arg-type]
        stride=layer.stride,  # type: ignore[arg-type]
        padding=layer.padding,  # type: ignore[arg-type]
        bias=False,
    )


class ProgressiveColumns(TaskRoutedModel):
    """Columns (one per task) with lateral connections; column ``t`` feeds head ``t``."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        prefix, stages = split_stages(backbone, "progressive")
        self.prefix = nn.Sequential(*prefix)
        self.columns = nn.ModuleList([nn.ModuleList(nn.Sequential(*s) for s in stages)])
        self.laterals = nn.ModuleList([nn.ModuleList()])
        """``laterals[k][i - 1][j]``: from column ``j``'s stage-``i`` input into column ``k``."""
        self.head = head

    @property
    def num_columns(self) -> int:
        return len(self.columns)

    def add_column(self) -> None:
        """A freshly initialised column and its laterals from every existing column."""
        column = copy.deepcopy(self.columns[0])
        for stage in column:
            stage[0].reset_parameters()
        k = self.num_columns
        laterals = nn.ModuleList(nn.ModuleList(_lateral_like(stage[0]) for _ in range(k)) for stage in list(column)[1:])
        self.columns.append(column)
        self.laterals.append(laterals)

    def forward_task(self, x: torch.Tensor, task: int) -> torch.Tensor:
        if task >= self.num_columns:  # an unseen task: the newest column stands in
            task = self.num_columns - 1
        h = [self.prefix(x)] * (task + 1)
        for i in range(len(self.columns[0])):
            outputs = []
            for k in range(task + 1):
                stage = self.columns[k][i]
                z = stage[0](h[k])
                if i > 0:
                    for j in range(k):
                        z = z + self.laterals[k][i - 1][j](h[j])
                for module in list(stage)[1:]:
                    z = module(z)
                outputs.append(z)
            h = outputs
        return self.head(h[task], task)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Depth levels input to output: stage ``i`` of every column and its laterals; heads."""
        groups: list[list[nn.Parameter]] = []
        for i in range(len(self.columns[0])):
            params = [p for column in self.columns for p in column[i].parameters()]
            if i > 0:
                params += [p for lateral in self.laterals[1:] for p in lateral[i - 1].parameters()]
            groups.append(params)
        groups.append(list(self.head.parameters()))
        return groups

    def structure(self) -> dict[str, Any]:
        return {"columns": self.num_columns}

    def grow_to(self, structure: dict[str, Any]) -> None:
        while self.num_columns < structure["columns"]:
            self.add_column()


@register
class Progressive(IsolationStrategy):
    name = "progressive"
    family = "isolation"
    summary = "progressive networks: a new column per task with lateral connections (task-IL)"
    model: ProgressiveColumns

    def build(self, ctx: TrainingContext) -> ProgressiveColumns:
        backbone, head = multi_head_of(ctx.model, self.name)
        return ProgressiveColumns(backbone, head)

    def grow(self, ctx: TrainingContext) -> None:
        while self.model.num_columns <= ctx.task_index:
            self.model.add_column()

    def trainable_for(self, task: int) -> list[nn.Module]:
        return [self.model.columns[task], self.model.laterals[task], self.model.head.heads[task]]

    def report(self) -> dict[str, Any]:
        out = super().report()
        out["columns"] = self.model.num_columns
        out["column_parameters"] = count(self.model.columns[0].parameters())
        out["lateral_parameters"] = count(self.model.laterals.parameters())
        return out
