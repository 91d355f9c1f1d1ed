"""Exact resume: a run restored from any checkpoint ends with the bit-identical accuracy matrix.

Two levels:

* in-process: every checkpoint of an uninterrupted run is kept; a fresh learner restored from
  several of them (mid-epoch, epoch end, task end, last) must reproduce the reference matrix;
* end-to-end (slow): the CLI in a subprocess is SIGKILLed at several points (injected from
  outside the package by ``tests/faulty_cli.py``), resumed with ``forgetless run --resume DIR``,
  and its ``metrics.json`` must equal the uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from forgetless.config import make_config
from forgetless.strategies import STRATEGIES, discover, names_for
from forgetless.training import checkpoint as ckpt
from forgetless.training.experiment import build_learner, load_scenario, resolve
from forgetless.training.result import RunResult

discover()
CORE = ["naive", "ewc", "er", "packnet", "progressive"]
"""Lower bound, a penalty, a replay method and the architecture methods (mask / new columns)."""


def _scenario_for(name: str) -> str:
    cls = STRATEGIES[name]
    return "task" if "task" in cls.scenarios else cls.scenarios[0]


def _needs(name: str) -> None:
    if name not in STRATEGIES:
        pytest.skip(f"strategy {name!r} is not registered yet")


def _config(name: str, **extra):
    values = dict(
        benchmark="split-digits",
        scenario=_scenario_for(name),
        strategies=[name],
        epochs=2,
        batch_size=32,
        hidden=[48, 48],
        checkpoint_every=5,
        threads=1,
        buffer_size=60,
    )
    values.update(extra)
    return resolve(make_config(**values))


def _all_checkpoints(config, name: str, folder: Path) -> tuple[np.ndarray, list[Path]]:
    """Run uninterrupted, saving every checkpoint into its own folder; the matrix and folders."""
    result, folders = _all_checkpoint_results(config, name, folder)
    return result.matrix, folders


def _all_checkpoint_results(config, name: str, folder: Path) -> tuple[RunResult, list[Path]]:
    """:func:`_all_checkpoints` with the whole result (the task-IL matrix of a class-IL run too)."""
    scenario = load_scenario(config, config.seed)
    learner = build_learner(config, scenario, name, config.seed)
    folders: list[Path] = []

    def keep(state: dict) -> None:
        run_dir = folder / f"{len(folders):03d}"
        run_dir.mkdir(parents=True)
        experiment = {
            "run": {"strategy": name, "seed": config.seed},
            "completed": [],
            "config": config.model_dump(mode="json"),
        }
        ckpt.save_checkpoint(run_dir, state.pop("model"), state, experiment)
        folders.append(run_dir)

    learner.on_checkpoint = keep
    return learner.run(), folders


def _resume_from(config, name: str, run_dir: Path) -> np.ndarray:
    return _resume_result(config, name, run_dir).matrix


def _resume_result(config, name: str, run_dir: Path) -> RunResult:
    """The result of a fresh learner restored from the checkpoint in ``run_dir`` and run to the end."""
    saved = ckpt.load_checkpoint(run_dir)
    assert saved is not None
    torch.manual_seed(12345)  # the global RNG must come from the checkpoint, not from here
    learner = build_learner(config, load_scenario(config, config.seed), name, config.seed)
    learner.load_checkpoint(saved.learner)
    return learner.run()


def _check_exact_resume(name: str, tmp_path: Path, picks: int = 4) -> None:
    config = _config(name)
    reference, folders = _all_checkpoint_results(config, name, tmp_path)
    assert len(folders) > 5
    where = [ckpt.load_checkpoint(f).where() for f in folders]
    assert any("step" in w for w in where) and any("start of task" in w for w in where)
    chosen = sorted({0, 3, len(folders) // 2, len(folders) // 2 + 1, len(folders) - 2})[: picks + 1]
    for index in chosen:
        resumed = _resume_result(config, name, folders[index])
        assert np.array_equal(resumed.matrix, reference.matrix), f"{name}: resume from {where[index]} differs"
        got, expected = resumed.task_il_matrix, reference.task_il_matrix  # class-IL runs only
        same = got is None if expected is None else got is not None and np.array_equal(got, expected)
        assert same, f"{name}: task-IL from {where[index]} differs"


@pytest.mark.parametrize("name", CORE)
def test_in_process_resume_is_exact(name: str, tmp_path: Path) -> None:
    _needs(name)
    _check_exact_resume(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(names_for("run")) - set(CORE)))
def test_every_strategy_resumes_exactly(name: str, tmp_path: Path) -> None:
    _check_exact_resume(name, tmp_path, picks=2)


def test_checkpoint_refuses_mismatched_strategies(tmp_path: Path) -> None:
    config = _config("naive")
    _, folders = _all_checkpoints(config.model_copy(update={"tasks": 2}), "naive", tmp_path)
    saved = ckpt.load_checkpoint(folders[-1])
    other = build_learner(config, load_scenario(config, 0), "joint", 0)
    with pytest.raises(ckpt.CheckpointError, match="strategies"):
        other.load_checkpoint(saved.learner)


def test_tree_round_trip_keeps_types() -> None:
    tree = {
        "state": {0: {"step": torch.tensor(3.0), "m": torch.arange(4)}},
        "betas": (0.9, 0.999),
        "nested": [{"a": torch.ones(2, 2, dtype=torch.float64)}, None, "x", 1.5, True],
        "__tensor__": 1,
        "array": np.arange(3, dtype=np.int32),
        "empty": torch.zeros(0),
    }
    skeleton, tensors = ckpt.flatten_tree(tree)
    json.dumps(skeleton)
    back = ckpt.unflatten_tree(json.loads(json.dumps(skeleton)), tensors)
    assert set(back["state"]) == {0} and torch.equal(back["state"][0]["m"], torch.arange(4))
    assert back["betas"] == (0.9, 0.999) and back["__tensor__"] == 1
    assert back["nested"][0]["a"].dtype == torch.float64 and back["nested"][1:] == [
        None,
        "x",
        1.5,
        True,
    ]
    assert isinstance(back["array"], np.ndarray) and back["array"].dtype == np.int32
    with pytest.raises(ckpt.CheckpointError, match="neither a tensor nor a JSON value"):
        ckpt.flatten_tree({"bad": object()})


# -- end to end: the CLI killed with SIGKILL and resumed -------------------------------------
FAULTY_CLI = str(Path(__file__).with_name("faulty_cli.py"))
KILL_AT_STEP, KILL_SIGNAL, KILL_IN_CHECKPOINT = "FAULT_KILL_AT_STEP", "FAULT_SIGNAL", "FAULT_KILL_IN_CHECKPOINT"


def _cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FAULT_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, FAULTY_CLI, *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    """Children of a background job inherit an ignored SIGINT; a terminal's Ctrl-C is not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli_args(strategies: str, scenario: str, out: Path, seeds: int = 1) -> list[str]:
    return [
        "run",
        "--benchmark",
        "split-digits",
        "--scenario",
        scenario,
        "--strategies",
        strategies,
        "--seeds",
        str(seeds),
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--hidden",
        "48,48",
        "--checkpoint-every",
        "5",
        "--buffer-size",
        "60",
        "--threads",
        "1",
        "--quiet",
        "--out",
        str(out),
    ]


