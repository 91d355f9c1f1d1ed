"""ER-ACE: experience replay with the asymmetric cross-entropy (Caccia et al. 2022, ICLR,
"New Insights on Reducing Abrupt Representation Change in Online Continual Learning", eq. 5).

Plain ER's cross-entropy over current and replayed rows lets the new classes' rows push every
old class's logit down, which drifts the old classes' representations abruptly at each task
switch. ER-ACE splits the loss:

    L = CE( mask_C(f(x_cur)), y_cur ) + CE( f(x_buf), y_buf )

where ``mask_C`` keeps only the logits of the classes ``C`` present in the current rows of the
batch (the others are set to the lowest float, so they get no gradient from new data), and the
replayed rows keep the full cross-entropy over every class seen. Each term is the mean over its
own rows (the authors' and Mammoth's ``models/er_ace.py``: ``loss + loss_re``). On the first
task there is nothing to protect: the mask is not applied and there are no replay rows, so
ER-ACE is plain cross-entropy there. The memory is ER's (reservoir by default), filled with the
current task's rows after every step; replay rows arrive through ``replay_batch`` and the base
loss is replaced through the ``criterion`` hook.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from forgetless.strategies import register
from forgetless.strategies.base import Batch, ModelOutput, TrainingContext
from forgetless.strategies.er import ExperienceReplay


def asymmetric_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, current: int, mask: bool) -> torch.Tensor:
    """Eq. 5: the current rows ``[:current]`` scored among the classes they contain (when
    ``mask``), the rows after them (replay) among every class; the two means summed."""
    new, new_labels = logits[:current], labels[:current]
    if mask:
        present = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
        present[new_labels] = True
        new = new.masked_fill(~present, torch.finfo(new.dtype).min)
    loss = F.cross_entropy(new, new_labels)
    if logits.shape[0] > current:
        loss = loss + F.cross_entropy(logits[current:], labels[current:])
    return loss


@register
class ERACE(ExperienceReplay):
    """ER's memory and replay rows (:class:`~forgetless.strategies.er.ExperienceReplay`), eq. 5's loss."""

    name = "er-ace"
    family = "replay"
    speed_target = 2.0
    summary = "ER-ACE: experience replay with the asymmetric cross-entropy (new rows among their own classes)"

    def criterion(self, ctx: TrainingContext, batch: Batch, output: ModelOutput) -> torch.Tensor:
        return asymmetric_cross_entropy(output.logits, batch.y, ctx.current_size, mask=ctx.task_index > 0)
