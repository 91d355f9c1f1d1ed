"""Dark Experience Replay, DER and DER++ (Buzzega et al. 2020, NeurIPS).

The memory keeps each sample with the logits the model gave it when it was seen (reservoir
sampling, stored after the step from the forward pass of that step, never recomputed).
DER (eq. 4, the logit-matching form of eq. 2-3) adds ``alpha * ||z' - h(x')||^2`` on a buffer
sample ``(x', z')``; DER++ (eq. 6) adds ``beta * CE(h(x''), y'')`` on a second, independent
buffer sample. Outputs that were masked when a row was stored (classes not seen yet in class-IL,
padding of narrower task heads) are left out of the squared error. ``logit_width`` says what it
is averaged over: ``full`` (default) every output of the head, the entries left out counting as
zero, as the authors' code does (mammoth's ``F.mse_loss(buf_outputs, buf_logits)``, for which the
paper's alpha values were tuned; its squared norm is the sum, 10x that on ten outputs);
``active`` the entries compared only, a weight ``outputs / active`` times larger early in a
class-IL stream (5x in the first task of Split Fashion-MNIST, 2.5x in the second).

Class-IL with an expanding head (the outputs of a class are live from its first task on, see
:mod:`forgetless.models.heads`). Taken literally, the masked outputs leave the logits of classes
that arrive later unconstrained on stored rows, so they grow there and DER forgets like naive
(``fill_future_logits=false``: ACC 0.199, docs/tuning-replay.md). In the paper's head every
output is trained from the first task, so the stored vector holds the model's values for the
classes not seen yet, values a 10-way cross-entropy has pushed *below* the seen classes. With
``fill_future_logits`` (default) we record the newly active outputs of every stored row at the
first step of each task, before they are trained, as the model's current value for them
(``future_logits="model"``) capped at the row's lowest stored logit (``"capped"``, default):
when the row was stored the head gave those classes probability 0, below every class it knew,
and the cap keeps that ranking in the record. Without the cap, the untrained outputs sit at ~0
while the stored logits of a two-class task are small (~+-0.7 after one SGD epoch), so the stored
margin of the true class over the later classes is ~0.6 (mammoth's head: ~4) and task 0 is lost
(final row 0.00, 0.47, 0.20, 0.14, 0.995 on the peers' SGD settings, benchmarks/peers/). The
values recorded at insertion are never changed.

Against Mammoth on its settings (SGD 0.01 momentum 0.9, 1 epoch, seeds 0-4; docs/tuning-replay.md,
section 6): DER 0.334 -> 0.612 with the capped record and full-width averaging (Mammoth 0.644;
Mammoth with PyTorch's init, forgetless's: 0.551), DER++ 0.705 -> 0.725 (0.759; 0.693). With
Mammoth's Xavier initialisation forgetless reaches 0.674 and 0.779.

Avalanche's DER is another design, available as options: its buffer is class-balanced and
filled after each experience with the logits of the model as trained on it (``fill=task-end``,
``selection=balanced``: no replay during the first task, logits of a finished model rather than
of the step), and its DER++ takes the cross-entropy on the logit term's rows
(``second_sample=shared``: one replay draw, a third fewer rows per step). On the peers' SGD
settings with PyTorch's init these reach DER 0.663 and DER++ 0.767 over seeds 0-4 (Avalanche
0.631, 0.740; docs/tuning-replay.md, section 6).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from forgetless.strategies import register
from forgetless.strategies._buffer import (
    BufferParams,
    BufferSample,
    ReplayStrategy,
    active_outputs,
    has_batch_norm,
    masked_logit_mse,
)
from forgetless.strategies.base import Batch, ModelOutput, TrainingContext


class DERParams(BufferParams):
    alpha: float = Field(0.3, ge=0.0, description="weight of the logit-matching term (eq. 4)")
    fill_future_logits: bool = Field(
        True,
        description="class-IL: record newly active outputs of stored rows before training them",
    )
    future_logits: Literal["capped", "model"] = Field(
        "capped",
        description="value recorded for them: the model's, capped at the row's lowest stored logit (capped) or not",
    )
    logit_width: Literal["full", "active"] = Field(
        "full",
        description="average the squared error over every output of the head (full, mammoth) or those compared",
    )


class DERPPParams(DERParams):
    beta: float = Field(0.5, ge=0.0, description="weight of the replay cross-entropy (eq. 6)")
    second_sample: Literal["independent", "shared"] = Field(
        "independent",
        description="the cross-entropy's buffer rows: a second draw (independent, the paper's) or the logit "
        "term's rows (shared, Avalanche's: one replay batch, a third fewer rows per step)",
    )


@register
class DER(ReplayStrategy):
    name = "der"
    family = "replay"
    summary = "dark experience replay: match the logits stored with buffer samples"
    Params: ClassVar[type[BaseModel]] = DERParams
    store_logits = True

    def fill_future_logits(self, ctx: TrainingContext) -> None:
        """Record, for every stored row, the outputs that became active since it was stored.

        The value is the model's current (untrained) output; with ``future_logits="capped"`` it
        is at most the row's lowest stored logit, so a class the head masked when the row was
        stored stays ranked below every class it had then.
        """
        buffer = self.buffer
        if buffer.size == 0:
            return
        stored = buffer.take(torch.arange(buffer.size, device=buffer.labels.device))
        replay = stored.to_batch(ctx, augmented=False)
        with torch.no_grad():
            live = ctx.model(replay.x, replay.task_ids)
        width = min(live.shape[1], stored.logits.shape[1])
        live_active = active_outputs(live).clamp_max(width)
        columns = torch.arange(width, device=live.device)[None, :]
        known = columns < stored.active[:, None]
        new = ~known & (columns < live_active[:, None])
        values = live[:, :width]
        if self.params.future_logits == "capped":
            lowest = stored.logits[:, :width].masked_fill(~known, float("inf")).amin(dim=1, keepdim=True)
            values = torch.minimum(values, lowest)
        buffer.logits[: buffer.size, :width][new] = values[new]
        buffer.active[: buffer.size] = torch.maximum(stored.active, live_active)

    def setup(self, ctx: TrainingContext) -> None:
        super().setup(ctx)
        self.shared_forward = not has_batch_norm(ctx.model)
        """The buffer rows ride in the learner's forward (no BatchNorm: the same arithmetic as a
        forward of their own); with BatchNorm they get their own forward, as in the paper's code,
        so that the current batch's statistics are not mixed with the buffer's."""
        self._drawn: list[BufferSample] = []
        self._start = 0

    def samples(self, ctx: TrainingContext) -> list[BufferSample]:
        """The step's buffer samples: ``x'`` (and DER++'s ``x''``); none while the buffer is empty."""
        first = self.draw(ctx)
        return [] if first is None else [first]

    def replay_batch(self, ctx: TrainingContext, batch: Batch) -> Batch | None:
        """Record the future logits at a class-IL task's first step, then draw the samples;
        without BatchNorm they are appended to the batch (one forward for every row)."""
        if ctx.step == 0 and ctx.scenario.kind == "class" and self.params.fill_future_logits:
            self.fill_future_logits(ctx)
        self._drawn = self.samples(ctx)
        if not self._drawn or not self.shared_forward:
            return None
        self._start = len(batch)
        parts = [sample.to_batch(ctx) for sample in self._drawn]
        return parts[0] if len(parts) == 1 else parts[0].concat(parts[1])

    def _appended(self) -> int:
        """How many rows of the batch are this strategy's (0: none, or their own forward)."""
        return sum(len(s.labels) for s in self._drawn) if self.shared_forward else 0

    def criterion(self, ctx: TrainingContext, batch: Batch, output: ModelOutput) -> torch.Tensor | None:
        """The learner's cross-entropy over every row except the buffer rows appended here (their
        terms are eq. 4 and 6 in :meth:`loss`); ``None`` (the default) when none were appended."""
        count = self._appended()
        if count == 0:
            return None
        start, end = self._start, self._start + count
        keep = torch.cat([torch.arange(start), torch.arange(end, len(batch))]).to(output.logits.device)
        return F.cross_entropy(output.logits[keep], batch.y[keep])

    def buffer_logits(self, ctx: TrainingContext, output: ModelOutput) -> torch.Tensor:
        """The live logits of the drawn samples, in order: from the learner's forward, or their own."""
        if self._appended():
            return output.logits[self._start : self._start + self._appended()]
        replay = [sample.to_batch(ctx) for sample in self._drawn]
        both = replay[0] if len(replay) == 1 else replay[0].concat(replay[1])
        return ctx.model(both.x, both.task_ids)

    def loss(self, ctx: TrainingContext, batch: Batch, output: ModelOutput) -> torch.Tensor | None:
        if not self._drawn:
            return None
        (sample,) = self._drawn
        live = self.buffer_logits(ctx, output)
        return self.params.alpha * self.logit_error(live, sample.logits, sample.active)

    def logit_error(self, live: torch.Tensor, stored: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """The squared error of eq. 4, averaged as ``logit_width`` says."""
        return masked_logit_mse(live, stored, active, over=self.params.logit_width)


@register
class DERPlusPlus(DER):
    name = "derpp"
    family = "replay"
    speed_target = 2.0
    summary = "DER++: DER plus cross-entropy on a second buffer sample"
    Params: ClassVar[type[BaseModel]] = DERPPParams

    def samples(self, ctx: TrainingContext) -> list[BufferSample]:
        first = self.draw(ctx)
        if first is None or self.params.second_sample == "shared":
            return [] if first is None else [first]
        return [first, self.draw(ctx)]

    def loss(self, ctx: TrainingContext, batch: Batch, output: ModelOutput) -> torch.Tensor | None:
        """Eq. 6: alpha * MSE(x') + beta * CE(x'') (``second_sample="shared"``: x'' = x'). The buffer
        samples go through one forward, the learner's own when the model has no BatchNorm (same
        arithmetic, larger products)."""
        if not self._drawn:
            return None
        first, second = self._drawn[0], self._drawn[-1]
        live = self.buffer_logits(ctx, output)
        n = len(first.labels)
        matching = self.logit_error(live[:n], first.logits, first.active)
        cross_entropy = F.cross_entropy(live[n:] if len(self._drawn) > 1 else live, second.labels.to(live.device))
        return self.params.alpha * matching + self.params.beta * cross_entropy