def _matrices(out: Path) -> dict[tuple[str, int], np.ndarray]:
    data = json.loads((out / "metrics.json").read_text())
    return {
        (name, run["seed"]): np.asarray(run["accuracy_matrix"]) for name, runs in data["runs"].items() for run in runs
    }


def _killed_chain(args: list[str], out: Path, kills: list[int]) -> list[str]:
    """Run, SIGKILL after ``kills[0]`` steps, resume and kill again after ``kills[1]``, ...

    Returns where each resume started from (``resuming ... from ...`` lines).
    """
    resumed_from = []
    first = _cli(args, {KILL_AT_STEP: str(kills[0])})
    assert first.returncode == -signal.SIGKILL, first.stderr
    for steps in [*kills[1:], None]:
        env = {KILL_AT_STEP: str(steps)} if steps else {}
        step = _cli(["run", "--resume", str(out), "--threads", "1"], env)
        resumed_from += [line for line in step.stdout.splitlines() if line.startswith("resuming")]
        if steps:
            assert step.returncode == -signal.SIGKILL, step.stderr
        else:
            assert step.returncode == 0, step.stderr
    return resumed_from


KILL_POINTS = [3, 31, 44]
"""Steps each process lives: before any checkpoint, mid-task (task 1), mid-task (task 3)."""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["naive", "ewc", "er", "packnet"])
def test_sigkill_and_resume_is_bit_identical(name: str, tmp_path: Path) -> None:
    _needs(name)
    scenario = _scenario_for(name)
    reference = tmp_path / "reference"
    done = _cli(_cli_args(name, scenario, reference))
    assert done.returncode == 0, done.stderr
    killed = tmp_path / "killed"
    resumed_from = _killed_chain(_cli_args(name, scenario, killed), killed, KILL_POINTS)
    assert any("step" in line for line in resumed_from), resumed_from  # a mid-task resume
    expected, got = _matrices(reference), _matrices(killed)
    assert expected.keys() == got.keys()
    for key in expected:
        assert np.array_equal(expected[key], got[key]), key


