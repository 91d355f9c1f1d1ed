"""Scenario correctness: class partitions, label spaces, permutations, rotations, heads."""

from __future__ import annotations

import pytest
import torch

from forgetless.data.benchmarks import build_scenario
from forgetless.data.dataset import ImageDataset
from forgetless.data.scenarios import (
    class_order,
    permuted,
    pixel_permutations,
    rotate_images,
    rotated,
    split,
    validation_split,
)
from forgetless.data.sources import load_dataset
from forgetless.errors import ConfigError
from forgetless.models import INACTIVE_LOGIT, build_model


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_dataset("digits")


def test_split_class_il_partitions_classes_and_numbers_labels_in_arrival_order(digits) -> None:
    order = class_order(10, seed=3)
    scenario = split(digits, 5, "class", order)
    seen: set[int] = set()
    for i, task in enumerate(scenario.tasks):
        assert set(task.classes).isdisjoint(seen)
        seen |= set(task.classes)
        assert list(task.classes) == order[2 * i : 2 * i + 2]
        # global label = position of the class in the arrival order
        assert set(task.train_y.tolist()) == {2 * i, 2 * i + 1}
        original = digits.train_y[torch.isin(digits.train_y, torch.tensor(task.classes))]
        assert task.num_train == original.numel()
    assert seen == set(range(10))
    assert scenario.head_sizes == [10]
    assert scenario.active_outputs == [2, 4, 6, 8, 10]
    assert not scenario.uses_task_id


def test_split_images_keep_their_labels(digits) -> None:
    scenario = split(digits, 5, "class", class_order(10, seed=1))
    task = scenario.tasks[2]
    for row in range(0, task.num_train, 37):
        matches = (digits.train_x == task.train_x[row]).flatten(1).all(1)
        original_labels = set(digits.train_y[matches].tolist())
        assert original_labels == {task.classes[int(task.train_y[row]) - 4]}


def test_task_and_domain_il_use_local_labels(digits) -> None:
    for kind in ("task", "domain"):
        scenario = split(digits, 5, kind)
        for task in scenario.tasks:
            assert set(task.train_y.tolist()) == {0, 1}
    assert split(digits, 5, "task").head_sizes == [2] * 5
    assert split(digits, 5, "domain").head_sizes == [2]


def test_uneven_split_and_impossible_splits(digits) -> None:
    scenario = split(digits, 3, "task")
    assert [len(t.classes) for t in scenario.tasks] == [4, 3, 3]
    with pytest.raises(ConfigError, match="into 11 tasks"):
        split(digits, 11, "class")
    with pytest.raises(ConfigError, match="domain-incremental"):
        split(digits, 3, "domain")
    with pytest.raises(ConfigError, match="unknown scenario"):
        split(digits, 5, "clas")  # type: ignore[arg-type]


def test_class_order_is_seeded_and_reproducible() -> None:
    assert class_order(10, None) == list(range(10))
    assert class_order(10, 7) == class_order(10, 7)
    assert class_order(10, 7) != class_order(10, 8)
    assert sorted(class_order(10, 7)) == list(range(10))


