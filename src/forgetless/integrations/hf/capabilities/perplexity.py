"""``--keep perplexity:DATA``: ``exp(mean token NLL)`` on held-out text (causal LMs), computed
exactly over every predicted token (Jelinek et al. 1977; the standard LM evaluation). On
instruction data (chat, Alpaca, prompt/completion) only the response tokens are predicted and
counted: the prompt is context, as in the loss of the fine-tune."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from forgetless.integrations.hf.capabilities._io import EvalMode, device_of, lm_rows, token_nll
from forgetless.integrations.hf.capabilities.base import Capability, KeepOptions, PackedRows, register_capability
from forgetless.integrations.hf.data import TextData

Rows = dict[str, torch.Tensor]


def _rows(ids_or_rows: torch.Tensor | Rows | None) -> Rows | None:
    if ids_or_rows is None or isinstance(ids_or_rows, dict):
        return ids_or_rows
    return {"input_ids": ids_or_rows}


@register_capability
class Perplexity(Capability):
    """Perplexity ``exp(sum NLL / n_tokens)`` of held-out rows (every scored token counted once).

    ``test_ids`` / ``train_ids``: ``[N, T]`` token ids (packed text, every token scored), or rows
    ``{"input_ids", "attention_mask", "labels"}`` of :func:`lm_rows` whose targets labelled
    ``-100`` (an instruction's prompt, padding) are not scored, trained on in replay, nor in
    the Fisher.
    """

    kind = "perplexity"
    needs_lm = True
    metric = "perplexity"
    higher_is_better = False

    def __init__(
        self,
        name: str,
        test_ids: torch.Tensor | Rows,
        train_ids: torch.Tensor | Rows | None = None,
        batch_size: int = 32,
    ) -> None:
        super().__init__(name, batch_size)
        self.test_rows = _rows(test_ids)
        self.train_rows = _rows(train_ids)
        assert self.test_rows is not None
        self.test_ids = self.test_rows["input_ids"]
        self.train_ids = None if self.train_rows is None else self.train_rows["input_ids"]

    @classmethod
    def from_texts(cls, name: str, data: TextData, tokenizer: Any, options: KeepOptions) -> Perplexity:
        train, test = data.split(0.5, options.seed)
        seq_len = options.seq_len
        test_rows = lm_rows(tokenizer, test, seq_len, options.eval_size)
        train_rows = lm_rows(tokenizer, train, seq_len, options.train_size)
        if data.examples is None:  # packed text: every token is scored, the ids are enough
            return cls(name, test_rows["input_ids"], train_rows["input_ids"])
        return cls(name, test_rows, train_rows)

    def evaluate(self, model: nn.Module) -> float:
        device = device_of(model)
        total, count = torch.zeros((), dtype=torch.float64), 0
        rows = self.test_rows
        assert rows is not None
        with EvalMode(model):
            for start in range(0, self.test_ids.shape[0], self.batch_size):
                batch = {k: v[start : start + self.batch_size].to(device) for k, v in rows.items()}
                nll, n = token_nll(model, batch["input_ids"], batch.get("attention_mask"), batch.get("labels"))
                total += nll.cpu()
                count += int(n)
        return math.exp(float(total) / count)

    def replay_rows(self) -> dict[str, torch.Tensor] | None:
        if self.train_rows is None:
            return None
        return dict(self.train_rows)

    def replay_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = batch["input_ids"]
        return model(input_ids=ids, attention_mask=batch.get("attention_mask"), labels=batch.get("labels", ids)).loss

    def fisher_logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-token logits ``[B, T-1, V]``: the Fisher of the LM's own token distribution.
        Targets that are not scored (``scored`` 0: a prompt, padding) get constant zero logits,
        so they add nothing to the Fisher."""
        logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits[:, :-1]
        if "scored" in batch:
            logits = logits * batch["scored"][:, 1:, None].to(logits.dtype)
        return logits

    def fisher_view(self, model: nn.Module) -> tuple[nn.Module, torch.Tensor] | None:
        rows = self.replay_rows()
        if rows is None or "labels" not in rows:
            return super().fisher_view(model)
        inputs = {
            "input_ids": rows["input_ids"],
            "attention_mask": rows.get("attention_mask", torch.ones_like(rows["input_ids"])),
            "scored": (rows["labels"] != -100).long(),
        }
        view = PackedRows(model, self.fisher_logits, {k: v.shape[1] for k, v in inputs.items()})
        return view, torch.cat(list(inputs.values()), dim=1)
