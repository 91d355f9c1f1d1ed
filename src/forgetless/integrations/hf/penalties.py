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
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher over ``n_samples`` rows of the capability's general data (float32).

    The core EWC's estimate (:func:`forgetless.strategies.ewc.estimate_fisher`, ``sampled``:
    labels or tokens drawn from the model's own distribution, exact per-sample gradients) on a
    fine-tune's context (:class:`~forgetless.integrations.hf.strategies.FinetuneContext`), as
    ``forgetless finetune --strategies ewc`` takes it. Only the parameters matching ``modules``
    get a Fisher; gradients are taken for them alone, which is what bounds memory.
    """
    from forgetless.integrations.hf.strategies import FinetuneContext, FinetuneScenario
    from forgetless.strategies.ewc import FisherParams
    from forgetless.strategies.ewc import estimate_fisher as ewc_fisher

    if capability.fisher_view(model) is None:
        raise ConfigError(f"capability {capability.name!r} has no data to estimate a Fisher on")
    if n_samples < 1:
        raise ConfigError(f"ewc samples must be >= 1, got {n_samples}")
    ctx = FinetuneContext(
        model=model,
        scenario=FinetuneScenario(),  # type: ignore[arg-type]
        config=None,  # type: ignore[arg-type]
        device=next(model.parameters()).device,
        generator=generator,
        capabilities=[capability],
        importance_names=select_parameters(model, modules),
    )
    fisher = ewc_fisher(ctx, FisherParams(fisher_samples=n_samples))
    return {name: value.float() for name, value in fisher.items()}
