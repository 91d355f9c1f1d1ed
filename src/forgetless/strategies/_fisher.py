"""Per-sample gradient statistics in batch: the Fisher diagonal (EWC) and MAS importance.

Both importances are sums over samples of an elementwise function of *per-sample* gradients:

* EWC's Fisher diagonal (Kirkpatrick et al. 2017, eq. 3 and its supplement):
  ``F = 1/N sum_n E_{y ~ q(y|x_n)} [(d log p(y|x_n) / d theta)^2]``;
* MAS (Aljundi et al. 2018, eq. 4): ``Omega = 1/N sum_n |d ||f(x_n)||_2^2 / d theta|``.

The square and the absolute value are both *multiplicative* (``phi(u v) = phi(u) phi(v)``),
so for a layer ``z = W a + b`` applied **once per sample**, with ``d_n = dL_n/dz_n``,

    sum_n phi(d_n a_n^T) = phi(D)^T phi(A)      (one matmul; bias: sum_n phi(d_n))

where ``D`` (B x out) and ``A`` (B x in) stack the samples (the identity BackPACK uses). It
holds only when every sample passes through the layer at most once: a layer whose weights are
shared across positions (convolution, transformer tokens with a 3-D input), that is called
twice in one forward, or whose weight is used elsewhere too (tied weights: another layer or an
output projection sharing it) has per-sample gradient ``sum_uses d a^T``, whose square is not
the sum of squares. Such parameters (found by counting each weight's uses in the forward's
autograd graph) are routed to the ``torch.func`` path (``vmap`` over samples of ``grad``),
which materialises every per-sample gradient (slower, exact). A per-sample Python
loop is kept as the obviously-correct reference for tests and benchmarks.

Models are put in ``eval()`` mode while importances are estimated (no dropout; batch norm uses
running statistics, so samples do not interact), and restored afterwards. Rows with different
task ids (multi-head models) are processed per task id, each with an ``int`` id.

The model is called as ``model(x, task_id)`` and returns logits ``[B, C]``, or ``[B, T, C]``
for a sequence model (one sample = one sequence: its objective sums over positions); a model
with another calling convention (a Hugging Face model taking ``input_ids``) is wrapped in a
small ``nn.Module`` that does (the fine-tuning capabilities' ``fisher_view``). Models that
``torch.func`` cannot trace (data-dependent control flow, as Hugging Face transformers have)
fall back from the vmap path to the per-sample loop: slower, the same values.

Public functions: :func:`fisher_diagonal`, :func:`mas_importance`, :func:`per_sample_reduce`
(the general engine: sum over samples of ``phi(grad objective_n)``) and :func:`sample_rows`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from forgetless.errors import ConfigError

FisherKind = Literal["sampled", "empirical", "exact"]
Method = Literal["auto", "identity", "vmap", "loop"]
Transform = Literal["square", "abs"]
Objective = tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], torch.Tensor]
"""``(fn, aux)``: ``fn(logits [B, C], aux [B, ...]) -> [B]``, one scalar per sample, where
``aux`` holds per-sample data (drawn labels, weights); samples must not interact."""
ChunkObjectives = Callable[[torch.Tensor, torch.Tensor], Sequence[Objective]]
"""``objectives(logits, rows)``: the objectives of rows ``rows`` of the input, given their
(detached) logits, from which they may draw labels or weights."""

FISHER_KINDS: tuple[str, ...] = ("sampled", "empirical", "exact")


def _phi(transform: Transform) -> Callable[[torch.Tensor], torch.Tensor]:
    return torch.square if transform == "square" else torch.abs


def _named_trainable(model: nn.Module, names: Sequence[str] | None) -> dict[str, nn.Parameter]:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if names is not None:
        params = {n: params[n] for n in names if n in params}
    return params


def _graph_uses(output: torch.Tensor) -> dict[int, int]:
    """How many times each leaf tensor (by ``id``) enters the autograd graph of ``output``.

    A Linear applied once contributes one use of its weight; a weight tied to another layer, or
    also read directly in the forward, has more.
    """
    uses: dict[int, int] = {}
    if output.grad_fn is None:
        return uses
    seen = {output.grad_fn}
    stack = [output.grad_fn]
    while stack:
        node = stack.pop()
        for child, _ in node.next_functions:
            if child is None:
                continue
            leaf = getattr(child, "variable", None)  # AccumulateGrad: the leaf it feeds
            if leaf is not None:
                uses[id(leaf)] = uses.get(id(leaf), 0) + 1
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return uses


# -- the three engines ----------------------------------------------------------------------
def _identity_pass(
    model: nn.Module,
    x: torch.Tensor,
    task_id: int | None,
    make_objectives: ChunkObjectives,
    rows: torch.Tensor,
    transform: Transform,
    wanted: dict[str, nn.Parameter],
) -> tuple[dict[str, torch.Tensor], set[str], Sequence[Objective]]:
    """One forward, one backward per objective; returns sums for identity-eligible Linears
    (called once, 2-D input, weight and bias used nowhere else).

    Also returns the names of ``wanted`` parameters it could *not* handle (for the vmap path)
    and the objectives it drew (so that the vmap path uses the same labels).
    """
    phi = _phi(transform)
    ids = {id(p): n for n, p in wanted.items()}
    linears: dict[str, nn.Linear] = {}
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear) and id(module.weight) in ids:
            if module.bias is None or id(module.bias) in ids:
                linears[module_name] = module
    calls: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {n: [] for n in linears}
    handles = []
    for module_name, module in linears.items():

        def hook(
            mod: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor, key: str = module_name
        ) -> None:
            calls[key].append((inputs[0].detach(), output))

        handles.append(module.register_forward_hook(hook))
    try:
        logits = model(x, task_id)
    finally:
        for handle in handles:
            handle.remove()
    uses = _graph_uses(logits)
    eligible = {
        name: module
        for name, module in linears.items()
        if len(calls[name]) == 1
        and calls[name][0][0].dim() == 2
        and calls[name][0][1].requires_grad
        and all(uses.get(id(p), 0) == 1 for p in (module.weight, module.bias) if p is not None)
    }
    sums: dict[str, torch.Tensor] = {}
    for module in eligible.values():
        sums[ids[id(module.weight)]] = torch.zeros_like(module.weight)
        if module.bias is not None:
            sums[ids[id(module.bias)]] = torch.zeros_like(module.bias)
    outputs = [calls[name][0][1] for name in eligible]
    objectives = make_objectives(logits.detach(), rows)
    for k, (fn, aux) in enumerate(objectives):
        total = fn(logits, aux).sum()
        if not outputs:
            break
        grads = torch.autograd.grad(total, outputs, retain_graph=k < len(objectives) - 1, allow_unused=True)
        for (name, module), d in zip(eligible.items(), grads, strict=True):
            if d is None:
                continue
            a = calls[name][0][0]
            pd = phi(d)
            sums[ids[id(module.weight)]].addmm_(pd.T, phi(a))
            if module.bias is not None:
                sums[ids[id(module.bias)]].add_(pd.sum(0))
    leftover = set(wanted) - set(sums)
    return sums, leftover, objectives


def _vmap_pass(
    model: nn.Module,
    x: torch.Tensor,
    task_id: int | None,
    objectives: Sequence[Objective],
    transform: Transform,
    names: set[str],
) -> dict[str, torch.Tensor]:
    """``torch.func``: vmap over samples of the gradient of each sample's objective."""
    from torch.func import functional_call, grad, vmap

    phi = _phi(transform)
    all_params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    chosen = {n: all_params[n].detach() for n in names}
    frozen = {n: p.detach() for n, p in all_params.items() if n not in names}
    sums = {n: torch.zeros_like(p) for n, p in chosen.items()}
    for fn, aux in objectives:

        def one(params: dict[str, torch.Tensor], xi: torch.Tensor, ai: torch.Tensor, fn=fn) -> torch.Tensor:
            state = {**frozen, **params, **buffers}
            logits = functional_call(model, state, (xi.unsqueeze(0), task_id))
            return fn(logits, ai.unsqueeze(0))[0]

        per_sample = vmap(grad(one), in_dims=(None, 0, 0), randomness="error")(chosen, x, aux)
        for n, g in per_sample.items():
            sums[n] += phi(g).sum(0)
    return sums


