"""Next-token bookkeeping shared by the token-level objectives of a fine-tune (``dft``,
``kl-anchor``, ``safe-tokens``): which targets are trained, their log-probabilities, and each
target's position ``t`` inside its response.

A batch is a :class:`~forgetless.integrations.hf.strategies.TokenBatch` (``input_ids``,
``attention_mask``, ``labels``; read by attribute, so this module needs no transformers). The
logits at position ``i`` predict token ``i + 1`` (the causal-LM shift); a target is trained when
its label is not ``-100`` (the Hugging Face convention: an instruction's prompt and the padding
are ``-100``), or, without labels, when the attention mask keeps it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from forgetless.errors import ConfigError

IGNORE_INDEX = -100


def scored_targets(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(targets, mask)``, both ``[B, T-1]``: the next token of every position (``0`` where not
    trained) and whether it is trained (a response token)."""
    labels = batch.labels if batch.labels is not None else batch.input_ids
    if labels.dim() != 2:
        raise ConfigError(
            "a token-level objective (dft, kl-anchor, safe-tokens) needs a causal-LM task with a label per token, "
            "not a classification task: drop it or fine-tune with --objective lm"
        )
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    if batch.labels is None and batch.attention_mask is not None:
        mask = mask & batch.attention_mask[:, 1:].bool()
    return targets.masked_fill(~mask, 0), mask


def target_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log p(y_t)`` of each target, float32, from the logits ``[B, T, V]`` (the last position
    predicts nothing)."""
    log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
    return log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def response_positions(mask: torch.Tensor) -> torch.Tensor:
    """``t`` (1-based) of every trained target inside its response: a response is a run of
    consecutive trained targets (each assistant turn of a chat row; a plain-text block is one).
    ``0`` where not trained."""
    counts = mask.long().cumsum(1)
    starts = mask & ~torch.cat([torch.zeros_like(mask[:, :1]), mask[:, :-1]], dim=1)
    offset = torch.where(starts, counts - 1, torch.zeros_like(counts)).cummax(1).values
    return torch.where(mask, counts - offset, torch.zeros_like(counts))


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the trained targets (``0`` for a batch without any)."""
    return torch.where(mask, values, torch.zeros_like(values)).sum() / mask.sum().clamp_min(1)
