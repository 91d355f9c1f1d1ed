"""``--keep choice:DATA``: multiple-choice items scored by the LM's log-likelihood of each
continuation, exactly as lm-evaluation-harness scores its ``multiple_choice`` tasks (Gao et al.,
``ConfigurableTask.construct_requests`` / ``process_results``, ``HFLM._encode_pair``):

* the continuation of choice ``c`` is ``target_delimiter + c`` (default ``" "``, the harness's);
  a choice that already starts with a space after a delimiter that ends with one gets no second
  one (the harness would score a double space there; the data of its own tasks never start a
  choice with a space, so on those sets the two agree);
* the pair is tokenized as the harness does for causal models: trailing whitespace of the
  context moves to the continuation, ``context + continuation`` is encoded whole and the
  continuation's tokens are the ones after the context's own encoding; an empty context is
  the tokenizer's BOS (else EOS) token;
* ``acc``: the choice of the highest summed log-likelihood; ``acc_norm``: of the highest
  log-likelihood divided by ``len(c)``, the choice's length in characters without the
  delimiter (the harness's ``completion_len``); ties go to the first choice (``np.argmax``).
  Both come from one pass; the capability's metric is ``acc_norm`` unless ``metric=acc``.

Options: ``--keep 'choice:DATA?metric=acc,target_delimiter=\\n,mmlu=letters'`` (any of them;
``target_delimiter`` takes Python escapes, empty for none); a row's own ``target_delimiter``
field wins over the option.
"""

from __future__ import annotations

import codecs
import math
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from forgetless.errors import ConfigError, DataError
from forgetless.integrations.hf.capabilities._io import EvalMode, device_of
from forgetless.integrations.hf.capabilities.base import Capability, KeepOptions, register_capability
from forgetless.integrations.hf.data import MMLU_FORMATS, ChoiceItem, load_choices

CHOICE_METRICS = ("acc_norm", "acc")
CHOICE_OPTIONS = ("metric", "target_delimiter", "mmlu")
"""Options of ``choice:DATA?key=value,...``."""
DEFAULT_DELIMITER = " "
"""lm-evaluation-harness's default ``target_delimiter``."""


def split_options(source: str) -> tuple[str, dict[str, str]]:
    """``"DATA?metric=acc,target_delimiter=\\n"`` -> ``("DATA", {"metric": "acc", ...})``.

    An existing file whose name holds a ``?`` is read as it is; an unknown option, or an
    option without ``=``, is one ConfigError line naming the options there are."""
    data, sep, tail = source.rpartition("?")
    if not sep or Path(source).expanduser().exists():
        return source, {}
    options: dict[str, str] = {}
    for part in tail.split(","):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in CHOICE_OPTIONS:
            raise ConfigError(
                f"--keep choice:{source}: unknown option {part!r}: give key=value with key one of "
                f"{', '.join(CHOICE_OPTIONS)} (e.g. choice:items.jsonl?metric=acc)"
            )
        options[key] = value
    return data, options


def mean_stderr(p: float, n: int) -> float | None:
    """Standard error of the mean of ``n`` 0/1 outcomes with mean ``p``: the sample standard
    deviation over ``sqrt(n)`` = ``sqrt(p (1 - p) / (n - 1))`` (the harness's ``mean_stderr``);
    ``None`` below 2 items."""
    if n < 2:
        return None
    return math.sqrt(max(p * (1.0 - p), 0.0) / (n - 1))


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation token ids as lm-evaluation-harness's ``_encode_pair`` (causal
    models): trailing whitespace of the context joins the continuation, the whole string is
    encoded and split after the context's own encoding; an empty context is BOS (else EOS)."""
    if not context:
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return [prefix], tokenizer(continuation, add_special_tokens=False)["input_ids"]
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    return context_ids, whole[len(context_ids) :]


def continuation(delimiter: str, choice: str) -> str:
    """``delimiter + choice``, without a double space where a delimiter ending in a space meets a
    choice starting with one (``" " + " mat"`` is ``" mat"``)."""
    if delimiter.endswith(" ") and choice.startswith(" "):
        return delimiter.rstrip(" ") + choice
    return delimiter + choice


