"""Tokenisation and model-output helpers shared by the capability kinds."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from forgetless.errors import DataError
from forgetless.integrations.hf.data import TextData


def lm_blocks(tokenizer: Any, data: TextData, seq_len: int, max_blocks: int | None = None) -> torch.Tensor:
    """Concatenate the documents (separated by EOS when the tokenizer has one) and cut blocks.

    Returns ``[N, seq_len]`` token ids; the remainder shorter than a block is dropped.
    """
    ids: list[int] = []
    eos = getattr(tokenizer, "eos_token_id", None)
    need = None if max_blocks is None else max_blocks * seq_len
    for text in data.texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if need is not None and len(ids) >= need:
            break
    n = len(ids) // seq_len
    if max_blocks is not None:
        n = min(n, max_blocks)
    if n == 0:
        raise DataError(f"{data.source}: fewer than {seq_len} tokens of text; give more text")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def lm_rows(tokenizer: Any, data: TextData, seq_len: int, max_rows: int | None = None) -> dict[str, torch.Tensor]:
    """Rows of the causal-LM objective on ``data``.

    Plain text: packed blocks (:func:`lm_blocks`), ``{"input_ids", "labels"}`` with labels =
    ids (every token trained). Instruction data (chat, Alpaca, prompt/completion): one example
    per row, ``{"input_ids", "attention_mask", "labels"}`` with ``-100`` on the prompt and the
    padding (:func:`~forgetless.integrations.hf.instruct.instruction_rows`: only the responses are
    trained on and scored). ``max_rows`` counts blocks, or examples.
    """
    if data.examples is not None:
        from forgetless.integrations.hf.instruct import instruction_rows

        return instruction_rows(tokenizer, data, seq_len, max_rows)
    blocks = lm_blocks(tokenizer, data, seq_len, max_rows)
    return {"input_ids": blocks, "labels": blocks}


def encode_texts(tokenizer: Any, texts: list[str], seq_len: int) -> dict[str, torch.Tensor]:
    """Pad/truncate to ``seq_len``: ``input_ids`` and ``attention_mask`` tensors."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenizer(texts, truncation=True, max_length=seq_len, padding="max_length", return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def batches(rows: dict[str, torch.Tensor], batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    n = next(iter(rows.values())).shape[0]
    for start in range(0, n, batch_size):
        yield {k: v[start : start + batch_size] for k, v in rows.items()}


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def token_nll(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL (float64) and number of predicted tokens of one batch.

    Token ``t+1`` is predicted from tokens ``<= t``; padded targets (mask 0) are not counted,
    nor, with ``labels``, targets labelled ``-100`` (an instruction's prompt).
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    targets = input_ids[:, 1:]
    log_probs = F.log_softmax(logits.float(), dim=-1)
    nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    keep = None
    if attention_mask is not None:
        keep = attention_mask[:, 1:].bool()
    if labels is not None:
        scored = labels[:, 1:] != -100
        keep = scored if keep is None else keep & scored
    if keep is not None:
        return nll[keep].double().sum(), keep.sum()
    return nll.double().sum(), torch.tensor(targets.numel())


def mean_pooled_embedding(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the last hidden states over real tokens (the sentence-transformers pooling)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    hidden = out.hidden_states[-1]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def embed_all(model: nn.Module, rows: dict[str, torch.Tensor], batch_size: int = 64) -> torch.Tensor:
    device = device_of(model)
    parts = [mean_pooled_embedding(model, **to_device(b, device)).float().cpu() for b in batches(rows, batch_size)]
    return torch.cat(parts)


class EvalMode:
    """Context: eval mode and no gradients, the previous training mode restored on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.was_training = model, model.training
        self.no_grad = torch.no_grad()

    def __enter__(self) -> None:
        self.model.eval()
        self.no_grad.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.no_grad.__exit__(*exc)
        self.model.train(self.was_training)
