"""Capabilities a fine-tune should keep, measured on a model before, during and after it.

* :class:`Perplexity` — ``exp(mean token NLL)`` on held-out text (causal LMs), computed exactly
  over every predicted token (Jelinek et al. 1977; the standard LM evaluation);
* :class:`HeadAccuracy` — accuracy of a labelled classification set through a *fixed* head: a
  logistic-regression head fitted on the embeddings of the model before fine-tuning (the head
  you have deployed), or the model's own classifier;
* :class:`KnnProbe` — k-NN accuracy of the frozen mean-pooled embeddings on a labelled set
  (memory and queries both re-embedded at every evaluation: the quality of the embedding space);
* :class:`MultipleChoice` — accuracy on multiple-choice items scored by the LM's log-likelihood
  of each continuation, the way benchmark suites score HellaSwag, ARC or PIQA (Gao et al.,
  lm-evaluation-harness: ``acc`` and the length-normalised ``acc_norm``).

A capability's *drop* is how much worse it got: ``before - now`` for accuracies (points of
accuracy), ``now / before - 1`` for perplexity (relative increase). Positive = forgotten.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from forgetless.errors import DataError
from forgetless.integrations.hf.data import ChoiceItem, TextData


# -- tokenisation -----------------------------------------------------------------------------
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


def encode_texts(tokenizer: Any, texts: list[str], seq_len: int) -> dict[str, torch.Tensor]:
    """Pad/truncate to ``seq_len``: ``input_ids`` and ``attention_mask`` tensors."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenizer(texts, truncation=True, max_length=seq_len, padding="max_length", return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def _batches(rows: dict[str, torch.Tensor], batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    n = next(iter(rows.values())).shape[0]
    for start in range(0, n, batch_size):
        yield {k: v[start : start + batch_size] for k, v in rows.items()}


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


