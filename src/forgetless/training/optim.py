"""Optimizer and learning-rate schedule of one task (rebuilt at the start of every task)."""

from __future__ import annotations

import torch
from torch import nn

from forgetless.config import RunConfig


def build_optimizer(model: nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    """Adam or SGD over every parameter (frozen ones have no gradient and are skipped)."""
    params = [p for p in model.parameters()]
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: RunConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Linear warmup for ``warmup_steps``, then constant or cosine decay; ``None`` if neither."""
    warmup = config.warmup_steps
    if warmup == 0 and config.lr_schedule == "constant":
        return None
    import math

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if config.lr_schedule == "cosine":
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
