"""The task-IL accuracy matrix of a class-IL run (issue #14): the argmax over each test row's own
task's classes, from the same forward passes as the class-IL matrix; in the result, metrics.json,
the checkpoint and the table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from torch import nn

from cli_helpers import FAST, finished_run, one_error_line, run_cli
from forgetless.data import scenarios
from forgetless.data.benchmarks import build_scenario
from forgetless.data.digits import load_digits_dataset
from forgetless.data.scenarios import Scenario, Task
from forgetless.reports.table import summary_table
from forgetless.training import checkpoint as ckpt
from forgetless.training.evaluation import accuracy_rows
from forgetless.training.experiment import build_learner, load_scenario, run_experiment
from test_learner import digits_config
from test_resume import _all_checkpoint_results, _config, _resume_result


class Passthrough(nn.Module):
    """A "model" whose logits are its inputs: the test rows hold hand-built logits."""

    def forward(self, x: torch.Tensor, task_ids: torch.Tensor | int | None = None) -> torch.Tensor:
        return x


def logit_scenario(logits: list[list[list[float]]], labels: list[list[int]], classes: list[tuple]) -> Scenario:
    """A class-IL scenario whose task ``t`` tests the rows ``logits[t]`` with labels ``labels[t]``;
    ``classes`` are the original data set's classes (renumbered by a class order, as in ``split``)."""
    tasks = []
    for index, (x, y, original) in enumerate(zip(logits, labels, classes)):
        x, y = torch.tensor(x), torch.tensor(y)
        tasks.append(Task(index, x, y, x, y, original))
    width = len(logits[0][0])
    active = [int(t.train_y.max()) + 1 for t in tasks]
    return Scenario("class", "logits", tasks, (width,), 1.0, [width], active)


# Three tasks of two classes; the class order 3,5 | 0,1 | 4,2 numbers them 0,1 | 2,3 | 4,5. Per row:
# the class-IL prediction (over all 6 outputs), the task-IL one (over the row's task's outputs).
LOGITS = [
    [
        [2, 1, 0, 0, 0, 3],  # y 0: class-IL 5 wrong; task-IL 0 right (outputs 3, 5 of Task.classes: 5)
        [0, 4, 0, 0, 0, 0],  # y 1: right, right
        [1, 2, 0, 5, 0, 0],  # y 0: 3 wrong; 1 wrong
        [0, 1, 0, 0, 0, 0],  # y 1: right, right
    ],
    [
        [5, 0, 1, 0, 0, 0],  # y 2: 0 wrong; 2 right (task 0's outputs would say 0)
        [0, 0, 1, 2, 0, 9],  # y 3: 5 wrong; 3 right
        [0, 0, 3, 1, 0, 0],  # y 2: right, right
        [0, 0, 4, 1, 0, 0],  # y 3: 2 wrong; 2 wrong
    ],
    [
        [0, 0, 0, 0, 2, 1],  # y 4: right, right
        [9, 0, 0, 0, 1, 2],  # y 5: 0 wrong; 5 right
        [0, 0, 0, 0, 3, 2],  # y 4: right, right
        [0, 0, 0, 7, 1, 2],  # y 5: 3 wrong; 5 right
    ],
]
LABELS = [[0, 1, 0, 1], [2, 3, 2, 3], [4, 5, 4, 5]]
ORIGINAL_CLASSES = [(3, 5), (0, 1), (4, 2)]


@pytest.mark.parametrize("batch_size", [3, 4096])
def test_task_il_is_the_argmax_over_the_rows_own_task_classes(batch_size: int) -> None:
    scenario = logit_scenario(LOGITS, LABELS, ORIGINAL_CLASSES)
    class_il, task_il = accuracy_rows(
        Passthrough(), scenario, batch_size=batch_size, task_labels=scenario.task_labels()
    )
    assert class_il.tolist() == [0.5, 0.25, 0.5]
    assert task_il is not None and task_il.tolist() == [0.75, 0.75, 1.0]
    # without the labels, the class-IL row alone (what task- and domain-IL runs get)
    alone, none = accuracy_rows(Passthrough(), scenario, batch_size=batch_size)
    assert none is None and np.array_equal(alone, class_il)


