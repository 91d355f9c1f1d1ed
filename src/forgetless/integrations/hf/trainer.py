"""A ``transformers.Trainer`` mixin that adds the strategies' loss terms and replay to the loss.

``loss = (n_task * L_task + n_replay * L_replay) / (n_task + n_replay) + sum_k term_k(model)``

where the replay rows come from a :class:`~forgetless.integrations.hf.mixing.MixingBatchSampler`
(split off by :class:`~forgetless.integrations.hf.mixing.SplitCollator`) and ``L_replay`` is the
kept capability's own loss (LM loss on general text, or CE through a fixed head). The terms are
the ``loss`` hooks of the core strategies (:mod:`.strategies`: L2-SP, EWC, ...) and any plain
:class:`forgetless.strategies._penalty.AnchoredPenalty` a script passes.

``L_task`` is the Trainer's own loss of the task rows, or, when a strategy has a ``criterion``
hook (``dft``, ``safe-tokens``), the loss that hook returns: the mixin then runs the model's
forward on the task rows itself (no labels, so the default loss is never computed only to be
thrown away) and hands the output to the hooks. A criterion is a mean over the micro-batch's
trained tokens; where the Trainer does not divide the loss by the gradient-accumulation steps
(its loss counts the items of the whole accumulated batch, :meth:`ForgettingTrainerMixin.
_loss_scaled_for_accumulation`), the mixin divides the criterion by them, as it does the penalty.

The mixin also wires its :class:`~forgetless.integrations.hf.callback.ForgettingCallback` s into
the Trainer: their evaluations go through ``self.log`` (``log_history`` and every ``report_to``
integration), every ``evaluate()`` carries ``eval_keep_<capability>`` & co. (for
``metric_for_best_model`` and ``EarlyStoppingCallback``), and ``train(resume_from_checkpoint=...)``
tells them the checkpoint folder whose forgetting state they load.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer

from forgetless.integrations.hf.callback import ForgettingCallback
from forgetless.integrations.hf.mixing import MixingBatchSampler
from forgetless.integrations.hf.strategies import FinetuneStrategies, TokenBatch
from forgetless.strategies._penalty import AnchoredPenalty

ReplayLoss = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]


def _rows(batch: dict[str, Any]) -> int:
    return int(next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape[0])


class ForgettingTrainerMixin:
    """Put before ``Trainer`` in the bases: ``class MyTrainer(ForgettingTrainerMixin, Trainer)``.

    Keyword arguments: ``strategies`` (the core strategies of the fine-tune, a
    :class:`~forgetless.integrations.hf.strategies.FinetuneStrategies` whose ``loss`` hooks are
    added to every step's loss), ``penalties`` (plain ``AnchoredPenalty`` objects, added the
    same way), ``replay_loss`` (loss of a replay sub-batch), ``mixing_sampler`` (batch sampler
    of the training set).
    """

    def __init__(
        self,
        *args: Any,
        penalties: list[AnchoredPenalty] | None = None,
        strategies: FinetuneStrategies | None = None,
        replay_loss: ReplayLoss | None = None,
        mixing_sampler: MixingBatchSampler | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.penalties = list(penalties or [])
        self.strategies = strategies
        self.replay_loss = replay_loss
        self.mixing_sampler = mixing_sampler
        self.last_penalty = 0.0
        for guard in self.forgetting_callbacks():
            guard.attach(self)

    def forgetting_callbacks(self) -> list[ForgettingCallback]:
        handler = self.callback_handler  # type: ignore[attr-defined]
        return [cb for cb in handler.callbacks if isinstance(cb, ForgettingCallback)]

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        folder = resume_from_checkpoint
        if folder is True:
            from transformers.trainer_utils import get_last_checkpoint

            folder = get_last_checkpoint(self.args.output_dir)  # type: ignore[attr-defined]
        for guard in self.forgetting_callbacks():
            guard.attach(self)
            guard.resume_from = str(folder) if isinstance(folder, (str, os.PathLike)) else None
        return super().train(resume_from_checkpoint, *args, **kwargs)  # type: ignore[misc]

    def evaluation_loop(
        self,
        dataloader: DataLoader,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> Any:
        parent = super().evaluation_loop  # type: ignore[misc]
        output = parent(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if description == "Evaluation":  # evaluate() (logs these metrics next), not predict()
            state, control = self.state, self.control  # type: ignore[attr-defined]
            for guard in self.forgetting_callbacks():
                output.metrics.update(guard.eval_metrics(self.model, state, control, metric_key_prefix))
        return output

    def get_train_dataloader(self) -> DataLoader:
        if self.mixing_sampler is None:
            return super().get_train_dataloader()  # type: ignore[misc]
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=self.mixing_sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
        )
        return self.accelerator.prepare(loader)

    def _loss_scaled_for_accumulation(self, num_items_in_batch: torch.Tensor | int | None) -> bool:
        """The Trainer's own rule (``training_step``): whether the loss it gets back is already
        divided for gradient accumulation, so that it will not divide it (nor the penalty)."""
        explicit = getattr(self, "loss_is_scaled_for_ga", None)
        if explicit is not None:
            return bool(explicit)
        by_items = getattr(self, "model_accepts_loss_kwargs", False) and num_items_in_batch is not None
        return bool(by_items or getattr(self, "compute_loss_func", None) is not None)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        parent = super().compute_loss  # type: ignore[misc]
        target = self.model  # unwrapped: names match the anchors under DDP too
        split = "task" in inputs  # a SplitCollator batch
        task = inputs["task"] if split else inputs
        scaled = not split and self._loss_scaled_for_accumulation(num_items_in_batch)
        if self._computes_forward():
            loss, outputs = self._own_loss(model, target, task, num_items_in_batch if scaled else None)
        elif split:
            loss, outputs = parent(model, task, return_outputs=True)
        else:
            loss, outputs = parent(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if split and inputs.get("replay") is not None:
            replay = inputs["replay"]
            if self.replay_loss is None:
                raise RuntimeError("a batch holds replay rows but no replay_loss was given")
            n_task, n_replay = _rows(task), _rows(replay)
            loss = (n_task * loss + n_replay * self.replay_loss(model, replay)) / (n_task + n_replay)
        terms = [p.penalty(target) for p in self.penalties]
        if self.strategies is not None:
            strategy_loss = self.strategies.loss(target, task, outputs)
            terms += [strategy_loss] if strategy_loss is not None else []
        if terms:
            penalty = sum(terms[1:], terms[0])
            if scaled:  # the Trainer will not divide by the accumulation steps: do it here
                penalty = penalty / getattr(self, "current_gradient_accumulation_steps", 1)
            self.last_penalty = float(penalty.detach())
            loss = loss + penalty
        return (loss, outputs) if return_outputs else loss

    parent_builds_logits: bool = True
    """Whether the parent's ``compute_loss`` returns outputs with the logits' graph (TRL's
    ``SFTTrainer`` does not: its fused LM head never builds them)."""

    def _computes_forward(self) -> bool:
        """Whether the mixin runs the task forward itself: a strategy has a ``criterion``, or a
        ``loss`` hook needs the logits the parent does not build."""
        strategies = self.strategies
        if strategies is None:
            return False
        return strategies.has_criterion or (strategies.needs_logits and not self.parent_builds_logits)

    def _own_loss(
        self, model: nn.Module, target: nn.Module, task: dict[str, Any], num_items: torch.Tensor | int | None
    ) -> tuple[torch.Tensor, Any]:
        """``(base loss, outputs)`` of the task rows from the model's own forward (no labels):
        the strategies' ``criterion``, divided by the accumulation steps when the Trainer will not
        divide (``num_items`` given); else the causal-LM cross-entropy (summed over the trained
        tokens and divided by ``num_items`` when given, as the Trainer's loss is)."""
        batch = TokenBatch.of(task)
        if batch is None:
            raise RuntimeError("a strategy's criterion needs token batches (input_ids): this batch has none")
        outputs = model(**batch.model_inputs())
        assert self.strategies is not None
        loss = self.strategies.criterion(target, batch, outputs)
        if loss is None:
            return default_lm_loss(outputs.logits, batch, num_items), outputs
        if num_items is not None:  # a per-micro-batch mean the Trainer will not divide: do it here
            loss = loss / getattr(self, "current_gradient_accumulation_steps", 1)
        return loss, outputs


def default_lm_loss(
    logits: torch.Tensor, batch: TokenBatch, num_items: torch.Tensor | int | None = None
) -> torch.Tensor:
    """The Hugging Face causal-LM loss: cross-entropy of the next tokens labelled other than
    ``-100`` (float32), averaged over them, or summed and divided by ``num_items``."""
    from forgetless.strategies._tokens import masked_mean, scored_targets, target_log_probs

    targets, mask = scored_targets(batch)
    nll = -target_log_probs(logits, targets)
    if num_items is None:
        return masked_mean(nll, mask)
    total = torch.where(mask, nll, torch.zeros_like(nll)).sum()
    return total / torch.as_tensor(num_items, device=total.device).clamp_min(1)


class ForgetlessTrainer(ForgettingTrainerMixin, Trainer):
    """``transformers.Trainer`` with forgetless penalties and replay."""
