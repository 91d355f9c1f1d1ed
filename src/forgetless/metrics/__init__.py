"""Forgetting metrics: average accuracy, BWT, FWT, forgetting, intransigence."""

from forgetless.metrics.forgetting import (
    average_accuracy,
    average_forgetting,
    backward_transfer,
    forgetting_per_task,
    forward_transfer,
    intransigence,
    summarize,
)

__all__ = [
    "average_accuracy",
    "average_forgetting",
    "backward_transfer",
    "forgetting_per_task",
    "forward_transfer",
    "intransigence",
    "summarize",
]
