"""Safe tokens: the token-wise constrained fine-tuning objective of Qi et al. 2024, "Safety
Alignment Should Be Made More Than Just a Few Tokens Deep" (eq. 3), which keeps the first
response tokens close to the aligned model so that benign (or adversarial) fine-tuning cannot
easily undo a refusal that lives in those tokens:

    L(theta) = mean over response tokens t of  -(2 / beta_t) * log sigmoid(beta_t * u_t),
    u_t = log pi_theta(y_t | x, y_<t) - log pi_aligned(y_t | x, y_<t)

``t`` counts the tokens of each response from 1 (each assistant turn of a chat row starts
again). The paper's defaults: ``beta_1 = 0.5``, ``beta_t = 2`` for ``2 <= t <= 5`` and
``beta_t = 0.1`` after (``betas = [0.5, 2, 2, 2, 2]``, ``beta = 0.1``). The gradient of a token's
term is ``-2 sigmoid(-beta_t u_t) * grad log pi_theta(y_t)`` (``u_t`` the log-ratio): SFT's
gradient weighted by ``2 sigmoid(-beta_t u_t)``, exactly SFT's where the model equals the aligned
one (``u_t = 0``) and, as ``beta_t -> 0``, everywhere (the objective tends to the cross-entropy
plus a constant); a large ``beta_t`` stops a token's update once its probability has risen a
little above the aligned model's (the weight decays like ``exp(-beta_t u_t)``). The mean runs over
the batch's trained tokens, as the authors' implementation does (it writes the same gradient
as ``sg(weight) * log pi_theta``; the value here is the paper's formula).

A ``criterion``: it replaces the fine-tune's cross-entropy of the task rows. The aligned model is
a :class:`~forgetless.integrations.hf.reference.FrozenReference` taken at the start of the
fine-tune (adapters off under PEFT; in a full fine-tune a frozen copy: the weights once more);
one extra forward without gradients per step.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from forgetless.errors import ConfigError
from forgetless.strategies import register
from forgetless.strategies._tokens import masked_mean, response_positions, scored_targets, target_log_probs
from forgetless.strategies.base import TrainingContext
from forgetless.strategies.kl_anchor import ReferenceStrategy


class SafeTokensParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    betas: list[float] = Field(
        default_factory=lambda: [0.5, 2.0, 2.0, 2.0, 2.0],
        min_length=0,
        description="beta_t of the first response tokens t = 1, 2, ... (paper: 0.5, then 2 up to t = 5)",
    )
    beta: float = Field(0.1, gt=0.0, description="beta_t of every later token (paper: 0.1)")


def position_betas(positions: torch.Tensor, betas: list[float], beta: float) -> torch.Tensor:
    """``beta_t`` at each position ``t`` (1-based; ``beta`` past the list and where ``t = 0``)."""
    table = torch.tensor([beta, *betas], dtype=torch.float32, device=positions.device)
    index = torch.where(positions <= len(betas), positions, torch.zeros_like(positions))
    return table[index]


def token_wise_constrained_loss(
    logits: torch.Tensor, reference_logits: torch.Tensor, batch: Any, betas: list[float], beta: float
) -> torch.Tensor:
    """Qi et al.'s eq. 3 averaged over the trained targets of ``batch``."""
    targets, mask = scored_targets(batch)
    ratio = target_log_probs(logits, targets) - target_log_probs(reference_logits, targets)
    beta_t = position_betas(response_positions(mask), betas, beta)
    return masked_mean(-(2.0 / beta_t) * F.logsigmoid(beta_t * ratio), mask)


@register
class SafeTokens(ReferenceStrategy):
    name = "safe-tokens"
    family = "regularization"
    summary = "token-wise constrained SFT keeping the first response tokens near the aligned model (Qi et al. 2024)"
    Params = SafeTokensParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if any(not (b > 0) for b in self.params.betas):
            raise ConfigError("invalid strategy parameter: safe-tokens.betas must all be > 0, e.g. [0.5,2,2,2,2]")

    def criterion(self, ctx: TrainingContext, batch: Any, output: Any) -> torch.Tensor | None:
        logits = getattr(output, "logits", None)
        if batch is None or logits is None or self.reference is None:
            return None
        reference = self.reference_logits(ctx, batch)
        return token_wise_constrained_loss(logits, reference, batch, self.params.betas, self.params.beta)
