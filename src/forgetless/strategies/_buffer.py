"""The memory buffer shared by every replay strategy (ER, GEM, A-GEM, DER, DER++).

A fixed budget of ``capacity`` samples, filled by one of two selection rules:

* ``"reservoir"``: Vitter's algorithm R (Vitter 1985): sample ``t`` of the stream (0-based)
  goes to slot ``t`` while the buffer is not full, else to slot ``j ~ U{0..t}`` when
  ``j < capacity``. Every sample seen so far is then held with probability ``capacity / seen``.
  A batch is processed at once with tensor ops (one draw per row, the last writer of a slot
  wins, exactly as if the rows came one by one).
* ``"balanced"``: class-balanced selection. Each sample carries a group (its class, or its task
  for GEM) and a random priority. After every batch, the budget is shared out between the groups
  by water-filling (every group gets the same quota, within one, unless it has fewer samples),
  so the largest groups are the ones that lose rows; within a group the rows with the lowest
  priorities stay, a uniform random subset of that group's stream (bottom-k sampling).

Rows are offered after every step (``fill="step"``), or, as Avalanche fills its buffers, all of a
task's rows once the task is trained (``fill="task-end"``, DER's with the trained model's logits).

Inputs are stored in the dtype they arrive in (``uint8`` images stay ``uint8``), with labels,
task indices, and optionally the logits at insertion time (DER) and the number of outputs that
were active then. Sampling is index slicing; the buffer owns a seeded ``torch.Generator`` whose
state is part of :meth:`MemoryBuffer.state_dict`, so a resumed run draws the same samples.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from forgetless.errors import ConfigError
from forgetless.models.heads import INACTIVE_LOGIT
from forgetless.strategies.base import Batch, ModelOutput, Strategy, TrainingContext

Selection = Literal["reservoir", "balanced"]
_FIELDS = ("inputs", "labels", "tasks", "groups", "priorities", "logits", "active")


@dataclass
class BufferSample:
    """Rows drawn from the buffer (compact inputs; ``logits``/``active`` only for DER)."""

    inputs: torch.Tensor
    labels: torch.Tensor
    tasks: torch.Tensor
    logits: torch.Tensor | None
    active: torch.Tensor | None
    indices: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to_batch(self, ctx: TrainingContext, augmented: bool = True) -> Batch:
        """A model-ready :class:`Batch` (augmented as training rows are, unless told not to);
        task ids go along only where the scenario uses them."""
        task_ids = self.tasks if ctx.scenario.uses_task_id else None
        x = ctx.training_inputs(self.inputs) if augmented else ctx.prepare(self.inputs)
        return Batch(x, self.labels, task_ids, self.inputs)


def active_outputs(logits: torch.Tensor) -> torch.Tensor:
    """Per row, how many leading outputs are live (masked outputs sit at the end, see heads)."""
    return (logits > INACTIVE_LOGIT / 2).sum(dim=1)


def masked_logit_mse(
    live: torch.Tensor, stored: torch.Tensor, active: torch.Tensor, over: Literal["full", "active"] = "active"
) -> torch.Tensor:
    """Squared error between ``live`` and ``stored`` logits on the outputs active at storage.

    Outputs masked at insertion (classes not seen yet, padding of narrow task heads) hold
    ``INACTIVE_LOGIT`` and are left out: comparing them would pull live outputs to -1e4.
    ``over="active"`` averages over the entries compared; ``over="full"`` over every entry of the
    ``[rows, outputs]`` block, the ones left out counting as zero (mammoth's
    ``F.mse_loss(buf_outputs, buf_logits)`` when every output is compared).
    """
    width = min(live.shape[1], stored.shape[1])
    live, stored = live[:, :width], stored[:, :width]
    mask = torch.arange(width, device=live.device)[None, :] < active[:, None]
    squared = (live - stored).pow(2) * mask
    count = mask.sum().clamp_min(1) if over == "active" else max(squared.numel(), 1)
    return squared.sum() / count


def balanced_quotas(available: torch.Tensor, capacity: int, current: torch.Tensor) -> torch.Tensor:
    """Water-filling: share ``capacity`` slots between groups holding ``available`` candidates.

    Groups with fewer candidates than the fair share keep them all; the others get the fair
    share of what is left, the remainder going one each to the groups that hold most rows now
    (``current``), so that a full buffer changes as little as possible. The loop runs over
    groups, never over samples.
    """
    quotas = torch.zeros_like(available)
    remaining = min(capacity, int(available.sum()))
    order = torch.argsort(available, stable=True).tolist()
    for position, group in enumerate(order):
        share = remaining // (len(order) - position)
        if int(available[group]) <= share:
            quotas[group] = available[group]
            remaining -= int(available[group])
            continue
        rest = torch.tensor(order[position:])
        quotas[rest] = share
        extra = remaining - share * len(rest)
        if extra:
            favoured = rest[torch.argsort(-current[rest], stable=True)][:extra]
            quotas[favoured] += 1
        break
    return quotas


class MemoryBuffer:
    """Fixed-budget sample memory with reservoir or group-balanced selection.

    >>> buffer = MemoryBuffer(500, seed=0)
    >>> buffer.add(raw, labels, tasks)              # compact inputs, e.g. uint8 images
    >>> sample = buffer.sample(32)                  # BufferSample, rows drawn without replacement
    """

    def __init__(
        self,
        capacity: int,
        selection: Selection = "reservoir",
        seed: int = 0,
        num_groups: int | None = None,
    ):
        if capacity <= 0:
            raise ConfigError(f"buffer size must be positive, got {capacity}: set --buffer-size N")
        if selection not in ("reservoir", "balanced"):
            raise ConfigError(f"unknown buffer selection {selection!r}: use reservoir or balanced")
        if selection == "balanced" and num_groups is not None and capacity < num_groups:
            raise ConfigError(
                f"a class-balanced buffer of {capacity} samples cannot hold one sample of each of "
                f"{num_groups} classes: raise --buffer-size to at least {num_groups}"
            )
        self.capacity = capacity
        self.selection = selection
        self.seen = 0
        self.size = 0
        self.generator = torch.Generator().manual_seed(seed)
        self.inputs: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.tasks: torch.Tensor | None = None
        self.groups: torch.Tensor | None = None
        self.priorities: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None
        self.active: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.size

    # -- storage -------------------------------------------------------------------------
    def _allocate(self, inputs: torch.Tensor, logits: torch.Tensor | None) -> None:
        cap, device = self.capacity, inputs.device
        self.inputs = inputs.new_zeros((cap, *inputs.shape[1:]))
        self.labels = torch.zeros(cap, dtype=torch.int64, device=device)
        self.tasks = torch.zeros(cap, dtype=torch.int64, device=device)
        if self.selection == "balanced":
            self.groups = torch.zeros(cap, dtype=torch.int64, device=device)
            self.priorities = torch.zeros(cap, dtype=torch.float32)
        if logits is not None:
            self.logits = torch.zeros((cap, logits.shape[1]), dtype=torch.float32, device=device)
            self.active = torch.zeros(cap, dtype=torch.int64, device=device)

    def _write(
        self,
        slots: torch.Tensor,
        rows: torch.Tensor,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        tasks: torch.Tensor,
        logits: torch.Tensor | None,
    ) -> None:
        self.inputs[slots] = inputs[rows]
        self.labels[slots] = labels[rows]
        self.tasks[slots] = tasks[rows]
        if self.logits is not None:
            if logits is None:
                raise ValueError("this buffer stores logits: pass them to add()")
            kept = logits[rows].detach().float()
            self.logits[slots] = kept
            self.active[slots] = active_outputs(kept)

    def add(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        tasks: torch.Tensor | int,
        logits: torch.Tensor | None = None,
        groups: torch.Tensor | None = None,
    ) -> None:
        """Offer a batch of stream samples to the buffer (compact ``inputs``, dtype kept).

        ``logits`` (the model's outputs when the samples were seen) are stored for DER;
        ``groups`` (class or task of each row) is required by balanced selection.
        """
        n = int(labels.shape[0])
        if n == 0:
            return
        if self.inputs is None:
            self._allocate(inputs, logits)
        if isinstance(tasks, int):
            tasks = torch.full_like(labels, tasks)
        if self.selection == "reservoir":
            self._add_reservoir(inputs, labels, tasks, logits)
        else:
            if groups is None:
                raise ValueError("balanced selection needs the group (class) of every row")
            self._add_balanced(inputs, labels, tasks, logits, groups)
        self.seen += n

    def _add_reservoir(self, inputs, labels, tasks, logits) -> None:
        """Algorithm R for a whole batch: one uniform draw per row, last writer of a slot wins."""
        n = int(labels.shape[0])
        position = self.seen + torch.arange(n)  # 0-based stream index of each row
        draw = torch.rand(n, generator=self.generator, dtype=torch.float64) * (position + 1)
        draw = torch.minimum(draw.long(), position)  # j ~ U{0..t}; guard float rounding
        slots = torch.where(position < self.capacity, position, draw)
        accepted = slots < self.capacity
        rows = torch.nonzero(accepted).squeeze(1)
        slots = slots[rows]
        # several rows of one batch may draw the same slot: keep the last one, as a loop would
        unique, inverse = torch.unique(slots, return_inverse=True)
        last = torch.full((len(unique),), -1, dtype=torch.int64)
        last.scatter_reduce_(0, inverse, torch.arange(len(rows)), reduce="amax")
        rows, slots = rows[last], unique
        dev = self.labels.device
        self._write(slots.to(dev), rows.to(dev), inputs, labels, tasks, logits)
        self.size = min(self.capacity, self.seen + n)

    def _add_balanced(self, inputs, labels, tasks, logits, groups) -> None:
        """Keep a group-balanced selection of stored + incoming rows (bottom-k per group)."""
        n = int(labels.shape[0])
        size = self.size
        priorities = torch.rand(n, generator=self.generator)
        groups_cpu = groups.detach().to("cpu", torch.int64)
        pool_groups = torch.cat([self.groups[:size].cpu(), groups_cpu])
        pool_priorities = torch.cat([self.priorities[:size], priorities])
        num_groups = int(pool_groups.max()) + 1
        available = torch.bincount(pool_groups, minlength=num_groups)
        current = torch.bincount(pool_groups[:size], minlength=num_groups)
        quotas = balanced_quotas(available, self.capacity, current)
        # rank of each candidate inside its group by priority: sort by priority, then by group
        order = torch.argsort(pool_priorities, stable=True)
        order = order[torch.argsort(pool_groups[order], stable=True)]
        starts = torch.cumsum(available, 0) - available
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order)) - starts[pool_groups[order]]
        keep = rank < quotas[pool_groups]
        evicted = torch.nonzero(~keep[:size]).squeeze(1)
        incoming = torch.nonzero(keep[size:]).squeeze(1)
        free = torch.arange(size, self.capacity)
        slots = torch.cat([evicted, free])[: len(incoming)]
        dev = self.labels.device
        self._write(slots.to(dev), incoming.to(dev), inputs, labels, tasks, logits)
        self.groups[slots.to(dev)] = groups[incoming.to(groups.device)].to(dev)
        self.priorities[slots] = priorities[incoming]
        self.size = size + max(0, len(incoming) - len(evicted))

    # -- reading -------------------------------------------------------------------------
    def candidates(self, before_task: int | None = None) -> torch.Tensor | None:
        """Indices of stored rows from tasks before ``before_task`` (``None``: every row)."""
        if before_task is None:
            return None
        if self.tasks is None:
            return torch.zeros(0, dtype=torch.int64)
        return torch.nonzero(self.tasks[: self.size] < before_task).squeeze(1)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        before_task: int | None = None,
    ) -> BufferSample | None:
        """Up to ``n`` stored rows drawn without replacement (``None`` when nothing qualifies).

        ``before_task`` restricts the draw to rows of earlier tasks (GEM, A-GEM).
        """
        pool = self.candidates(before_task)
        count = self.size if pool is None else int(pool.shape[0])
        if count == 0:
            return None
        generator = generator or self.generator
        pick = torch.randperm(count, generator=generator)[: min(n, count)]
        index = pick if pool is None else pool[pick.to(pool.device)]
        return self.take(index.to(self.labels.device))

    def take(self, index: torch.Tensor) -> BufferSample:
        """The stored rows at ``index`` (index slicing, no per-sample Python)."""
        return BufferSample(
            self.inputs[index],
            self.labels[index],
            self.tasks[index],
            None if self.logits is None else self.logits[index],
            None if self.active is None else self.active[index],
            index,
        )

    def group_counts(self) -> torch.Tensor:
        """Rows held per group (balanced selection) or per label (reservoir)."""
        key = self.groups if self.groups is not None else self.labels
        if key is None or self.size == 0:
            return torch.zeros(0, dtype=torch.int64)
        return torch.bincount(key[: self.size].cpu())

    def bytes_per_sample(self) -> int:
        """Bytes one slot takes across every stored field (inputs, labels, logits, ...)."""
        total = 0
        for name in _FIELDS:
            tensor = getattr(self, name)
            if tensor is not None:
                total += tensor[0].numel() * tensor.element_size()
        return total

    def memory_bytes(self) -> int:
        """Bytes held by the buffer's preallocated storage: ``capacity x bytes_per_sample``."""
        return sum(t.numel() * t.element_size() for t in (getattr(self, f) for f in _FIELDS) if t is not None)

    def report(self) -> dict[str, Any]:
        input_bytes = 0 if self.inputs is None else self.inputs[0].numel() * self.inputs.element_size()
        return {
            "buffer_capacity": self.capacity,
            "buffer_size": self.size,
            "buffer_seen": self.seen,
            "buffer_bytes": self.memory_bytes(),
            "buffer_bytes_per_sample": self.bytes_per_sample(),
            "buffer_input_bytes_per_sample": input_bytes,
        }

    # -- checkpointing -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "capacity": self.capacity,
            "selection": self.selection,
            "seen": self.seen,
            "size": self.size,
            "generator": self.generator.get_state(),
        }
        for name in _FIELDS:
            tensor = getattr(self, name)
            if tensor is not None:
                state[name] = tensor.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["capacity"]) != self.capacity or state["selection"] != self.selection:
            raise ConfigError(
                f"checkpoint buffer ({state['capacity']} samples, {state['selection']}) does not "
                f"match this run ({self.capacity}, {self.selection}): resume with the same settings"
            )
        self.seen, self.size = int(state["seen"]), int(state["size"])
        if not 0 <= self.size <= min(self.capacity, self.seen):
            raise ValueError(f"buffer size {self.size} is not within the capacity and the rows seen ({self.seen})")
        self.generator.set_state(state["generator"].clone())
        for name in _FIELDS:
            setattr(self, name, state[name].clone() if name in state else None)
        self._check_fields()

    def _check_fields(self) -> None:
        """Loaded tensors as :meth:`_allocate` makes them: one row per slot, integer labels,
        tasks, groups and active counts, float logits and priorities."""
        for name in _FIELDS:
            tensor = getattr(self, name)
            if tensor is None:
                continue
            if tensor.dim() == 0 or tensor.shape[0] != self.capacity:
                raise ValueError(f"buffer {name} has shape {list(tensor.shape)}, not {self.capacity} rows")
            wants_float = name in ("logits", "priorities")
            if name != "inputs" and tensor.is_floating_point() != wants_float:
                raise ValueError(f"buffer {name} has dtype {tensor.dtype}")
            if name in ("labels", "tasks", "groups", "active") and tensor.dim() != 1:
                raise ValueError(f"buffer {name} has shape {list(tensor.shape)}, not one value per row")


