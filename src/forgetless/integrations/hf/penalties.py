"""L2-SP and EWC penalties for transformer weights, on the shared ``AnchoredPenalty``.

* L2-SP (Li, Grandvalet & Davoine 2018, eq. 3): ``alpha/2 * ||w - w0||^2`` over the pretrained
  weights ``w0`` (new parameters such as a fresh head are not anchored).
* EWC (Kirkpatrick et al. 2017, eq. 3): ``lambda/2 * sum_i F_i (theta_i - theta*_i)^2`` with the
  diagonal Fisher ``F`` estimated on general data by :func:`estimate_fisher`: the model's own
  predictive distribution is *sampled* (tokens for a causal LM, labels through a capability's
  head), so ``F = E_x E_{y~p_theta(.|x)} [(d log p_theta(y|x) / d theta)^2]`` — the true Fisher,
  not the empirical one (Kunstner et al. 2019).

Both are terms of :class:`forgetless.strategies._penalty.AnchoredPenalty`, whose ``penalty``
already carries the analytic gradient; only the factor differs.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import torch
from torch import nn

from forgetless.errors import ConfigError
from forgetless.integrations.hf.capabilities._io import to_device
from forgetless.integrations.hf.capabilities.base import Capability
from forgetless.strategies._penalty import AnchoredPenalty


def select_parameters(model: nn.Module, modules: Sequence[str] | None = None) -> list[str]:
    """Names of trainable parameters, optionally only those matching a glob in ``modules``.

    A pattern matches a parameter name or any of its dotted prefixes, so ``"*.attention.*"`` or
    ``"transformer.h.0"`` both work.
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not modules:
        return names
    chosen = [
        n for n in names if any(fnmatch.fnmatch(n, pattern) or n.startswith(pattern + ".") for pattern in modules)
    ]
    if not chosen:
        raise ConfigError(
            f"no trainable parameter matches {list(modules)}: check the module names "
            f"(e.g. {names[0] if names else 'none'})"
        )
    return chosen


def l2sp_penalty(
    model: nn.Module, alpha: float, modules: Sequence[str] | None = None, exclude: Sequence[str] = ()
) -> AnchoredPenalty:
    """``alpha/2 * ||w - w0||^2`` anchored at the model's current (pretrained) weights."""
    if alpha < 0:
        raise ConfigError(f"l2sp alpha must be >= 0, got {alpha}")
    params = dict(model.named_parameters())
    names = [n for n in select_parameters(model, modules) if n not in set(exclude)]
    penalty = AnchoredPenalty()
    penalty.add_term(None, {n: params[n] for n in names}, weight=alpha / 2.0)
    return penalty


def ewc_penalty(model: nn.Module, fisher: dict[str, torch.Tensor], lam: float) -> AnchoredPenalty:
    """``lambda/2 * sum F (theta - theta*)^2`` anchored at the model's current weights."""
    if lam < 0:
        raise ConfigError(f"ewc lambda must be >= 0, got {lam}")
    params = dict(model.named_parameters())
    penalty = AnchoredPenalty()
    penalty.add_term(fisher, {n: params[n] for n in fisher}, weight=lam / 2.0)
    return penalty


def estimate_fisher(
    model: nn.Module,
    capability: Capability,
    n_samples: int,
    generator: torch.Generator,
    modules: Sequence[str] | None = None,
    batch_size: int = 1,
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher over ``n_samples`` rows of the capability's general data.

    One float32 accumulator per selected parameter; parameters outside ``modules`` get no
    gradient at all (they are frozen for the estimate), which is what bounds memory. With
    ``batch_size=1`` (default) each squared gradient is one sequence's, the exact per-sample
    Fisher; larger batches square the gradient of a sum (cheaper, an approximation).
    """
    rows = capability.replay_rows()
    if rows is None:
        raise ConfigError(f"capability {capability.name!r} has no data to estimate a Fisher on")
    if n_samples < 1:
        raise ConfigError(f"ewc samples must be >= 1, got {n_samples}")
    names = set(select_parameters(model, modules))
    total = next(iter(rows.values())).shape[0]
    order = torch.randperm(total, generator=generator)[: min(n_samples, total)]
    params = dict(model.named_parameters())
    fisher = {n: torch.zeros_like(params[n], dtype=torch.float32) for n in names}
    frozen = [p for n, p in params.items() if p.requires_grad and n not in names]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for p in frozen:
            p.requires_grad_(False)
        for chunk in order.split(batch_size):
            batch = to_device({k: v[chunk] for k, v in rows.items()}, device)
            objective = capability.sampled_nll(model, batch, generator)
            chosen = [params[n] for n in fisher]
            grads = torch.autograd.grad(objective, chosen, allow_unused=True)
            for name, grad in zip(fisher, grads, strict=True):
                if grad is not None:
                    fisher[name] += grad.float().square()
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
    n = len(order)
    return {name: value / n for name, value in fisher.items()}
