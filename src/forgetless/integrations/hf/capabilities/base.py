"""The capability protocol and the registry of kinds (``--keep KIND:DATA``).

A capability is one thing a fine-tune should keep, measured on the model before, during and
after it. Each kind is one file of this package that defines a :class:`Capability` subclass
decorated with :func:`register_capability`; adding a kind is adding a file.

A capability's *drop*, the one figure the stop (``stop_if_drop``) and ``forget/<name>`` use, is
how much worse it got since step 0: **absolute** for kinds whose metric is higher-is-better
(accuracies: ``before - now``, in points of accuracy, so ``0.05`` is five points) and
**relative** for lower-is-better ones (perplexity: ``now / before - 1``, so ``0.2`` is 20 %).
Positive = forgotten. The report gives both forms for every capability (:meth:`Capability.drops`:
``drop_abs`` in the metric's units, ``drop_rel`` as a share of ``before``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from forgetless.errors import ConfigError, DataError
from forgetless.integrations.hf.capabilities._io import encode_texts
from forgetless.integrations.hf.data import TextData, load_texts


@dataclass(frozen=True)
class KeepOptions:
    """How a capability is cut from its data: sequence length, rows held out, rows kept for
    fitting/replay, multiple-choice items scored, and the seed of the split."""

    seq_len: int = 128
    eval_size: int = 256
    train_size: int = 512
    choice_size: int = 256
    seed: int = 0


CAPABILITIES: dict[str, type[Capability]] = {}
"""Kind name -> class, filled by :func:`register_capability`."""


def register_capability(cls: type[Capability]) -> type[Capability]:
    """Class decorator: make ``cls`` the capability of ``--keep cls.kind:DATA``."""
    if not cls.kind:
        raise TypeError(f"{cls.__name__} needs a non-empty `kind`")
    CAPABILITIES[cls.kind] = cls
    return cls


class Capability(ABC):
    """One thing the model can do, evaluated on held-out rows; optional replay and Fisher rows.

    A kind registers itself with :func:`register_capability` under ``kind``, the ``KIND`` of
    ``--keep KIND:DATA``; :meth:`from_source` builds it from ``DATA``.
    """

    kind: ClassVar[str] = ""
    needs_lm: ClassVar[bool] = False
    """Scored by a causal language model's likelihood (refused for a classification task)."""
    needs_labels: ClassVar[bool] = False
    metric: str = "score"
    higher_is_better: bool = True

    def __init__(self, name: str, batch_size: int = 64) -> None:
        self.name = name
        self.batch_size = batch_size

    @classmethod
    def from_source(cls, source: str, tokenizer: Any, options: KeepOptions) -> Capability:
        """The capability of ``--keep KIND:SOURCE``: the texts of ``source`` (a file or a
        ``builtin:`` set, :func:`~forgetless.integrations.hf.data.load_texts`), built by
        :meth:`from_texts`. Kinds scored on other data (``choice``) override this."""
        data = load_texts(source, need_labels=cls.needs_labels)
        return cls.from_texts(f"{cls.kind}:{source}", data, tokenizer, options)

    @classmethod
    def from_texts(cls, name: str, data: TextData, tokenizer: Any, options: KeepOptions) -> Capability:
        """The capability on ``data``: half held out for evaluation, half for fitting/replay."""
        raise ConfigError(f"capability kind {cls.kind!r} is not built from texts")

    def prepare(self, model: nn.Module) -> None:  # noqa: B027 - optional hook
        """Called once on the model before fine-tuning (e.g. to fit a fixed head)."""

    @abstractmethod
    def evaluate(self, model: nn.Module) -> float:
        """The metric on the held-out rows."""

    def drop(self, before: float, now: float) -> float:
        """How much worse ``now`` is than ``before`` (positive = forgotten): absolute for a
        higher-is-better metric, relative for a lower-is-better one (the module docstring)."""
        if self.higher_is_better:
            return before - now
        return now / before - 1.0

    def drops(self, before: float, now: float) -> tuple[float, float | None]:
        """``(absolute, relative)`` drop: ``before - now`` (``now - before`` for a lower-is-better
        metric) and that over ``|before|`` (``None`` when ``before`` is 0); positive = forgotten."""
        absolute = before - now if self.higher_is_better else now - before
        return absolute, (absolute / abs(before) if before else None)

    def figures(self) -> dict[str, float | None]:
        """Side figures of the last :meth:`evaluate`, reported beside the metric and never used by
        the stop (``choice``: ``acc``, ``acc_norm`` and their standard errors ``*_stderr``)."""
        return {}

    def facts(self) -> dict[str, Any]:
        """Fixed facts of the evaluation set for the report (``choice``: ``items``, ``chance``)."""
        return {}

    # Replay and EWC use the capability's training rows and its own loss.
    def replay_rows(self) -> dict[str, torch.Tensor] | None:
        """Rows of general data for replay / Fisher (``None``: this capability has none)."""
        return None

    def replay_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} has no replay loss")

    def fisher_logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's logits on ``batch`` whose predictive distribution the Fisher is taken
        of: ``[B, C]`` (classes) or ``[B, T, V]`` (a sequence's next tokens)."""
        raise ConfigError(f"capability {self.name!r} has no predictive distribution to estimate a Fisher on")

    def fisher_view(self, model: nn.Module) -> tuple[nn.Module, torch.Tensor] | None:
        """``(module, rows)`` in the calling convention of the core's per-sample engine
        (:func:`forgetless.strategies._fisher.fisher_diagonal`): ``module(x, task_id)`` gives
        :meth:`fisher_logits` of the replay rows packed side by side in ``x``; the module's
        parameters are the model's under the prefix ``model.``. ``None`` without rows."""
        rows = self.replay_rows()
        if rows is None:
            return None
        inputs = {k: v for k, v in rows.items() if k != "labels"}
        view = PackedRows(model, self.fisher_logits, {k: v.shape[1] for k, v in inputs.items()})
        return view, torch.cat(list(inputs.values()), dim=1)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore what :meth:`prepare` computed."""


class LabelledCapability(Capability):
    """A capability measured on a labelled set of texts: encoded training rows (for fitting a
    head, replay and the Fisher) and held-out rows, each with its labels."""

    needs_labels = True

    def __init__(
        self,
        name: str,
        train: dict[str, torch.Tensor],
        train_labels: torch.Tensor,
        test: dict[str, torch.Tensor],
        test_labels: torch.Tensor,
        batch_size: int = 64,
    ) -> None:
        super().__init__(name, batch_size)
        self.train, self.train_labels = train, train_labels
        self.test, self.test_labels = test, test_labels

    @classmethod
    def from_texts(cls, name: str, data: TextData, tokenizer: Any, options: KeepOptions) -> Capability:
        return cls(name, *labelled_halves(data, tokenizer, options))


class PackedRows(nn.Module):
    """``forward(x, task_id)``: unpack the named row tensors of ``x`` and return ``logits_of``."""

    def __init__(self, model: nn.Module, logits_of: Any, widths: dict[str, int]) -> None:
        super().__init__()
        self.model = model
        self.logits_of = logits_of
        self.widths = widths

    def forward(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        batch = dict(zip(self.widths, x.split(list(self.widths.values()), dim=1), strict=True))
        return self.logits_of(self.model, batch)


def labelled_halves(
    data: TextData, tokenizer: Any, options: KeepOptions
) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Encoded training rows, their labels, held-out rows and theirs (half of ``data`` each,
    at most ``train_size`` / ``eval_size`` rows)."""
    if not data.labelled:
        raise DataError(f"{data.source}: this capability needs labelled data (a label column or class folders)")
    train, test = data.split(0.5, options.seed)
    train, test = train.head(options.train_size, options.seed), test.head(options.eval_size, options.seed)
    return (
        encode_texts(tokenizer, train.texts, options.seq_len),
        torch.tensor(train.labels),
        encode_texts(tokenizer, test.texts, options.seq_len),
        torch.tensor(test.labels),
    )
