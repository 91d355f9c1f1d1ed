"""``--keep generation:PROMPTS[?OPTIONS]``: the quality of sampled continuations, before and after.

What the literature calls generation quality, measured on continuations the model samples from a
fixed prompt set with a fixed seed (every evaluation draws the same random numbers, so two
evaluations differ by the model alone):

* **fluency**: the *base* model's perplexity of the continuations, ``exp`` of the mean NLL of
  the generated tokens given their prompt under the model as it was at step 0 (its
  :class:`~forgetless.integrations.hf.reference.FrozenReference`, captured at :meth:`prepare`):
  text the original model finds likely; lower is better. Degenerate repetition can also be
  "likely", so read it beside the diversity figures.
* **distinct-n** (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural
  Conversation Models"): distinct n-grams / all n-grams over all continuations (model tokens,
  n = 1, 2; n-grams never span two continuations); higher is more diverse.
* **repetition**: the share of each continuation's n-grams (n = ``rep_n``, default 4) that repeat
  an n-gram earlier in the same continuation, pooled over the continuations (Welleck et al.
  2020's ``seq-rep-n`` = 1 - unique / all); lower is better.

The score (``metric``) is ``fluency`` by default (``higher_is_better`` False; its drop is the
relative increase, as for perplexity); ``metric=distinct-1`` or ``metric=distinct-2`` (higher is
better; drop: the absolute decrease) picks another. All four are in :meth:`figures`. Every
continuation has exactly ``max_new_tokens`` tokens (EOS is suppressed until then), so distinct-n
and repetition compare like with like.

``PROMPTS``: a ``.txt`` file (one prompt per non-empty line), a ``.jsonl`` file (a ``prompt``
or ``text`` string per row), ``builtin:kjv`` (verse openings of the half of the King James Bible
that the LLM demo holds out: the first 6 words of each verse of 12+ words) or another
``builtin:`` text source (the first 8 words of each document). Options after ``?``:
``prompts=N`` (default 32, drawn with the seed), ``max_new_tokens=T`` (32), ``temperature=X``
(1.0; 0 = greedy), ``top_p=P`` (0.95), ``top_k=K`` (0 = off), ``seed=S`` (``--seed``),
``metric=NAME``, ``rep_n=N``, ``batch_size=B`` (16).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from forgetless.errors import ConfigError, DataError
from forgetless.integrations.hf.capabilities._io import EvalMode, device_of, token_nll
from forgetless.integrations.hf.capabilities._options import (
    non_negative_int,
    positive_int,
    preserved_rng,
    split_options,
)
from forgetless.integrations.hf.capabilities.base import Capability, KeepOptions, register_capability
from forgetless.integrations.hf.data import load_texts
from forgetless.integrations.hf.reference import FrozenReference

METRICS = {"fluency": False, "distinct-1": True, "distinct-2": True}
"""The metrics that can be the score -> higher_is_better (repetition is reported only: a rate
that starts at 0 has no relative drop, the drop of a lower-is-better metric)."""


def _unit(value: str) -> float:
    number = float(value)
    if not 0.0 < number <= 1.0:
        raise ValueError("must be in (0, 1]")
    return number


def _temperature(value: str) -> float:
    number = float(value)
    if not number >= 0.0 or math.isinf(number):
        raise ValueError("must be >= 0")
    return number


def _metric(value: str) -> str:
    if value not in METRICS:
        raise ValueError(f"one of {', '.join(METRICS)}")
    return value


OPTIONS = {
    "prompts": positive_int,
    "max_new_tokens": positive_int,
    "temperature": _temperature,
    "top_p": _unit,
    "top_k": non_negative_int,
    "seed": int,
    "metric": _metric,
    "rep_n": positive_int,
    "batch_size": positive_int,
}


def kjv_openings(words: int = 6, min_words: int = 12) -> list[str]:
    """The first ``words`` words of each verse of ``min_words``+ words of the held-out half of
    the King James Bible (``split(0.5, 0)``, the half ``builtin:kjv-word-order`` uses too)."""
    from forgetless.integrations.hf.data import _kjv

    _, held_out = _kjv().split(0.5, 0)
    prompts = []
    for doc in held_out.texts:
        for line in doc.splitlines():
            verse = line.split()[1:]  # drop the reference ("Ge50:19")
            if len(verse) >= min_words:
                prompts.append(" ".join(verse[:words]))
    return prompts


def load_prompts(source: str) -> list[str]:
    """The prompts of ``source`` (see the module doc), in file order."""
    if source == "builtin:kjv":
        prompts = kjv_openings()
    elif source.startswith("builtin:"):
        prompts = [" ".join(t.split()[:8]) for t in load_texts(source).texts]
    else:
        path = Path(source).expanduser()
        if not path.is_file() or path.suffix.lower() not in (".txt", ".jsonl", ".json"):
            raise DataError(f"prompt file {path} must be an existing .txt or .jsonl file (or builtin:kjv)")
        prompts = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                if path.suffix.lower() == ".txt":
                    prompts.append(line.rstrip("\n"))
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}:{number}: not JSON ({error.msg})") from None
                text = (
                    row
                    if isinstance(row, str)
                    else row.get("prompt", row.get("text"))
                    if isinstance(row, dict)
                    else None
                )
                if not isinstance(text, str):
                    raise DataError(f"{path}:{number}: a prompt row needs a string 'prompt' (or 'text') field")
                prompts.append(text)
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise DataError(f"{source}: no prompts")
    return prompts


def distinct_n(sequences: list[list[int]], n: int) -> float:
    """Distinct n-grams / all n-grams over ``sequences`` (Li et al. 2016); 0 without n-grams."""
    grams = [tuple(s[i : i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(sequences: list[list[int]], n: int) -> float:
    """Share of n-grams that repeat one earlier in the same sequence, pooled over ``sequences``:
    ``sum_s (|grams_s| - |set(grams_s)|) / sum_s |grams_s|``; 0 without n-grams."""
    total = repeated = 0
    for s in sequences:
        grams = [tuple(s[i : i + n]) for i in range(len(s) - n + 1)]
        total += len(grams)
        repeated += len(grams) - len(set(grams))
    return repeated / total if total else 0.0


def check_generates(model: nn.Module, name: str) -> None:
    """A one-line error for a model that cannot generate text (no language-modelling head)."""
    can = getattr(model, "can_generate", None)
    if not callable(getattr(model, "generate", None)) or (callable(can) and not can()):
        raise ConfigError(
            f"--keep {name}: {type(model).__name__} has no generation head: load the model with "
            "AutoModelForCausalLM (or keep accuracy:/knn: for a classifier)"
        )


@register_capability
class Generation(Capability):
    """Fluency and diversity of seeded continuations of a prompt set (see the module doc)."""

    kind = "generation"
    needs_lm = True

    def __init__(
        self,
        name: str,
        tokenizer: Any,
        prompts: list[str],
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_p: float = 0.95,
        top_k: int = 0,
        seed: int = 0,
        metric: str = "fluency",
        rep_n: int = 4,
        seq_len: int = 128,
        batch_size: int = 16,
    ) -> None:
        super().__init__(name, batch_size)
        if not prompts:
            raise DataError(f"capability {name!r} has no prompts")
        if metric not in METRICS:
            raise ConfigError(f"--keep {name}: metric must be one of {', '.join(METRICS)}, got {metric!r}")
        self.tokenizer = tokenizer
        self.metric, self.higher_is_better = metric, METRICS[metric]
        self.max_new_tokens, self.temperature, self.top_p, self.top_k = max_new_tokens, temperature, top_p, top_k
        self.seed, self.rep_n = seed, rep_n
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad is None:
            raise ConfigError(f"--keep {name}: the tokenizer has neither a pad nor an EOS token to pad prompts with")
        keep = max(1, seq_len - max_new_tokens)  # prompt tokens kept (from the right)
        self.prompts = prompts
        self.prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"][-keep:] or [self.pad] for p in prompts]
        self.reference: FrozenReference | None = None
        self._pending: dict[str, torch.Tensor] | None = None
        self.texts: list[str] = []
        self.last: dict[str, float] = {}

    @classmethod
    def from_source(cls, source: str, tokenizer: Any, options: KeepOptions) -> Generation:
        """``PROMPTS[?prompts=N,max_new_tokens=T,temperature=X,top_p=P,top_k=K,seed=S,metric=M]``."""
        spec = f"{cls.kind}:{source}"
        data, opts = split_options(spec, source, OPTIONS)
        prompts = load_prompts(data)
        seed = opts.pop("seed", options.seed)
        n = min(opts.pop("prompts", 32), len(prompts))
        picked = sorted(random.Random(seed).sample(range(len(prompts)), n))
        return cls(spec, tokenizer, [prompts[i] for i in picked], seed=seed, seq_len=options.seq_len, **opts)

    def prepare(self, model: nn.Module) -> None:
        """Capture the base model (step 0) whose perplexity scores the continuations."""
        check_generates(model, self.name)
        self.reference = FrozenReference(model)

    def _base(self, model: nn.Module) -> FrozenReference:
        if self.reference is None:  # resumed: the base weights come from the checkpoint's state
            self.reference = FrozenReference(model)
            if self._pending:
                self.reference.load_state_dict(self._pending)
            self._pending = None
        return self.reference

    def generate(self, model: nn.Module) -> list[list[int]]:
        """The continuations' token ids: ``max_new_tokens`` each, the same draws for a seed."""
        check_generates(model, self.name)
        device = device_of(model)
        eos = self.tokenizer.eos_token_id
        sampling: dict[str, Any] = {"do_sample": self.temperature > 0}
        if self.temperature > 0:
            sampling.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        out: list[list[int]] = []
        with preserved_rng(device), EvalMode(model):
            torch.manual_seed(self.seed)
            for start in range(0, len(self.prompt_ids), self.batch_size):
                rows = self.prompt_ids[start : start + self.batch_size]
                width = max(len(r) for r in rows)
                ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, row in enumerate(rows):  # left padding: every continuation starts at `width`
                    ids[r, width - len(row) :] = torch.tensor(row)
                    mask[r, width - len(row) :] = 1
                generated = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    max_new_tokens=self.max_new_tokens,
                    min_new_tokens=self.max_new_tokens if eos is not None else None,
                    pad_token_id=self.pad,
                    eos_token_id=eos,
                    **sampling,
                )
                out.extend(generated[:, width:].cpu().tolist())
        return out

    def fluency(self, model: nn.Module, continuations: list[list[int]]) -> float:
        """The base model's perplexity of ``continuations`` given their prompts (pooled tokens)."""
        base = self._base(model)
        device = device_of(model)
        total, count = 0.0, 0
        pairs = list(zip(self.prompt_ids, continuations, strict=True))
        with base.active(model) as reference:
            for start in range(0, len(pairs), self.batch_size):
                chunk = pairs[start : start + self.batch_size]
                width = max(len(p) + len(c) for p, c in chunk)
                ids = torch.full((len(chunk), width), self.pad, dtype=torch.long)
                mask = torch.zeros_like(ids)
                labels = torch.full_like(ids, -100)
                for r, (prompt, cont) in enumerate(chunk):
                    row = torch.tensor(prompt + cont)
                    ids[r, : len(row)], mask[r, : len(row)] = row, 1
                    labels[r, len(prompt) : len(row)] = row[len(prompt) :]
                nll, n = token_nll(reference, ids.to(device), mask.to(device), labels.to(device))
                total, count = total + float(nll), count + int(n)
        return math.exp(total / count) if count else float("nan")

    def evaluate(self, model: nn.Module) -> float:
        continuations = self.generate(model)
        self.texts = [self.tokenizer.decode(c) for c in continuations]
        self.last = {
            "fluency": self.fluency(model, continuations),
            "distinct-1": distinct_n(continuations, 1),
            "distinct-2": distinct_n(continuations, 2),
            "repetition": repetition_rate(continuations, self.rep_n),
            "tokens": float(sum(len(c) for c in continuations)),
        }
        return self.last[self.metric]

    def figures(self) -> dict[str, float | None]:
        """``fluency``, ``distinct-1``, ``distinct-2``, ``repetition`` and ``tokens`` (generated)
        of the last evaluation."""
        return dict(self.last)

    def state_dict(self) -> dict[str, Any]:
        """The base model's weights for a resume (nothing under PEFT: the adapters are off)."""
        return {"reference": self.reference.state_dict() if self.reference is not None else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reference, self._pending = None, dict(state.get("reference") or {})