@pytest.mark.slow
def test_kill_inside_checkpoint_write_keeps_previous(tmp_path: Path) -> None:
    args = _cli_args("naive", "class", tmp_path / "reference")
    assert _cli(args).returncode == 0
    out = tmp_path / "killed"
    first = _cli(_cli_args("naive", "class", out), {KILL_IN_CHECKPOINT: "7"})
    assert first.returncode == -signal.SIGKILL
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".checkpoint.tmp")]
    assert leftovers, "the kill should have happened inside the write"
    saved = ckpt.load_checkpoint(out)  # the 6th checkpoint, complete
    assert saved is not None and saved.learner["loop"]["global_step"] > 0
    assert _cli(["run", "--resume", str(out)]).returncode == 0
    assert np.array_equal(_matrices(tmp_path / "reference")[("naive", 0)], _matrices(out)[("naive", 0)])


@pytest.mark.slow
def test_finished_runs_are_not_rerun(tmp_path: Path) -> None:
    """Two combinations x two seeds, killed in the 2nd and the 4th run: finished runs are kept."""
    reference = tmp_path / "reference"
    assert _cli(_cli_args("naive,ewc", "class", reference, seeds=2)).returncode == 0
    out = tmp_path / "killed"
    args = _cli_args("naive,ewc", "class", out, seeds=2)
    assert _cli(args, {KILL_AT_STEP: "130"}).returncode == -signal.SIGKILL
    before = json.loads((out / "metrics.json").read_text())["runs"]
    assert list(before) == ["naive"] and len(before["naive"]) == 1
    resumed = _cli(["run", "--resume", str(out)], {KILL_AT_STEP: "150"})
    assert resumed.returncode == -signal.SIGKILL
    assert _cli(["run", "--resume", str(out)]).returncode == 0
    after = json.loads((out / "metrics.json").read_text())["runs"]
    # timings differ between runs: equal timings mean the finished run was not trained again
    assert after["naive"][0]["train_seconds_per_task"] == before["naive"][0]["train_seconds_per_task"]
    expected, got = _matrices(reference), _matrices(out)
    assert expected.keys() == got.keys() and len(got) == 4
    for key in expected:
        assert np.array_equal(expected[key], got[key]), key
    assert _same_summary_but_wall(reference, out)


def _same_summary_but_wall(a: Path, b: Path) -> bool:
    def strip(path: Path) -> dict:
        summary = json.loads((path / "metrics.json").read_text())["summary"]
        return {n: {k: v for k, v in m.items() if k != "wall_seconds"} for n, m in summary.items()}

    return strip(a) == strip(b)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    assert _cli(_cli_args("ewc", "class", reference)).returncode == 0
    out = tmp_path / "interrupted"
    env = {KILL_AT_STEP: "23", KILL_SIGNAL: "INT"}
    stopped = _cli(_cli_args("ewc", "class", out), env)
    assert stopped.returncode == 130, stopped.stderr
    assert f"forgetless run --resume {out}" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    saved = ckpt.load_checkpoint(out)
    assert saved is not None and saved.learner["loop"]["global_step"] == 23  # saved at once
    assert _cli(["run", "--resume", str(out)]).returncode == 0
    assert np.array_equal(_matrices(reference)[("ewc", 0)], _matrices(out)[("ewc", 0)])


