"""Layer-wise learning-rate decay and gradual unfreezing for transformer layers.

Parameters are given a *depth*: 0 for embeddings, ``i + 1`` for transformer layer ``i``
(names like ``...layer.3.``, ``...h.3.``, ``...layers.3.``, ``...block.3.``), and ``L + 1`` for
everything above the last layer (final norm, pooler, heads).

* Layer-wise LR decay (Howard & Ruder 2018, "discriminative fine-tuning", eq. 2; Clark et al.
  2020): ``lr(depth) = lr * decay ** (L + 1 - depth)``, so lower layers move less.
* Gradual unfreezing (Howard & Ruder 2018, sec. 3.2): start with only the top depth trainable and
  unfreeze one more depth level, top-down, every ``every`` steps.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from forgetless.errors import ConfigError

_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")
_EMBEDDING = re.compile(r"embed|(?:^|\.)(?:wte|wpe)\.")


def layer_depths(model: nn.Module) -> tuple[dict[str, int], int]:
    """``{parameter name: depth}`` and the number of transformer layers ``L``."""
    layers = {n: int(m.group(1)) for n, _ in model.named_parameters() if (m := _LAYER.search(n))}
    n_layers = max(layers.values()) + 1 if layers else 0
    depths = {}
    for name, _ in model.named_parameters():
        if name in layers:
            depths[name] = layers[name] + 1
        elif _EMBEDDING.search(name):
            depths[name] = 0
        else:
            depths[name] = n_layers + 1
    return depths, n_layers


def layerwise_param_groups(
    model: nn.Module, lr: float, decay: float, weight_decay: float = 0.0
) -> list[dict[str, Any]]:
    """One optimizer group per depth with ``lr * decay ** (L + 1 - depth)`` (trainable only).

    Biases and norm weights (1-D) get no weight decay, as in the ``Trainer``'s default.
    """
    if not 0.0 < decay <= 1.0:
        raise ConfigError(f"layerwise_lr_decay must be in (0, 1], got {decay}")
    depths, n_layers = layer_depths(model)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        depth, decays = depths[name], param.dim() > 1
        key = (depth, decays)
        if key not in groups:
            groups[key] = {
                "params": [],
                "lr": lr * decay ** (n_layers + 1 - depth),
                "weight_decay": weight_decay if decays else 0.0,
                "depth": depth,
            }
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def layerwise_adamw(model: nn.Module, lr: float, decay: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW over :func:`layerwise_param_groups` (pass as ``Trainer(optimizers=(opt, None))``)."""
    return torch.optim.AdamW(layerwise_param_groups(model, lr, decay, weight_decay), lr=lr)


class GradualUnfreezing(TrainerCallback):
    """Freeze all but the top depth at the start; unfreeze one level every ``every`` steps.

    Add it after :class:`ForgettingCallback` so that the latter records the weights that will
    train. Parameters frozen before training started stay frozen.
    """

    def __init__(self, every: int) -> None:
        if every < 1:
            raise ConfigError(f"unfreeze_every must be >= 1, got {every}")
        self.every = every
        self.depths: dict[str, int] = {}
        self.top = 0
        self.trainable: set[str] = set()

    def _apply(self, model: nn.Module, step: int) -> None:
        lowest = self.top - step // self.every
        for name, param in model.named_parameters():
            if name in self.trainable:
                param.requires_grad_(self.depths[name] >= lowest)

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        assert model is not None
        self.depths, n_layers = layer_depths(model)
        self.top = n_layers + 1
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        self._apply(model, state.global_step)

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        assert model is not None
        if state.global_step % self.every == 0:
            self._apply(model, state.global_step)

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        assert model is not None
        for name, param in model.named_parameters():
            if name in self.trainable:
                param.requires_grad_(True)