# -- model outputs ----------------------------------------------------------------------------
def token_nll(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL (float64) and number of predicted tokens of one batch.

    Token ``t+1`` is predicted from tokens ``<= t``; padded targets (mask 0) are not counted.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    targets = input_ids[:, 1:]
    log_probs = F.log_softmax(logits.float(), dim=-1)
    nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if attention_mask is not None:
        keep = attention_mask[:, 1:].bool()
        return nll[keep].double().sum(), keep.sum()
    return nll.double().sum(), torch.tensor(targets.numel())


def mean_pooled_embedding(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the last hidden states over real tokens (the sentence-transformers pooling)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    hidden = out.hidden_states[-1]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def embed_all(model: nn.Module, rows: dict[str, torch.Tensor], batch_size: int = 64) -> torch.Tensor:
    device = _device(model)
    parts = [mean_pooled_embedding(model, **_to(b, device)).float().cpu() for b in _batches(rows, batch_size)]
    return torch.cat(parts)


class _EvalMode:
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


# -- capabilities -----------------------------------------------------------------------------
class Capability(ABC):
    """One thing the model can do, evaluated on held-out rows; optional replay and Fisher rows."""

    metric: str = "score"
    higher_is_better: bool = True

    def __init__(self, name: str, batch_size: int = 64) -> None:
        self.name = name
        self.batch_size = batch_size

    def prepare(self, model: nn.Module) -> None:  # noqa: B027 - optional hook
        """Called once on the model before fine-tuning (e.g. to fit a fixed head)."""

    @abstractmethod
    def evaluate(self, model: nn.Module) -> float:
        """The metric on the held-out rows."""

    def drop(self, before: float, now: float) -> float:
        """How much worse ``now`` is than ``before`` (positive = forgotten)."""
        if self.higher_is_better:
            return before - now
        return now / before - 1.0

    # Replay and EWC use the capability's training rows and its own loss.
    def replay_rows(self) -> dict[str, torch.Tensor] | None:
        """Rows of general data for replay / Fisher (``None``: this capability has none)."""
        return None

    def replay_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} has no replay loss")

    def sampled_nll(self, model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        """``-sum log p(y_hat | x)`` with ``y_hat`` drawn from the model's own distribution."""
        raise NotImplementedError(f"{self.name} cannot estimate a Fisher")

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore what :meth:`prepare` computed."""


class Perplexity(Capability):
    """Perplexity ``exp(sum NLL / n_tokens)`` of held-out blocks (every token counted once)."""

    metric = "perplexity"
    higher_is_better = False

    def __init__(
        self, name: str, test_ids: torch.Tensor, train_ids: torch.Tensor | None = None, batch_size: int = 32
    ) -> None:
        super().__init__(name, batch_size)
        self.test_ids = test_ids
        self.train_ids = train_ids

    def evaluate(self, model: nn.Module) -> float:
        device = _device(model)
        total, count = torch.zeros((), dtype=torch.float64), 0
        with _EvalMode(model):
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

    def sampled_nll(self, model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        ids = batch["input_ids"]
        logits = model(input_ids=ids).logits[:, :-1].float()
        with torch.no_grad():
            probs = F.softmax(logits, dim=-1).reshape(-1, logits.shape[-1]).cpu()
            drawn = torch.multinomial(probs, 1, generator=generator).view(logits.shape[:-1])
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), drawn.to(logits.device).reshape(-1), reduction="sum"
        )


class HeadAccuracy(Capability):
    """Accuracy through a fixed head on mean-pooled embeddings, or through the model's logits.

    ``head="fit"``: before fine-tuning, a multinomial logistic regression is fitted on the
    embeddings of the training rows and then frozen; accuracy measures how well the moving
    encoder still serves that head. ``head="model"``: ``argmax`` of ``model(...).logits``.
    """

    metric = "accuracy"

    def __init__(
        self,
        name: str,
        train: dict[str, torch.Tensor],
        train_labels: torch.Tensor,
        test: dict[str, torch.Tensor],
        test_labels: torch.Tensor,
        head: str = "fit",
        batch_size: int = 64,
    ) -> None:
        super().__init__(name, batch_size)
        self.train, self.train_labels = train, train_labels
        self.test, self.test_labels = test, test_labels
        self.head = head
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None

    def prepare(self, model: nn.Module) -> None:
        if self.head != "fit" or self.weight is not None:
            return
        from sklearn.linear_model import LogisticRegression

        with _EvalMode(model):
            features = embed_all(model, self.train, self.batch_size)
        classifier = LogisticRegression(max_iter=2000, C=1.0)
        classifier.fit(features.numpy(), self.train_labels.numpy())
        n_classes = int(max(self.train_labels.max(), self.test_labels.max())) + 1
        weight = torch.zeros(n_classes, features.shape[1])
        bias = torch.full((n_classes,), -1e4)
        coef = torch.tensor(classifier.coef_, dtype=torch.float32)
        intercept = torch.tensor(classifier.intercept_, dtype=torch.float32)
        classes = torch.tensor(classifier.classes_, dtype=torch.long)
        if len(classes) == 2:  # sklearn stores one row for two classes
            coef, intercept = torch.cat([-coef, coef]) / 2, torch.cat([-intercept, intercept]) / 2
        weight[classes], bias[classes] = coef, intercept
        self.weight, self.bias = weight, bias

    def logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.head == "model":
            return model(**batch).logits
        if self.weight is None or self.bias is None:
            raise RuntimeError(f"capability {self.name}: call prepare(model) before evaluating")
        features = mean_pooled_embedding(model, batch["input_ids"], batch["attention_mask"])
        return F.linear(features.float(), self.weight.to(features.device), self.bias.to(features.device))

    def evaluate(self, model: nn.Module) -> float:
        device = _device(model)
        correct = 0
        with _EvalMode(model):
            for start, batch in zip(
                range(0, len(self.test_labels), self.batch_size), _batches(self.test, self.batch_size)
            ):
                predicted = self.logits(model, _to(batch, device)).argmax(-1).cpu()
                correct += int((predicted == self.test_labels[start : start + len(predicted)]).sum())
        return correct / len(self.test_labels)

    def replay_rows(self) -> dict[str, torch.Tensor] | None:
        return {**self.train, "labels": self.train_labels}

    def replay_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return F.cross_entropy(self.logits(model, inputs), batch["labels"])

    def sampled_nll(self, model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = self.logits(model, inputs)
        with torch.no_grad():
            drawn = torch.multinomial(F.softmax(logits.float(), -1).cpu(), 1, generator=generator)
        return F.cross_entropy(logits, drawn.squeeze(1).to(logits.device), reduction="sum")

    def state_dict(self) -> dict[str, Any]:
        return {"weight": self.weight, "bias": self.bias}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weight, self.bias = state["weight"], state["bias"]


class KnnProbe(Capability):
    """k-NN (cosine, majority vote) accuracy of the model's current embeddings on a labelled set."""

    metric = "knn_accuracy"

    def __init__(
        self,
        name: str,
        train: dict[str, torch.Tensor],
        train_labels: torch.Tensor,
        test: dict[str, torch.Tensor],
        test_labels: torch.Tensor,
        k: int = 10,
        batch_size: int = 64,
    ) -> None:
        super().__init__(name, batch_size)
        self.train, self.train_labels = train, train_labels
        self.test, self.test_labels = test, test_labels
        self.k = k

    def evaluate(self, model: nn.Module) -> float:
        with _EvalMode(model):
            memory = F.normalize(embed_all(model, self.train, self.batch_size), dim=1)
            queries = F.normalize(embed_all(model, self.test, self.batch_size), dim=1)
        return knn_accuracy(memory, self.train_labels, queries, self.test_labels, self.k)


def knn_accuracy(
    memory: torch.Tensor, memory_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor, k: int
) -> float:
    """Majority vote of the ``k`` most similar memory rows (ties: the smallest label)."""
    k = min(k, memory.shape[0])
    nearest = (queries @ memory.T).topk(k, dim=1).indices
    votes = F.one_hot(memory_labels[nearest], int(memory_labels.max()) + 1).sum(1)
    return float((votes.argmax(1) == query_labels).float().mean())


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

    def choice_scores(self, model: nn.Module) -> torch.Tensor:
        """The score of every (item, choice) pair, in item order (float64)."""
        device = _device(model)
        parts = []
        with _EvalMode(model):
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


CAPABILITY_KINDS = ("perplexity", "accuracy", "knn", "choice")


def build_capability(
    kind: str,
    data: TextData,
    tokenizer: Any,
    seq_len: int,
    name: str | None = None,
    eval_size: int = 256,
    train_size: int = 512,
    seed: int = 0,
) -> Capability:
    """A capability of ``kind`` from a data source: half for evaluation, half for fitting/replay."""
    from forgetless.errors import ConfigError, closest_names

    if kind not in CAPABILITY_KINDS:
        raise ConfigError(f"unknown capability kind {kind!r}: {closest_names(kind, CAPABILITY_KINDS)}")
    name = name or f"{kind}:{data.source}"
    train, test = data.split(0.5, seed)
    if kind == "perplexity":
        return Perplexity(
            name, lm_blocks(tokenizer, test, seq_len, eval_size), lm_blocks(tokenizer, train, seq_len, train_size)
        )
    if not data.labelled:
        raise DataError(f"capability {name!r} needs labelled data (a label column or class folders)")
    train, test = train.head(train_size, seed), test.head(eval_size, seed)
    args = (
        encode_texts(tokenizer, train.texts, seq_len),
        torch.tensor(train.labels),
        encode_texts(tokenizer, test.texts, seq_len),
        torch.tensor(test.labels),
    )
    if kind == "accuracy":
        return HeadAccuracy(name, *args)
    return KnnProbe(name, *args)
