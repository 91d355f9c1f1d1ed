"""Batched evaluation: one row of the accuracy matrix in a few large forward passes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from forgetless.data.scenarios import Scenario

Predict = Callable[[torch.Tensor, int], torch.Tensor]


@torch.inference_mode()
def task_accuracies(
    model: nn.Module,
    scenario: Scenario,
    batch_size: int = 4096,
    predict: Predict | None = None,
    tasks: list[int] | None = None,
    precision: str = "float32",
) -> np.ndarray:
    """Accuracy of ``model`` on the test set of each task in ``tasks`` (default: all).

    Inputs are scaled chunk by chunk from their compact form; correct counts stay on the device
    until the end (one synchronisation per call). ``predict(x, task_index)`` replaces the
    model's forward where a strategy changes evaluation-time behaviour. ``precision``
    ``bfloat16``/``float16`` runs the forwards under autocast (faster, may flip near ties).
    The model is in eval mode meanwhile and back in its own mode afterwards, even on an error.
    """
    tasks = list(range(scenario.num_tasks)) if tasks is None else tasks
    device_type = scenario.tasks[tasks[0]].test_y.device.type if tasks else "cpu"
    autocast = (
        torch.autocast(device_type, dtype=getattr(torch, precision))
        if precision != "float32"
        else contextlib.nullcontext()
    )
    was_training = model.training
    model.eval()
    try:
        with autocast:
            correct = [_task_hits(model, scenario, index, batch_size, predict) for index in tasks]
    finally:
        model.train(was_training)
    counts = torch.stack(correct).cpu().numpy() if correct else np.zeros(0)
    sizes = np.array([scenario.tasks[i].test_y.shape[0] for i in tasks], dtype=np.float64)
    return counts / np.maximum(sizes, 1)


def _task_hits(
    model: nn.Module, scenario: Scenario, index: int, batch_size: int, predict: Predict | None
) -> torch.Tensor:
    """Correct predictions on task ``index``'s test set, as a device scalar."""
    task = scenario.tasks[index]
    task_id = index if scenario.uses_task_id else None
    hits = torch.zeros((), dtype=torch.int64, device=task.test_y.device)
    for start in range(0, task.test_y.shape[0], batch_size):
        x = scenario.to_float(task.test_x[start : start + batch_size])
        logits = predict(x, index) if predict is not None else model(x, task_id)
        hits += (logits.argmax(1) == task.test_y[start : start + batch_size]).sum()
    return hits
