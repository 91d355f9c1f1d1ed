"""``--keep choice:DATA``: accuracy on multiple-choice items scored by the LM's log-likelihood of
each continuation, the way benchmark suites score HellaSwag, ARC or PIQA (Gao et al.,
lm-evaluation-harness: ``acc`` and the length-normalised ``acc_norm``)."""

from __future__ import annotations

import random
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from forgetless.errors import DataError
from forgetless.integrations.hf.capabilities._io import EvalMode, device_of
from forgetless.integrations.hf.capabilities.base import Capability, KeepOptions, register_capability
from forgetless.integrations.hf.data import ChoiceItem, load_choices


@register_capability
class MultipleChoice(Capability):
    """Accuracy of picking the right continuation by the model's own likelihood.

    For item ``(context, choices, answer)`` each choice ``c`` scores
    ``sum_t log p(c_t | context, c_<t)`` over its tokens, divided by ``len(c)`` in characters
    when ``normalize`` (lm-evaluation-harness's ``acc_norm``; ``acc`` without); the prediction
    is the highest score. Context and choice are tokenized apart and concatenated; a pair longer
    than ``seq_len`` loses context tokens from the left (a choice longer than ``seq_len - 1``
    tokens is cut to that). All pairs are scored in padded batches (pad positions are masked and
    never scored).
    """

    kind = "choice"
    needs_lm = True
    metric = "accuracy"

    def __init__(
        self,
        name: str,
        tokenizer: Any,
        items: list[ChoiceItem],
        seq_len: int,
        normalize: bool = True,
        batch_size: int = 32,
    ) -> None:
        super().__init__(name, batch_size)
        if not items:
            raise DataError(f"capability {name!r} has no multiple-choice items")
        self.normalize = normalize
        self.answers = torch.tensor([item.answer for item in items])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        rows, spans, owners, lengths = [], [], [], []
        for number, item in enumerate(items):
            context = tokenizer(item.context, add_special_tokens=False)["input_ids"]
            for choice in item.choices:
                ending = tokenizer(choice, add_special_tokens=False)["input_ids"][: seq_len - 1]
                ids = (context + ending)[-seq_len:]
                if len(ids) == len(ending):  # keep one context token to predict the first from
                    ids = (context[-1:] if context else [pad]) + ending[: seq_len - 1]
                rows.append(ids)
                spans.append((len(ids) - len(ending), len(ids)))
                owners.append(number)
                lengths.append(max(len(choice), 1))
        width = max(len(r) for r in rows)
        self.input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        self.attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        self.scored = torch.zeros((len(rows), width - 1), dtype=torch.bool)  # target positions scored
        for r, (ids, (start, end)) in enumerate(zip(rows, spans, strict=True)):
            self.input_ids[r, : len(ids)] = torch.tensor(ids)
            self.attention_mask[r, : len(ids)] = 1
            self.scored[r, start - 1 : end - 1] = True  # logits at t-1 predict token t
        bounds = torch.tensor(owners).bincount().cumsum(0).tolist()
        self.item_rows = list(zip([0, *bounds[:-1]], bounds, strict=True))
        self.char_lengths = torch.tensor(lengths, dtype=torch.float64)
        self.n_items = len(items)

    @classmethod
    def from_source(cls, source: str, tokenizer: Any, options: KeepOptions) -> MultipleChoice:
        """``choice_size`` items of the JSONL file or ``builtin:`` set ``source``, drawn with the
        seed (all of them when there are fewer)."""
        items = load_choices(source)
        rng = random.Random(options.seed)
        picked = sorted(rng.sample(range(len(items)), min(options.choice_size, len(items))))
        return cls(f"{cls.kind}:{source}", tokenizer, [items[i] for i in picked], options.seq_len)

    def choice_scores(self, model: nn.Module) -> torch.Tensor:
        """The score of every (item, choice) pair, in item order (float64)."""
        device = device_of(model)
        parts = []
        with EvalMode(model):
            for start in range(0, self.input_ids.shape[0], self.batch_size):
                window = slice(start, start + self.batch_size)
                ids = self.input_ids[window].to(device)
                logits = model(input_ids=ids, attention_mask=self.attention_mask[window].to(device)).logits[:, :-1]
                log_probs = F.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
                scored = self.scored[window]
                parts.append(torch.where(scored, log_probs.double().cpu(), 0.0).sum(1))
        scores = torch.cat(parts)
        return scores / self.char_lengths if self.normalize else scores

    def predictions(self, model: nn.Module) -> torch.Tensor:
        """The chosen index of every item (ties: the lowest index)."""
        scores = self.choice_scores(model)
        return torch.tensor([int(scores[start:end].argmax()) for start, end in self.item_rows])

    def evaluate(self, model: nn.Module) -> float:
        return float((self.predictions(model) == self.answers).double().mean())
