"""Trainable parameters as views of one contiguous buffer, and their gradients as views of another.

    flat = flatten_parameters(model)     # every trainable parameter now a view of flat.data
    flat.zero_grad(optimizer)            # instead of optimizer.zero_grad(): .grad = views of flat.grad
    loss.backward()                      # autograd accumulates into the views, in place

With the parameters laid out flat, a penalty over a contiguous range of them reads theta as one
view (no gather) and adds its gradient into ``flat.grad`` in one vector op
(:class:`~forgetless.strategies._penalty.AnchoredPenalty`), and GEM/A-GEM project ``flat.grad``
directly (no flatten and copy back).

What stays as it was: the parameter objects (an optimizer built before or after keeps working),
``model.state_dict()`` (same keys, same values: its tensors are the views), checkpoints and
safetensors files (the views do not overlap), loading a state dict (it copies in place, into the
views). Not flattened: parameters with ``requires_grad=False`` (frozen; one unfrozen later keeps
its own storage and its own ``.grad``, and :meth:`FlatParameters.covers` turns false; one frozen
after flattening gets ``.grad = None``, so it takes no optimizer step, and
:meth:`FlatParameters.grads_attached` turns false until it is unfrozen). Tied weights (one
parameter under two names) take one slot; every name maps to it.

Anything that replaces a parameter's ``.data`` afterwards (``model.to(other_device)``,
``model.half()``, ``torch.nn.utils.parametrize``) silently breaks the views;
:meth:`FlatParameters.intact` says so, and the penalty then takes its ordinary path.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from forgetless.errors import ConfigError

_REGISTRY: weakref.WeakKeyDictionary[nn.Module, FlatParameters] = weakref.WeakKeyDictionary()


class FlatParameters:
    """The flat buffers of one model's trainable parameters (:func:`flatten_parameters`).

    ``data``: every trainable parameter, in ``named_parameters()`` order; ``grad``: the same
    layout for their gradients; ``params``/``names``: the parameters and their first names;
    ``spans[name] = (start, end)`` for every name, aliases of tied weights included.
    """

    def __init__(self, named: Sequence[tuple[str, nn.Parameter]], aliases: dict[str, nn.Parameter]):
        first = named[0][1]
        total = sum(p.numel() for _, p in named)
        self.data = torch.empty(total, dtype=first.dtype, device=first.device)
        self.grad = torch.zeros_like(self.data)
        self.params: list[nn.Parameter] = [p for _, p in named]
        self.names: list[str] = [n for n, _ in named]
        self._span_of_param: dict[int, tuple[int, int]] = {}
        self._grad_views: list[torch.Tensor] = []
        self._pointers: list[int] = []
        self._accumulators: list | None = None
        offset = 0
        with torch.no_grad():
            for _, param in named:
                size = param.numel()
                view = self.data[offset : offset + size].view_as(param)
                view.copy_(param)
                param.data = view
                self._span_of_param[id(param)] = (offset, offset + size)
                self._grad_views.append(self.grad[offset : offset + size].view_as(param))
                self._pointers.append(view.data_ptr())
                offset += size
        self.spans: dict[str, tuple[int, int]] = {
            name: self._span_of_param[id(param)] for name, param in aliases.items() if id(param) in self._span_of_param
        }

    @property
    def numel(self) -> int:
        return self.data.numel()

    def intact(self) -> bool:
        """Every parameter still a view of :attr:`data` (nothing replaced its ``.data``)."""
        return all(p.data_ptr() == ptr for p, ptr in zip(self.params, self._pointers, strict=True))

    def grads_attached(self) -> bool:
        """Every parameter's ``.grad`` is its view of :attr:`grad` (as :meth:`zero_grad` left it;
        false while a flattened parameter is frozen: its ``.grad`` is ``None``)."""
        return all(p.grad is view for p, view in zip(self.params, self._grad_views, strict=True))

    def zero_grad(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero :attr:`grad` and point every flattened parameter that requires a gradient at its
        view; a flattened parameter frozen since, and the optimizer's other parameters (unfrozen
        after flattening), get ``.grad = None`` (no optimizer step, no weight decay)."""
        self.grad.zero_()
        for param, view in zip(self.params, self._grad_views, strict=True):
            if not param.requires_grad:
                param.grad = None
            elif param.grad is not view:
                param.grad = view
        if optimizer is not None:
            for group in optimizer.param_groups:
                for param in group["params"]:
                    if not self.holds(param):
                        param.grad = None

    def holds(self, param: torch.Tensor) -> bool:
        """``param`` is one of the flattened parameters."""
        return id(param) in self._span_of_param

    def accumulators(self) -> list:
        """The autograd accumulator node of every flattened parameter (kept, so autograd keeps
        using these nodes): which ones a backward will run tells ``.backward()`` from
        ``torch.autograd.grad``."""
        if self._accumulators is None:
            self._accumulators = [torch.autograd.graph._get_grad_fn_or_grad_acc(p) for p in self.params]
        return self._accumulators

    def span(self, params: Iterable[torch.Tensor]) -> tuple[int, int] | None:
        """``(start, end)`` when ``params``, in this order, are one contiguous run of
        :attr:`data`; else ``None`` (one is not flattened, or they are out of order)."""
        start = end = None
        for param in params:
            found = self._span_of_param.get(id(param))
            if found is None or (end is not None and found[0] != end):
                return None
            if start is None:
                start = found[0]
            end = found[1]
        return None if start is None else (start, end)

    def covers(self, model: nn.Module) -> bool:
        """Every parameter of ``model`` that requires a gradient is flattened here."""
        return all(self.holds(p) for p in model.parameters() if p.requires_grad)

    def serves_gradient(self, model: nn.Module) -> bool:
        """Whether :attr:`grad` is ``model``'s whole gradient now (every ``.grad`` a view of it)."""
        return self.grads_attached() and self.covers(model)