def _loop_pass(
    model: nn.Module,
    x: torch.Tensor,
    task_id: int | None,
    objectives: Sequence[Objective],
    transform: Transform,
    names: set[str],
) -> dict[str, torch.Tensor]:
    """Reference: one forward and backward per sample and objective (slow, obviously right)."""
    phi = _phi(transform)
    params = {n: p for n, p in model.named_parameters() if n in names}
    sums = {n: torch.zeros_like(p, dtype=_accumulator(p.dtype)) for n, p in params.items()}
    for i in range(x.shape[0]):
        for fn, aux in objectives:
            value = fn(model(x[i : i + 1], task_id), aux[i : i + 1])[0]
            grads = torch.autograd.grad(value, list(params.values()), allow_unused=True)
            for n, g in zip(params, grads, strict=True):
                if g is not None:
                    sums[n] += phi(g.to(sums[n].dtype))
    return sums


def _accumulator(dtype: torch.dtype) -> torch.dtype:
    """float32 sums for half-precision parameters (their own dtype would lose the small terms)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _untraceable(error: RuntimeError) -> bool:
    """Whether ``error`` is torch.func's refusal to trace the model (not a real failure)."""
    return "vmap" in str(error) or "functorch" in str(error)


def per_sample_reduce(
    model: nn.Module,
    x: torch.Tensor,
    task_ids: torch.Tensor | int | None,
    objectives: ChunkObjectives,
    transform: Transform = "square",
    method: Method = "auto",
    names: Sequence[str] | None = None,
    chunk_size: int = 512,
) -> dict[str, torch.Tensor]:
    """``sum_n sum_k phi(d objective_k(f(x_n)) / d theta)`` for each trainable parameter.

    ``objectives(logits, rows)`` returns the per-sample objectives of the chunk ``x[rows]``
    (it may draw labels or weights from the chunk's detached logits). ``method``:
    ``identity`` (Linear layers applied once per sample; other parameters fall back to vmap,
    and to the loop where vmap cannot trace the model), ``vmap``, ``loop`` (reference);
    ``auto`` = ``identity``.
    """
    if method not in ("auto", "identity", "vmap", "loop"):
        raise ConfigError(f"unknown per-sample gradient method {method!r}: use identity, vmap or loop")
    wanted = _named_trainable(model, names)
    traceable = method != "loop"  # False once torch.func failed to trace the model: loop the rest
    totals = {n: torch.zeros_like(p, dtype=_accumulator(p.dtype)) for n, p in wanted.items()}
    was_training = model.training
    model.eval()
    try:
        for rows, task_id in _rows_per_task(x.shape[0], task_ids, x.device):
            for chunk in rows.split(chunk_size):
                xc = x[chunk]
                if method in ("loop", "vmap"):
                    with torch.no_grad():
                        chunk_objectives = objectives(model(xc, task_id), chunk)
                    engine = _loop_pass if method == "loop" else _vmap_pass
                    part = engine(model, xc, task_id, chunk_objectives, transform, set(wanted))
                else:
                    part, leftover, chunk_objectives = _identity_pass(
                        model, xc, task_id, objectives, chunk, transform, wanted
                    )
                    if leftover and traceable:
                        try:
                            part.update(_vmap_pass(model, xc, task_id, chunk_objectives, transform, leftover))
                            leftover = set()
                        except RuntimeError as error:
                            if not _untraceable(error):
                                raise
                            traceable = False
                    if leftover:
                        part.update(_loop_pass(model, xc, task_id, chunk_objectives, transform, leftover))
                for n, value in part.items():
                    totals[n] += value
    finally:
        model.train(was_training)
    return totals


