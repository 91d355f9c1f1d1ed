"""Optimizer and learning-rate schedule of one task (rebuilt at the start of every task).

Layer-wise (discriminative) learning rates (Howard & Ruder 2018, "Universal Language Model
Fine-tuning for Text Classification", Sec. 3.2, Eq. 2): with ``config.layerwise_lr_decay = d``
the head trains at the base rate and every earlier depth level at ``d`` times the rate of the
level above it, ``lr_l = lr * d ** (L - 1 - l)`` for level ``l`` of ``L`` (input side first).
Depth levels come from :func:`layer_groups`, the one depth rule of both stacks (the learner's
models and Hugging Face transformers): a model's own ``layer_groups()`` method where it has one
(explicit groups), else a transformer's embeddings / numbered blocks / top, else a grouping by
module path (below).
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any

import torch
from torch import nn

from forgetless.config import RunConfig
from forgetless.errors import ConfigError

ParamGroups = list[list[nn.Parameter]]
_HEAD_NAMES = {"head", "heads", "classifier", "lm_head", "score"}
_BLOCK = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")
"""A transformer block's parameters: ``encoder.layer.3.``, ``transformer.h.3.``, ``layers.3.``."""
_EMBEDDING = re.compile(r"embed|(?:^|\.)(?:wte|wpe)\.")


def _level_key(name: str) -> tuple[bool, str]:
    """``(is_head, level)`` of parameter ``name``: the path up to its first numeric component."""
    parts = name.split(".")
    is_head = any(part in _HEAD_NAMES for part in parts)
    for i, part in enumerate(parts[:-1]):
        if re.fullmatch(r"\d+", part):
            return is_head, ".".join(parts[: i + 1])
    return is_head, ".".join(parts[:-1])


def layer_groups(model: nn.Module) -> ParamGroups:
    """Parameters by depth level, input side first and the head(s) last.

    A model that defines ``layer_groups()`` decides (explicit groups). Otherwise parameters are
    grouped by the path up to the first numeric component (``backbone.1.weight`` and
    ``backbone.1.bias`` share ``backbone.1``; ``encoder.layer.3.*`` share ``encoder.layer.3``),
    or by their module where the path has no number; levels keep the order of
    ``named_parameters`` and every parameter under a ``head``/``classifier`` module forms the
    last level.
    """
    own = getattr(model, "layer_groups", None)
    if callable(own):
        return [list(g) for g in own() if len(g)]
    named = list(model.named_parameters())
    if any(_BLOCK.search(name) for name, _ in named):
        return _transformer_levels(named)
    levels: dict[str, list[nn.Parameter]] = {}
    head: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        is_head, key = _level_key(name)
        (head if is_head else levels.setdefault(key, [])).append(param)
    groups = list(levels.values())
    return groups + [head] if head else groups


def _transformer_levels(named: list[tuple[str, nn.Parameter]]) -> ParamGroups:
    """A transformer's levels: embeddings, then each numbered block in order, then the rest
    (final norm, pooler, heads): Howard & Ruder's depth for discriminative fine-tuning."""
    embeddings: list[nn.Parameter] = []
    blocks: dict[int, list[nn.Parameter]] = {}
    top: list[nn.Parameter] = []
    for name, param in named:
        if match := _BLOCK.search(name):
            blocks.setdefault(int(match.group(1)), []).append(param)
        elif _EMBEDDING.search(name):
            embeddings.append(param)
        else:
            top.append(param)
    levels = [embeddings, *(blocks[k] for k in sorted(blocks)), top]
    return [level for level in levels if level]


def layerwise_param_groups(
    groups: ParamGroups, lr: float, decay: float, weight_decay: float | None = None
) -> list[dict[str, Any]]:
    """Optimizer param groups: ``groups[-1]`` at ``lr``, each earlier one ``decay`` times lower.

    ``groups`` runs from the input to the output; a parameter listed twice keeps its first
    (deepest, i.e. closest to the output) rate. Frozen parameters are kept (they get no
    gradient, so the optimizer skips them until they are unfrozen). With
    ``weight_decay``, each level is split into matrices (decayed) and 1-D parameters, biases
    and norms (not decayed), as ``transformers.Trainer`` does.
    """
    if not 0.0 < decay <= 1.0:
        raise ConfigError(f"layerwise_lr_decay must be in (0, 1], got {decay}")
    seen: set[int] = set()
    out: list[dict[str, Any]] = []
    depth = len(groups)
    for level in range(depth - 1, -1, -1):
        params = [p for p in groups[level] if id(p) not in seen]
        seen.update(id(p) for p in params)
        rate = lr * decay ** (depth - 1 - level)
        if weight_decay is None:
            parts = [(params, {})]
        else:
            parts = [
                ([p for p in params if p.dim() > 1], {"weight_decay": weight_decay}),
                ([p for p in params if p.dim() <= 1], {"weight_decay": 0.0}),
            ]
        out.extend({"params": part, "lr": rate, "level": level, **extra} for part, extra in parts[::-1] if part)
    return out[::-1]


