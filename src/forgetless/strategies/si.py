"""SI: synaptic intelligence (Zenke, Poole & Ganguli 2017, ICML, eqs. 3-5).

During training each parameter accumulates its share of the loss decrease along the path,

    omega_k += -g_k * (theta_k(step) - theta_k(step - 1))                    (eq. 3, discretised)

and at the end of task ``mu`` the importance grows by

    Omega_k += omega_k / (Delta_k^2 + xi),   Delta_k = theta_k(end of mu) - theta_k(start of mu)
                                                                              (eq. 5)

after which ``omega`` is reset. Later tasks train on ``L + c * sum_k Omega_k (theta_k -
theta~_k)^2`` (eq. 4) with ``theta~`` the parameters at the end of the previous task.

Which gradient ``g``: Zenke et al.'s reference code uses the gradient of the *unregularised*
loss; some re-implementations (e.g. van de Ven's) use the total gradient, SI penalty included.
Here ``g`` is the gradient the learner computed minus SI's own penalty gradient (known exactly
from :class:`~forgetless.strategies._penalty.AnchoredPenalty`), i.e. the task loss's gradient,
as in the reference; terms added by other composed strategies (LwF, ...) stay in ``g``. Where a
composed strategy projects the gradient (GEM), the projected gradient is used.

A deviation, for safety: a task's contribution ``omega / (Delta^2 + xi)`` is clipped at 0
(with momentum optimizers the path integral of a parameter can come out negative, and a
negative importance would reward moving away from the anchor). ``xi > 0`` is required.
Defaults (``c``, ``xi``) chosen on a validation split: docs/tuning-regularization.md.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from forgetless.strategies import register
from forgetless.strategies._penalty import PenaltyStrategy, per_scenario, snapshot
from forgetless.strategies.base import Batch, ModelOutput, TrainingContext

C_DEFAULTS = {"task": 1000.0, "domain": 10.0, "class": 10.0}
"""Default ``c`` per scenario, from the validation search (docs/tuning-regularization.md)."""


class SIParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    c: float | None = Field(None, ge=0.0, description="penalty strength c (eq. 4); unset: 1000 task-IL, 10 otherwise")
    xi: float = Field(0.1, gt=0.0, description="damping xi of eq. 5")


@register
class SI(PenaltyStrategy):
    name = "si"
    family = "regularization"
    speed_target = 1.3
    summary = "synaptic intelligence: path-integral importance accumulated during training"
    Params = SIParams

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.omega: dict[str, torch.Tensor] = {}
        """Running path integral ``omega`` of the current task."""
        self.previous: dict[str, torch.Tensor] = {}
        """Parameters after the last optimizer step."""
        self.start: dict[str, torch.Tensor] = {}
        """Parameters at the start of the current task."""
        self._tracked: list[tuple[str, torch.nn.Parameter]] | None = None

    def penalty_scale(self, ctx: TrainingContext) -> float:
        kind = ctx.scenario.kind if ctx.scenario is not None else "domain"
        return per_scenario(self.params.c, C_DEFAULTS, kind)

    def before_task(self, ctx: TrainingContext) -> None:
        self.start = snapshot(ctx.model)
        self.previous = {n: v.clone() for n, v in self.start.items()}
        self.omega = {n: torch.zeros_like(v) for n, v in self.start.items()}
        self._tracked = None

    @torch.no_grad()
    def after_step(self, ctx: TrainingContext, batch: Batch, output: ModelOutput) -> bool:
        if self._tracked is None:
            self._tracked = [(n, p) for n, p in ctx.model.named_parameters() if n in self.omega]
        own = self.penalty.last_half_gradient if self.penalty.terms else {}
        live = [(n, p) for n, p in self._tracked if p.grad is not None]
        if not live:
            return False
        current = [p.detach() for _, p in live]
        grads = [p.grad for _, p in live]
        previous = [self.previous[n] for n, _ in live]
        omega = [self.omega[n] for n, _ in live]
        # previous <- previous - current = -delta, in place: no scratch vector, one pass fewer
        torch._foreach_sub_(previous, current)
        negative_delta = previous
        torch._foreach_addcmul_(omega, grads, negative_delta)  # omega -= g * delta
        if own:  # add back c * d(penalty): omega -= (g - 2 c half) * delta
            mine = [(own[n], d) for (n, _), d in zip(live, negative_delta, strict=True) if n in own]
            torch._foreach_addcmul_(
                [self.omega[n] for n, _ in live if n in own],
                [h for h, _ in mine],
                [d for _, d in mine],
                value=-2.0 * self.penalty_scale(ctx),
            )
        torch._foreach_copy_(previous, current)
        return False

    def expected_terms(self, tasks_done: int) -> int:
        """One consolidated term once a task has finished."""
        return min(tasks_done, 1)

    def after_task(self, ctx: TrainingContext) -> None:
        end = snapshot(ctx.model)
        old = self.penalty.term_dicts(0)[0] if self.penalty.terms else {}
        importance = {}
        for n, theta in end.items():
            change = theta - self.start[n]
            contribution = (self.omega[n] / (change.square() + self.params.xi)).clamp_min(0.0)
            importance[n] = contribution + old[n] if n in old else contribution
        self.penalty.clear()
        self.penalty.add_term(importance, end)
        self.omega = {}

    @property
    def importance(self) -> dict[str, torch.Tensor] | None:
        """``Omega`` (``None`` before the first task ends)."""
        return self.penalty.term_dicts(0)[0] if self.penalty.terms else None

    def report(self) -> dict[str, Any]:
        working = sum(
            v.numel() * v.element_size() for part in (self.omega, self.previous, self.start) for v in part.values()
        )
        return {**super().report(), "working_bytes": int(working)}

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "omega": dict(self.omega),
            "previous": dict(self.previous),
            "start": dict(self.start),
        }

    def load_state_dict(self, state: dict[str, Any], ctx: TrainingContext) -> None:
        super().load_state_dict(state, ctx)
        for key in ("omega", "previous", "start"):
            setattr(self, key, {n: v.clone() for n, v in state[key].items()})