def test_task_labels_are_the_output_labels_not_the_original_classes() -> None:
    """A class order renumbers the classes; a permuted class-IL stream offsets every task's labels."""
    split = build_scenario("split-digits", "class", 5, class_order_seed=1)
    labels = [t.tolist() for t in split.task_labels()]
    assert labels == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert [list(t.classes) for t in split.tasks] != labels  # the original digits of each task
    permuted = scenarios.permuted(load_digits_dataset(), 3, "class", seed=0)
    assert [t.tolist() for t in permuted.task_labels()] == [list(range(10 * t, 10 * t + 10)) for t in range(3)]
    assert build_scenario("split-digits", "task", 5).task_labels() is None
    assert build_scenario("split-digits", "domain", 5).task_labels() is None


@settings(max_examples=40)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(2, 5))
def test_task_il_never_below_class_il_for_any_logits(seed: int, tasks: int, per_task: int) -> None:
    """Restricting the argmax to a set holding the true label can only turn misses into hits."""
    generator = torch.Generator().manual_seed(seed)
    width = tasks * per_task
    logits = torch.randn(tasks, 6, width, generator=generator).round(decimals=1).tolist()  # ties too
    labels = [(t * per_task + torch.randint(per_task, (6,), generator=generator)).tolist() for t in range(tasks)]
    scenario = logit_scenario(logits, labels, [()] * tasks)
    for task in scenario.tasks:  # every class of the task in its training rows
        task.train_y = torch.arange(task.index * per_task, (task.index + 1) * per_task)
    class_il, task_il = accuracy_rows(Passthrough(), scenario, batch_size=4, task_labels=scenario.task_labels())
    assert task_il is not None and np.all(task_il >= class_il)
    for t, (x, y) in enumerate(zip(logits, labels)):  # by hand: numpy over the task's columns
        own = np.asarray(x)[:, t * per_task : (t + 1) * per_task]
        assert task_il[t] == np.mean(own.argmax(1) + t * per_task == np.asarray(y))


def test_a_class_il_run_has_a_task_il_matrix_at_or_above_its_class_il_one() -> None:
    config = digits_config(scenario="class", strategies=["er"], epochs=1, hidden=[32], buffer_size=50)
    scenario = load_scenario(config, 0)
    learner = build_learner(config, scenario, "er", 0)
    result = learner.run()
    matrix, task_il = result.matrix, result.task_il_matrix
    assert task_il is not None and task_il.shape == matrix.shape == (5, 5)
    assert np.all(task_il >= matrix)
    assert task_il[0, 0] == matrix[0, 0]  # after task 0 only its two outputs are live
    assert np.tril(task_il - matrix, -1).sum() > 0.5  # forgetting shows in class-IL far more
    labels = scenario.task_labels()
    model = learner.model.eval()
    with torch.no_grad():  # the final row, one test row at a time
        for t, task in enumerate(scenario.tasks):
            logits = model(scenario.to_float(task.test_x), None)
            hits = [int(labels[t][row[labels[t]].argmax()] == y) for row, y in zip(logits, task.test_y)]
            assert task_il[-1, t] == sum(hits) / len(hits)
    task_run = digits_config(scenario="task", tasks=2, epochs=1, hidden=[16])
    learner = build_learner(task_run, load_scenario(task_run, 0), "naive", 0)
    assert learner.run().task_il_matrix is None  # task-IL is already the primary matrix


