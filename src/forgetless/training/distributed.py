"""Data-parallel training of ``forgetless run`` under ``torchrun`` (issue #17, item 5).

``torchrun --nproc_per_node N -m forgetless run ...`` starts N copies of the run. They form one
process group from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``): gloo on the CPU, nccl on CUDA (rank ``r`` on GPU
``LOCAL_RANK``). The design keeps every strategy unchanged and each rank's view of the run the
same as a single process's:

* **Replicated state.** Every rank builds the same scenario, model and strategies from the same
  seed and draws the same global batch indices from the run's generator. Everything a strategy
  keeps (replay buffers and their reservoir decisions, stored DER logits, Fisher/MAS/SI
  importances, anchors, A-GEM/GEM memories) is computed on every rank from the same inputs, so
  it is the same on every rank: a replay buffer is *replicated* (each rank holds the whole
  buffer: its memory is paid once per rank), with the global reservoir semantics of one process.
* **Sharded forward/backward.** Of each global batch (current rows followed by replayed ones,
  after every ``replay_batch`` hook) rank ``r`` forwards only its contiguous part
  (``torch.tensor_split``: equal parts, the first ranks one row more when the batch does not
  divide, as a task's last batch may not). The outputs (logits, features) are all-gathered, so
  every hook sees the whole batch's output exactly as in one process, and every rank computes
  the same loss ``L``. The gather's backward passes rank ``r`` its rows' gradient times ``N``;
  after ``backward`` one all-reduce averages the flat parameter gradient over the ranks:
  ``1/N sum_r (N dL/dtheta|rows of r + dL/dtheta|direct) = dL/dtheta``, the single-process
  gradient, whatever the shard sizes (a last partial batch included) and for terms that reach the
  parameters without the gathered output (penalties, a strategy's own forward), which every rank
  computes in full. GEM/A-GEM project, SI reads and PackNet masks this all-reduced gradient.
* Importance estimates (Fisher, MAS), reference gradients (A-GEM, GEM), generators (generative
  replay) and evaluation run on every rank on the same rows: identical, not sharded (correct, not
  faster). Rank 0 alone writes checkpoints and results. Since the state is replicated and the loop
  indexes global batches, a checkpoint resumes with **any** world size (2 ranks -> 1 process and
  back).

Refused under more than one process, in one line: a batch size the world size does not divide
(load balance; ``--batch-size`` a multiple of ``N``), ``--device cuda:N`` (each rank takes the GPU
of its ``LOCAL_RANK``: use ``--device cuda``), and models with BatchNorm (the statistics of a shard
are not those of the batch, and the running statistics would differ between ranks). Dropout is
allowed: its masks differ from one process's, as in any data-parallel training. At the start and
after every task the ranks check that their parameters are still identical.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from forgetless.errors import ConfigError, ForgetlessError

if TYPE_CHECKING:
    from forgetless.config import RunConfig

Forward = Callable[[nn.Module, torch.Tensor, "torch.Tensor | int | None"], tuple[torch.Tensor, "torch.Tensor | None"]]
"""The learner's training forward: ``forward(model, x, task_ids) -> (logits, features)``."""


class RanksDivergedError(ForgetlessError):
    """The ranks of a data-parallel run no longer hold the same parameters."""

    exit_code = 1


def world_size_from_env() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 outside torchrun); refused in one line if malformed."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        world = int(value)
    except ValueError:
        world = 0
    if world < 1:
        raise ConfigError(f"WORLD_SIZE={value!r} is not a positive integer: launch with torchrun --nproc_per_node N")
    return world


