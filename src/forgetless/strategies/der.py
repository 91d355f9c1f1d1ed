"""Dark Experience Replay, DER and DER++ (Buzzega et al. 2020, NeurIPS).

The memory keeps each sample with the logits the model gave it when it was seen (reservoir).
DER (eq. 2-4) adds ``alpha * ||h(x') - z'||^2`` on a buffer sample ``(x', z')``;
DER++ (eq. 6) adds ``beta * CE(h(x''), y'')`` on a second, independent buffer sample.
The stored logits are never recomputed. Outputs that were masked when a row was stored (classes
not seen yet in class-IL, padding of narrower task heads) are left out of the squared error;
the error is averaged over the outputs compared.

Class-IL with an expanding head: compared literally, the masked outputs would leave the logits
of classes that arrive later unconstrained on stored rows, so they grow there and DER forgets
almost as much as naive (measured: docs/tuning-replay.md). In the paper's unmasked head, the
stored logits of not-yet-seen classes are the model's values for them *before* it learned those
classes. With ``fill_future_logits`` (default) we record exactly that: at the first step of each
task, the outputs that have just become active are filled, for every stored row, with the
model's current (still untrained) values; the values stored at insertion are never changed.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from forgetless.strategies import register
from forgetless.strategies._buffer import (
    BufferParams,
    ReplayStrategy,
    active_outputs,
    masked_logit_mse,
)
from forgetless.strategies.base import Batch, TrainingContext


class DERParams(BufferParams):
    alpha: float = Field(0.3, ge=0.0, description="weight of the logit-matching term (eq. 4)")
    fill_future_logits: bool = Field(
        True,
        description="class-IL: record newly active outputs of stored rows before training them",
    )


class DERPPParams(DERParams):
    beta: float = Field(0.5, ge=0.0, description="weight of the replay cross-entropy (eq. 6)")


@register
class DER(ReplayStrategy):
    name = "der"
    summary = "dark experience replay: match the logits stored with buffer samples"
    Params: ClassVar[type[BaseModel]] = DERParams
    store_logits = True

    def fill_future_logits(self, ctx: TrainingContext) -> None:
        """Record, for every stored row, the outputs that became active since it was stored."""
        buffer = self.buffer
        if buffer.size == 0:
            return
        stored = buffer.take(torch.arange(buffer.size, device=buffer.labels.device))
        replay = stored.to_batch(ctx)
        with torch.no_grad():
            live = ctx.model(replay.x, replay.task_ids)
        width = min(live.shape[1], stored.logits.shape[1])
        live_active = active_outputs(live).clamp_max(width)
        columns = torch.arange(width, device=live.device)[None, :]
        new = (columns >= stored.active[:, None]) & (columns < live_active[:, None])
        buffer.logits[: buffer.size, :width][new] = live[:, :width][new]
        buffer.active[: buffer.size] = torch.maximum(stored.active, live_active)

    def _before_loss(self, ctx: TrainingContext) -> None:
        if ctx.step == 0 and ctx.scenario.kind == "class" and self.params.fill_future_logits:
            self.fill_future_logits(ctx)

    def loss(self, ctx: TrainingContext, batch: Batch, logits: torch.Tensor) -> torch.Tensor | None:
        self._before_loss(ctx)
        sample = self.draw(ctx)
        if sample is None:
            return None
        replay = sample.to_batch(ctx)
        live = ctx.model(replay.x, replay.task_ids)
        return self.params.alpha * masked_logit_mse(live, sample.logits, sample.active)


@register
class DERPlusPlus(DER):
    name = "derpp"
    summary = "DER++: DER plus cross-entropy on a second buffer sample"
    Params: ClassVar[type[BaseModel]] = DERPPParams

    def loss(self, ctx: TrainingContext, batch: Batch, logits: torch.Tensor) -> torch.Tensor | None:
        """Both buffer samples go through the model in one forward pass (same arithmetic as
        two passes, larger matrix products); eq. 6: alpha * MSE(x') + beta * CE(x'')."""
        self._before_loss(ctx)
        first = self.draw(ctx)
        if first is None:
            return None
        second = self.draw(ctx)
        both = first.to_batch(ctx).concat(second.to_batch(ctx))
        live = ctx.model(both.x, both.task_ids)
        n = len(first.labels)
        matching = masked_logit_mse(live[:n], first.logits, first.active)
        cross_entropy = F.cross_entropy(live[n:], both.y[n:])
        return self.params.alpha * matching + self.params.beta * cross_entropy
