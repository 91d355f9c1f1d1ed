"""Fine-tuning schedules: layer-wise rates, warmup, gradual unfreezing, the safety brake."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from forgetless.config import make_config
from forgetless.errors import ConfigError
from forgetless.models import build_model
from forgetless.strategies.base import Batch, Strategy, TrainingContext, TrainingSet
from forgetless.training.optim import build_optimizer, build_scheduler, layer_groups
from forgetless.training.schedules import GradualUnfreezing, SafetyBrake, schedule_strategies
from test_architecture import tiny_learner


def mlp(hidden: list[int] | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("mlp", (1, 4, 4), [2, 2], True, hidden or [8, 6])


# -- layer-wise learning rates ------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_layerwise_decay_gives_the_head_the_base_rate_and_earlier_layers_less(
    optimizer: str,
) -> None:
    model = mlp()
    config = make_config(lr=0.1, layerwise_lr_decay=0.5, optimizer=optimizer)
    opt = build_optimizer(model, config)
    expected = [
        ([model.backbone[1].weight, model.backbone[1].bias], 0.1 * 0.25),
        ([model.backbone[3].weight, model.backbone[3].bias], 0.1 * 0.5),
        (list(model.head.parameters()), 0.1),
    ]
    assert len(opt.param_groups) == 3
    for group, (params, lr) in zip(opt.param_groups, expected):
        assert [id(p) for p in group["params"]] == [id(p) for p in params]
        assert group["lr"] == pytest.approx(lr)


def test_without_decay_one_group_at_the_base_rate() -> None:
    opt = build_optimizer(mlp(), make_config(lr=0.1))
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["lr"] == 0.1


def test_explicit_groups_by_argument_and_by_model_method() -> None:
    model = mlp()
    config = make_config(lr=1.0, layerwise_lr_decay=0.1)
    first, second = model.backbone[1], model.backbone[3]
    opt = build_optimizer(model, config, groups=[list(first.parameters()), list(second.parameters())])
    rates = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert rates[id(first.weight)] == pytest.approx(0.1)
    assert rates[id(second.weight)] == pytest.approx(1.0)
    # parameters in no explicit group (the heads) train at the base rate
    assert all(rates[id(p)] == 1.0 for p in model.head.parameters())
    assert len(rates) == len(list(model.parameters()))
    # a model's own layer_groups() is used by default (progressive columns: stage by stage)
    learner = tiny_learner("progressive", hidden=[8, 6])
    learner.train_task(0)
    learner.train_task(1)
    groups = layer_groups(learner.model)
    assert len(groups) == 3
    assert id(learner.model.laterals[1][0][0].weight) in {id(p) for p in groups[1]}


def test_warmup_then_constant_and_cosine_rates() -> None:
    for schedule in ("constant", "cosine"):
        model = mlp()
        config = make_config(lr=0.2, warmup_steps=4, lr_schedule=schedule, layerwise_lr_decay=0.5)
        opt = build_optimizer(model, config)
        scheduler = build_scheduler(opt, config, total_steps=10)
        seen = []
        for _ in range(10):
            seen.append([g["lr"] for g in opt.param_groups])  # the rate this step uses
            opt.step()
            scheduler.step()
        head = [s[-1] for s in seen]
        factors = [0.25, 0.5, 0.75, 1.0]
        if schedule == "constant":
            factors += [1.0] * 6
        else:
            factors += [0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
        assert head == pytest.approx([0.2 * f for f in factors])
        # every group keeps its layer-wise ratio to the head throughout
        for step in seen:
            assert step[0] / step[-1] == pytest.approx(0.25)
    assert build_scheduler(opt, make_config(), 10) is None


# -- gradual unfreezing -------------------------------------------------------------------
class ParamRecorder(Strategy):
    """Copies every parameter after every optimizer step (placed before the schedule)."""

    name = "param-recorder"

    def __init__(self) -> None:
        super().__init__()
        self.history: list[dict[str, torch.Tensor]] = []

    def before_task(self, ctx: TrainingContext) -> None:
        self.history = [{n: p.detach().clone() for n, p in ctx.model.named_parameters()}]

    def after_step(self, ctx: TrainingContext, batch: Batch, logits: torch.Tensor) -> bool:
        self.history.append({n: p.detach().clone() for n, p in ctx.model.named_parameters()})
        return False


@pytest.mark.parametrize(("optimizer", "extra"), [("adam", {"weight_decay": 0.1}), ("sgd", {"momentum": 0.9})])
def test_gradual_unfreezing_keeps_frozen_levels_bit_identical_until_their_turn(optimizer, extra) -> None:
    learner = tiny_learner("naive", optimizer=optimizer, epochs=3, **extra)
    recorder, every = ParamRecorder(), 3
    unfreeze = GradualUnfreezing(every)
    learner.strategies += [recorder, unfreeze]
    learner.hooks["after_step"] += [recorder, unfreeze]
    learner.train_task(0)
    history = recorder.history  # history[s] = parameters after s steps
    assert len(history) == 13
    levels = {"head.heads.0.weight": 0, "backbone.3.weight": 1, "backbone.1.weight": 2}
    for name, level in levels.items():
        first_trained = level * every + 1  # trains from the step after `level * every` steps
        for s in range(1, len(history)):
            changed = not torch.equal(history[s][name], history[s - 1][name])
            assert changed == (s >= first_trained), (name, s)
    assert unfreeze.report()["unfrozen_at_steps"] == [[3, 6]]
    assert all(p.requires_grad for p in learner.model.parameters())  # released after the task


def test_gradual_unfreezing_never_unfreezes_what_a_strategy_froze() -> None:
    learner = tiny_learner("progressive")
    unfreeze = GradualUnfreezing(2)
    learner.strategies.append(unfreeze)
    learner.hooks["after_step"].append(unfreeze)
    learner.train_task(0)
    before = [p.detach().clone() for p in learner.model.columns[0].parameters()]
    learner.train_task(1)
    assert all(torch.equal(a, b) for a, b in zip(before, learner.model.columns[0].parameters()))
    assert not any(p.requires_grad for p in learner.model.columns[0].parameters())


# -- safety brake -------------------------------------------------------------------------
def fake_monitor(drop_per_step: float, new_task=lambda step: 0.5 + 0.01 * step, spread: float = 0.0):
    """Earlier tasks' accuracy falls by ``drop_per_step`` per optimizer step of the task (task
    ``j`` by ``(1 + spread * j)`` times that); the current task's is ``new_task(step)``."""

    def evaluate(ctx: TrainingContext, tasks: list[int]) -> np.ndarray:
        fall = [drop_per_step * ctx.step * (1 + spread * j) for j in tasks]
        return np.array([new_task(ctx.step) if j == ctx.task_index else 0.9 - f for j, f in zip(tasks, fall)])

    return evaluate


