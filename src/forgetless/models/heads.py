"""Output heads that follow the scenario.

* task-incremental: :class:`MultiHead`, one linear head per task, selected by the task id;
* domain-incremental: one :class:`IncrementalHead` whose outputs are all active from the start;
* class-incremental: one :class:`IncrementalHead` over every class of the stream whose outputs
  become active as their classes arrive (an expanding head: outputs of classes not seen yet are
  masked to :data:`INACTIVE_LOGIT`, so the model can neither predict them nor be trained towards
  them; parameter shapes never change, so optimizers and checkpoints stay simple).
"""

from __future__ import annotations

import torch
from torch import nn

INACTIVE_LOGIT = -1.0e4
"""Logit given to an output that is inactive (class not seen yet, or padding of a narrow head).

Large enough that softmax gives it probability 0 in float32/float16, finite so that differences
and squares of logits (distillation, DER) stay finite.
"""


class IncrementalHead(nn.Module):
    """One shared linear head; the first ``active_outputs`` outputs are live, the rest masked."""

    def __init__(self, in_features: int, num_outputs: int, active_outputs: int | None = None):
        super().__init__()
        self.linear = nn.Linear(in_features, num_outputs)
        self.num_outputs = num_outputs
        count = num_outputs if active_outputs is None else active_outputs
        self.register_buffer("active", torch.tensor(count))
        self._active_cache = count

    def set_active_outputs(self, count: int) -> None:
        """Make outputs ``[0, count)`` live (called by the learner when a task arrives)."""
        self.active.fill_(count)
        self._active_cache = count

    def _load_from_state_dict(self, *args, **kwargs):  # keep the Python-side cache in sync
        super()._load_from_state_dict(*args, **kwargs)
        self._active_cache = int(self.active)

    def forward(self, features: torch.Tensor, task_ids: torch.Tensor | int | None = None):
        logits = self.linear(features)
        if self._active_cache < self.num_outputs:
            logits = logits.clone()
            logits[:, self._active_cache :] = INACTIVE_LOGIT
        return logits


def set_active_outputs(model: nn.Module, count: int) -> None:
    """Class-IL: let the first ``count`` outputs of every :class:`IncrementalHead` in ``model`` compete."""
    for module in model.modules():
        if isinstance(module, IncrementalHead):
            module.set_active_outputs(count)


def outputs_seen(
    active_outputs: list[int] | None, task_index: int, labels: torch.Tensor, active: int | None
) -> int | None:
    """Class-IL: the outputs live while task ``task_index`` trains on ``labels``: its classes and
    every earlier one (the scenario's ``active_outputs``, or more where a ``training_set`` hook
    brought higher labels); never fewer than ``active``. ``None`` outside class-IL."""
    if not active_outputs:
        return None
    seen = active_outputs[task_index]
    if len(labels):
        seen = max(seen, int(labels.max()) + 1)
    return max(seen, active or 0)


class MultiHead(nn.Module):
    """One linear head per task (task-incremental learning); the task id picks the head.

    Heads narrower than the widest are padded with :data:`INACTIVE_LOGIT`, so a batch that mixes
    tasks (replay) still yields one ``[B, max_width]`` logit tensor.
    """

    def __init__(self, in_features: int, sizes: list[int]):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(in_features, n) for n in sizes)
        self.sizes = list(sizes)
        self.width = max(sizes)

    def _one(self, features: torch.Tensor, task: int) -> torch.Tensor:
        logits = self.heads[task](features)
        if self.sizes[task] < self.width:
            pad = logits.new_full((logits.shape[0], self.width - self.sizes[task]), INACTIVE_LOGIT)
            logits = torch.cat([logits, pad], dim=1)
        return logits

    def forward(self, features: torch.Tensor, task_ids: torch.Tensor | int | None = None):
        if task_ids is None:
            raise ValueError("a multi-head (task-incremental) model needs the task id of each input")
        if isinstance(task_ids, int):
            return self._one(features, task_ids)
        out = features.new_empty((features.shape[0], self.width))
        for task in torch.unique(task_ids).tolist():
            rows = task_ids == task
            out[rows] = self._one(features[rows], task)
        return out