def run_seed(ctx: TrainingContext, offset: int) -> int:
    """A seed derived from the run's seed without drawing from (and so shifting) its generator."""
    return (ctx.generator.initial_seed() * 1_000_003 + offset) % (2**63)


def num_classes(ctx: TrainingContext) -> int:
    """Distinct (task, label) groups of the stream, the unit of class-balanced selection."""
    scenario = ctx.scenario
    if scenario.kind == "class":
        return scenario.head_sizes[0]
    if scenario.kind == "task":
        return sum(scenario.head_sizes)
    return scenario.head_sizes[0] * scenario.num_tasks


def class_groups(ctx: TrainingContext, labels: torch.Tensor) -> torch.Tensor:
    """Group of each row for class balance: the global label, or (task, label) where labels
    are local to a task (task- and domain-IL)."""
    scenario = ctx.scenario
    if scenario.kind == "class":
        return labels
    offset = ctx.task_index * max(scenario.head_sizes)
    return labels + offset


# -- the part every buffer-based strategy shares -----------------------------------------------


class BufferParams(BaseModel):
    """Hyperparameters of every buffer-based strategy (``--buffer-size`` fills ``buffer_size``)."""

    model_config = ConfigDict(extra="forbid")

    buffer_size: int = Field(500, ge=1, description="memory budget in samples (all tasks)")
    selection: Selection = Field("reservoir", description="reservoir (Vitter's algorithm R) or balanced (per class)")
    replay_batch_size: int | None = Field(
        None, ge=1, description="rows drawn from the buffer per step (default: --batch-size)"
    )
    fill: Literal["step", "task-end"] = Field(
        "step",
        description="offer each batch's rows after its step (step), or the whole task's rows after the task, "
        "with the trained model's logits (task-end, Avalanche's)",
    )