def braked_learner(threshold: float, every: int, drop_per_step: float, **monitor):
    learner = tiny_learner("naive", epochs=3)  # 12 steps per task
    recorder = ParamRecorder()
    brake = SafetyBrake(threshold, every, evaluate=fake_monitor(drop_per_step, **monitor))
    learner.strategies += [recorder, brake]
    learner.hooks["after_step"] += [recorder, brake]
    return learner, recorder, brake


@pytest.mark.parametrize(
    ("threshold", "every", "drop_per_step", "stop_step", "restored_step"),
    [
        (0.055, 2, 0.01, 6, 4),  # drops .02, .04 within; .06 at step 6 crosses
        (0.045, 1, 0.01, 5, 4),  # checked every step: stops at the first step beyond
        (0.03, 4, 0.01, 4, 0),  # the first check crosses: back to the pre-task weights
        (0.25, 4, 0.03125, 12, 8),  # exact binary fractions: drop .25 at step 8 is not "beyond"
    ],
)
def test_brake_stops_at_the_first_check_beyond_the_threshold_and_restores_the_best(
    threshold, every, drop_per_step, stop_step, restored_step
) -> None:
    learner, recorder, brake = braked_learner(threshold, every, drop_per_step)
    learner.train_task(0)
    learner.train_task(1)
    assert learner.result.stopped_early == {1: stop_step}
    assert learner.result.steps == [12, stop_step]
    best = recorder.history[restored_step]
    for name, param in learner.model.named_parameters():
        assert torch.equal(param, best[name]), name
    assert not all(torch.equal(p, recorder.history[stop_step][n]) for n, p in learner.model.named_parameters())
    entry = brake.report()["tasks"]["1"]
    assert entry["stopped_at_step"] == stop_step and entry["restored_step"] == restored_step
    assert entry["reference"] == pytest.approx([0.9])
    assert entry["drop"] > threshold


