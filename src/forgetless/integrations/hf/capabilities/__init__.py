"""Capabilities a fine-tune should keep: a registry of kinds, one file each.

``--keep KIND:DATA`` names a kind of this registry and its data:

* ``perplexity`` (:class:`Perplexity`): held-out text, causal LMs (of instruction data: the
  response tokens only);
* ``accuracy`` (:class:`HeadAccuracy`): a labelled set through a fixed head;
* ``knn`` (:class:`KnnProbe`): k-NN accuracy of the embeddings on a labelled set;
* ``choice`` (:class:`MultipleChoice`): benchmark-style multiple choice by log-likelihood.

A new kind is one file here with a :class:`Capability` subclass decorated with
:func:`register_capability` (every module of this package is imported on import, so it
registers itself; a kind defined elsewhere registers on its own import): :func:`parse_keep`
and :func:`build_capability` are lookups in :data:`CAPABILITIES`.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from forgetless.errors import ConfigError, closest_names
from forgetless.integrations.hf.capabilities._io import embed_all, encode_texts, lm_blocks, lm_rows, token_nll
from forgetless.integrations.hf.capabilities.accuracy import HeadAccuracy
from forgetless.integrations.hf.capabilities.base import CAPABILITIES, Capability, KeepOptions, register_capability
from forgetless.integrations.hf.capabilities.choice import MultipleChoice
from forgetless.integrations.hf.capabilities.knn import KnnProbe, knn_accuracy
from forgetless.integrations.hf.capabilities.perplexity import Perplexity
from forgetless.integrations.hf.data import TextData

for _module in pkgutil.iter_modules(__path__):  # every kind file registers itself
    if not _module.name.startswith("_") and _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")


def capability_kinds() -> list[str]:
    """The registered kinds, in registration order."""
    return list(CAPABILITIES)


def parse_keep(spec: str) -> tuple[type[Capability], str]:
    """``"KIND:DATA"`` -> (the kind's class, ``DATA``), e.g. ``perplexity:builtin:kjv``,
    ``accuracy:reviews.csv``, ``choice:builtin:kjv-word-order``."""
    kind, sep, source = spec.partition(":")
    example = "(e.g. perplexity:builtin:kjv)"
    if not sep or not source:
        raise ConfigError(f"--keep {spec!r} must be KIND:DATA with KIND one of {', '.join(CAPABILITIES)} {example}")
    if kind not in CAPABILITIES:
        raise ConfigError(
            f"--keep {spec!r}: unknown capability kind {kind!r}: {closest_names(kind, list(CAPABILITIES))}"
        )
    return CAPABILITIES[kind], source


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
    """A capability of ``kind`` on texts already loaded: half for evaluation, half for fitting/replay."""
    if kind not in CAPABILITIES:
        raise ConfigError(f"unknown capability kind {kind!r}: {closest_names(kind, list(CAPABILITIES))}")
    options = KeepOptions(seq_len=seq_len, eval_size=eval_size, train_size=train_size, seed=seed)
    return CAPABILITIES[kind].from_texts(name or f"{kind}:{data.source}", data, tokenizer, options)


__all__ = [
    "CAPABILITIES",
    "Capability",
    "HeadAccuracy",
    "KeepOptions",
    "KnnProbe",
    "MultipleChoice",
    "Perplexity",
    "build_capability",
    "capability_kinds",
    "embed_all",
    "encode_texts",
    "knn_accuracy",
    "lm_blocks",
    "lm_rows",
    "parse_keep",
    "register_capability",
    "token_nll",
]