class ReplayStrategy(Strategy):
    """Base of the buffer-based strategies: owns the buffer, fills it after every step.

    Subclasses set ``store_logits`` (DER) or override :meth:`groups` (GEM balances by task).
    """

    Params: ClassVar[type[BaseModel]] = BufferParams
    store_logits: ClassVar[bool] = False
    buffer: MemoryBuffer

    def _selection(self) -> Selection:
        return self.params.selection

    def _fill(self) -> str:
        """``fill`` of :class:`BufferParams` (``step`` for a strategy whose parameters lack it)."""
        return getattr(self.params, "fill", "step")

    def _num_groups(self, ctx: TrainingContext) -> int:
        return num_classes(ctx)

    def groups(self, ctx: TrainingContext, labels: torch.Tensor) -> torch.Tensor:
        """The balance group of each current row (its class; GEM uses the task)."""
        return class_groups(ctx, labels)

    def setup(self, ctx: TrainingContext) -> None:
        selection = self._selection()
        self.buffer = MemoryBuffer(
            self.params.buffer_size,
            selection,
            seed=run_seed(ctx, zlib.crc32(self.name.encode())),
            num_groups=self._num_groups(ctx) if selection == "balanced" else None,
        )
        return None

    def replay_size(self, ctx: TrainingContext) -> int:
        return self.params.replay_batch_size or ctx.config.batch_size

    def draw(self, ctx: TrainingContext, before_task: int | None = None) -> BufferSample | None:
        """A replay sample of :meth:`replay_size` rows (``None`` while the buffer is empty)."""
        return self.buffer.sample(self.replay_size(ctx), before_task=before_task)

    def after_step(self, ctx: TrainingContext, batch: Batch, output: ModelOutput) -> bool:
        """Offer the current task's rows of this batch (never replayed rows) to the buffer."""
        if self._fill() == "task-end":
            return False
        if batch.raw is None:
            raise ConfigError(
                f"{self.name} needs the compact inputs of each batch, but a strategy before it "
                f"replayed rows without them: put {self.name} first in the combination"
            )
        rows = ctx.current_size
        labels = batch.y[:rows]
        self.buffer.add(
            batch.raw[:rows],
            labels,
            ctx.task_index,
            logits=output.logits[:rows].detach() if self.store_logits else None,
            groups=self.groups(ctx, labels) if self.buffer.selection == "balanced" else None,
        )
        return False

    def after_task(self, ctx: TrainingContext) -> None:
        """``fill="task-end"``: offer every training row of the task at once, DER's with the logits
        of the model as trained on it (eval mode, no augmentation), as Avalanche's replay
        strategies fill their buffers after each experience."""
        if self._fill() != "task-end":
            return
        task = ctx.scenario.tasks[ctx.task_index]
        logits = self.task_logits(ctx, task.train_x) if self.store_logits else None
        labels = task.train_y
        groups = self.groups(ctx, labels) if self.buffer.selection == "balanced" else None
        self.buffer.add(task.train_x, labels, ctx.task_index, logits=logits, groups=groups)

    def task_logits(self, ctx: TrainingContext, raw: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """The model's logits on the compact rows ``raw`` (eval mode, no gradient, in chunks)."""
        model, task_id = ctx.model, ctx.task_id(ctx.task_index)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                parts = [model(ctx.prepare(raw[i : i + chunk]), task_id) for i in range(0, len(raw), chunk)]
        finally:
            model.train(was_training)
        return torch.cat(parts).to(raw.device)

    def report(self) -> dict[str, Any]:
        return self.buffer.report()

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict[str, Any], ctx: TrainingContext) -> None:
        self.buffer.load_state_dict(state["buffer"])


def has_batch_norm(model: nn.Module) -> bool:
    """Whether ``model`` normalises by batch statistics (rows in one forward interact)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
