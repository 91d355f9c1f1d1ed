"""The non-finite-loss watch: stop at the first NaN or infinite loss, naming its step.

On the CPU every step's loss is checked at once (free). On an accelerator a host read is a
synchronisation, so the first bad ``(step, value)`` is kept on the device and read every
``check_every`` steps and before any checkpoint or evaluation (:meth:`NonFiniteWatch.check`):
the error still names the step where it happened, and no checkpoint ever holds weights that
a non-finite step touched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from forgetless.errors import NumericalError

CHECK_EVERY_ON_ACCELERATORS = 64
"""Steps between host reads of the non-finite flag on a GPU/MPS device."""


class NonFiniteWatch:
    """Watch each step's loss; :meth:`check` raises ``NumericalError`` for the first bad one.

    ``describe(step, value)`` gives the error's message (where the run is, what to change).
    """

    def __init__(self, device: torch.device, describe: Callable[[int, float], str]) -> None:
        self.check_every = 1 if device.type == "cpu" else CHECK_EVERY_ON_ACCELERATORS
        self.describe = describe
        self._first: torch.Tensor | None = None
        """``[step, value]`` of the first non-finite loss since the last check (``step`` -1: none)."""

    def watch(self, loss: torch.Tensor, step: int) -> None:
        """Record ``loss`` (detached) of ``step``; raise at once when checks are per step."""
        if self.check_every <= 1:
            if not torch.isfinite(loss):
                raise NumericalError(self.describe(step, float(loss)))
            return
        if self._first is None:
            # float32, not float64: MPS has no float64; steps are exact in float32 up to 2^24
            self._first = torch.tensor([-1.0, 0.0], dtype=torch.float32, device=loss.device)
        fresh = ~torch.isfinite(loss) & (self._first[0] < 0)
        entry = torch.stack([torch.full_like(self._first[0], step), loss.to(torch.float32)])
        self._first = torch.where(fresh, entry, self._first)
        if (step + 1) % self.check_every == 0:
            self.check()

    def check(self) -> None:
        """Raise if a watched step had a non-finite loss (one host read of the device flag)."""
        if self._first is None:
            return
        step, value = self._first.tolist()
        if step >= 0:
            self._first = None
            raise NumericalError(self.describe(int(step), value))


def loss_message(name: str, where: Any, step: int, value: float) -> str:
    """The learner's message for a non-finite loss of run ``name`` (``where``: its training context)."""
    return (
        f"the loss became {value} at task {where.task_index}, step {step} ({name}): lower the "
        f"learning rate (--lr) or the strategy's weight (e.g. --set ewc.ewc_lambda=...); results of "
        f"completed tasks were kept"
    )