@register_capability
class MultipleChoice(Capability):
    """``acc_norm`` (or ``acc``) on multiple-choice items, scored as the module docstring says.

    For item ``(context, choices, answer)`` each choice ``c`` scores
    ``ll(c) = sum_t log p(x_t | context, x_<t)`` over the tokens ``x`` of its continuation;
    ``acc`` picks ``argmax ll(c)``, ``acc_norm`` ``argmax ll(c) / len(c)``. A pair longer than
    ``seq_len`` loses context tokens from the left (a continuation longer than ``seq_len - 1``
    tokens is cut to that). All pairs are scored in padded batches (pad positions are masked and
    never scored). :meth:`figures` gives both accuracies of the last evaluation and their
    standard errors; :meth:`facts` the item count and the chance level ``mean(1 / len(choices))``.
    """

    kind = "choice"
    needs_lm = True
    metric = "acc_norm"

    def __init__(
        self,
        name: str,
        tokenizer: Any,
        items: list[ChoiceItem],
        seq_len: int,
        normalize: bool = True,
        batch_size: int = 32,
        target_delimiter: str = DEFAULT_DELIMITER,
    ) -> None:
        super().__init__(name, batch_size)
        if not items:
            raise DataError(f"capability {name!r} has no multiple-choice items")
        self.normalize = normalize
        self.metric = "acc_norm" if normalize else "acc"
        self.target_delimiter = target_delimiter
        self.answers = torch.tensor([item.answer for item in items])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        rows, spans, owners, lengths = [], [], [], []
        for number, item in enumerate(items):
            delimiter = item.target_delimiter if item.target_delimiter is not None else target_delimiter
            for choice in item.choices:
                context, ending = encode_pair(tokenizer, item.context, continuation(delimiter, choice))
                ending = ending[: seq_len - 1]
                ids = (context + ending)[-seq_len:]
                if len(ids) == len(ending):  # keep one context token to predict the first from
                    ids = (context[-1:] if context else [pad]) + ending
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
        self.chance = sum(1.0 / len(item.choices) for item in items) / len(items)
        self._figures: dict[str, float | None] = {}

    @classmethod
    def from_source(cls, source: str, tokenizer: Any, options: KeepOptions) -> MultipleChoice:
        """``choice_size`` items of the JSONL file or ``builtin:`` set ``source``
        (``DATA?metric=acc,...``: :func:`split_options`), drawn with the seed (all of them when
        there are fewer)."""
        data, given = split_options(source)
        metric = given.get("metric", "acc_norm")
        if metric not in CHOICE_METRICS:
            raise ConfigError(f"--keep choice:{source}: metric {metric!r}: use {' or '.join(CHOICE_METRICS)}")
        mmlu = given.get("mmlu", "continuation")
        if mmlu not in MMLU_FORMATS:
            raise ConfigError(f"--keep choice:{source}: mmlu {mmlu!r}: use {' or '.join(MMLU_FORMATS)}")
        try:
            delimiter = codecs.decode(given.get("target_delimiter", DEFAULT_DELIMITER), "unicode_escape")
        except UnicodeDecodeError as error:
            raise ConfigError(f"--keep choice:{source}: target_delimiter: {error.reason}") from None
        items = load_choices(data, mmlu_format=mmlu)
        rng = random.Random(options.seed)
        picked = sorted(rng.sample(range(len(items)), min(options.choice_size, len(items))))
        return cls(
            f"{cls.kind}:{source}",
            tokenizer,
            [items[i] for i in picked],
            options.seq_len,
            normalize=metric == "acc_norm",
            target_delimiter=delimiter,
        )

    def log_likelihoods(self, model: nn.Module) -> torch.Tensor:
        """The summed log-likelihood of every (item, choice) continuation, in item order (float64)."""
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
        return torch.cat(parts)

    def choice_scores(self, model: nn.Module) -> torch.Tensor:
        """The score the metric ranks by: ``ll / len(c)`` (``acc_norm``) or ``ll`` (``acc``)."""
        scores = self.log_likelihoods(model)
        return scores / self.char_lengths if self.normalize else scores

    def _argmax(self, scores: torch.Tensor) -> torch.Tensor:
        """The chosen index of every item (ties: the lowest index, as ``np.argmax``)."""
        return torch.tensor([int(scores[start:end].argmax()) for start, end in self.item_rows])

    def predictions(self, model: nn.Module) -> torch.Tensor:
        """The chosen index of every item by the capability's metric."""
        return self._argmax(self.choice_scores(model))

    def evaluate(self, model: nn.Module) -> float:
        """``acc`` and ``acc_norm`` from one pass (both kept for :meth:`figures`); returns the metric."""
        lls = self.log_likelihoods(model)
        n = self.n_items
        acc = float((self._argmax(lls) == self.answers).double().mean())
        acc_norm = float((self._argmax(lls / self.char_lengths) == self.answers).double().mean())
        self._figures = {
            "acc": acc,
            "acc_stderr": mean_stderr(acc, n),
            "acc_norm": acc_norm,
            "acc_norm_stderr": mean_stderr(acc_norm, n),
        }
        return acc_norm if self.normalize else acc

    def figures(self) -> dict[str, float | None]:
        return dict(self._figures)

    def facts(self) -> dict[str, Any]:
        return {"items": self.n_items, "chance": self.chance}