def flatten_parameters(model: nn.Module) -> FlatParameters:
    """Re-point every trainable parameter of ``model`` at a view of one flat buffer (module
    docstring). Idempotent: a model already flattened (and intact) returns its buffers.

    Refused (``ConfigError``): no trainable parameter, or trainable parameters of different
    dtypes or devices (one buffer holds one dtype on one device), or a sparse parameter.
    """
    existing = _REGISTRY.get(model)
    if existing is not None and existing.intact():
        return existing
    aliases = dict(model.named_parameters(remove_duplicate=False))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ConfigError("flat parameters: the model has no trainable parameter; leave --flat-parameters off")
    kinds = {(p.dtype, p.device) for _, p in named}
    if len(kinds) > 1:
        found = ", ".join(sorted(f"{d} on {v}" for d, v in kinds))
        raise ConfigError(
            f"flat parameters need one dtype on one device, the model has {found}: "
            "convert the model first or leave --flat-parameters off"
        )
    if any(p.is_sparse or p.layout != torch.strided for _, p in named):
        raise ConfigError("flat parameters: the model has a sparse parameter; leave --flat-parameters off")
    for name, param in named:
        if not param.is_contiguous():
            raise ConfigError(
                f"flat parameters: {name} is not contiguous (channels_last?); leave --flat-parameters off"
            )
    flat = FlatParameters(named, aliases)
    _REGISTRY[model] = flat
    return flat


def flat_of(model: nn.Module) -> FlatParameters | None:
    """The :class:`FlatParameters` of ``model`` if it was flattened and is still intact."""
    flat = _REGISTRY.get(model)
    return flat if flat is not None and flat.intact() else None


def wants_flat_parameters(setting: bool | None, strategies: Iterable[Any], task_il: bool, channels_last: bool) -> bool:
    """Whether a run flattens its parameters: ``setting`` (``RunConfig.flat_parameters``) when
    given, else on where a strategy reads the flat buffer (``uses_flat_parameters``) and the
    run is neither task-IL (in flat mode every flattened parameter takes an optimizer step,
    one whose head the batch does not reach included: with weight decay that moves it) nor
    ``channels_last`` (the buffer is in the standard layout)."""
    strategies = list(strategies)
    if setting is not None:
        if setting and channels_last:
            raise ConfigError("--flat-parameters and --channels-last exclude each other: choose one")
        projecting = [s.name for s in strategies if type(s).overrides("project_gradient")]
        if setting and task_il and projecting:
            raise ConfigError(
                f"--flat-parameters in task-IL with {projecting[0]}: the flat gradient holds every head (zeros "
                f"where the batch does not reach), so the projection would move other tasks' heads; drop the flag"
            )
        return setting
    return not task_il and not channels_last and any(getattr(s, "uses_flat_parameters", False) for s in strategies)
