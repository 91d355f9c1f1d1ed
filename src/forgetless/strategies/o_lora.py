"""O-LoRA: orthogonal subspace learning for language-model continual learning (Wang et al. 2023,
"Orthogonal Subspace Learning for Language Model Continual Learning", Findings of EMNLP).

Every task ``t`` of a sequence of fine-tunes learns its own LoRA update ``Delta W_t = B_t A_t``
(``forgetless finetune --task ... --task ... --peft lora --lora-per-task``); the earlier tasks'
adapters are frozen and stay active, so the model is the base plus every task's update. The
rows of ``A_t`` (peft's ``lora_A`` weight, ``r x d_in``) span the input subspace task ``t``
writes through; O-LoRA keeps it orthogonal to the earlier tasks' subspaces with the paper's
orthogonality loss ``L_orth``, added to the task loss with weight ``lambda_1``:

    L = L_task + lambda_1 * sum_{i < t} sum_layers || A_i A_t^T ||_F^2

``A_i A_t^T`` (``r_i x r_t``) is the overlap ``O_{i,t}`` of the paper, which writes ``A`` as
``d_in x r`` and ``O = A_i^T A_t``; ``L_orth`` is the sum of its squared entries. (The authors'
code sums their absolute values instead; this follows the paper's formula.) The earlier
tasks' ``A_i`` are constants: their rows are stacked per layer once, in ``before_task``, so a
step costs one ``(sum_i r_i) x r_t`` product per adapted layer. Needs ``--lora-per-task``: with
one shared adapter there is no earlier subspace, and a single fine-tune has no earlier task.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from forgetless.errors import ConfigError
from forgetless.strategies import register
from forgetless.strategies.base import Strategy, TrainingContext

NEEDS = "add --peft lora --lora-per-task to a sequence of two or more --task"


class OLoRAParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lambda_1: float = Field(0.5, ge=0.0, description="weight of the orthogonality loss L_orth (the paper's lambda_1)")


def orthogonality_loss(earlier: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``||earlier new^T||_F^2``: ``earlier`` the stacked ``A_i`` rows (``R x d``), ``new`` ``A_t`` (``r x d``)."""
    return (earlier.to(new.dtype) @ new.T).pow(2).sum()


def lora_layers(model: torch.nn.Module) -> dict[str, Any]:
    """The modules of ``model`` that hold peft LoRA adapters (``lora_A``: adapter name -> Linear)."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(getattr(module, "lora_A", None), torch.nn.ModuleDict) and len(module.lora_A)
    }


@register
class OLoRA(Strategy):
    name = "o-lora"
    family = "isolation"
    summary = "O-LoRA: each task's LoRA A kept orthogonal to the earlier tasks' (Wang et al. 2023; --lora-per-task)"
    Params = OLoRAParams
    stacks = ("finetune",)

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.earlier: dict[str, torch.Tensor] = {}
        """Per adapted layer, the frozen earlier tasks' ``A`` rows stacked (``sum_i r_i x d_in``)."""
        self.new: dict[str, Any] = {}
        """Per adapted layer, the trainable ``A_t`` (its ``nn.Linear``)."""
        self.last_loss = 0.0

    def before_task(self, ctx: TrainingContext) -> None:
        if ctx.scenario.num_tasks <= 2:
            raise ConfigError(f"o-lora keeps later tasks' LoRA orthogonal to earlier tasks': {NEEDS}")
        layers = lora_layers(ctx.model)
        if not layers:
            raise ConfigError(f"o-lora needs LoRA adapters on the model: {NEEDS}")
        self.earlier, self.new = {}, {}
        for name, module in layers.items():
            trainable = [a for a, lin in module.lora_A.items() if lin.weight.requires_grad]
            frozen = [lin.weight.detach().clone() for a, lin in module.lora_A.items() if not lin.weight.requires_grad]
            if len(trainable) != 1:
                raise ConfigError(
                    f"o-lora: layer {name} trains {len(trainable)} LoRA adapters, not one: {NEEDS} (no --peft dora mix)"
                )
            self.new[name] = module.lora_A[trainable[0]]
            if frozen:
                self.earlier[name] = torch.cat(frozen)
        if ctx.task_index >= 2 and not self.earlier:  # a later fine-tune, but one shared adapter
            raise ConfigError(f"o-lora found no frozen adapter of an earlier task: {NEEDS}")

    def loss(self, ctx: TrainingContext, batch: Any, output: Any) -> torch.Tensor | None:
        if not self.earlier:
            return None
        terms = [orthogonality_loss(old, self.new[name].weight) for name, old in self.earlier.items()]
        total = self.params.lambda_1 * torch.stack(terms).sum()
        self.last_loss = float(total.detach())
        return total

    def report(self) -> dict[str, Any]:
        rows = next(iter(self.earlier.values())).shape[0] if self.earlier else 0
        return {"layers": len(self.new), "earlier_rank": int(rows), "last_orthogonality_loss": self.last_loss}

    def state_dict(self) -> dict[str, Any]:
        return {"earlier": dict(self.earlier), "last_loss": self.last_loss}

    def load_state_dict(self, state: dict[str, Any], ctx: TrainingContext) -> None:
        self.earlier = {name: t.clone() for name, t in state["earlier"].items()}
        self.last_loss = float(state.get("last_loss", 0.0))
        layers = lora_layers(ctx.model)
        self.new = {
            name: next(lin for lin in layers[name].lora_A.values() if lin.weight.requires_grad)
            for name in layers
            if any(lin.weight.requires_grad for lin in layers[name].lora_A.values())
        }
