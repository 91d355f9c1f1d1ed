"""Gradient Episodic Memory (GEM; Lopez-Paz & Ranzato 2017, NeurIPS).

An episodic memory per earlier task (here: the shared buffer balanced by task, so every task
keeps an equal share of the budget, a uniform random subset of its data). At each step, the
gradient ``g_k`` of the loss on each earlier task's memory is computed; if the new gradient ``g``
violates ``<g, g_k> >= 0`` for some ``k``, it is replaced by the closest gradient that satisfies
them all, found through the dual QP (eq. 10-11)::

    min_v  1/2 v^T G G^T v + g^T G^T v   s.t.  v >= margin,      g~ = G^T v + g

solved with ``quadprog`` as in the authors' code (``margin`` is their "memory strength"). A ridge
on the diagonal keeps the QP strictly convex; it loosens the constraints by ``ridge * v`` (from
the KKT conditions: ``G g~ = lambda - ridge v``), so where the authors add an absolute 1e-3 we add
``eps`` times the mean of ``diag(G G^T)`` (default 1e-8), and the constraints hold to float
precision. On the first task there is no earlier task and the hook does nothing (documented
no-op); so does a step with no violated constraint.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from forgetless.extras import require
from forgetless.strategies import register
from forgetless.strategies._buffer import (
    ReplayStrategy,
    Selection,
)
from forgetless.strategies.base import Batch, FlatGradient, ParameterLayout, TrainingContext


class GEMParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    buffer_size: int = Field(500, ge=1, description="memory budget in samples, shared by tasks")
    memory_strength: float = Field(0.5, ge=0.0, description="margin: dual variables v >= margin (authors' default 0.5)")
    eps: float = Field(1e-8, gt=0.0, lt=1.0, description="ridge on the QP matrix, relative to each diagonal entry")


def gem_project(gradient: torch.Tensor, memories: torch.Tensor, margin: float = 0.5, eps: float = 1e-8) -> torch.Tensor:
    """GEM projection (eq. 10-11) of ``gradient`` [p] against task gradients ``memories`` [t, p].

    Unchanged when no constraint is violated; else ``G^T v + g`` with ``v`` from the dual QP.
    """
    if memories.shape[0] == 0 or bool((memories @ gradient >= 0).all()):
        return gradient
    # only the small t x t dual problem leaves torch: G G^T and G g are formed where the
    # gradients live (one matmul each) instead of copying [t, p] to float64 NumPy
    G = memories.detach()
    # a task whose memory gradient is zero constrains nothing (g . 0 >= 0): leave it out of the QP
    G = G[(G * G).sum(1) > 0]
    if G.shape[0] == 0:
        return gradient
    P = (G @ G.T).double().cpu().numpy()
    P = 0.5 * (P + P.T)
    q = -(G @ gradient.detach()).double().cpu().numpy()  # quadprog minimises 1/2 v^T P v - q^T v
    t = P.shape[0]
    # a ridge relative to each task's own diagonal entry: one sized to the mean would swamp the
    # constraint of a task whose memory gradient is tiny next to the others' (found by hypothesis)
    # (a ridge also perturbs the solution, so the exact problem is tried first)
    diagonal = np.diag(np.diag(P))
    quadprog = require("quadprog", "GEM's quadratic program")
    for ridge in [0.0] + [eps * 10.0**k for k in range(10)]:
        try:  # rank-deficient G (parallel task gradients) needs the ridge to be positive definite
            v = quadprog.solve_qp(P + ridge * diagonal, q, np.eye(t), np.full(t, margin))[0]
            break
        except ValueError:
            continue
    else:
        raise ValueError("GEM quadratic program could not be solved")
    weights = torch.from_numpy(v).to(dtype=G.dtype, device=G.device)
    return gradient + weights @ G


@register
class GEM(ReplayStrategy):
    name = "gem"
    family = "replay"
    requires = ("quadprog",)
    summary = "GEM: project the gradient (QP) so no earlier task's memory loss rises"
    uses_flat_parameters = True  # project_gradient gets the flat gradient buffer itself
    Params: ClassVar[type[BaseModel]] = GEMParams

    def _selection(self) -> Selection:
        return "balanced"

    def _num_groups(self, ctx: TrainingContext) -> int:
        return ctx.scenario.num_tasks

    def groups(self, ctx: TrainingContext, labels: torch.Tensor) -> torch.Tensor:
        return torch.full_like(labels, ctx.task_index)

    def task_gradients(self, ctx: TrainingContext, layout: ParameterLayout) -> torch.Tensor:
        """``[t, p]``: the gradient on each earlier task's memory in ``layout`` (one forward,
        t backwards)."""
        index = self.buffer.candidates(before_task=ctx.task_index)
        if index is None or len(index) == 0:
            return torch.zeros((0, layout.numel))
        sample = self.buffer.take(index)
        replay = sample.to_batch(ctx)
        logits = ctx.model(replay.x, replay.task_ids)
        tasks = torch.unique(sample.tasks).tolist()
        rows = []
        for position, task in enumerate(tasks):
            mine = sample.tasks == task
            loss = F.cross_entropy(logits[mine], replay.y[mine])
            rows.append(layout.gradient_of(loss, retain_graph=position < len(tasks) - 1))
        return torch.stack(rows)

    def project_gradient(self, ctx: TrainingContext, batch: Batch, gradient: FlatGradient) -> torch.Tensor | None:
        if ctx.task_index == 0:
            return None
        memories = self.task_gradients(ctx, gradient.layout)
        if memories.shape[0] == 0:
            return None
        return gem_project(gradient.vector, memories, self.params.memory_strength, self.params.eps)
