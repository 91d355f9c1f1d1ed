"""KL anchor: distil the base model into the fine-tuned one on the task batch (LwF for LLMs).

    L = beta * T^2 * mean over response tokens t of  KL( p_base(. | x, y_<t) / T  ||  p_theta(. | x, y_<t) / T )

the forward KL from the base model's next-token distribution to the fine-tuned model's (both
softened by the temperature ``T``), at every trained target of the task rows (replay rows are
not anchored). It is learning without forgetting (Li & Hoiem 2017) with the base model as the
old model and the new task's inputs as the distillation set, i.e. knowledge distillation
(Hinton et al. 2015, soft targets at temperature ``T``, the ``T^2`` factor keeping gradient
scales comparable across temperatures); RLHF keeps its policy near the reference with the same
kind of per-token KL (Ouyang et al. 2022, eq. 2, coefficient ``beta``). The term is 0 at the
base weights.

The base model is a :class:`~forgetless.integrations.hf.reference.FrozenReference` taken in
``before_task`` (the pretrained model at the start of the fine-tune): under a PEFT adapter the
same module with the adapters off (no memory), in a full fine-tune a frozen copy (the model's
weights once more). One extra forward of the base model per step, without gradients.
``dft+kl-anchor`` is ASFT (anchored SFT).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from forgetless.strategies import register
from forgetless.strategies._tokens import masked_mean, scored_targets
from forgetless.strategies.base import Strategy, TrainingContext


class KLAnchorParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    beta: float = Field(1.0, ge=0.0, description="weight of the KL to the base model (Ouyang et al.'s beta)")
    temperature: float = Field(1.0, gt=0.0, description="softmax temperature T of both distributions")


def kl_to_reference(
    logits: torch.Tensor, reference_logits: torch.Tensor, batch: Any, temperature: float = 1.0
) -> torch.Tensor:
    """``T^2 * mean_t KL(softmax(ref_t / T) || softmax(logits_t / T))`` over the trained targets."""
    _, mask = scored_targets(batch)
    log_theta = F.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
    log_base = F.log_softmax(reference_logits[:, :-1].float() / temperature, dim=-1)
    kl = (log_base.exp() * (log_base - log_theta)).sum(-1)
    return masked_mean(kl, mask) * temperature**2


class ReferenceStrategy(Strategy):
    """A fine-tune strategy that compares the model to the base model, kept from ``before_task``."""

    stacks = ("finetune",)

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.reference: Any = None

    def before_task(self, ctx: TrainingContext) -> None:
        from forgetless.integrations.hf.reference import FrozenReference

        self.reference = FrozenReference(ctx.model)

    def reference_logits(self, ctx: TrainingContext, batch: Any) -> torch.Tensor:
        inputs = {"input_ids": batch.input_ids}
        if batch.attention_mask is not None:
            inputs["attention_mask"] = batch.attention_mask
        return self.reference.logits(ctx.model, **inputs)

    def report(self) -> dict[str, Any]:
        shared = self.reference is None or self.reference.shares_weights
        return {"reference": "adapters disabled" if shared else "frozen copy", "reference_bytes": self._bytes()}

    def _bytes(self) -> int:
        if self.reference is None or self.reference.copy is None:
            return 0
        return sum(p.numel() * p.element_size() for p in self.reference.copy.parameters())


@register
class KLAnchor(ReferenceStrategy):
    name = "kl-anchor"
    family = "distillation"
    summary = "KL anchor: beta * KL(p_base || p_theta) on the task tokens (LwF for LLMs)"
    Params = KLAnchorParams
    uses_logits = True
    """Its ``loss`` reads the fine-tuned model's logits on the task rows."""

    def loss(self, ctx: TrainingContext, batch: Any, output: Any) -> torch.Tensor | None:
        if batch is None or self.reference is None:
            return None
        logits = getattr(output, "logits", None)
        if logits is None:
            return None
        reference = self.reference_logits(ctx, batch)
        return self.params.beta * kl_to_reference(logits, reference, batch, self.params.temperature)