def check_config(config: RunConfig, world: int | None = None) -> None:
    """Refuse, before anything is built, a config that ``world`` processes cannot share."""
    world = world_size_from_env() if world is None else world
    if world == 1:
        return
    if config.batch_size % world:
        lower = config.batch_size - config.batch_size % world
        suggestion = f"{lower} or {lower + world}" if lower else f"{world}"
        raise ConfigError(
            f"--batch-size {config.batch_size} does not divide into {world} processes: "
            f"use a multiple of {world} (e.g. {suggestion}) or --nproc_per_node that divides it"
        )
    device = torch.device(config.device)
    if device.type == "cuda" and device.index is not None:
        raise ConfigError(
            f"--device {config.device} under {world} processes: use --device cuda "
            "(each process takes the GPU of its LOCAL_RANK)"
        )
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {config.device}: data-parallel runs use cpu (gloo) or cuda (nccl)")


def row_counts(n: int, world: int) -> list[int]:
    """How many of ``n`` rows each rank takes: contiguous, as equal as possible, first ranks first."""
    return [n // world + (1 if r < n % world else 0) for r in range(world)]


class SingleProcess:
    """One process: rank 0 of 1; every collective is the identity and the forward is unsharded."""

    rank = 0
    world_size = 1
    local_rank = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes files (rank 0)."""
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``tensor`` reduced over the ranks in place (``sum``, ``max`` or ``min``)."""
        return tensor

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """``tensor`` of rank ``src`` on every rank, in place."""
        return tensor

    def barrier(self) -> None:
        """Wait until every rank is here."""
        return None

    def broadcast_text(self, text: str) -> str:
        """Rank 0's ``text`` on every rank (a run folder named from rank 0's clock)."""
        return text

    def forward(
        self, forward: Forward, model: nn.Module, x: torch.Tensor, task_ids: torch.Tensor | int | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The training forward of a global batch (sharded across ranks, outputs gathered)."""
        return forward(model, x, task_ids)

    def reduce_gradients(self, model: nn.Module, flag: bool = False) -> bool:
        """Average the gradient of ``model`` over the ranks; returns whether any rank set ``flag``."""
        return flag

    def check_model(self, model: nn.Module) -> None:
        """Refuse a model that cannot be trained data-parallel; check the ranks start equal."""
        return None

    def check_in_sync(self, model: nn.Module, where: str) -> None:
        """Raise :class:`RanksDivergedError` if the ranks' parameters differ."""
        return None


class ProcessGroup(SingleProcess):
    """Rank ``rank`` of a ``torch.distributed`` process group of ``world_size`` processes."""

    def __init__(self, rank: int, world_size: int, local_rank: int, device: torch.device) -> None:
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.device = device
        """Where the collectives' own tensors live: the CPU (gloo) or this rank's GPU (nccl)."""

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        import torch.distributed as dist

        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        dist.all_reduce(tensor, op=ops[op])
        return tensor

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        import torch.distributed as dist

        dist.broadcast(tensor, src=src)
        return tensor

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def broadcast_text(self, text: str) -> str:
        data = torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8, device=self.device)
        length = self.broadcast(torch.tensor([data.numel()], device=self.device))
        if self.rank != 0:
            data = torch.zeros(int(length.item()), dtype=torch.uint8, device=self.device)
        return bytes(self.broadcast(data).tolist()).decode("utf-8")

    def forward(
        self, forward: Forward, model: nn.Module, x: torch.Tensor, task_ids: torch.Tensor | int | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        sizes = row_counts(int(x.shape[0]), self.world_size)
        start = sum(sizes[: self.rank])
        rows = slice(start, start + sizes[self.rank])
        local_ids = task_ids[rows] if isinstance(task_ids, torch.Tensor) else task_ids
        logits, features = forward(model, x[rows], local_ids)
        gathered_features = None if features is None else _GatherRows.apply(features, self, sizes)
        return _GatherRows.apply(logits, self, sizes), gathered_features

    def reduce_gradients(self, model: nn.Module, flag: bool = False) -> bool:
        """One all-reduce of every trainable parameter's gradient (zeros where a rank has none),
        one has-a-gradient count per parameter (a parameter no rank reached keeps ``grad=None``,
        as in one process) and ``flag``; the gradients are then averaged over the ranks."""
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            return bool(self.all_reduce(torch.tensor([float(flag)], device=self.device)).item())
        device = params[0].device
        parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params]
        marks = torch.tensor([p.grad is not None for p in params] + [flag], dtype=torch.float32, device=device)
        flat = torch.cat([*(part.to(device) for part in parts), marks])
        self.all_reduce(flat)
        numel = flat.shape[0] - marks.shape[0]
        grads, counts = flat[:numel].div_(self.world_size), flat[numel:].tolist()
        offset = 0
        for param, count in zip(params, counts):
            part = grads[offset : offset + param.numel()].view_as(param)
            offset += param.numel()
            if count == 0:
                continue
            if param.grad is None:
                param.grad = part.to(param.dtype).clone()
            else:
                param.grad.copy_(part)
        return counts[-1] > 0

    def check_model(self, model: nn.Module) -> None:
        batch_norm = [type(m).__name__ for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if batch_norm:
            raise ConfigError(
                f"the model has {batch_norm[0]} layers, which normalise by the statistics of a process's shard "
                f"under {self.world_size} processes (not the batch's): run it in one process, or use a model "
                "without BatchNorm (e.g. --model mlp or cnn)"
            )
        self.check_in_sync(model, "at the start (build the model from the run's seed on every rank)")

    def check_in_sync(self, model: nn.Module, where: str) -> None:
        """Compares a float64 checksum (sum and sum of squares of every parameter, and their count)
        across the ranks: one tiny all-reduce."""
        params = list(model.parameters())
        device = params[0].device if params else self.device
        total = torch.zeros(3, dtype=torch.float64, device=device)
        for p in params:
            data = p.detach().double()
            total[0] += data.sum()
            total[1] += data.square().sum()
            total[2] += p.numel()
        both = torch.cat([total, -total])
        self.all_reduce(both, "max")
        if not torch.equal(both[:3], -both[3:]):
            raise RanksDivergedError(
                f"the {self.world_size} processes of this data-parallel run hold different parameters {where}: "
                "the model or a strategy is not deterministic across ranks; run it in one process"
            )


class _GatherRows(torch.autograd.Function):
    """All-gather of each rank's rows (any sizes), in rank order; the backward gives rank ``r``
    the gradient of its rows times the world size (every rank computes the same loss on the
    gathered output, so the average of the ranks' parameter gradients is the full gradient)."""

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor, group: ProcessGroup, sizes: list[int]) -> torch.Tensor:
        import torch.distributed as dist

        ctx.rows = slice(sum(sizes[: group.rank]), sum(sizes[: group.rank + 1]))
        ctx.world = group.world_size
        width = max(sizes)
        padded = local.new_zeros((width, *local.shape[1:]))
        padded[: local.shape[0]] = local.detach()
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([part[:n] for part, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad[ctx.rows] * ctx.world, None, None


_CURRENT: list[SingleProcess] = [SingleProcess()]


def _leave(dist: Any) -> None:
    """Leave the process group at exit (torch warns about a group never destroyed)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def current() -> SingleProcess:
    """This process's place in the run: :func:`setup`'s process group, else a single process."""
    return _CURRENT[0]


def setup(device: str) -> SingleProcess:
    """Join torchrun's process group (once) when ``WORLD_SIZE`` > 1: gloo on the CPU, nccl on
    CUDA with this rank on GPU ``LOCAL_RANK``. A single process gets :class:`SingleProcess`."""
    world = world_size_from_env()
    if world == 1:
        return _CURRENT[0]
    if isinstance(_CURRENT[0], ProcessGroup):
        return _CURRENT[0]
    import torch.distributed as dist

    if not dist.is_available():
        raise ConfigError(f"WORLD_SIZE={world} but this torch has no torch.distributed: run in one process")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {local_rank} but {torch.cuda.device_count()} CUDA device(s) here: "
                "--nproc_per_node at most the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        atexit.register(_leave, dist)
    here = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    _CURRENT[0] = ProcessGroup(dist.get_rank(), dist.get_world_size(), local_rank, here)
    return _CURRENT[0]
