"""forgetless inside TRL's ``SFTTrainer``: penalties, replay and the forgetting guard.

:class:`ForgetlessSFTTrainer` is :class:`~forgetless.integrations.hf.trainer.ForgettingTrainerMixin`
on ``trl.SFTTrainer``: SFTTrainer keeps its own data handling (``messages`` / prompt-completion
datasets, ``assistant_only_loss`` / ``completion_only_loss``, packing, ``peft_config``) and its
loss, and the mixin adds the forgetless terms to that loss::

    loss = L_sft + sum_k penalty_k(model)        (replay: the mixin's row-weighted mix, see trainer.py)

**The loss under gradient accumulation.** SFTTrainer 1.16 divides its summed token NLL by
``num_items_in_batch`` (the label tokens of the whole accumulated batch), so the Trainer does
not divide it by the accumulation steps; the mixin then divides the penalty by them itself, and
one optimizer step's loss is ``L_sft + penalty`` whatever ``gradient_accumulation_steps``.

**Outputs.** SFTTrainer's loss comes from a fused LM head that never builds the logits; asked for
its outputs, it recomputes them in a second forward without gradients. The mixin asks for them
(the strategies' ``loss`` hooks may take the logits), so this class asks SFTTrainer for the
outputs only when its own caller does (``compute_metrics``): the strategies get ``logits=None``.

**PEFT.** With ``peft_config`` SFTTrainer wraps the model in ``__init__``, which renames the
parameters and trains only the adapters. A penalty or strategies built on the model beforehand
would anchor weights the trained model does not have; pass a function of the trained model
instead (``penalties=[lambda model: l2sp_penalty(model, 0.1)]``), called after the wrapping. A
penalty whose parameters the trained model lacks is refused in one line.

**Replay.** ``replay=capability, replay_ratio=r`` puts ``round(r * per_device_train_batch_size)``
rows of the capability's general data (``capability.replay_rows()``) in every training batch,
trained on with ``capability.replay_loss``; the task rows are SFTTrainer's prepared dataset,
collated by its own collator.

**The guard.** A :class:`~forgetless.integrations.hf.callback.ForgettingCallback` in
``callbacks=[...]`` is attached by this trainer (its figures reach ``report_to``). Under a stock
``SFTTrainer`` it finds the trainer that calls it when training begins (a callback receives the
model, optimizer, scheduler and data loaders, never the trainer); ``guard.attach(trainer)`` says
it explicitly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from forgetless.extras import check

check(("trl",), "ForgetlessSFTTrainer (TRL's SFTTrainer)")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from trl import SFTTrainer  # noqa: E402

from forgetless.errors import ConfigError  # noqa: E402
from forgetless.integrations.hf.capabilities.base import Capability  # noqa: E402
from forgetless.integrations.hf.mixing import MixedDataset, MixingBatchSampler, RowsDataset, SplitCollator  # noqa: E402
from forgetless.integrations.hf.strategies import FinetuneStrategies  # noqa: E402
from forgetless.integrations.hf.trainer import ForgettingTrainerMixin  # noqa: E402
from forgetless.strategies._penalty import AnchoredPenalty  # noqa: E402

PenaltySpec = AnchoredPenalty | Callable[[nn.Module], AnchoredPenalty]
"""A penalty, or a function of the trained model (after any PEFT wrapping) that builds one."""
StrategiesSpec = FinetuneStrategies | Callable[[nn.Module], FinetuneStrategies]
"""Prepared strategies, or a function of the trained model that builds them (prepared here)."""


class _OutputsOnDemand(SFTTrainer):
    """``SFTTrainer.compute_loss`` asked for outputs only when the trainer's caller wants them."""

    _caller_wants_outputs = False

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        if return_outputs and not self._caller_wants_outputs:  # the mixin's request: no extra forward
            return super().compute_loss(model, inputs, False, num_items_in_batch), None
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def _unknown_names(penalty: AnchoredPenalty, model: nn.Module) -> list[str]:
    present = {name for name, _ in model.named_parameters()}
    return [n for term in penalty.terms for n in term.names if n not in present]


class ForgetlessSFTTrainer(ForgettingTrainerMixin, _OutputsOnDemand):
    """``trl.SFTTrainer`` with forgetless penalties, strategies, replay and forgetting guard.

    Takes SFTTrainer's arguments and ``penalties`` (``AnchoredPenalty`` objects or functions of
    the trained model), ``strategies`` (a prepared
    :class:`~forgetless.integrations.hf.strategies.FinetuneStrategies`, or a function of the
    trained model that builds one, then prepared here), ``replay`` (a capability with general
    rows) and ``replay_ratio`` (their share of every training batch).
    """

    parent_builds_logits = False  # a strategy reading the logits gets the mixin's own forward

    def __init__(
        self,
        *args: Any,
        penalties: list[PenaltySpec] | None = None,
        strategies: StrategiesSpec | None = None,
        replay: Capability | None = None,
        replay_ratio: float = 0.0,
        **kwargs: Any,
    ) -> None:
        for name in ("mixing_sampler", "replay_loss"):
            if name in kwargs:
                raise ConfigError(
                    f"ForgetlessSFTTrainer builds its replay batches: pass replay= and replay_ratio=, not {name}="
                )
        super().__init__(*args, **kwargs)
        model = self.model
        self.penalties = [p if isinstance(p, AnchoredPenalty) else p(model) for p in penalties or []]
        for penalty in self.penalties:
            unknown = _unknown_names(penalty, model)
            if unknown:
                raise ConfigError(
                    f"a penalty anchors {len(unknown)} parameter(s) the trained model lacks (e.g. {unknown[0]!r}): "
                    "with peft_config SFTTrainer wraps the model, so pass a function of it, "
                    "penalties=[lambda model: l2sp_penalty(model, alpha)]"
                )
        if strategies is not None and not isinstance(strategies, FinetuneStrategies):
            strategies = strategies(model)
            strategies.prepare()
        self.strategies = strategies
        self.replay_rows: dict[str, torch.Tensor] | None = None
        if replay_ratio:
            self._set_replay(replay, replay_ratio)

    def _set_replay(self, replay: Capability | None, ratio: float) -> None:
        rows = replay.replay_rows() if replay is not None else None
        if rows is None:
            raise ConfigError(
                "replay_ratio needs replay= a capability with general rows (a perplexity: or accuracy: one)"
            )
        if not hasattr(self.train_dataset, "__len__"):
            raise ConfigError("replay mixes rows into batches of a map-style dataset: not a streaming IterableDataset")
        self.replay_rows = rows
        self.replay_loss = replay.replay_loss  # type: ignore[union-attr]
        n_general = len(next(iter(rows.values())))
        self.mixing_sampler = MixingBatchSampler(
            len(self.train_dataset),  # type: ignore[arg-type]
            n_general,
            self.args.per_device_train_batch_size,
            ratio,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
        )

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        self._caller_wants_outputs = return_outputs
        try:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            self._caller_wants_outputs = False

    def get_train_dataloader(self) -> DataLoader:
        if self.replay_rows is None:
            return super().get_train_dataloader()
        # SFTTrainer's prepared rows then the general ones; its collator builds the task part
        loader = DataLoader(
            MixedDataset(self.train_dataset, RowsDataset(self.replay_rows)),  # type: ignore[arg-type]
            batch_sampler=self.mixing_sampler,
            collate_fn=SplitCollator(self.data_collator),
            num_workers=self.args.dataloader_num_workers,
        )
        return self.accelerator.prepare(loader)