def test_brake_restores_the_best_new_task_score_not_the_last_acceptable_check() -> None:
    """The one StopRule of both stacks: among acceptable checks, the best new-task score wins
    (ties: the latest). Here the new task peaks at step 2, the stop comes at step 6."""
    learner, recorder, brake = braked_learner(0.055, 2, 0.01, new_task=lambda step: [0.5, 0, 0.8, 0, 0.7, 0, 0.9][step])
    learner.train_task(0)
    learner.train_task(1)
    entry = brake.report()["tasks"]["1"]
    assert entry["stopped_at_step"] == 6 and entry["restored_step"] == 2
    for name, param in learner.model.named_parameters():
        assert torch.equal(param, recorder.history[2][name]), name


def test_brake_watches_the_worst_earlier_task_not_their_mean() -> None:
    """In task 2, task 0 falls 0.01 per step and task 1 0.03: their mean drop is 0.04 at step 2
    (within 0.055), but task 1 is already 0.06 down: the brake stops there."""
    learner, _, brake = braked_learner(0.055, 2, 0.01, spread=2.0)
    learner.train_task(0)
    learner.train_task(1)
    learner.train_task(2)
    entry = brake.report()["tasks"]["2"]
    assert entry["stopped_at_step"] == 2 and entry["worst_task"] == 1 and entry["drop"] == pytest.approx(0.06)


def test_brake_never_fires_within_the_threshold_and_checks_the_last_step() -> None:
    learner, recorder, brake = braked_learner(0.5, 5, 0.01)
    learner.run()
    assert learner.result.stopped_early == {}
    assert [c[0] for c in brake.report()["tasks"]["2"]["checks"]] == [5, 10, 12]
    assert "0" not in brake.report()["tasks"]  # the first task has nothing to protect


def test_brake_logs_why_it_stopped(caplog) -> None:
    learner, _, _ = braked_learner(0.055, 2, 0.01)
    learner.train_task(0)
    with caplog.at_level("WARNING"):
        learner.train_task(1)
    assert "task 1 stopped at step 6" in caplog.text and "restored the weights of step 4" in caplog.text


def test_brake_state_round_trip() -> None:
    learner, _, brake = braked_learner(0.055, 2, 0.01)
    learner.train_task(0)
    learner.train_task(1)
    copy = SafetyBrake(0.055, 2)
    copy.load_state_dict(brake.state_dict(), learner.ctx)
    assert copy.report() == brake.report()


# -- options ------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_threshold_outside_unit_interval_is_a_config_error(value: float) -> None:
    with pytest.raises(ConfigError, match="stop_if_drop"):
        make_config(stop_if_drop=value)
    with pytest.raises(ConfigError, match=r"stop_if_drop must be an accuracy drop in \[0, 1\]"):
        SafetyBrake(value, 10)


def test_schedule_strategies_follow_the_options() -> None:
    assert schedule_strategies(make_config()) == []
    built = schedule_strategies(make_config(unfreeze_every=5, stop_if_drop=0.1, eval_every=7))
    assert [type(s) for s in built] == [GradualUnfreezing, SafetyBrake]
    assert built[0].every == 5 and built[1].threshold == 0.1 and built[1].eval_every == 7


def test_brake_monitors_as_the_accuracy_matrix_does() -> None:
    """The brake scores earlier tasks exactly as the accuracy matrix does (``ctx.accuracies``)."""
    learner = tiny_learner("naive", epochs=1)
    brake = SafetyBrake(0.5, 1)
    learner.strategies += [brake]
    learner.hooks["after_step"] += [brake]
    learner.train_task(0)
    learner.train_task(1)
    reference = brake.report()["tasks"]["1"]["reference"]
    assert reference == pytest.approx([float(learner.rows[0][0])])  # the matrix's own view of task 0


