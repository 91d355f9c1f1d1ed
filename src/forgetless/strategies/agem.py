"""Averaged GEM (A-GEM; Chaudhry et al. 2019, "Efficient Lifelong Learning with A-GEM", ICLR).

One reference gradient ``g_ref`` on a random batch of the memory (rows of earlier tasks only);
when the new gradient ``g`` conflicts with it (``g . g_ref < 0``) it is projected (eq. 11):
``g~ = g - (g . g_ref / g_ref . g_ref) g_ref``, else left unchanged. Memory: reservoir.
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
)
from forgetless.strategies.base import Batch, FlatGradient, TrainingContext


class AGEMParams(BufferParams):
    replay_batch_size: int | None = Field(
        256, ge=1, description="memory rows of the reference gradient (the paper's 256)"
    )


def agem_project(gradient: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """A-GEM eq. 11: remove the component of ``gradient`` that opposes ``reference``."""
    dot = torch.dot(gradient, reference)
    if dot >= 0:
        return gradient
    return gradient - (dot / torch.dot(reference, reference).clamp_min(1e-12)) * reference


@register
class AGEM(ReplayStrategy):
    name = "agem"
    family = "replay"
    speed_target = 2.5
    summary = "A-GEM: project the gradient so the loss on a memory batch does not rise"
    uses_flat_parameters = True  # project_gradient gets the flat gradient buffer itself
    Params: ClassVar[type[BaseModel]] = AGEMParams

    def project_gradient(self, ctx: TrainingContext, batch: Batch, gradient: FlatGradient) -> torch.Tensor | None:
        """No earlier task yet (or an empty memory): the gradient is kept as it is."""
        sample = self.draw(ctx, before_task=ctx.task_index)
        if sample is None:
            return None
        replay = sample.to_batch(ctx)
        loss = F.cross_entropy(ctx.model(replay.x, replay.task_ids), replay.y)
        return agem_project(gradient.vector, gradient.layout.gradient_of(loss))