def build_optimizer(model: nn.Module, config: RunConfig, groups: ParamGroups | None = None) -> torch.optim.Optimizer:
    """Adam or SGD over every parameter (frozen ones have no gradient and are skipped).

    With ``config.layerwise_lr_decay`` set, one param group per depth level
    (:func:`layer_groups`, or the explicit ``groups`` given, input side first) carries its own
    rate; parameters in no group train at the base rate.
    """
    params: list[Any] = list(model.parameters())
    if config.layerwise_lr_decay is not None:
        params = layerwise_param_groups(groups or layer_groups(model), config.lr, config.layerwise_lr_decay)
        grouped = {id(p) for g in params for p in g["params"]}
        rest = [p for p in model.parameters() if id(p) not in grouped]
        if rest:
            params.append({"params": rest, "lr": config.lr, "level": -1})
    if config.optimizer == "sgd":
        return SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return adam(params, lr=config.lr, weight_decay=config.weight_decay)


def adam(params: Any, **options: Any) -> torch.optim.Adam:
    """Adam with the fused kernel where this torch has it (one kernel for all parameters
    instead of a Python loop over them: ~16% off a whole naive run on CPU); else the default."""
    try:
        return Adam(params, fused=True, **options)
    except (RuntimeError, TypeError, ValueError):
        return Adam(params, **options)


def _unwrapped(method: Any) -> Any:
    """The function under torch's ``functools.wraps`` decorators (dynamo guards, profiling hooks)."""
    return inspect.unwrap(method)


_ZERO_GRAD = _unwrapped(torch.optim.Optimizer.zero_grad)
_ADD_PARAM_GROUP = _unwrapped(torch.optim.Optimizer.add_param_group)
_STATE_DICT = _unwrapped(torch.optim.Optimizer.state_dict)
_LOAD_STATE_DICT = _unwrapped(torch.optim.Optimizer.load_state_dict)


class _EagerMethods:
    """An optimizer's own methods without torch's ``torch._dynamo`` wrappers.

    torch wraps ``step`` (graph breaks around it), ``zero_grad``, ``add_param_group``,
    ``state_dict`` and ``load_state_dict`` so that ``torch.compile`` does not trace into them.
    The wrappers import ``torch._dynamo`` on their first call (sympy and the FX stack: about
    as long as ``import torch`` itself, paid inside the first task's training) and pass every
    call through dynamo's frame guard. Outside a compiled region they do nothing else, and the
    learner never runs its optimizer inside one (``--compile`` compiles the training forward
    only, :mod:`forgetless.training.compiled`), so these call the wrapped functions directly:
    the same arithmetic, bit for bit. ``step`` keeps the wrapper's one other effect, autograd
    off unless the optimizer is ``differentiable``; torch's step hooks still run (the class's
    ``step`` is hooked by ``Optimizer.__init__`` as any optimizer's is).
    """

    _raw_step: Any

    def step(self, closure: Any = None) -> Any:
        with torch.set_grad_enabled(self.defaults["differentiable"]):  # type: ignore[attr-defined]
            return self._raw_step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        _ZERO_GRAD(self, set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _ADD_PARAM_GROUP(self, param_group)

    def state_dict(self) -> dict[str, Any]:
        return _STATE_DICT(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _LOAD_STATE_DICT(self, state_dict)


class Adam(_EagerMethods, torch.optim.Adam):
    """``torch.optim.Adam`` (Kingma & Ba 2015, Algorithm 1) without the dynamo wrappers
    (:class:`_EagerMethods`); the class keeps torch's name, which checkpoints record."""

    _raw_step = _unwrapped(torch.optim.Adam.step)


class SGD(_EagerMethods, torch.optim.SGD):
    """``torch.optim.SGD`` (with momentum, as torch defines it) without the dynamo wrappers
    (:class:`_EagerMethods`)."""

    _raw_step = _unwrapped(torch.optim.SGD.step)


def warmup_factor(step: int, warmup: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the base rate at optimizer step ``step`` (0-based).

    Linear warmup ``(step + 1) / warmup`` for the first ``warmup`` steps, then 1 (constant) or
    half a cosine from 1 down to 0 at ``total_steps`` (Loshchilov & Hutter 2017, Eq. 5).
    """
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: RunConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Linear warmup for ``warmup_steps``, then constant or cosine decay; ``None`` if neither.

    The factor multiplies every param group's own rate, so layer-wise rates keep their ratios.
    """
    warmup, schedule = config.warmup_steps, config.lr_schedule
    if warmup == 0 and schedule == "constant":
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_factor(step, warmup, total_steps, schedule))
