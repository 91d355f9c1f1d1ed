"""Replay by data mixing: every batch holds an exact share of general data.

``MixingBatchSampler`` yields index lists over ``[task rows..., general rows...]`` (the order of
:class:`MixedDataset` and of ``torch.utils.data.ConcatDataset([task, general])``) with exactly
``round(ratio * batch_size)`` general rows per batch, each source drawn without replacement in
reshuffled passes (rehearsal with a fixed mixing ratio: Robins 1995; the "mix in pre-training
data" recipe of InstructGPT's PPO-ptx, Ouyang et al. 2022). With the same objective on both
sources (causal LM), pass it to a plain ``DataLoader(ConcatDataset(...), batch_sampler=...)``.
With different objectives, :class:`SplitCollator` separates the rows into ``task`` and
``replay`` sub-batches for :class:`~forgetless.integrations.hf.trainer.ForgetlessTrainer`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from forgetless.errors import ConfigError

SOURCE_KEY = "source"


class RowsDataset(Dataset):
    """A dict of equally long tensors seen as rows (``dataset[i] -> {key: tensor[i]}``)."""

    def __init__(self, rows: dict[str, torch.Tensor]) -> None:
        lengths = {v.shape[0] for v in rows.values()}
        if len(lengths) != 1:
            raise ValueError(f"all tensors need the same number of rows, got {lengths}")
        self.rows = rows

    def __len__(self) -> int:
        return next(iter(self.rows.values())).shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[index] for k, v in self.rows.items()}


class MixedDataset(Dataset):
    """Task rows then general rows; each item carries ``source`` (0 = task, 1 = general)."""

    def __init__(self, task: Dataset, general: Dataset) -> None:
        self.task, self.general = task, general
        self.n_task = len(task)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.n_task + len(self.general)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < self.n_task:
            return {**self.task[index], SOURCE_KEY: 0}
        return {**self.general[index - self.n_task], SOURCE_KEY: 1}


class MixingBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` indices, exactly ``round(ratio * batch_size)`` of them general.

    ``num_batches`` defaults to one pass over the task rows. Resumable: ``state_dict`` holds
    the generator state, both permutations and positions, and ``drawn`` (batches drawn so far).
    A loader draws ahead of training (accelerate's loader prefetches one batch), so the state
    at the batch training has reached is :meth:`state_at` of that batch, not ``state_dict()``.
    """

    MARKS = 64
    """How many of the latest batches :meth:`state_at` can go back to."""

    def __init__(
        self, n_task: int, n_general: int, batch_size: int, ratio: float, num_batches: int | None = None, seed: int = 0
    ) -> None:
        if not 0.0 <= ratio < 1.0:
            raise ConfigError(f"replay ratio must be in [0, 1), got {ratio}")
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        self.n_general_per_batch = int(round(ratio * batch_size))
        if ratio > 0 and self.n_general_per_batch == 0:
            raise ConfigError(
                f"replay ratio {ratio} of batch size {batch_size} is 0 rows: "
                f"raise the ratio to >= {0.5 / batch_size:.3f} or the batch size"
            )
        if self.n_general_per_batch >= batch_size:
            raise ConfigError(f"replay ratio {ratio} leaves no task row in a batch of {batch_size}")
        if self.n_general_per_batch > 0 and n_general == 0:
            raise ConfigError("replay needs general data: the kept capabilities have no rows to replay")
        if n_task == 0:
            raise ConfigError("the task has no training rows")
        self.n_task, self.n_general = n_task, n_general
        self.batch_size, self.ratio = batch_size, ratio
        self.n_task_per_batch = batch_size - self.n_general_per_batch
        self.num_batches = num_batches or math.ceil(n_task / self.n_task_per_batch)
        self.generator = torch.Generator().manual_seed(seed)
        self._order = {
            "task": torch.randperm(n_task, generator=self.generator),
            "general": torch.randperm(max(n_general, 1), generator=self.generator),
        }
        self._position = {"task": 0, "general": 0}
        self.drawn = 0
        self._marks: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return self.num_batches

    def _draw(self, source: str, count: int) -> list[int]:
        size = self.n_task if source == "task" else self.n_general
        drawn: list[int] = []
        while len(drawn) < count:
            if self._position[source] == size:
                self._order[source] = torch.randperm(size, generator=self.generator)
                self._position[source] = 0
            take = min(count - len(drawn), size - self._position[source])
            start = self._position[source]
            drawn.extend(self._order[source][start : start + take].tolist())
            self._position[source] += take
        return drawn

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.num_batches):
            self._marks[self.drawn] = self.state_dict()  # cheap: permutations are replaced, not mutated
            self._marks.pop(self.drawn - self.MARKS, None)
            task = self._draw("task", self.n_task_per_batch)
            general = [self.n_task + i for i in self._draw("general", self.n_general_per_batch)]
            self.drawn += 1
            yield task + general

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "order": dict(self._order),
            "position": dict(self._position),
            "drawn": self.drawn,
        }

    def state_at(self, drawn: int) -> dict[str, Any]:
        """The state just before batch ``drawn`` (0-based) was drawn: resuming from it yields that
        batch next. ``drawn`` may be up to :attr:`MARKS` batches behind the latest one."""
        if drawn == self.drawn:
            return self.state_dict()
        if drawn not in self._marks:
            raise ValueError(f"batch {drawn} is not among the last {self.MARKS} drawn ({self.drawn} so far)")
        return self._marks[drawn]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self._order = dict(state["order"])
        self._position = dict(state["position"])
        self.drawn = int(state.get("drawn", 0))
        self._marks = {}


def _stack(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    keys = [k for k in items[0] if k != SOURCE_KEY]
    return {k: torch.stack([torch.as_tensor(item[k]) for item in items]) for k in keys}


class SplitCollator:
    """Collate a mixed batch into ``{"task": {...}, "replay": {...}}`` (replay only if present).

    ``task_collate`` (default: stack tensors) builds the task part, e.g. adding ``labels``;
    ``replay_collate`` (default: stack tensors) the replay part (a sequence of fine-tunes replays
    rows of several sources, each with its own keys: :class:`~forgetless.integrations.hf.
    sequence.ReplayPool`).
    """

    def __init__(self, task_collate: Any = None, replay_collate: Any = None) -> None:
        self.task_collate = task_collate or _stack
        self.replay_collate = replay_collate or _stack

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        task = [item for item in items if item.get(SOURCE_KEY, 0) == 0]
        general = [item for item in items if item.get(SOURCE_KEY, 0) == 1]
        batch: dict[str, Any] = {
            "task": self.task_collate([{k: v for k, v in item.items() if k != SOURCE_KEY} for item in task])
        }
        if general:
            batch["replay"] = self.replay_collate(general)
        return batch
