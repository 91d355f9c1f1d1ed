"""Joint training: every task's data at once, the upper bound of a continual learner.

At the first task the model trains on the union of all tasks (shuffled together, each input
with its own task id); later tasks add nothing. Every row of the accuracy matrix therefore shows
the jointly trained model, and its final row is the reference ``a*`` for intransigence.
"""

from __future__ import annotations

import torch

from forgetless.strategies import register
from forgetless.strategies.base import Strategy, TrainingContext, TrainingSet


@register
class Joint(Strategy):
    name = "joint"
    family = "baseline"
    summary = "train on all tasks at once (the upper bound, not a continual method)"

    def training_set(self, ctx: TrainingContext, data: TrainingSet) -> TrainingSet:
        if ctx.task_index > 0:
            return TrainingSet(data.x[:0], data.y[:0], data.task_ids)
        tasks = ctx.scenario.tasks
        x = torch.cat([t.train_x for t in tasks])
        y = torch.cat([t.train_y for t in tasks])
        task_ids = None
        if ctx.scenario.uses_task_id:
            task_ids = torch.cat([torch.full_like(t.train_y, t.index) for t in tasks])
        return TrainingSet(x, y, task_ids)
