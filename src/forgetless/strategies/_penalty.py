"""A quadratic penalty toward anchors with per-parameter importance, shared by EWC, Online EWC,
SI, MAS and L2-SP (and importable for any ``nn.Module``, e.g. a Hugging Face transformer).

    penalty(model) = sum_terms  w_t * sum_i Omega_{t,i} * (theta_i - theta*_{t,i})^2

The caller multiplies by its paper's factor (``lambda / 2`` for EWC, ``c`` for SI, ...).

API
---
``AnchoredPenalty(name_filter=None, on_mismatch="skip", merge=False)``
    ``name_filter(name) -> bool`` picks the parameters a term may cover (default: all).
``add_term(importance, anchor, weight=1.0, names=None) -> int``
    ``importance``/``anchor``: ``{name: tensor}`` or ``None`` (``None`` importance = 1 for
    every covered parameter, ``None`` anchor = 0, i.e. plain weight decay); ``names`` is needed
    when both are ``None``. Tensors are copied (detached) and stored as one flat vector each.
``AnchoredPenalty(..., merge=True)``
    Evaluates the terms over the same parameters through one exact merged term (the same value
    and gradient at a cost that does not grow with the number of terms; :func:`merged_term`).
    The terms themselves are kept as added (inspectable, checkpointed).
``replace_term(index, ...)``, ``clear()``, ``terms`` (a list of :class:`PenaltyTerm`),
``term_dicts(index) -> (importance, anchor)`` as ``{name: tensor}`` views.
``penalty(model) -> Tensor``
    A scalar with autograd. Its gradient is computed in the same pass (a custom
    ``autograd.Function``: for each term two vector ops on the flattened parameters), so the
    cost does not grow with autograd graph size; ``last_gradient`` keeps it, per parameter name
    (SI subtracts it to recover the task-loss gradient).
``bytes_per_term() -> list[int]``, ``nbytes``; ``state_dict()`` / ``load_state_dict()``.

:class:`PenaltyStrategy` is the base of the strategies built on it (``loss = scale * penalty``);
:func:`snapshot` copies a model's trainable parameters (an anchor); :func:`per_scenario` picks a
strength tuned per scenario kind when the user left it unset.

Parameters a term names but the model lacks, or whose shape changed, are skipped (their names
are in ``skipped`` and a warning is issued once) or raise a ``ConfigError`` with
``on_mismatch="error"``. The resolution of names to parameters is cached per model object.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from forgetless.errors import ConfigError
from forgetless.models.flat import FlatParameters, flat_of
from forgetless.strategies.base import Batch, ImportanceSample, ModelOutput, Strategy, TrainingContext

Tensors = Mapping[str, torch.Tensor]


@dataclass
class PenaltyTerm:
    """One ``(importance, anchor)`` pair over ``names``, stored flat (``None`` = 1 or 0).

    Its value is ``weight * (sum_i importance_i (theta_i - anchor_i)^2 + offset)``; ``offset``
    is a constant, nonzero only for the merged terms of the evaluation plan (so that their value
    equals the sum they stand for).
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    importance: torch.Tensor | None
    anchor: torch.Tensor | None
    weight: float = 1.0
    offset: float = 0.0

    @property
    def nbytes(self) -> int:
        return sum(int(t.numel() * t.element_size()) for t in (self.importance, self.anchor) if t is not None)

    def unflatten(self, flat: torch.Tensor | None) -> dict[str, torch.Tensor] | None:
        if flat is None:
            return None
        out, offset = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            size = shape.numel()
            out[name] = flat[offset : offset + size].view(shape)
            offset += size
        return out


def _buffer(workspace: dict | None, key: tuple, size: int, like: torch.Tensor) -> torch.Tensor:
    """A flat scratch vector of ``size`` entries (device of ``like``, at least float32), reused
    across steps when a workspace is given.

    Reuse matters on CPU: a fresh parameter-sized allocation every step is returned to the OS
    and page-faulted back in (hundreds of faults per step, measured), which cost more than the
    arithmetic of the penalty itself.
    """
    dtype = torch.promote_types(like.dtype, torch.float32)  # bf16/fp16 models: the penalty in float32
    if workspace is None:
        return like.new_empty(size, dtype=dtype)
    found = workspace.get(key)
    if found is None or found.numel() != size or found.dtype != dtype or found.device != like.device:
        found = workspace[key] = like.new_empty(size, dtype=dtype)
    return found


