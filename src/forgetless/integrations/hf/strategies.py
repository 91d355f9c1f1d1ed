"""The core strategies inside a fine-tune: one protocol for ``forgetless run`` and ``finetune``.

A fine-tune is the second task of a two-task stream. Task 0 is what the pretrained model already
does; the data of its kept capabilities stand in for task 0's training set. Task 1 is the new
task. :class:`FinetuneStrategies` shows the same :class:`~forgetless.strategies.Strategy`
objects a :class:`FinetuneContext` and calls their hooks at the same points of that stream:

* before training, ``after_task`` at task 0 (EWC's Fisher and MAS's importance are taken on the
  kept capabilities' rows at the pretrained weights), then ``before_task`` at task 1 (L2-SP
  anchors at the start; the pretrained parameters count as trained, ``ctx.pretrained``);
* at every step, the ``loss`` hooks' terms are added to the Trainer's loss
  (:class:`~forgetless.integrations.hf.trainer.ForgettingTrainerMixin`), and the first
  ``criterion`` hook that returns a loss replaces the Trainer's base loss of the task rows
  (DFT, the token-wise constrained objective). Both hooks get the task rows as a
  :class:`TokenBatch` (replay rows excluded; ``None`` when called without a batch) and the
  Hugging Face model output (``.logits``, with their graph);
* ``report`` and ``state_dict``/``load_state_dict`` as in a run.

A sequence of fine-tunes (:mod:`.sequence`, ``forgetless finetune --task a --task b ...``) is
the same stream with ``N + 1`` tasks: at each boundary :meth:`FinetuneStrategies.end_task`
(``after_task`` of fine-tune ``k``, its importance taken on that task's training rows) then
:meth:`FinetuneStrategies.begin_task` (``before_task`` of fine-tune ``k + 1``).

A strategy runs in a fine-tune when it says so (``stacks = ("run", "finetune")``), overrides only
the hooks served here (:data:`SERVED_HOOKS`), reads its data through ``ctx.importance_samples``
and reads a :class:`TokenBatch` (not a core ``Batch``) in ``loss``/``criterion``: ``l2sp``,
``ewc``, ``online-ewc`` and ``mas`` of the core (which need no batch), the fine-tune's own
``kl-anchor``, ``dft`` and ``safe-tokens``, and any new strategy written the same way
(docs/finetuning.md shows one). Others are refused in one
line naming the hooks they need. Replay in a fine-tune is :mod:`.mixing`'s exact share of
general rows in every batch (``replay`` in ``--strategies``, ``replay.ratio``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from forgetless.errors import ConfigError
from forgetless.integrations.hf.capabilities.base import Capability
from forgetless.strategies import STRATEGIES, Strategy, TrainingContext, discover, make_strategies
from forgetless.strategies._fisher import sample_rows
from forgetless.strategies.base import HOOKS, ImportanceSample

FISHER_CHUNK = 8
"""Rows per forward of an importance estimate (a transformer's logits are large: ``rows x T x V``)."""

SERVED_HOOKS = ("before_task", "after_task", "criterion", "loss", "report", "state_dict", "load_state_dict")
"""The hooks a fine-tune calls; a strategy overriding any other one cannot run there."""

REPLAY = "replay"
"""The fine-tune's replay (:mod:`.mixing`), spelled as a strategy in ``--strategies``."""


@dataclass(frozen=True)
class TokenBatch:
    """The task rows of one fine-tune batch, as the ``loss`` and ``criterion`` hooks see them
    (replay rows excluded): ``input_ids`` ``[B, T]``, ``attention_mask`` and ``labels`` (``-100``
    on the targets not trained: an instruction's prompt, the padding), each possibly ``None``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None = None
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @classmethod
    def of(cls, inputs: dict[str, Any] | None) -> TokenBatch | None:
        """The batch of a Trainer's (task) inputs, ``None`` without ``input_ids``."""
        if not inputs or not isinstance(inputs.get("input_ids"), torch.Tensor):
            return None
        return cls(inputs["input_ids"], inputs.get("attention_mask"), inputs.get("labels"))

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """The keyword arguments of the model's forward (no labels: the caller computes the loss)."""
        out = {"input_ids": self.input_ids}
        if self.attention_mask is not None:
            out["attention_mask"] = self.attention_mask
        return out


@dataclass
class FinetuneScenario:
    """What a strategy may read of ``ctx.scenario`` in a fine-tune: one output space (a causal
    LM's vocabulary, or the task's head) and no task ids, i.e. the domain-incremental defaults."""

    kind: str = "domain"
    uses_task_id: bool = False
    num_tasks: int = 2


@dataclass
class FinetuneContext(TrainingContext):
    """The hooks' view of a fine-tune (task 0: the pretrained model; task 1: the new task)."""

    capabilities: Sequence[Capability] = field(default_factory=list)
    importance_names: list[str] | None = None
    """Parameters an importance is estimated for (``None``: every trainable one)."""

    def importance_samples(self, count: int) -> list[ImportanceSample]:
        """Up to ``count`` rows of each kept capability that has general data, as the
        per-sample engine takes them (``module(x, None)``: the capability's logits)."""
        samples = []
        for capability in self.capabilities:
            view = capability.fisher_view(self.model)
            if view is None:
                continue
            module, rows = view
            chosen = sample_rows(rows.shape[0], count, self.generator)
            names = None if self.importance_names is None else [f"model.{n}" for n in self.importance_names]
            samples.append(
                ImportanceSample(
                    module,
                    rows[chosen].to(self.device),
                    None,
                    None,
                    names=names,
                    prefix="model.",
                    chunk_size=FISHER_CHUNK,
                )
            )
        if not samples:
            raise ConfigError(
                "this strategy estimates an importance on general data: keep a perplexity: or accuracy: capability"
            )
        return samples

    @property
    def task(self) -> Any:
        raise ConfigError(
            "a fine-tune has no task-0 training set: a strategy reads it through ctx.importance_samples(count)"
        )


def split_replay(names: list[str], params: dict[str, dict[str, Any]]) -> tuple[list[str], float]:
    """``(core strategy names, replay ratio)``: ``replay`` taken out of a fine-tune's list."""
    ratio = 0.0
    if REPLAY in names:
        ratio = float(params.get(REPLAY, {}).get("ratio", 0.25))
        unknown = set(params.get(REPLAY, {})) - {"ratio"}
        if unknown:
            raise ConfigError(f"replay has one parameter, ratio (the share of general rows): not {sorted(unknown)[0]}")
    return [n for n in names if n != REPLAY], ratio


def check_servable(names: Sequence[str]) -> None:
    """One line for a strategy that overrides a hook a fine-tune does not call."""
    discover()
    for name in names:
        cls = STRATEGIES.get(name)
        if cls is None:
            continue  # make_strategies names the unknown one
        missing = [hook for hook in _hooks() if cls.overrides(hook)]
        if "finetune" not in cls.stacks or missing:
            why = (
                f"needs the {', '.join(missing)} hook(s), which a fine-tune does not call"
                if missing
                else ("does not declare that it runs in a fine-tune (stacks)")
            )
            raise ConfigError(
                f"strategy {name!r} {why}: use {', '.join(finetune_strategy_names())} or replay in finetune"
            )


def _hooks() -> list[str]:
    return [h for h in HOOKS if h not in SERVED_HOOKS]


def finetune_strategy_names() -> list[str]:
    """The registered strategies a fine-tune can run (declared, overriding only served hooks)."""
    discover()
    return sorted(
        name for name, cls in STRATEGIES.items() if "finetune" in cls.stacks and not any(map(cls.overrides, _hooks()))
    )


class FinetuneStrategies:
    """The core strategies of one fine-tune, their context, and the calls the Trainer makes.

    ``FinetuneStrategies(strategies, model, capabilities, pretrained, seed)`` then
    :meth:`prepare` once on the pretrained model, before training; the Trainer mixin adds
    :meth:`loss` to every step's loss.
    """

    def __init__(
        self,
        strategies: list[Strategy],
        model: nn.Module,
        capabilities: Sequence[Capability],
        pretrained: Sequence[str],
        seed: int = 0,
        importance_names: list[str] | None = None,
        tasks: int = 1,
    ) -> None:
        check_servable([s.name for s in strategies])
        self.strategies = strategies
        device = next(model.parameters()).device
        self.ctx = FinetuneContext(
            model=model,
            scenario=FinetuneScenario(num_tasks=tasks + 1),  # type: ignore[arg-type]
            config=None,  # type: ignore[arg-type]
            device=device,
            generator=torch.Generator().manual_seed(seed),
            capabilities=capabilities,
            importance_names=importance_names,
            pretrained=frozenset(pretrained),
        )
        self.ctx.strategies = strategies
        self._loss = [s for s in strategies if type(s).overrides("loss")]
        self._criterion = [s for s in strategies if type(s).overrides("criterion")]

    @property
    def needs_logits(self) -> bool:
        """Whether a ``loss`` hook reads the model output's logits (``uses_logits`` on its class)."""
        return any(getattr(type(s), "uses_logits", False) for s in self._loss)

    @property
    def has_criterion(self) -> bool:
        """Whether a strategy may replace the base loss (the Trainer then computes the forward
        itself and never the default loss it would throw away)."""
        return bool(self._criterion)

    @classmethod
    def build(
        cls,
        combination: list[str],
        params: dict[str, dict[str, Any]],
        model: nn.Module,
        capabilities: Sequence[Capability],
        pretrained: Sequence[str],
        seed: int = 0,
        importance_names: list[str] | None = None,
        tasks: int = 1,
    ) -> FinetuneStrategies:
        """From names and ``--set`` values, as :func:`~forgetless.strategies.make_strategies`
        (``tasks``: the fine-tunes of the stream, :mod:`.sequence`'s tasks; one by default)."""
        check_servable(combination)
        built = make_strategies("+".join(combination), params, stack="finetune") if combination else []
        return cls(built, model, capabilities, pretrained, seed, importance_names, tasks)

    def prepare(self) -> None:
        """Task 0 ends (the pretrained model), task 1 (the fine-tune) begins."""
        self.ctx.advance(task_index=0)
        self.end_task(self.ctx.capabilities)
        self.begin_task()

    def end_task(self, learned: Sequence[Capability], importance_names: list[str] | None = None) -> None:
        """The current stream task ends: ``after_task`` of every strategy, whose importance
        estimates read ``learned`` (the kept capabilities for task 0, the pretrained model; in a
        sequence of fine-tunes the task just trained, whose training rows stand for its data, as
        the learner's ``after_task`` reads the task just learned). ``importance_names``: the
        parameters an importance covers from now on (``None``: unchanged)."""
        self.ctx.capabilities = learned
        if importance_names is not None:
            self.ctx.importance_names = importance_names
        for strategy in self.strategies:
            strategy.after_task(self.ctx)

    def begin_task(self) -> None:
        """The next stream task begins: ``before_task`` of every strategy."""
        self.ctx.advance(task_index=self.ctx.task_index + 1)
        for strategy in self.strategies:
            strategy.before_task(self.ctx)

    def loss(
        self, model: nn.Module, inputs: dict[str, Any] | TokenBatch | None = None, outputs: Any = None
    ) -> torch.Tensor | None:
        """The sum of the ``loss`` hooks' terms for ``model`` (the unwrapped Trainer model) on the
        task rows ``inputs`` and the model's ``outputs`` on them (both optional: the penalties
        need neither)."""
        self.ctx.model = model
        batch = inputs if isinstance(inputs, TokenBatch) or inputs is None else TokenBatch.of(inputs)
        terms = [t for s in self._loss if (t := s.loss(self.ctx, batch, outputs)) is not None]  # type: ignore[arg-type]
        return sum(terms[1:], terms[0]) if terms else None

    def criterion(self, model: nn.Module, inputs: dict[str, Any] | TokenBatch, outputs: Any) -> torch.Tensor | None:
        """The base loss of the task rows from the first ``criterion`` hook that returns one
        (``None``: keep the Trainer's own)."""
        self.ctx.model = model
        batch = inputs if isinstance(inputs, TokenBatch) else TokenBatch.of(inputs)
        for strategy in self._criterion:
            value = strategy.criterion(self.ctx, batch, outputs)  # type: ignore[arg-type]
            if value is not None:
                return value
        return None

    def report(self) -> dict[str, dict[str, Any]]:
        return {s.name: s.report() for s in self.strategies}

    def state_dict(self) -> dict[str, Any]:
        return {s.name: s.state_dict() for s in self.strategies}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for strategy in self.strategies:
            strategy.load_state_dict(state[strategy.name], self.ctx)