# -- review defects -------------------------------------------------------------------------
def _clone_state(value):
    """A deep copy of a strategy's ``state_dict()`` (tensors cloned)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone_state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone_state(v) for v in value)
    return value


def _assert_same_state(a, b, where: str = "state") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        same = torch.equal(a, b)
        assert same, f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{where}.{i}")
    else:
        assert a == b, where


class StateRecorder(Strategy):
    """Copies another strategy's ``state_dict()`` after every optimizer step."""

    name = "state-recorder"

    def __init__(self, watched: Strategy) -> None:
        super().__init__()
        self.watched = watched
        self.history: dict[int, dict] = {}

    def after_step(self, ctx: TrainingContext, batch: Batch, logits: torch.Tensor) -> bool:
        self.history[ctx.step] = _clone_state(self.watched.state_dict())
        return False


@pytest.mark.parametrize("combination", ["si", "er"])
def test_brake_rollback_restores_the_other_strategies_state_too(combination: str) -> None:
    """After the brake stops at step 6 and restores step 4, SI's path integral and ER's memory
    must be those of step 4: the undone steps never happened, for the model and the strategies."""
    learner = tiny_learner(combination, epochs=3)
    other = learner.strategies[0]
    recorder = StateRecorder(other)
    brake = SafetyBrake(0.055, 2, evaluate=fake_monitor(0.01))
    learner.strategies += [recorder, brake]
    learner.hooks["after_step"] += [recorder, brake]
    learner.train_task(0)
    at_task_end: list[dict] = []
    original_after_task = other.after_task

    def after_task(ctx: TrainingContext) -> None:
        at_task_end.append(_clone_state(other.state_dict()))
        original_after_task(ctx)

    other.after_task = after_task  # type: ignore[method-assign]
    learner.train_task(1)
    assert learner.result.stopped_early == {1: 6}
    assert brake.report()["tasks"]["1"]["restored_step"] == 4
    _assert_same_state(at_task_end[0], recorder.history[4], combination)


class Cumulative(Strategy):
    """Test only: a ``training_set`` hook that trains task t on the rows of tasks 0..t."""

    name = "cumulative"

    def training_set(self, ctx: TrainingContext, data: TrainingSet) -> TrainingSet:
        tasks = ctx.scenario.tasks[: ctx.task_index + 1]
        x = torch.cat([t.train_x for t in tasks])
        y = torch.cat([t.train_y for t in tasks])
        return TrainingSet(x, y, torch.cat([torch.full_like(t.train_y, t.index) for t in tasks]))


def test_brake_checks_the_true_last_step_of_a_training_set_hook() -> None:
    """A ``training_set`` hook that grows the data (task t trains on t + 1 tasks' rows): the
    brake's final check is at the last step the learner runs, not at the task's own last one."""
    learner = tiny_learner("", epochs=3)  # 12 steps on one task's own rows
    cumulative = Cumulative()
    brake = SafetyBrake(0.5, 5, evaluate=fake_monitor(0.001))
    learner.strategies += [cumulative, brake]
    learner.hooks["training_set"].append(cumulative)
    learner.hooks["after_step"].append(brake)
    learner.run()
    assert learner.result.steps == [12, 24, 36]
    assert [c[0] for c in brake.report()["tasks"]["1"]["checks"]] == [5, 10, 15, 20, 24]
    assert [c[0] for c in brake.report()["tasks"]["2"]["checks"]] == [5, 10, 15, 20, 25, 30, 35, 36]


def test_brake_with_joint_has_nothing_to_check_after_the_first_task() -> None:
    """``joint`` trains everything in task 0 (never monitored: no earlier task) and nothing
    later, so the brake never has a step to check there."""
    learner = tiny_learner("joint", epochs=3)
    brake = SafetyBrake(0.5, 5, evaluate=fake_monitor(0.001))
    learner.strategies.append(brake)
    learner.hooks["after_step"].append(brake)
    learner.run()
    assert learner.result.steps == [36, 0, 0]
    assert [brake.report()["tasks"][t]["checks"] for t in ("1", "2")] == [[], []]