def _evaluate(
    plan: list[tuple[PenaltyTerm, list[int]]],
    params: Sequence[torch.Tensor],
    workspace: dict | None = None,
    thetas: dict[tuple[int, ...], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor | None], dict[tuple[int, ...], torch.Tensor]]:
    """The penalty, ``1/2`` of its gradient per parameter (flat vector ops per term), and the
    same half-gradient as one flat vector per parameter set (``sums``, keyed like ``thetas``).

    With a ``workspace`` the flat vectors live in reused buffers: the returned half-gradients
    are views into them, valid until the next call with the same workspace. ``thetas`` gives
    the flat parameter vector of some parameter sets (views of a flat parameter buffer,
    :mod:`forgetless.models.flat`); the others are gathered.
    """
    value = params[0].new_zeros((), dtype=torch.promote_types(params[0].dtype, torch.float32))
    thetas = dict(thetas or {})  # terms over the same names share one copy
    sums: dict[tuple[int, ...], torch.Tensor] = {}  # half-gradient of each parameter set
    for term, indices in plan:
        key = tuple(indices)
        if key not in thetas:
            size = sum(params[i].numel() for i in indices)
            parts = [params[i].detach().reshape(-1) for i in indices]
            thetas[key] = torch.cat(parts, out=_buffer(workspace, (key, "theta"), size, params[indices[0]]))
        theta = thetas[key]
        if term.anchor is None:
            diff = theta
        else:
            diff = torch.sub(theta, term.anchor, out=_buffer(workspace, (key, "diff"), theta.numel(), theta))
        first = key not in sums
        weighted = _buffer(workspace, (key, "sum"), theta.numel(), theta) if first else torch.empty_like(theta)
        if term.importance is None:
            torch.mul(diff, term.weight, out=weighted)
        else:
            torch.mul(term.importance, diff, out=weighted)
            if term.weight != 1.0:
                weighted.mul_(term.weight)
        value = value + torch.dot(weighted, diff)
        if term.offset:
            value = value + term.weight * term.offset
        if first:
            sums[key] = weighted
        else:
            sums[key].add_(weighted)
    halves: list[torch.Tensor | None] = [None] * len(params)
    for key, flat in sums.items():
        offset = 0
        for i in key:
            size = params[i].numel()
            part = flat[offset : offset + size].view_as(params[i])
            halves[i] = part if halves[i] is None else halves[i] + part
            offset += size
    return value, halves, sums


class _Quadratic(torch.autograd.Function):
    """The penalty, with its gradient computed in the forward (kept in ``holder``)."""

    @staticmethod
    def forward(ctx: Any, holder: AnchoredPenalty, plan: list, *params: torch.Tensor):
        value, halves, _ = _evaluate(plan, params, holder._workspace)
        ctx.halves = halves
        holder._last_halves = halves
        return value

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor):
        out = [None if g is None else g * (2.0 * grad_output) for g in ctx.halves]
        return (None, None, *out)


def _accumulates_into_grad(flat: FlatParameters) -> bool:
    """Inside a backward: it is a ``.backward()`` that will accumulate into every flattened
    parameter's ``.grad`` (not ``torch.autograd.grad``, nor ``backward(inputs=...)`` that
    leaves one out). Unknown (a torch without the engine query): ``False``."""
    try:
        return all(torch._C._will_engine_execute_node(node) for node in flat.accumulators())
    except (AttributeError, RuntimeError):  # RuntimeError: "currently running autograd.grad()"
        return False


class _FlatQuadratic(torch.autograd.Function):
    """:class:`_Quadratic` over a flattened model (:mod:`forgetless.models.flat`): theta of a
    parameter set that is one contiguous run of the flat buffer is a view (no gather), and in
    a ``.backward()`` the gradient is added straight into the flat gradient, one vector op per
    parameter set (``grad += 2 g * sum``), where autograd would add it parameter by parameter.
    Anything else (``torch.autograd.grad``, a detached ``.grad``) gets ordinary gradients."""

    @staticmethod
    def forward(ctx: Any, holder: AnchoredPenalty, plan: list, flat: FlatParameters, spans: dict, *params):
        thetas = {key: flat.data[start:end] for key, (start, end) in spans.items()}
        value, halves, sums = _evaluate(plan, params, holder._workspace, thetas)
        ctx.halves, ctx.sums, ctx.flat, ctx.spans = halves, sums, flat, spans
        ctx.params = params
        holder._last_halves = halves
        return value

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor):
        flat, params = ctx.flat, ctx.params
        twice = 2.0 * grad_output
        if not (flat.grads_attached() and _accumulates_into_grad(flat)):
            out = [None if g is None else g * twice for g in ctx.halves]
            return (None, None, None, None, *out)
        for key, total in ctx.sums.items():
            span = ctx.spans.get(key)
            if span is not None:
                flat.grad[span[0] : span[1]].addcmul_(total, twice)
                continue
            offset = 0
            for i in key:  # a set that is not one run of the buffer (or holds frozen parameters)
                size = params[i].numel()
                if params[i].requires_grad:
                    params[i].grad.view(-1).addcmul_(total[offset : offset + size], twice)
                offset += size
        return (None, None, None, None, *([None] * len(params)))


