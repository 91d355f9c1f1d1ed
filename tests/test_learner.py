"""The learner: determinism, hook composition, joint training, evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forgetless.config import make_config
from forgetless.strategies import Batch, Strategy, TrainingContext
from forgetless.strategies.base import ModelOutput
from forgetless.training.evaluation import task_accuracies
from forgetless.training.experiment import build_learner, load_scenario, resolve, run_experiment


def digits_config(**overrides):
    values = dict(benchmark="split-digits", strategies=["naive"], epochs=3, threads=1)
    values.update(overrides)
    return resolve(make_config(**values))


def test_same_seed_same_accuracy_matrix_and_different_seed_differs() -> None:
    config = digits_config()
    first = run_experiment(config).runs["naive"][0].matrix
    second = run_experiment(config).runs["naive"][0].matrix
    assert np.array_equal(first, second)
    other = run_experiment(digits_config(seed=1)).runs["naive"][0].matrix
    assert not np.array_equal(first, other)


def test_naive_forgets_and_joint_does_not_on_class_il_digits() -> None:
    result = run_experiment(digits_config(strategies=["naive", "joint"], epochs=20))
    naive, joint = result.runs["naive"][0].matrix, result.runs["joint"][0].matrix
    # naive: each task learnt, then overwritten by the next (class-IL)
    assert np.diag(naive).min() > 0.9
    assert naive[-1, :-1].max() < 0.2
    assert joint[-1].mean() > 0.9
    # joint trains once, on every task: each row is the same model
    assert np.allclose(joint, joint[-1])


class Recorder(Strategy):
    """A test strategy that uses every hook and records what the learner does with its output."""

    name = "recorder"

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}
        self.batch_sizes: list[int] = []

    def _count(self, hook: str) -> None:
        self.calls[hook] = self.calls.get(hook, 0) + 1

    def before_task(self, ctx: TrainingContext) -> None:
        self._count("before_task")

    def replay_batch(self, ctx: TrainingContext, batch: Batch) -> Batch:
        self._count("replay_batch")
        return Batch(batch.x[:3], batch.y[:3], batch.task_ids, batch.raw[:3])

    def loss(self, ctx: TrainingContext, batch: Batch, output: ModelOutput) -> torch.Tensor:
        self._count("loss")
        self.batch_sizes.append(len(batch))
        assert ctx.current_size == len(batch) - 3
        return output.logits.sum() * 0.0

    def project_gradient(self, ctx, batch, gradient):
        self._count("project_gradient")
        n_params = sum(p.numel() for p in ctx.model.parameters() if p.grad is not None)
        assert gradient.vector.shape == (n_params,) and gradient.layout.numel == n_params
        return torch.zeros_like(gradient.vector)  # no update at all

    def after_task(self, ctx: TrainingContext) -> None:
        self._count("after_task")


def test_hooks_are_called_and_their_results_used() -> None:
    config = digits_config(epochs=1, tasks=2)
    scenario = load_scenario(config, 0)
    learner = build_learner(config, scenario, "naive", 0)
    recorder = Recorder()
    learner.strategies.append(recorder)
    learner.hooks = {h: [s for s in learner.strategies if type(s).overrides(h)] for h in learner.hooks}
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    learner.run()
    steps = sum(learner.result.steps)
    assert recorder.calls["before_task"] == recorder.calls["after_task"] == 2
    assert recorder.calls["replay_batch"] == recorder.calls["loss"] == steps
    assert recorder.calls["project_gradient"] == steps
    assert recorder.batch_sizes[0] == 128 + 3
    # a zeroed gradient means Adam never moved any weight
    after = learner.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_batched_evaluation_equals_per_sample_evaluation() -> None:
    config = digits_config(scenario="task", tasks=3)
    scenario = load_scenario(config, 0)
    learner = build_learner(config, scenario, "naive", 0)
    learner.run()
    batched = task_accuracies(learner.model, scenario, batch_size=7)
    model = learner.model.eval()
    slow = []
    with torch.no_grad():
        for task in scenario.tasks:
            hits = 0
            for x, y in zip(task.test_x, task.test_y):
                logits = model(scenario.to_float(x[None]), task.index)
                hits += int(logits.argmax(1).item() == y.item())
            slow.append(hits / len(task.test_y))
    assert np.allclose(batched, slow)
    assert np.allclose(learner.result.matrix[-1], slow)


def test_reduced_precision_evaluation_agrees_with_float32_and_is_used_by_the_learner() -> None:
    """``eval_precision=bfloat16`` (autocast) changes at most a few near-tied predictions."""
    config = digits_config(scenario="class", tasks=5, eval_precision="bfloat16")
    scenario = load_scenario(config, 0)
    learner = build_learner(config, scenario, "naive", 0)
    calls = []
    real_autocast = torch.autocast

    def spy(*args, **kwargs):
        calls.append(kwargs.get("dtype"))
        return real_autocast(*args, **kwargs)

    torch.autocast = spy
    try:
        learner.run()
    finally:
        torch.autocast = real_autocast
    assert calls and set(calls) == {torch.bfloat16}  # the learner's evaluations ran under autocast
    exact = task_accuracies(learner.model, scenario, precision="float32")
    reduced = task_accuracies(learner.model, scenario, precision="bfloat16")
    assert np.array_equal(reduced, learner.result.matrix[-1])
    assert np.abs(exact - reduced).max() <= 0.01


def test_evaluation_restores_train_mode_when_the_forward_raises() -> None:
    """``task_accuracies`` puts the model in eval mode; an exception must not leave it there."""
    from test_architecture import tiny_scenario

    class Failing(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dropout = torch.nn.Dropout(0.5)

        def forward(self, x, task_ids=None):
            raise RuntimeError("out of memory (simulated)")

    model = Failing().train()
    with pytest.raises(RuntimeError, match="simulated"):
        task_accuracies(model, tiny_scenario())
    assert model.training and model.dropout.training
