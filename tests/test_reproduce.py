"""``forgetless reproduce``: the registry of published protocols, its CLI, REPRODUCIBILITY.md,
and (slow) the Fashion-MNIST stand-ins checked against the numbers measured for them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import requires_fmnist
from forgetless.config import make_config
from forgetless.errors import ConfigError, DataError
from forgetless.reproduce import PROTOCOLS, Measured, Protocol, Published, get_protocol, markdown, run_protocol
from forgetless.reproduce.registry import run_config
from forgetless.training.experiment import validate

ROOT = Path(__file__).resolve().parents[1]


def forgetless(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "forgetless.cli.main", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_every_runnable_config_is_valid() -> None:
    for p in PROTOCOLS.values():
        assert p.name.islower() and " " not in p.name
        if p.needs:
            continue
        for values in (p.config, p.stand_in_config()):
            if values is not None:
                config = validate(make_config(**values))
                assert config.strategies == p.config["strategies"] and len(config.strategies) == 1


def test_registry_covers_the_issue_rows() -> None:
    names = set(PROTOCOLS)
    for bench in ("split-mnist", "permuted-mnist"):
        for scenario in ("task", "domain", "class"):
            for method in ("none", "ewc", "online-ewc", "si", "lwf"):
                assert f"vandeven2019-{bench}-{scenario}-{method}" in names
    for dataset in ("seq-mnist", "seq-cifar10"):
        for model in ("er", "der", "derpp"):
            for buffer in (200, 500, 5120):
                for il in ("class", "task"):
                    assert f"der2020-{dataset}-{model}-{buffer}-{il}" in names


def test_continual_learning_baselines_targets() -> None:
    """The targets of strategies/target_results.csv (commit 024d2658), the issue's numbers."""
    targets = {
        "ewc-permuted-mnist": 0.83,
        "si-split-mnist": 0.97,
        "gem-permuted-mnist": 0.83,
        "agem-permuted-mnist": 0.81,
        "gss-split-mnist": 0.78,
        "lwf-split-mnist": 0.31,
    }
    for name, value in targets.items():
        published = get_protocol(f"clbaselines-{name}").published
        assert published.value == value and published.verified and published.metric == "acc"


def test_der_rows_read_the_task_il_accuracy_of_a_class_il_run() -> None:
    class_row = get_protocol("der2020-seq-mnist-derpp-500-class")
    task_row = get_protocol("der2020-seq-mnist-derpp-500-task")
    assert class_row.config == task_row.config and class_row.config["scenario"] == "class"
    assert (class_row.published.metric, task_row.published.metric) == ("acc", "task_il_acc")
    assert class_row.config["params"]["derpp"] == {"replay_batch_size": 10, "alpha": 1.0, "beta": 0.5}
    assert abs(class_row.published.value - 0.91) < 1e-9 and not class_row.published.verified


def test_stand_in_swaps_only_the_benchmark() -> None:
    p = get_protocol("vandeven2019-permuted-mnist-class-si")
    stand_in = p.stand_in_config()
    assert stand_in == {**p.config, "benchmark": "permuted-fmnist"}
    assert p.config["params"] == {"si": {"c": 0.1}} and p.config["epochs"] == 11
    assert get_protocol("der2020-seq-cifar10-er-500-class").stand_in_config() is None


def test_statuses() -> None:
    assert get_protocol("clbaselines-gss-split-mnist").status().startswith("needs: a gss")
    assert get_protocol("der2020-seq-cifar10-der-200-task").status() == "needs data: CIFAR-10 (not downloadable here)"
    for p in PROTOCOLS.values():
        if p.measured is not None:
            assert p.status() == "stand-in verified"
        if p.ci:
            assert p.measured is not None and p.stand_in_benchmark is not None


def test_reproducibility_md_matches_the_registry() -> None:
    text = (ROOT / "REPRODUCIBILITY.md").read_text(encoding="utf-8")
    assert text == markdown(), "regenerate it: forgetless reproduce --markdown > REPRODUCIBILITY.md"
    assert all(f"`{name}`" in text for name in PROTOCOLS)


def test_refusals_are_one_line_errors(isolated_data: Path) -> None:
    with pytest.raises(DataError, match="needs MNIST.*--stand-in$"):
        run_config(get_protocol("vandeven2019-split-mnist-class-ewc"), stand_in=False)
    with pytest.raises(ConfigError, match="needs a gss"):
        run_config(get_protocol("clbaselines-gss-split-mnist"), stand_in=True)
    with pytest.raises(ConfigError, match="no Fashion-MNIST stand-in"):
        run_config(get_protocol("der2020-seq-cifar10-er-200-class"), stand_in=True)
    with pytest.raises(ConfigError, match="did you mean 'vandeven2019-split-mnist-class-ewc'"):
        get_protocol("vandeven2019-split-mnist-clas-ewc")