@pytest.mark.slow
def test_external_sigint_during_training(tmp_path: Path) -> None:
    """A real Ctrl-C from outside (timing-based): exit 130, a checkpoint, the resume hint."""
    out = tmp_path / "run"
    args = _cli_args("naive", "class", out)
    args[args.index("--epochs") + 1] = "400"  # far longer than the signal takes to arrive
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAULT_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "forgetless.cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_default_sigint,
    )
    import time

    deadline = time.time() + 120
    while not (out / "checkpoint").is_dir() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    assert ckpt.load_checkpoint(out) is not None


# -- review defects ---------------------------------------------------------------------------
def _run_with_flags(learner) -> tuple[np.ndarray, list[bool]]:
    """The matrix of ``learner.run()`` and the ``requires_grad`` of every parameter at the end."""
    matrix = learner.run().matrix
    return matrix, [p.requires_grad for p in learner.model.parameters()]


def test_mid_task_resume_with_gradual_unfreezing_unfreezes_the_remaining_levels(tmp_path: Path) -> None:
    """Checkpoints at step 5 of a task fall between the unfreezings at steps 4 and 8: the
    resumed run must still unfreeze the last level at step 8 and release everything after."""
    config = _config("naive", unfreeze_every=4, tasks=3)
    scenario = load_scenario(config, config.seed)
    learner = build_learner(config, scenario, "naive", config.seed)
    folders: list[Path] = []

    def keep(state: dict) -> None:
        run_dir = tmp_path / f"{len(folders):03d}"
        run_dir.mkdir()
        experiment = {"run": {"strategy": "naive", "seed": 0}, "completed": [], "config": {}}
        ckpt.save_checkpoint(run_dir, state.pop("model"), state, experiment)
        folders.append(run_dir)

    learner.on_checkpoint = keep
    reference, reference_flags = _run_with_flags(learner)
    assert all(reference_flags)
    saved_points = [ckpt.load_checkpoint(f) for f in folders]
    mid_task = [s for s in saved_points if s.learner["loop"]["in_task"] and s.learner["loop"]["step"] == 5]
    assert len(mid_task) == 3, "one checkpoint between two unfreezings per task"
    for saved in mid_task:
        assert not all(saved.learner["loop"]["trainable"])  # a level is still frozen there
        resumed = build_learner(config, load_scenario(config, config.seed), "naive", config.seed)
        resumed.load_checkpoint(saved.learner)
        matrix, flags = _run_with_flags(resumed)
        assert flags == reference_flags, f"resume from {saved.where()}: levels left frozen"
        assert np.array_equal(matrix, reference), f"resume from {saved.where()} differs"
        report = resumed.result.report["unfreeze"]["unfrozen_at_steps"]
        assert report == learner.result.report["unfreeze"]["unfrozen_at_steps"]


def test_resume_without_a_checkpoint_refuses_finished_runs_of_another_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run_experiment(resume=True)`` reuses the runs of ``metrics.json`` only when the run
    folder's config is this one (the CLI checks its flags; a library caller must be checked too)."""
    from forgetless.reports.results import save_experiment
    from forgetless.training.experiment import run_experiment
    from forgetless.training.learner import Learner

    config_a = _config("naive", tasks=2, epochs=1, checkpoint_every=None)
    finished = run_experiment(config_a)
    save_experiment(finished, tmp_path, plots_too=False)
    assert ckpt.load_checkpoint(tmp_path) is None  # no checkpoint: only metrics.json tells
    config_b = config_a.model_copy(update={"lr": 0.5})
    with pytest.raises(ckpt.CheckpointError, match=rf"lr: {config_a.lr!r} in the run, 0.5 now"):
        run_experiment(config_b, run_dir=tmp_path, resume=True)
    (tmp_path / "config.yaml").unlink()
    with pytest.raises(ckpt.CheckpointError, match="config.yaml"):
        run_experiment(config_a, run_dir=tmp_path, resume=True)
    # with its own config, the finished run is reused, not trained again
    save_experiment(finished, tmp_path, plots_too=False)
    monkeypatch.setattr(Learner, "run", lambda self, progress=None: pytest.fail("trained again"))
    again = run_experiment(config_a, run_dir=tmp_path, resume=True)
    assert np.allclose(again.runs["naive"][0].matrix, finished.runs["naive"][0].matrix, atol=1e-6)
