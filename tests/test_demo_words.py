"""``forgetless demo words``: naive fine-tuning garbles the earlier word lists, er and ewc keep them.

Thresholds are the seed-0 figures with margins (measured: naive 0.00, er 0.96, ewc 0.92 exact
match on the three earlier tasks after the last; every strategy spells the task it has just
learned 100% exactly; seeds 0-4 give naive 0.00, er 0.88-1.00, ewc 0.92-1.00).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from forgetless.demos.words import TASKS, WordsResult, run_words

STRATEGIES = ("naive", "er", "ewc")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> WordsResult:
    return run_words(seed=0, out=tmp_path_factory.mktemp("words") / "run", threads=1)


def test_naive_forgets_the_earlier_words(demo: WordsResult) -> None:
    assert demo.earlier_mean("naive") <= 0.2


@pytest.mark.parametrize("strategy", ["er", "ewc"])
def test_replay_and_ewc_keep_most_earlier_words(demo: WordsResult, strategy: str) -> None:
    assert demo.earlier_mean(strategy) >= 0.8


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_learns_the_current_task(demo: WordsResult, strategy: str) -> None:
    matrix = demo.matrix(strategy)
    assert matrix.shape == (len(TASKS), len(TASKS))
    assert np.diag(matrix).min() >= 0.9
    assert np.triu(matrix, 1).max() <= 0.2  # unseen lists are not spelled by chance


def test_results_folder_has_the_run_format(demo: WordsResult) -> None:
    out = demo.out
    assert out is not None
    for name in ("config.yaml", "metrics.json", "accuracy_matrix.csv", "accuracy_matrix.png", "words.svg"):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["benchmark"] == "demo-words" and metrics["scenario"] == "domain" and metrics["tasks"] == 4
    for strategy in STRATEGIES:
        run = metrics["runs"][strategy][0]
        assert np.allclose(run["accuracy_matrix"], demo.matrix(strategy))
        assert len(run["report"]["per_character"]["accuracy_matrix"]) == len(TASKS)
        assert set(metrics["summary"][strategy]) >= {"acc", "bwt", "forgetting"}
    rows = list(csv.reader((out / "accuracy_matrix.csv").open()))
    assert rows[0] == ["strategy", "seed", "after_task", "task_0", "task_1", "task_2", "task_3"]
    assert len(rows) == 1 + len(STRATEGIES) * len(TASKS)


def test_svg_shows_the_words(demo: WordsResult) -> None:
    svg = (demo.out / "words.svg").read_text()
    assert svg.startswith("<svg")
    for words in TASKS.values():
        for word in words:
            assert word in svg
    assert "exact" in demo.screen and "after task 4 of 4" in demo.screen


def test_same_seed_same_screen(demo: WordsResult) -> None:
    again = run_words(seed=0, threads=1)
    assert again.screen == demo.screen
    for strategy in STRATEGIES:
        assert np.array_equal(again.matrix(strategy), demo.matrix(strategy))


def test_cli_writes_the_folder_and_an_svg_copy(tmp_path: Path) -> None:
    from forgetless.cli.main import app

    out, copy = tmp_path / "run", tmp_path / "elsewhere" / "demo.svg"
    (out).mkdir()
    (out / "old.txt").write_text("previous run")
    args = ["demo", "words", "--quiet", "--out", str(out), "--svg", str(copy), "--force", "--threads", "1"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    assert "exact match on earlier tasks" in done.output and "rabbit" in done.output
    assert (out / "metrics.json").is_file() and (out / "words.svg").is_file()
    assert copy.read_text() == (out / "words.svg").read_text()


def test_existing_out_without_force_exits_2_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    done = subprocess.run(
        [sys.executable, "-m", "forgetless.cli.main", "demo", "words", "--quiet", "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--force" in lines[0], done.stderr
    assert (out / "metrics.json").read_text() == "{}"
