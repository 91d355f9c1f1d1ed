"""Forgetting metrics computed from the accuracy matrix.

``R[i, j]`` is the accuracy on task ``j`` after training on tasks ``0..i`` (``T x T``). Every
function takes that matrix as a NumPy array; entries for tasks not yet trained are allowed (they
are needed by forward transfer) but ignored where a formula does not use them.
"""

from __future__ import annotations

import numpy as np


def _check(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"the accuracy matrix must be square and non-empty, got {matrix.shape}")
    return matrix


def average_accuracy(matrix: np.ndarray) -> float:
    """ACC = (1/T) sum_j R[T-1, j]: mean accuracy over all tasks after the last one."""
    matrix = _check(matrix)
    return float(matrix[-1].mean())


def backward_transfer(matrix: np.ndarray) -> float:
    """BWT = 1/(T-1) sum_{j<T-1} (R[T-1, j] - R[j, j]) (Lopez-Paz & Ranzato 2017, eq. 3).

    Negative values are forgetting. Zero by definition for a single task.
    """
    matrix = _check(matrix)
    t = matrix.shape[0]
    if t == 1:
        return 0.0
    return float(np.mean(matrix[-1, :-1] - np.diag(matrix)[:-1]))


def forward_transfer(matrix: np.ndarray, baseline: np.ndarray) -> float:
    """FWT = 1/(T-1) sum_{j>=1} (R[j-1, j] - b_j) (Lopez-Paz & Ranzato 2017, eq. 4).

    ``b_j`` is the accuracy on task ``j`` of the *randomly initialised* model (before any
    training, same seed): positive FWT means earlier tasks helped a task before it was trained.
    In class-incremental learning the outputs of unseen classes are inactive, so both terms are 0.
    """
    matrix = _check(matrix)
    baseline = np.asarray(baseline, dtype=np.float64)
    t = matrix.shape[0]
    if baseline.shape != (t,):
        raise ValueError(f"baseline must have one accuracy per task ({t}), got {baseline.shape}")
    if t == 1:
        return 0.0
    return float(np.mean([matrix[j - 1, j] - baseline[j] for j in range(1, t)]))


def forgetting_per_task(matrix: np.ndarray) -> np.ndarray:
    """f_j = max_{l in [j, T-2]} R[l, j] - R[T-1, j] for j < T-1 (Chaudhry et al. 2018, eq. 2).

    The drop of each earlier task from the best accuracy it ever had to its final accuracy.
    """
    matrix = _check(matrix)
    t = matrix.shape[0]
    return np.array([matrix[j : t - 1, j].max() - matrix[-1, j] for j in range(t - 1)])


def average_forgetting(matrix: np.ndarray) -> float:
    """F = 1/(T-1) sum_{j<T-1} f_j (Chaudhry et al. 2018, eq. 3). Zero for a single task."""
    per_task = forgetting_per_task(matrix)
    return float(per_task.mean()) if per_task.size else 0.0


def intransigence(matrix: np.ndarray, joint_accuracy: np.ndarray) -> float:
    """I = (1/T) sum_k (a*_k - R[k, k]) (Chaudhry et al. 2018, eq. 4).

    ``a*_k`` is the accuracy on task ``k`` of a model trained jointly on all tasks (the
    ``joint`` strategy): how much a method's inability to learn new tasks costs.
    """
    matrix = _check(matrix)
    joint_accuracy = np.asarray(joint_accuracy, dtype=np.float64)
    return float(np.mean(joint_accuracy - np.diag(matrix)))


def summarize(
    matrix: np.ndarray, baseline: np.ndarray | None = None, joint: np.ndarray | None = None
) -> dict[str, float]:
    """All scalar metrics of one run, in one dict (keys: acc, bwt, fwt, forgetting, intransigence)."""
    out = {
        "acc": average_accuracy(matrix),
        "bwt": backward_transfer(matrix),
        "forgetting": average_forgetting(matrix),
    }
    if baseline is not None:
        out["fwt"] = forward_transfer(matrix, baseline)
    if joint is not None:
        out["intransigence"] = intransigence(matrix, joint)
    return out
