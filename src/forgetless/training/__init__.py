"""Training: the learner, batched evaluation, optimizers and schedules."""

from forgetless.training.evaluation import task_accuracies
from forgetless.training.learner import Learner, RunResult

__all__ = ["Learner", "RunResult", "task_accuracies"]
