"""The command line end to end on the embedded digits benchmark, and its bad-input errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def forgetless(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "forgetless.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def test_run_writes_results_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = forgetless("run", "--out", str(out), "--quiet", "--threads", "1", "--epochs", "5")
    assert done.returncode == 0, done.stderr
    assert "naive" in done.stdout and "joint" in done.stdout and "BWT" in done.stdout
    joint_row = next(line.split() for line in done.stdout.splitlines() if line.strip().startswith("joint "))
    assert joint_row[3] == "–"  # joint's FWT: it saw every task at the first, so no forward transfer is shown
    for name in (
        "config.yaml",
        "metrics.json",
        "accuracy_matrix.csv",
        "accuracy_matrix.png",
        "accuracy_curves.png",
        "strategies.png",
    ):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["benchmark"] == "split-digits" and metrics["scenario"] == "class"
    matrix = metrics["runs"]["naive"][0]["accuracy_matrix"]
    assert len(matrix) == 5 and len(matrix[0]) == 5
    assert set(metrics["summary"]["naive"]) >= {"acc", "bwt", "fwt", "forgetting"}
    lines = (out / "accuracy_matrix.csv").read_text().splitlines()
    assert lines[0].startswith("strategy,seed,after_task,task_0")
    assert len(lines) == 1 + 4 * 5  # the default compares naive, ewc, er and joint

    # an existing run folder is never overwritten without --force
    again = forgetless("run", "--out", str(out), "--quiet", "--epochs", "1")
    assert again.returncode != 0
    assert "--force" in again.stderr and "Traceback" not in again.stderr
    assert json.loads((out / "metrics.json").read_text()) == metrics


def test_yaml_config_equals_flags(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("benchmark: split-digits\nscenario: task\nstrategies: [naive]\nepochs: 2\ntasks: 3\nthreads: 1\n")
    a = forgetless("run", "--config", str(config), "--out", str(tmp_path / "a"), "--quiet")
    b = forgetless(
        "run",
        "--scenario",
        "task",
        "--strategies",
        "naive",
        "--epochs",
        "2",
        "--tasks",
        "3",
        "--threads",
        "1",
        "--out",
        str(tmp_path / "b"),
        "--quiet",
    )
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    ma = json.loads((tmp_path / "a" / "metrics.json").read_text())["runs"]["naive"][0]
    mb = json.loads((tmp_path / "b" / "metrics.json").read_text())["runs"]["naive"][0]
    assert ma["accuracy_matrix"] == mb["accuracy_matrix"]


def test_list_names_everything() -> None:
    done = forgetless("list")
    assert done.returncode == 0
    for name in ("split-fmnist", "permuted-fmnist", "class", "naive", "joint"):
        assert name in done.stdout


def test_the_strategy_reference_table_in_the_docs_is_current() -> None:
    """docs/strategies.md ends with ``forgetless list --markdown``: regenerate it when a
    strategy or a parameter changes."""
    from forgetless.strategies import strategy_table

    docs = (Path(__file__).parent.parent / "docs" / "strategies.md").read_text(encoding="utf-8")
    assert docs.endswith(strategy_table()), "run: forgetless list --markdown, and update docs/strategies.md"
    assert forgetless("list", "--markdown").stdout == strategy_table()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--benchmark", "split-fmnst"], "did you mean 'split-fmnist'"),
        (["--strategies", "naiv"], "did you mean 'naive'"),
        (["--scenario", "clas"], "scenario"),
        (["--tasks", "11"], "cannot split 10 classes"),
        (["--epochs", "0"], "epochs"),
        (["--lr", "-1"], "lr"),
        (["--set", "naive"], "STRATEGY.PARAM=VALUE"),
    ],
)
def test_bad_input_gives_one_line_error(args: list[str], expected: str, tmp_path: Path) -> None:
    done = forgetless("run", "--quiet", "--out", str(tmp_path / "x"), *args)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    message = done.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert expected in message


def test_unwritable_output_folder_fails_before_training(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        target = "/proc/forgetless-cannot-write-here"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        target = str(locked / "run")
    done = forgetless("run", "--quiet", "--out", target)
    assert done.returncode == 2
    assert "choose another --out" in done.stderr and "Traceback" not in done.stderr


def test_missing_data_names_where_it_looked(tmp_path: Path) -> None:
    env_dir = tmp_path / "empty"
    env_dir.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "forgetless.cli.main",
            "run",
            "--benchmark",
            "split-mnist",
            "--no-download",
            "--data-dir",
            str(env_dir),
            "--quiet",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=done_env(tmp_path),
    )
    assert done.returncode == 2
    assert str(env_dir) in done.stderr and "Traceback" not in done.stderr
    # nothing was computed: once the data are in place the same command runs, without --force
    again = subprocess.run(done.args, capture_output=True, text=True, timeout=120, env=done_env(tmp_path))
    assert again.returncode == 2 and "--force" not in again.stderr and str(env_dir) in again.stderr


def done_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "FORGETLESS_DATA": ""}


def test_default_run_shows_the_cure(tmp_path: Path) -> None:
    """``forgetless run`` as the README's first command runs it: naive forgets, replay keeps.

    Measured (seed 0, split-digits class-IL): naive ACC 0.191 (forgot 98.9 points), ewc 0.149,
    er 0.880 (forgot 9.1), joint 0.955.
    """
    out = tmp_path / "default"
    done = forgetless("run", "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert list(summary) == ["naive", "ewc", "er", "joint"]
    acc = {name: summary[name]["acc"]["mean"] for name in summary}
    assert acc["naive"] < 0.25 and summary["naive"]["forgetting"]["mean"] > 0.9
    assert acc["er"] > acc["naive"] + 0.55 and summary["er"]["forgetting"]["mean"] < 0.2
    assert acc["joint"] > 0.9
    text = " ".join(done.stdout.split())
    assert "Naive fine-tuning forgot" in text and "The best mitigation, er, ends at ACC" in text
    assert f"forgot {100 * summary['naive']['forgetting']['mean']:.1f} accuracy points" in text
