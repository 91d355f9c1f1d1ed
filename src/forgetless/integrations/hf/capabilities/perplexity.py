"""``--keep perplexity:DATA``: ``exp(mean token NLL)`` on held-out text (causal LMs), computed
exactly over every predicted token (Jelinek et al. 1977; the standard LM evaluation)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from forgetless.integrations.hf.capabilities._io import EvalMode, device_of, lm_blocks, token_nll
from forgetless.integrations.hf.capabilities.base import Capability, KeepOptions, register_capability
from forgetless.integrations.hf.data import TextData


@register_capability
class Perplexity(Capability):
    """Perplexity ``exp(sum NLL / n_tokens)`` of held-out blocks (every token counted once)."""

    kind = "perplexity"
    needs_lm = True
    metric = "perplexity"
    higher_is_better = False

    def __init__(
        self, name: str, test_ids: torch.Tensor, train_ids: torch.Tensor | None = None, batch_size: int = 32
    ) -> None:
        super().__init__(name, batch_size)
        self.test_ids = test_ids
        self.train_ids = train_ids

    @classmethod
    def from_texts(cls, name: str, data: TextData, tokenizer: Any, options: KeepOptions) -> Perplexity:
        train, test = data.split(0.5, options.seed)
        seq_len = options.seq_len
        return cls(
            name,
            lm_blocks(tokenizer, test, seq_len, options.eval_size),
            lm_blocks(tokenizer, train, seq_len, options.train_size),
        )

    def evaluate(self, model: nn.Module) -> float:
        device = device_of(model)
        total, count = torch.zeros((), dtype=torch.float64), 0
        with EvalMode(model):
            for start in range(0, self.test_ids.shape[0], self.batch_size):
                ids = self.test_ids[start : start + self.batch_size].to(device)
                nll, n = token_nll(model, ids)
                total += nll.cpu()
                count += int(n)
        return math.exp(float(total) / count)

    def replay_rows(self) -> dict[str, torch.Tensor] | None:
        if self.train_ids is None:
            return None
        return {"input_ids": self.train_ids}

    def replay_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = batch["input_ids"]
        return model(input_ids=ids, labels=ids).loss

    def fisher_logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-token logits ``[B, T-1, V]``: the Fisher of the LM's own token distribution."""
        return model(input_ids=batch["input_ids"]).logits[:, :-1]