def _rows_per_task(
    n: int, task_ids: torch.Tensor | int | None, device: torch.device
) -> list[tuple[torch.Tensor, int | None]]:
    rows = torch.arange(n, device=device)
    if not isinstance(task_ids, torch.Tensor):
        return [(rows, task_ids)]
    return [(rows[task_ids == t], int(t)) for t in torch.unique(task_ids).tolist()]


# -- the importances ------------------------------------------------------------------------
def _nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``-log p(label)`` per sample; a sequence's (``[B, T, C]``) sums over its positions."""
    if logits.dim() == 2:
        return F.cross_entropy(logits, labels, reduction="none")
    flat = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    return flat.view(labels.shape).flatten(1).sum(1)


def _weighted_nll(logits: torch.Tensor, weights: torch.Tensor, c: int) -> torch.Tensor:
    return -weights * F.log_softmax(logits, dim=1)[:, c]


def _squared_norm(logits: torch.Tensor, unused: torch.Tensor) -> torch.Tensor:
    """``||f(x)||_2^2`` per sample; a sequence's (``[B, T, C]``) over all its positions."""
    return logits.square().flatten(1).sum(1)


def fisher_objectives(
    kind: FisherKind,
    y: torch.Tensor | None,
    generator: torch.Generator | None,
) -> ChunkObjectives:
    """Per-sample objectives whose squared gradients, summed, give the Fisher of ``kind``.

    * ``sampled`` (Kirkpatrick et al. 2017): ``-log p(y_hat|x)``, ``y_hat ~ p(.|x)`` drawn with
      ``generator``. Masked outputs (``INACTIVE_LOGIT``) have probability exactly 0 after
      softmax in float32, so they are never drawn.
    * ``empirical``: ``-log p(y|x)`` with the data set's labels (Kunstner et al. 2019: a
      different matrix, not the Fisher).
    * ``exact``: ``sum_c p_c (d log p_c)^2`` as ``sum_c (d sqrt(p_c) log p_c)^2`` (``p_c``
      held constant), one objective per class that has non-zero probability somewhere.
    """

    def make(logits: torch.Tensor, rows: torch.Tensor) -> list[Objective]:
        probs = F.softmax(logits.float(), dim=-1)
        if kind == "sampled":
            flat = probs.reshape(-1, probs.shape[-1]).cpu()
            drawn = torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])
            return [(_nll, drawn.to(logits.device))]
        if kind == "empirical":
            if y is None:
                raise ConfigError("the empirical Fisher needs labels: use fisher='sampled'")
            return [(_nll, y[rows])]
        if logits.dim() != 2:
            raise ConfigError(
                "the exact Fisher sums over every class of one output: use fisher='sampled' for sequences"
            )
        weights = probs.sqrt()
        live = (probs > 0).any(0).nonzero().flatten().tolist()
        return [(partial(_weighted_nll, c=c), weights[:, c]) for c in live]

    return make