class AnchoredPenalty:
    """Quadratic penalty toward anchors with per-parameter importance (see module docstring)."""

    def __init__(
        self,
        name_filter: Callable[[str], bool] | None = None,
        on_mismatch: Literal["skip", "error"] = "skip",
        merge: bool = False,
    ):
        self.name_filter = name_filter
        self.on_mismatch = on_mismatch
        self._merge = merge
        self.terms: list[PenaltyTerm] = []
        self.skipped: set[str] = set()
        self._last_halves: list[torch.Tensor | None] | None = None
        self._cache: tuple[int, int, list[str], list[nn.Parameter], list] | None = None
        self._workspace: dict = {}  # reused flat buffers of the autograd pass (see _buffer)
        self._flat_cache: tuple[FlatParameters, tuple | None, dict] | None = None
        self._version = 0

    @property
    def merge(self) -> bool:
        """Evaluate terms over the same parameters through one merged term (see :meth:`_merged`)."""
        return self._merge

    @merge.setter
    def merge(self, value: bool) -> None:
        if value != self._merge:
            self._merge = value
            self._version += 1  # rebuild the evaluation plan

    # -- building terms ------------------------------------------------------------------
    def _make_term(
        self,
        importance: Tensors | None,
        anchor: Tensors | None,
        weight: float,
        names: Sequence[str] | None,
    ) -> PenaltyTerm:
        source = importance if importance is not None else anchor
        if names is None:
            if source is None:
                raise ValueError("a term with neither importance nor anchor needs `names`")
            names = list(source)
        chosen = [n for n in names if self.name_filter is None or self.name_filter(n)]
        for n in chosen:
            for given in (importance, anchor):
                if given is not None and n not in given:
                    raise ValueError(f"parameter {n!r} has no entry in both importance and anchor")
            if importance is not None and anchor is not None:
                if importance[n].shape != anchor[n].shape:
                    raise ValueError(f"importance and anchor of {n!r} differ in shape")
        # a names-only term (source None) takes its shapes from the model when first resolved
        shapes = [source[n].shape for n in chosen] if source is not None else []

        def flat(values: Tensors | None) -> torch.Tensor | None:
            if values is None or not chosen:
                return None
            return torch.cat([values[n].detach().reshape(-1) for n in chosen]).clone()

        return PenaltyTerm(tuple(chosen), tuple(shapes), flat(importance), flat(anchor), weight)

    def add_term(
        self,
        importance: Tensors | None,
        anchor: Tensors | None,
        weight: float = 1.0,
        names: Sequence[str] | None = None,
    ) -> int:
        """Append a term; returns its index."""
        self.terms.append(self._make_term(importance, anchor, weight, names))
        self._version += 1
        return len(self.terms) - 1

    def replace_term(
        self,
        index: int,
        importance: Tensors | None,
        anchor: Tensors | None,
        weight: float = 1.0,
        names: Sequence[str] | None = None,
    ) -> None:
        self.terms[index] = self._make_term(importance, anchor, weight, names)
        self._version += 1

    def clear(self) -> None:
        self.terms = []
        self._version += 1

    def term_dicts(self, index: int) -> tuple[dict | None, dict | None]:
        """``(importance, anchor)`` of term ``index`` as ``{name: tensor}`` views."""
        term = self.terms[index]
        return term.unflatten(term.importance), term.unflatten(term.anchor)

    # -- evaluating ----------------------------------------------------------------------
    def _resolve(self, model: nn.Module) -> tuple[list[nn.Parameter], list]:
        key = (id(model), self._version)
        if self._cache is not None and self._cache[:2] == key:
            return self._cache[3], self._cache[4]
        available = dict(model.named_parameters())
        names: list[str] = []
        index: dict[str, int] = {}
        plan = []
        for t, term in enumerate(self.terms):
            if not term.shapes and term.names:  # names-only term: take shapes from the model
                present = [n for n in term.names if n in available]
                term = PenaltyTerm(
                    tuple(present),
                    tuple(available[n].shape for n in present),
                    None,
                    None,
                    term.weight,
                )
                self.terms[t] = term
            keep = []
            for n, shape in zip(term.names, term.shapes, strict=True):
                param = available.get(n)
                if param is None or param.shape != shape:
                    problem = "is absent from" if param is None else "changed shape in"
                    if self.on_mismatch == "error":
                        raise ConfigError(
                            f"penalty parameter {n!r} {problem} the model: anchor a matching "
                            f"model or use on_mismatch='skip'"
                        )
                    if n not in self.skipped:
                        warnings.warn(f"penalty skips parameter {n!r}: it {problem} the model", stacklevel=3)
                        self.skipped.add(n)
                    continue
                keep.append(n)
            if len(keep) != len(term.names):
                term = self._restrict(term, keep)
                self.terms[t] = term
            indices = []
            for n in term.names:
                if n not in index:
                    index[n] = len(names)
                    names.append(n)
                indices.append(index[n])
            if indices:
                plan.append((term, indices))
        if self.merge:
            plan = self._merge_plan(plan)
        params = [available[n] for n in names]
        self._cache = (key[0], key[1], names, params, plan)
        self._workspace = {}
        return params, plan

    @staticmethod
    def _restrict(term: PenaltyTerm, keep: list[str]) -> PenaltyTerm:
        def sub(flat: torch.Tensor | None) -> torch.Tensor | None:
            if flat is None:
                return None
            views = term.unflatten(flat)
            return torch.cat([views[n].reshape(-1) for n in keep]) if keep else flat[:0]

        shapes = tuple(s for n, s in zip(term.names, term.shapes, strict=True) if n in keep)
        return PenaltyTerm(tuple(keep), shapes, sub(term.importance), sub(term.anchor), term.weight)

    def _merge_plan(self, plan: list[tuple[PenaltyTerm, list[int]]]) -> list[tuple[PenaltyTerm, list[int]]]:
        """Entries over the same parameters (importance and anchor set) become one merged entry."""
        groups: dict[tuple[int, ...], list[PenaltyTerm]] = {}
        merged: list[tuple[PenaltyTerm, list[int]]] = []
        for term, indices in plan:
            if term.importance is None or term.anchor is None:
                merged.append((term, indices))
            else:
                groups.setdefault(tuple(indices), []).append(term)
        for indices, terms in groups.items():
            merged.append((terms[0] if len(terms) == 1 else self._merged(terms), list(indices)))
        return merged

    @staticmethod
    def _merged(terms: list[PenaltyTerm]) -> PenaltyTerm:
        """One term equal to the sum of ``terms`` over the same names, importance and anchor set.

        With ``S = sum_t w_t Omega_t``, ``b = sum_t w_t Omega_t a_t`` and ``mu = b / S``
        (elementwise; ``mu`` = the last anchor where ``S = 0``):

            sum_t w_t sum_i Omega_{t,i} (theta_i - a_{t,i})^2 = sum_i S_i (theta_i - mu_i)^2 + C,
            C = sum_t w_t sum_i Omega_{t,i} a_{t,i}^2 - sum_i b_i^2 / S_i   (a constant)

        so K terms cost one term per step, exactly (the gradient ``2 S (theta - mu)`` has the
        rounding of a single term). Sums are taken in float64.
        """
        total = torch.zeros_like(terms[0].importance, dtype=torch.float64)
        moment = torch.zeros_like(total)
        constant = 0.0
        for term in terms:
            weighted = term.weight * term.importance.double()
            anchor = term.anchor.double()
            total += weighted
            moment += weighted * anchor
            constant += float(torch.dot(weighted, anchor.square())) + term.weight * term.offset
        covered = total > 0
        safe_total = torch.where(covered, total, 1.0)
        mean = torch.where(covered, moment / safe_total, terms[-1].anchor.double())
        constant -= float((moment.square() / safe_total)[covered].sum())
        first = terms[0]
        return PenaltyTerm(
            first.names,
            first.shapes,
            total.to(first.importance.dtype),
            mean.to(first.anchor.dtype),
            1.0,
            max(constant, 0.0),  # >= 0 in exact arithmetic: clip the rounding
        )

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """``sum_t w_t sum_i Omega_{t,i} (theta_i - theta*_{t,i})^2`` (0 without terms)."""
        params, plan = self._resolve(model)
        if not plan:
            first = next(model.parameters(), None)
            self._last_halves = None
            return torch.zeros((), device=None if first is None else first.device)
        flat = flat_of(model)
        spans = self._flat_spans(flat, params, plan) if flat is not None else None
        if spans is not None:
            return _FlatQuadratic.apply(self, plan, flat, spans, *params)
        return _Quadratic.apply(self, plan, *params)

    def _flat_spans(self, flat: FlatParameters, params: list[nn.Parameter], plan: list) -> dict | None:
        """``{parameter set: (start, end)}`` for the sets of ``plan`` that are one run of the
        flat buffer; ``None`` (the ordinary path) when a parameter that needs a gradient is
        not flattened or the buffer is narrower than float32 (theta is promoted to float32)."""
        if flat.data.dtype != torch.promote_types(flat.data.dtype, torch.float32):
            return None
        if any(p.requires_grad and not flat.holds(p) for p in params):  # e.g. unfrozen after flattening
            return None
        resolved = self._cache[:2] if self._cache is not None else None
        if self._flat_cache is not None and self._flat_cache[0] is flat and self._flat_cache[1] == resolved:
            return self._flat_cache[2]
        spans = {}
        for _, indices in plan:
            found = flat.span(params[i] for i in indices)
            if found is not None:
                spans[tuple(indices)] = found
        self._flat_cache = (flat, resolved, spans)
        return spans

    def gradient(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """``d penalty / d theta = 2 sum_t w_t Omega_t (theta - a_t)`` per name, no autograd."""
        params, plan = self._resolve(model)
        if not plan:
            return {}
        with torch.no_grad():
            _, halves, _ = _evaluate(plan, params)
        return self._named(halves)

    @property
    def last_gradient(self) -> dict[str, torch.Tensor]:
        """The gradient of the last :meth:`penalty` value, per name (at the parameters then)."""
        return self._named(self._last_halves) if self._last_halves is not None else {}

    @property
    def last_half_gradient(self) -> dict[str, torch.Tensor]:
        """Half of :attr:`last_gradient` (views, nothing allocated: for per-step use)."""
        if self._last_halves is None or self._cache is None:
            return {}
        return {n: h for n, h in zip(self._cache[2], self._last_halves, strict=True) if h is not None}

    def _named(self, halves: list[torch.Tensor | None]) -> dict[str, torch.Tensor]:
        names = self._cache[2] if self._cache is not None else []
        return {n: 2.0 * h for n, h in zip(names, halves, strict=True) if h is not None}

    # -- accounting and checkpointing ----------------------------------------------------
    def bytes_per_term(self) -> list[int]:
        return [term.nbytes for term in self.terms]

    @property
    def nbytes(self) -> int:
        return sum(self.bytes_per_term())

    def state_dict(self) -> dict[str, Any]:
        terms = {}
        for t, term in enumerate(self.terms):
            importance, anchor = self.term_dicts(t)
            entry: dict[str, Any] = {"weight": term.weight, "names": list(term.names)}
            if importance is not None:
                entry["importance"] = {n: v.clone() for n, v in importance.items()}
            if anchor is not None:
                entry["anchor"] = {n: v.clone() for n, v in anchor.items()}
            terms[str(t)] = entry
        return {"terms": terms}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.clear()
        for t in sorted(state["terms"], key=int):
            entry = state["terms"][t]
            weight = entry["weight"]
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < math.inf:
                raise ValueError(f"penalty term {t}: weight {weight!r} is not a finite number >= 0")
            names = entry["names"]
            if not names or not all(isinstance(n, str) for n in names):
                raise ValueError(f"penalty term {t}: names {names!r} must list the parameters it holds")
            for part in ("importance", "anchor"):
                for name, value in (entry.get(part) or {}).items():
                    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                        raise ValueError(f"penalty term {t}: {part} of {name} is not a float tensor")
            self.add_term(entry.get("importance"), entry.get("anchor"), float(weight), names)

    def check_fits(self, model: nn.Module) -> None:
        """Every term's parameters exist in ``model`` with the shapes the term holds."""
        params = dict(model.named_parameters())
        for t, term in enumerate(self.terms):
            for name, shape in zip(term.names, term.shapes or [None] * len(term.names)):
                if name not in params:
                    raise ValueError(f"penalty term {t} names {name!r}, which the model does not have")
                if shape is not None and tuple(shape) != tuple(params[name].shape):
                    raise ValueError(
                        f"penalty term {t}: {name} is {list(shape)}, the model's {list(params[name].shape)}"
                    )


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the trainable parameters, by name (an anchor ``theta*``)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


class PenaltyStrategy(Strategy):
    """Base of the methods whose extra loss is ``penalty_scale() * AnchoredPenalty``.

    Subclasses fill ``self.penalty`` in ``after_task`` (or ``before_task``) and define
    :meth:`penalty_scale` (their paper's factor: ``lambda / 2`` for EWC, ``c`` for SI, ...).
    """

    uses_flat_parameters = True
    """The penalty reads theta from a flat parameter buffer where the run has one
    (:mod:`forgetless.models.flat`; ``RunConfig.flat_parameters`` unset turns it on)."""

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.penalty = AnchoredPenalty()

    def penalty_scale(self, ctx: TrainingContext) -> float:
        raise NotImplementedError

    def loss(self, ctx: TrainingContext, batch: Batch, output: ModelOutput) -> torch.Tensor | None:
        if not self.penalty.terms:
            return None
        return self.penalty_scale(ctx) * self.penalty.penalty(ctx.model)

    @staticmethod
    def importance(
        ctx: TrainingContext, count: int, estimate: Callable[[ImportanceSample], Tensors]
    ) -> dict[str, torch.Tensor]:
        """``estimate`` on ``ctx.importance_samples(count)``, keyed by the model's parameter
        names; the mean where the context gives several samples (a fine-tune keeping several
        capabilities)."""
        samples = ctx.importance_samples(count)
        parts = [sample.model_names(estimate(sample)) for sample in samples]
        if len(parts) == 1:
            return dict(parts[0])
        total: dict[str, torch.Tensor] = {}
        for part in parts:
            for name, value in part.items():
                total[name] = total[name] + value if name in total else value.clone()
        return {name: value / len(parts) for name, value in total.items()}

    def report(self) -> dict[str, Any]:
        return {
            "penalty_terms": len(self.penalty.terms),
            "penalty_bytes": self.penalty.nbytes,
            "bytes_per_term": self.penalty.bytes_per_term(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"penalty": self.penalty.state_dict()}

    def expected_terms(self, tasks_done: int) -> int | None:
        """How many penalty terms the strategy holds after ``tasks_done`` tasks (checked when a
        checkpoint is loaded); ``None``: not determined by the count alone."""
        return None

    def term_weight(self) -> float | None:
        """The weight every term of this strategy carries (checked on load); ``None``: varies."""
        return 1.0

    def load_state_dict(self, state: dict[str, Any], ctx: TrainingContext) -> None:
        """The saved penalty, refused when its term count cannot belong to the tasks done
        (``ctx.task_index``): a checkpoint that lost a term would resume without it."""
        self.penalty.load_state_dict(state["penalty"])
        self.penalty.check_fits(ctx.model)
        weight = self.term_weight()
        if weight is not None and any(term.weight != weight for term in self.penalty.terms):
            found = sorted({term.weight for term in self.penalty.terms})
            raise ValueError(
                f"{self.name}'s penalty terms weigh {found}, where it always writes {weight}: the checkpoint "
                "was edited; start the run again"
            )
        expected = self.expected_terms(ctx.task_index)
        if expected is not None and len(self.penalty.terms) != expected:
            raise ValueError(
                f"{self.name} holds {len(self.penalty.terms)} penalty terms after {ctx.task_index} "
                f"finished task(s), where it keeps {expected}: the checkpoint was edited; start the run again"
            )


def per_scenario(value: float | None, defaults: Mapping[str, float], kind: str) -> float:
    """``value`` if the user set it, else the default tuned for scenario ``kind``.

    Some strengths differ by orders of magnitude between task-IL (short binary tasks, separate
    heads) and domain-/class-IL; the tables are in docs/tuning-regularization.md.
    """
    return float(value) if value is not None else float(defaults.get(kind, defaults["domain"]))
