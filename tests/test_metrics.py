"""Forgetting metrics: hand-computed cases and properties on arbitrary matrices (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from forgetless.metrics import (
    average_accuracy,
    average_forgetting,
    backward_transfer,
    forgetting_per_task,
    forward_transfer,
    intransigence,
    summarize,
)

R = np.array(
    [
        [0.9, 0.1, 0.2],
        [0.6, 0.8, 0.3],
        [0.5, 0.7, 0.95],
    ]
)


def test_hand_computed_example() -> None:
    assert average_accuracy(R) == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    assert backward_transfer(R) == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
    baseline = np.array([0.1, 0.1, 0.1])
    assert forward_transfer(R, baseline) == pytest.approx(((0.1 - 0.1) + (0.3 - 0.1)) / 2)
    assert forgetting_per_task(R) == pytest.approx([0.9 - 0.5, 0.8 - 0.7])
    assert average_forgetting(R) == pytest.approx(0.25)
    joint = np.array([0.95, 0.9, 0.97])
    assert intransigence(R, joint) == pytest.approx(((0.95 - 0.9) + (0.9 - 0.8) + (0.97 - 0.95)) / 3)


def test_forgetting_uses_best_earlier_accuracy_not_the_first() -> None:
    # task 0 peaks after task 1 (0.95), then drops to 0.5: forgetting is 0.45, BWT only -0.3
    matrix = np.array([[0.8, 0.0, 0.0], [0.95, 0.9, 0.0], [0.5, 0.9, 0.9]])
    assert forgetting_per_task(matrix)[0] == pytest.approx(0.45)
    assert backward_transfer(matrix) == pytest.approx(((0.5 - 0.8) + 0.0) / 2)


def test_single_task_has_no_transfer_or_forgetting() -> None:
    one = np.array([[0.7]])
    assert backward_transfer(one) == 0.0
    assert average_forgetting(one) == 0.0
    assert forward_transfer(one, np.array([0.1])) == 0.0


def test_rejects_non_square_matrix() -> None:
    with pytest.raises(ValueError, match="square"):
        average_accuracy(np.zeros((2, 3)))


matrices = st.integers(1, 8).flatmap(lambda t: arrays(np.float64, (t, t), elements=st.floats(0.0, 1.0)))


@settings(max_examples=200, deadline=None)
@given(matrices)
def test_properties_on_arbitrary_matrices(matrix: np.ndarray) -> None:
    t = matrix.shape[0]
    acc, bwt, forgetting = (
        average_accuracy(matrix),
        backward_transfer(matrix),
        average_forgetting(matrix),
    )
    assert 0.0 <= acc <= 1.0
    assert -1.0 <= bwt <= 1.0
    assert -1.0 <= forgetting <= 1.0  # negative when a task ends above its best earlier value
    # forgetting measures drops from the best, so it is at least as large as minus BWT
    assert forgetting >= -bwt - 1e-12
    # a model that never changes its accuracies has zero BWT and zero forgetting
    frozen = np.tile(matrix[-1], (t, 1))
    assert backward_transfer(frozen) == pytest.approx(0.0, abs=1e-12)
    assert average_forgetting(frozen) == pytest.approx(0.0, abs=1e-12)
    # FWT against the matrix's own transfer entries is exactly zero
    baseline = np.array([0.0] + [matrix[j - 1, j] for j in range(1, t)])
    assert forward_transfer(matrix, baseline) == pytest.approx(0.0, abs=1e-12)
    assert set(summarize(matrix, baseline, matrix[-1])) == {
        "acc",
        "bwt",
        "forgetting",
        "fwt",
        "intransigence",
    }


@settings(max_examples=100, deadline=None)
@given(matrices, st.floats(0.0, 0.5))
def test_uniform_drop_of_earlier_tasks_is_measured_exactly(matrix: np.ndarray, drop: float) -> None:
    t = matrix.shape[0]
    if t < 2:
        return
    diag = np.clip(np.diag(matrix), drop, 1.0)
    final = diag - drop
    m = np.zeros((t, t))
    for i in range(t):
        m[i, : i + 1] = diag[: i + 1]  # no forgetting until the last task
    m[-1, :-1] = final[:-1]
    m[-1, -1] = diag[-1]
    assert backward_transfer(m) == pytest.approx(-drop)
    assert average_forgetting(m) == pytest.approx(drop)