def test_permutations_fixed_per_task_and_reproducible(digits) -> None:
    a = pixel_permutations(64, 4, seed=5)
    b = pixel_permutations(64, 4, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(a[0], torch.arange(64))
    assert len({tuple(p.tolist()) for p in a}) == 4
    scenario = permuted(digits, 4, "domain", seed=5)
    for task, perm in zip(scenario.tasks, a):
        expected = digits.train_x.flatten(1)[:, perm].reshape(digits.train_x.shape)
        assert torch.equal(task.train_x, expected)
        assert torch.equal(task.train_y, digits.train_y)
        assert task.train_x.dtype == torch.uint8
    # train and test share the task's permutation
    t1 = scenario.tasks[1]
    assert torch.equal(t1.test_x, digits.test_x.flatten(1)[:, a[1]].reshape(digits.test_x.shape))


def test_permuted_class_il_offsets_labels(digits) -> None:
    scenario = permuted(digits, 3, "class", seed=0)
    assert scenario.head_sizes == [30]
    assert scenario.tasks[2].train_y.min() == 20
    assert scenario.active_outputs == [10, 20, 30]


def test_rotation_by_90_degrees_matches_rot90() -> None:
    x = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    out = rotate_images(x, 90.0)
    assert out.dtype == torch.uint8
    assert torch.equal(out, torch.rot90(x, k=-1, dims=(2, 3))) or torch.equal(out, torch.rot90(x, k=1, dims=(2, 3)))
    assert torch.equal(rotate_images(x, 0.0), x)


def test_rotated_stream_angles(digits) -> None:
    scenario = rotated(digits, 3, "domain")
    assert [t.description for t in scenario.tasks] == [
        "rotated 0 degrees",
        "rotated 60 degrees",
        "rotated 120 degrees",
    ]
    assert torch.equal(scenario.tasks[0].train_x, digits.train_x)
    assert not torch.equal(scenario.tasks[1].train_x, digits.train_x)


def test_validation_split_holds_out_training_data(digits) -> None:
    scenario = validation_split(split(digits, 5, "class"), 0.2, seed=0)
    original = split(digits, 5, "class")
    for task, full in zip(scenario.tasks, original.tasks):
        assert task.num_train + task.test_y.numel() == full.num_train
    with pytest.raises(ConfigError):
        validation_split(original, 1.5, seed=0)


def test_heads_follow_the_scenario(digits) -> None:
    task_il = split(digits, 3, "task")
    model = build_model("mlp", task_il.input_shape, task_il.head_sizes, True, [16])
    x = task_il.to_float(task_il.tasks[1].train_x[:5])
    out = model(x, 1)
    assert out.shape == (5, 4)
    assert (out[:, 3] == INACTIVE_LOGIT).all()  # task 1 has 3 classes: padded to width 4
    mixed = model(x, torch.tensor([0, 1, 2, 1, 0]))
    assert torch.allclose(mixed[1], out[1]) and torch.allclose(mixed[3], out[3])
    with pytest.raises(ValueError, match="task id"):
        model(x, None)

    class_il = split(digits, 5, "class")
    model = build_model("mlp", class_il.input_shape, class_il.head_sizes, False, [16])
    model.head.set_active_outputs(4)
    out = model(class_il.to_float(class_il.tasks[0].train_x[:3]))
    assert (out[:, 4:] == INACTIVE_LOGIT).all() and (out[:, :4] != INACTIVE_LOGIT).all()


def test_bring_your_own_tasks_trains_with_the_learner() -> None:
    from forgetless.config import make_config
    from forgetless.data.scenarios import from_task_data
    from forgetless.models import build_model
    from forgetless.strategies import make_strategies
    from forgetless.training import Learner

    generator = torch.Generator().manual_seed(0)

    def task(offset: int):
        x = torch.randn(64, 5, generator=generator)
        y = (x[:, 0] > 0).long() + offset
        return x, y, x[:16], y[:16]

    scenario = from_task_data("class", [task(0), task(2)], name="toy")
    assert scenario.head_sizes == [4] and scenario.active_outputs == [2, 4]
    assert scenario.max_value == 1.0
    model = build_model("mlp", scenario.input_shape, scenario.head_sizes, False, [8])
    config = make_config(strategies=["naive"], epochs=2, batch_size=16)
    result = Learner(scenario, model, make_strategies("naive"), config).run()
    assert result.matrix.shape == (2, 2)
    with pytest.raises(ConfigError, match="must not share labels"):
        from_task_data("class", [task(0), task(0)])
    with pytest.raises(ConfigError, match="one integer label per input"):
        x, y, tx, ty = task(0)
        from_task_data("task", [(x, y[:3], tx, ty)])


def test_subsample_draws_seeded_rows_cuts_tasks_and_leaves_the_original() -> None:
    scenario = build_scenario("split-digits", "task", 5, seed=0)
    sizes = [(t.num_train, int(t.test_y.shape[0])) for t in scenario.tasks]
    small = scenario.subsample(train=20, test=10, tasks=3, seed=1)
    assert small.num_tasks == 3 and small.head_sizes == scenario.head_sizes[:3]
    assert [(t.num_train, int(t.test_y.shape[0])) for t in small.tasks] == [(20, 10)] * 3
    assert [(t.num_train, int(t.test_y.shape[0])) for t in scenario.tasks] == sizes  # untouched
    again = scenario.subsample(train=20, test=10, tasks=3, seed=1)
    other = scenario.subsample(train=20, test=10, tasks=3, seed=2)
    assert all(torch.equal(a.train_x, b.train_x) for a, b in zip(small.tasks, again.tasks))
    assert not all(torch.equal(a.train_x, b.train_x) for a, b in zip(small.tasks, other.tasks))
    for part, whole in zip(small.tasks, scenario.tasks):  # rows are real rows, labels kept with them
        rows = {(bytes(x.numpy()), int(y)) for x, y in zip(whole.train_x, whole.train_y)}
        assert all((bytes(x.numpy()), int(y)) in rows for x, y in zip(part.train_x, part.train_y))
    everything = scenario.subsample()
    assert all(torch.equal(a.test_x, b.test_x) for a, b in zip(everything.tasks, scenario.tasks))
    class_il = build_scenario("split-digits", "class", 5, seed=0).subsample(tasks=2)
    assert class_il.active_outputs == [2, 4] and len(class_il.head_sizes) == 1
