"""DFT: dynamic fine-tuning, SFT with each token's loss weighted by its own probability (Wu et
al. 2025, "On the Generalization of SFT: A Reinforcement Learning Perspective with Reward
Rectification", eq. 7).

    L_DFT(theta) = - mean over response tokens t of  sg(p_theta(y_t | x, y_<t)) * log p_theta(y_t | x, y_<t)

``sg`` stops the gradient (the weight is a number, not differentiated). The paper reads SFT's
gradient as a policy gradient with the implicit reward ``1 / p_theta``, which blows up on
unlikely tokens; multiplying by ``p_theta`` rectifies it. The mean runs over the batch's trained
(response) tokens, exactly as TRL's ``SFTTrainer(loss_type="dft")`` does (``-log_probs *
exp(log_probs).detach()``, summed and divided by the number of trained tokens).

A ``criterion``: it replaces the fine-tune's cross-entropy of the task rows (replay rows keep
their own loss). ASFT, anchored SFT (DFT plus a KL anchor to the base model, LLaMA-Factory's
``asft``), is spelled ``--strategies dft+kl-anchor``.
"""

from __future__ import annotations

from typing import Any

import torch

from forgetless.strategies import register
from forgetless.strategies._tokens import masked_mean, scored_targets, target_log_probs
from forgetless.strategies.base import Strategy, TrainingContext


def dft_loss(logits: torch.Tensor, batch: Any) -> torch.Tensor:
    """``-mean_t sg(p(y_t)) log p(y_t)`` over the trained targets of ``batch``."""
    targets, mask = scored_targets(batch)
    log_probs = target_log_probs(logits, targets)
    return masked_mean(-log_probs * log_probs.detach().exp(), mask)


@register
class DFT(Strategy):
    name = "dft"
    family = "regularization"
    summary = "DFT: SFT loss weighted by each token's probability (Wu et al. 2025; ASFT = dft+kl-anchor)"
    stacks = ("finetune",)

    def criterion(self, ctx: TrainingContext, batch: Any, output: Any) -> torch.Tensor | None:
        if batch is None or getattr(output, "logits", None) is None:
            return None
        return dft_loss(output.logits, batch)
