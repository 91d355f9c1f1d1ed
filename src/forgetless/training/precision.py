"""Training precision: float32, or mixed precision with bfloat16 or float16 autocast.

``bf16``/``fp16`` run the forward passes and losses of a step under ``torch.autocast`` (matrix
products in the low dtype, reductions and losses in float32, Micikevicius et al. 2018); the
weights, their gradients, the optimizer and every strategy's state stay float32. ``fp16`` also
scales the loss (``torch.amp.GradScaler``: dynamic loss scaling, so small gradients do not
underflow); the gradient is unscaled before any strategy reads or edits it (GEM/A-GEM
projection, PackNet masks), and a step whose gradient overflowed is skipped, as the scaler does.
The scaler's state is part of every checkpoint, so a resume is exact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch

PrecisionName = Literal["fp32", "bf16", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """One run's precision: ``autocast()`` around forwards, ``backward``, ``unscale``, ``step``."""

    def __init__(self, name: PrecisionName, device: torch.device) -> None:
        self.name = name
        self.device_type = device.type
        self.dtype = _DTYPES.get(name)
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.dtype is None:
            yield
            return
        with torch.autocast(self.device_type, dtype=self.dtype):
            yield

    def backward(
        self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, reduce: Callable[[], None] | None = None
    ) -> None:
        """``loss.backward()`` (scaled under fp16), ``reduce()`` (the data-parallel all-reduce of
        the still scaled gradients), then the gradients unscaled in place."""
        if self.scaler is None:
            loss.backward()
            if reduce is not None:
                reduce()
            return
        self.scaler.scale(loss).backward()
        if reduce is not None:
            reduce()
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``; under fp16 skipped when the gradient overflowed, scale updated."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "scaler": None if self.scaler is None else dict(self.scaler.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
