"""Batched evaluation: one row of the accuracy matrix in a few large forward passes.

A class-incremental row comes with its task-IL twin from the same logits: for each test row of
task ``t``, the argmax over task ``t``'s own labels only (the model is told the task at test
time, as Mammoth reports it beside its class-IL accuracy).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from forgetless.data.scenarios import Scenario


def task_accuracies(
    model: nn.Module,
    scenario: Scenario,
    batch_size: int = 4096,
    tasks: list[int] | None = None,
    precision: str = "float32",
) -> np.ndarray:
    """Accuracy of ``model`` on the test set of each task in ``tasks`` (default: all).

    Inputs are scaled chunk by chunk from their compact form; correct counts stay on the device
    until the end (one synchronisation per call). ``precision``
    ``bfloat16``/``float16`` runs the forwards under autocast (faster, may flip near ties).
    The model is in eval mode meanwhile and back in its own mode afterwards, even on an error.
    """
    return accuracy_rows(model, scenario, batch_size, tasks, precision)[0]


@torch.inference_mode()
def accuracy_rows(
    model: nn.Module,
    scenario: Scenario,
    batch_size: int = 4096,
    tasks: list[int] | None = None,
    precision: str = "float32",
    task_labels: Sequence[torch.Tensor] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`task_accuracies`, and with ``task_labels`` (:meth:`Scenario.task_labels` of a
    class-IL scenario) the task-IL accuracies from the same forward passes (else ``None``)."""
    tasks = list(range(scenario.num_tasks)) if tasks is None else tasks
    device_type = scenario.tasks[tasks[0]].test_y.device.type if tasks else "cpu"
    autocast = (
        torch.autocast(device_type, dtype=getattr(torch, precision))
        if precision != "float32"
        else contextlib.nullcontext()
    )
    labels = [None] * scenario.num_tasks if task_labels is None else list(task_labels)
    was_training = model.training
    model.eval()
    try:
        with autocast:
            correct = [_task_hits(model, scenario, i, batch_size, labels[i]) for i in tasks]
    finally:
        model.train(was_training)
    columns = 1 if task_labels is None else 2
    counts = torch.stack(correct).cpu().numpy() if correct else np.zeros((0, columns))
    sizes = np.array([scenario.tasks[i].test_y.shape[0] for i in tasks], dtype=np.float64)
    rates = counts / np.maximum(sizes, 1)[:, None]
    return rates[:, 0], (rates[:, 1] if task_labels is not None else None)


def _task_hits(
    model: nn.Module,
    scenario: Scenario,
    index: int,
    batch_size: int,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Correct predictions on task ``index``'s test set, as a device tensor ``[class-IL]``, or
    ``[class-IL, task-IL]`` with ``labels`` (the task's sorted labels: the argmax among them)."""
    task = scenario.tasks[index]
    task_id = index if scenario.uses_task_id else None
    device = task.test_y.device
    hits = torch.zeros(1 if labels is None else 2, dtype=torch.int64, device=device)
    own = None if labels is None else labels.to(device)
    for start in range(0, task.test_y.shape[0], batch_size):
        x = scenario.to_float(task.test_x[start : start + batch_size])
        y = task.test_y[start : start + batch_size]
        logits = model(x, task_id)
        hits[0] += (logits.argmax(1) == y).sum()
        if own is not None:  # the argmax among the task's own outputs, mapped back to labels
            hits[1] += (own[logits.index_select(1, own).argmax(1)] == y).sum()
    return hits
