"""The base model beside the one being fine-tuned: one mechanism for every method that compares
the fine-tuned model to where it started (a KL anchor, the token-wise constrained objective,
the refusal capability's KL, the generation capability's fluency).

Under a PEFT adapter the base model is the same module with its adapters switched off
(peft's ``disable_adapter()``: no copy, no memory); for a full fine-tune it is a frozen copy
taken when the reference is built (the model's parameter memory once more, kept on the model's
device).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
from torch import nn


def _is_peft(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class FrozenReference:
    """The model as it is now, kept for later comparisons: ``ref(model, **inputs)`` is the
    reference model's output on ``inputs`` (no gradient, eval mode).

    ``model`` is the model that will be trained. Build the reference before training (a
    strategy's ``before_task``, a capability's ``prepare``).
    """

    def __init__(self, model: nn.Module) -> None:
        self.shares_weights = _is_peft(model)
        self.copy: nn.Module | None = None
        if not self.shares_weights:
            self.copy = copy.deepcopy(model).eval()
            for param in self.copy.parameters():
                param.requires_grad_(False)

    def module(self, model: nn.Module) -> nn.Module:
        """The module whose forward is the reference's (``model`` itself under PEFT). The frozen
        copy follows ``model`` to its device (a Trainer moves the model after a strategy or
        capability took the reference)."""
        if self.copy is None:
            return model
        device = next(model.parameters()).device
        if next(self.copy.parameters()).device != device:
            self.copy.to(device)
        return self.copy

    @contextlib.contextmanager
    def active(self, model: nn.Module) -> Any:
        """Inside: ``self.module(model)`` computes the reference (adapters off, eval mode)."""
        target = self.module(model)
        was_training = target.training
        target.eval()
        try:
            with torch.no_grad(), model.disable_adapter() if self.shares_weights else contextlib.nullcontext():
                yield target
        finally:
            target.train(was_training)

    def __call__(self, model: nn.Module, **inputs: torch.Tensor) -> Any:
        """The reference model's output on ``inputs`` (a Hugging Face output with ``logits``)."""
        with self.active(model) as target:
            return target(**inputs)

    def logits(self, model: nn.Module, **inputs: torch.Tensor) -> torch.Tensor:
        return self(model, **inputs).logits

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The frozen copy's weights (nothing under PEFT: the base weights are the model's)."""
        return {} if self.copy is None else dict(self.copy.state_dict())

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.copy is not None and state:
            self.copy.load_state_dict(state)