def fisher_diagonal(
    model: nn.Module,
    x: torch.Tensor,
    task_ids: torch.Tensor | int | None = None,
    y: torch.Tensor | None = None,
    kind: FisherKind = "sampled",
    generator: torch.Generator | None = None,
    method: Method = "auto",
    names: Sequence[str] | None = None,
    chunk_size: int = 512,
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher ``1/N sum_n g_n^2`` of ``model`` on inputs ``x`` (see module docstring).

    ``y`` (labels of ``x``) is read only by the ``empirical`` kind.
    """
    if kind not in FISHER_KINDS:
        raise ConfigError(f"unknown Fisher kind {kind!r}: use one of {', '.join(FISHER_KINDS)}")
    if x.shape[0] == 0:
        raise ConfigError("cannot estimate a Fisher from 0 samples: give fisher_samples >= 1")
    sums = per_sample_reduce(
        model, x, task_ids, fisher_objectives(kind, y, generator), "square", method, names, chunk_size
    )
    return {n: s / x.shape[0] for n, s in sums.items()}


def mas_importance(
    model: nn.Module,
    x: torch.Tensor,
    task_ids: torch.Tensor | int | None = None,
    method: Method = "auto",
    names: Sequence[str] | None = None,
    chunk_size: int = 512,
) -> dict[str, torch.Tensor]:
    """MAS (Aljundi et al. 2018, eq. 4): ``1/N sum_n |d ||f(x_n)||_2^2 / d theta|``.

    Unsupervised: no labels are read. ``f`` is the logit vector; masked (``INACTIVE_LOGIT``)
    outputs are constants and contribute no gradient.
    """
    if x.shape[0] == 0:
        raise ConfigError("cannot estimate MAS importance from 0 samples: give samples >= 1")

    def objectives(logits: torch.Tensor, rows: torch.Tensor) -> list[Objective]:
        return [(_squared_norm, logits.new_zeros(logits.shape[0]))]

    sums = per_sample_reduce(model, x, task_ids, objectives, "abs", method, names, chunk_size)
    return {n: s / x.shape[0] for n, s in sums.items()}


def sample_rows(n_available: int, n_wanted: int, generator: torch.Generator) -> torch.Tensor:
    """``min(n_wanted, n_available)`` distinct row indices drawn with ``generator`` (CPU)."""
    if n_wanted >= n_available:
        return torch.arange(n_available)
    return torch.randperm(n_available, generator=generator)[:n_wanted]
