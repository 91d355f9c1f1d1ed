"""Behaviour on real data: naive fine-tuning forgets on class-IL Split Fashion-MNIST, joint does not."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import requires_fmnist
from forgetless.config import make_config
from forgetless.metrics import average_accuracy, backward_transfer
from forgetless.training.experiment import run_experiment

pytestmark = [pytest.mark.slow, requires_fmnist]


def test_naive_forgets_class_il_split_fmnist_and_joint_does_not() -> None:
    config = make_config(benchmark="split-fmnist", scenario="class", strategies=["naive", "joint"], threads=1)
    result = run_experiment(config)
    naive, joint = result.runs["naive"][0].matrix, result.runs["joint"][0].matrix
    print("naive", np.round(naive, 3), "joint", np.round(joint, 3), sep="\n")
    assert np.diag(naive).min() > 0.9  # every task is learnt...
    assert backward_transfer(naive) < -0.8  # ...and then overwritten
    assert abs(average_accuracy(naive) - 1 / 5) < 0.05
    assert average_accuracy(joint) > 0.8


def test_task_il_with_seeds_reports_mean_and_std() -> None:
    config = make_config(benchmark="split-fmnist", scenario="task", strategies=["naive"], seeds=2, threads=1)
    result = run_experiment(config)
    summary = result.summary()["naive"]
    assert len(result.runs["naive"]) == 2
    assert summary["acc"]["mean"] > 0.8  # task-IL forgets far less: only 2-way choices
    assert summary["acc"]["std"] >= 0.0