def test_metrics_json_and_the_table_carry_task_il(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = finished_run(tmp_path / "class", "--strategies", "naive")
    metrics = json.loads((out / "metrics.json").read_text())
    (run,) = metrics["runs"]["naive"]
    task_il = np.asarray(run["task_il_matrix"])
    assert task_il.shape == (2, 2) and np.all(task_il >= np.asarray(run["accuracy_matrix"]))
    assert run["metrics"]["task_il_acc"] == pytest.approx(task_il[-1].mean(), abs=1e-6)
    assert run["metrics"]["task_il_bwt"] == pytest.approx(task_il[1, 0] - task_il[0, 0], abs=1e-6)
    summary = metrics["summary"]["naive"]
    assert summary["task_il_acc"]["mean"] == run["metrics"]["task_il_acc"]
    assert "task_il_bwt" in summary
    code, _, _ = run_cli(["run", *FAST, "--scenario", "task", "--out", str(tmp_path / "task")], capsys)
    assert code == 0
    metrics = json.loads((tmp_path / "task" / "metrics.json").read_text())
    assert metrics["runs"]["naive"][0]["task_il_matrix"] is None
    assert "task_il_acc" not in metrics["summary"]["naive"]


def _table(scenario: str) -> str:
    config = digits_config(scenario=scenario, tasks=2, epochs=1, hidden=[16])
    console = Console(width=200, record=True)
    console.print(summary_table(run_experiment(config)))
    return console.export_text()


def test_the_table_has_a_task_il_column_for_class_il_runs_only() -> None:
    assert "task-IL ACC" in _table("class")
    assert "task-IL ACC" not in _table("task")


def test_resume_from_any_checkpoint_reproduces_the_task_il_matrix(tmp_path: Path) -> None:
    config = _config("er", scenario="class", tasks=3, epochs=1, hidden=[32])
    reference, folders = _all_checkpoint_results(config, "er", tmp_path)
    where = [ckpt.load_checkpoint(f).where() for f in folders]
    assert any("step" in w for w in where) and any("start of task 1" in w for w in where)
    assert reference.task_il_matrix is not None
    for index in sorted({1, len(folders) // 2, len(folders) - 2}):
        resumed = _resume_result(config, "er", folders[index])
        assert np.array_equal(resumed.matrix, reference.matrix)
        assert resumed.task_il_matrix is not None, where[index]
        assert np.array_equal(resumed.task_il_matrix, reference.task_il_matrix), where[index]


def test_a_checkpoint_from_before_task_il_resumes_without_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Version-2 checkpoints written before the task-IL fields: same class-IL results, no task-IL."""
    reference = finished_run(tmp_path / "reference", "--strategies", "naive,er")
    run = tmp_path / "old"
    shutil.copytree(reference, run)
    folder = run / ckpt.CHECKPOINT
    learner, experiment = ckpt.read_tree(folder, "learner"), ckpt.read_tree(folder, "experiment")
    del learner["result"]["task_il_rows"], learner["result"]["task_il"]  # neither existed then
    for record in experiment["completed"]:
        del record["task_il_matrix"]
    ckpt.write_tree(folder, "learner", learner)
    ckpt.write_tree(folder, "experiment", experiment)
    ckpt.write_manifest(folder)
    (run / "metrics.json").unlink()
    code, _, err = run_cli(["run", "--resume", str(run)], capsys)
    assert code == 0, err
    before = json.loads((reference / "metrics.json").read_text())["runs"]
    after = json.loads((run / "metrics.json").read_text())
    for name in ("naive", "er"):
        assert after["runs"][name][0]["accuracy_matrix"] == before[name][0]["accuracy_matrix"]
        assert after["runs"][name][0]["task_il_matrix"] is None
        assert "task_il_acc" not in after["summary"][name]


def test_a_checkpoint_with_task_il_rows_that_do_not_match_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = finished_run(tmp_path / "run", "--strategies", "naive")
    folder = run / ckpt.CHECKPOINT
    learner = ckpt.read_tree(folder, "learner")
    learner["result"]["task_il_rows"] = learner["result"]["task_il_rows"][:1]
    ckpt.write_tree(folder, "learner", learner)
    ckpt.write_manifest(folder)
    code, _, err = run_cli(["run", "--resume", str(run)], capsys)
    assert code == 2 and "result.task_il_rows" in err and "learner.json" in err


def test_a_checkpoint_whose_task_il_rows_were_deleted_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by the hostile probe: deleting the rows alone (re-signed) took the old-checkpoint path
    and resumed without a task-IL matrix; the checkpoint says that the run keeps them."""
    run = finished_run(tmp_path / "run", "--strategies", "naive")
    folder = run / ckpt.CHECKPOINT
    learner = ckpt.read_tree(folder, "learner")
    assert learner["result"]["task_il"] is True
    del learner["result"]["task_il_rows"]
    ckpt.write_tree(folder, "learner", learner)
    ckpt.write_manifest(folder)
    code, _, err = run_cli(["run", "--resume", str(run)], capsys)
    line = one_error_line(err)
    assert code == 2 and "task_il_rows is missing" in line, line