def _digits_protocol(reference: float, tolerance: float) -> Protocol:
    config = {"benchmark": "split-digits", "scenario": "class", "strategies": ["naive"], "epochs": 2, "hidden": [32]}
    return Protocol(
        name="test-digits",
        source="test",
        row="none",
        published=Published(0.2, "task_il_acc"),
        config=config,
        stand_in=False,
        measured=Measured((reference,), tolerance, 1.0),
    )


def test_run_protocol_reads_the_metric_per_seed() -> None:
    from forgetless.training.experiment import run_experiment

    protocol = _digits_protocol(0.5, 0.01)
    outcome = run_protocol(protocol, seeds=2, seed=3)
    direct = run_experiment(make_config(**protocol.config, seeds=2, seed=3))
    expected = [run.metrics()["task_il_acc"] for run in direct.runs["naive"]]
    assert outcome.values == pytest.approx(expected)
    assert outcome.mean == pytest.approx(np.mean(expected)) and outcome.std == pytest.approx(np.std(expected))
    assert outcome.within_tolerance() is None  # not a stand-in run
    outcome.stand_in = True
    assert outcome.within_tolerance() is (abs(outcome.mean - 0.5) <= 0.01)
    outcome.protocol = _digits_protocol(outcome.mean + 0.009, 0.01)
    assert outcome.within_tolerance() is True
    outcome.protocol = _digits_protocol(outcome.mean + 0.011, 0.01)
    assert outcome.within_tolerance() is False


def _cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str, str]:
    """``forgetless ARGS`` in this process: (exit code, stdout, stderr)."""
    from forgetless.cli import main as cli

    monkeypatch.setattr(sys, "argv", ["forgetless", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as done:
        code = int(done.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_list_markdown_and_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_data: Path
) -> None:
    code, out, _ = _cli(capsys, monkeypatch, "reproduce", "--list")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "needs: a gss" in lines["clbaselines-gss-split-mnist"]
    assert lines["der2020-seq-cifar10-er-200-class"].endswith("needs data: CIFAR-10 (not downloadable here)")
    assert lines["vandeven2019-split-mnist-class-ewc"].endswith("needs data: MNIST (not downloadable here)")
    code, out, _ = _cli(capsys, monkeypatch, "reproduce", "--markdown")
    assert code == 0 and out == markdown()
    for args, phrase in (
        (("der2020-seq-mnist-er-20-class",), "did you mean"),
        (("vandeven2019-split-mnist-class-ewc",), "needs MNIST, which is not on this machine"),
        (("clbaselines-gss-split-mnist", "--stand-in"), "needs a gss"),
        ((), "give a protocol name"),
    ):
        code, _, err = _cli(capsys, monkeypatch, "reproduce", *args)
        assert code == 2 and phrase in err and len(err.strip().splitlines()) == 1, err


def test_cli_exit_code_in_a_fresh_process() -> None:
    done = forgetless("reproduce", "der2020-seq-cifar10-er-200-class", "--data-dir", "/nonexistent-h7")
    assert done.returncode == 2 and "needs CIFAR-10" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


CI_PROTOCOLS = [p.name for p in PROTOCOLS.values() if p.ci]


@pytest.mark.slow
@requires_fmnist
@pytest.mark.parametrize("name", CI_PROTOCOLS)
def test_stand_in_matches_its_reference(name: str) -> None:
    """One seed of the stand-in lands within the stored tolerance of the mean measured here."""
    protocol = get_protocol(name)
    assert protocol.measured is not None
    outcome = run_protocol(protocol, stand_in=True, seeds=1, seed=0)
    assert abs(outcome.mean - protocol.measured.reference) <= protocol.measured.tolerance, (
        f"{name}: {outcome.mean:.4f} vs reference {protocol.measured.reference:.4f} ± {protocol.measured.tolerance}"
    )


def test_result_table_shows_published_ours_and_reference() -> None:
    from rich.console import Console

    from forgetless.cli.reproduce import _table
    from forgetless.reproduce.registry import Outcome

    protocol = _digits_protocol(0.5, 0.02)
    outcome = Outcome(protocol, stand_in=True, values=[0.49, 0.51], result=None)
    console = Console(width=200, record=True)
    console.print(_table(outcome))
    text = console.export_text()
    assert "20.00" in text and "50.00 ± 1.00 (2 seed(s))" in text and "50.00 ± 2.00" in text
    assert "within tolerance" in text
