"""Layer-wise learning-rate decay and gradual unfreezing inside ``transformers.Trainer``.

Both are the core's mechanisms, not copies: the depth levels are
:func:`forgetless.training.optim.layer_groups` (a transformer's embeddings, each numbered block
``...layer.3.`` / ``...h.3.`` / ``...layers.3.`` / ``...block.3.``, then the top: final norm,
pooler, heads), the rates :func:`forgetless.training.optim.layerwise_param_groups`, and the
unfreezing :class:`forgetless.training.schedules.GradualUnfreezing`, driven by a Trainer callback.

* Layer-wise LR decay (Howard & Ruder 2018, "discriminative fine-tuning", eq. 2; Clark et al.
  2020): ``lr(level) = lr * decay ** (top - level)``, so lower layers move less.
* Gradual unfreezing (Howard & Ruder 2018, sec. 3.2): start with only the top level trainable
  and unfreeze one more level, top-down, every ``every`` steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from forgetless.training import schedules
from forgetless.training.optim import layer_groups, layerwise_param_groups


def layerwise_adamw(model: nn.Module, lr: float, decay: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW over the layer-wise groups of ``model`` (pass as ``Trainer(optimizers=(opt, None))``);
    biases and norm weights get no weight decay, as in the ``Trainer``'s default."""
    groups = layerwise_param_groups(layer_groups(model), lr, decay, weight_decay=weight_decay)
    return torch.optim.AdamW(groups, lr=lr)


@dataclass
class StepView:
    """What a schedule strategy reads of the run: the model and the optimizer steps so far."""

    model: nn.Module
    step: int


class GradualUnfreezing(TrainerCallback):
    """The core's :class:`~forgetless.training.schedules.GradualUnfreezing` as a Trainer callback.

    Add it after :class:`ForgettingCallback` so that the latter records the weights that will
    train. Parameters frozen before training started (LoRA's base weights) stay frozen. A
    resumed run (``state.global_step > 0``) unfreezes at once the levels due by then.
    """

    def __init__(self, every: int) -> None:
        self.schedule = schedules.GradualUnfreezing(every)

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        assert model is not None
        self.schedule.before_task(StepView(model, 0))  # type: ignore[arg-type]
        for step in range(self.schedule.every, state.global_step + 1, self.schedule.every):
            self.schedule.after_step(StepView(model, step), None, None)  # type: ignore[arg-type]

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        assert model is not None
        self.schedule.after_step(StepView(model, state.global_step), None, None)  # type: ignore[arg-type]

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        assert model is not None
        self.schedule.after_task(StepView(model, state.global_step))  # type: ignore[arg-type]
