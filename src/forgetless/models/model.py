"""The continual model: a backbone and a scenario-dependent head."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from forgetless.models.backbones import mlp, small_cnn
from forgetless.models.heads import IncrementalHead, MultiHead
from forgetless.models.init import Init, initialise


class ContinualModel(nn.Module):
    """``logits = head(backbone(x), task_ids)``.

    ``task_ids`` is an ``int`` (every input from one task, the fast path), a tensor of per-input
    task ids (mixed batches, e.g. replay), or ``None`` where the scenario gives no task id.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor, task_ids: torch.Tensor | int | None = None) -> torch.Tensor:
        return self.head(self.backbone(x), task_ids)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def build_model(
    kind: Literal["mlp", "cnn"],
    input_shape: tuple[int, ...],
    head_sizes: list[int],
    multi_head: bool,
    hidden: list[int],
    init: Init = "pytorch",
) -> ContinualModel:
    """Build the backbone of ``kind`` and the head the scenario needs, initialised by ``init``.

    ``head_sizes`` holds one output count per task for a multi-head model, else one entry.
    """
    if kind == "mlp":
        backbone, width = mlp(input_shape, hidden)
    elif kind == "cnn":
        backbone, width = small_cnn(input_shape, hidden)
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    head = MultiHead(width, head_sizes) if multi_head else IncrementalHead(width, head_sizes[0])
    model = ContinualModel(backbone, head)
    initialise(model, init)
    return model
