"""Reliability: atomic writes, safe loading, one clear line for bad input, NaN losses, fuzzing.

The CLI runs in-process (``forgetless.cli.main.main`` with a patched ``sys.argv``); exit codes
are the documented ones: 0 done, 1 internal error (never expected here), 2 bad input, 130
interrupted.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cli_helpers import FAST, one_error_line, run_cli
from cli_helpers import finished_run as run_to_the_end
from forgetless import io as fio
from forgetless.config import RunConfig, load_config_file, make_config
from forgetless.data.benchmarks import build_scenario
from forgetless.errors import ConfigError, NumericalError, OutputError
from forgetless.models import build_model
from forgetless.strategies import STRATEGIES, discover
from forgetless.strategies.base import Strategy
from forgetless.training import checkpoint as ckpt
from forgetless.training.learner import Learner, RunResult

discover()
SRC = Path(__file__).resolve().parents[1] / "src" / "forgetless"


# -- atomic writes ----------------------------------------------------------------------------
def test_failed_rename_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "metrics.json"
    fio.atomic_write_json(target, {"version": 1})

    def dies(*args: Any) -> None:  # a kill/power cut at the rename
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fio.os, "replace", dies)
    with pytest.raises(OutputError, match="cannot write"):
        fio.atomic_write_json(target, {"version": 2})
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left


def test_interrupted_write_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "metrics.json"
    fio.atomic_write_json(target, {"version": 1})

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(fio.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fio.atomic_write_json(target, {"version": 2})
    assert json.loads(target.read_text()) == {"version": 1}


def _tiny_checkpoint(run_dir: Path, value: float) -> None:
    experiment = {"run": {"strategy": "naive", "seed": 0}, "completed": [], "config": {}}
    learner = {
        "loop": {"task_index": 1},
        "value": torch.tensor(value),
        "strategies": [],
        "optimizer": None,
    }
    ckpt.save_checkpoint(run_dir, {"w": torch.full((2,), value)}, learner, experiment)


@pytest.mark.parametrize("fail_at", [1, 2])
def test_checkpoint_swap_interrupted_keeps_a_complete_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: int
) -> None:
    """A failure at either rename of the folder swap leaves one complete checkpoint readable."""
    _tiny_checkpoint(tmp_path, 1.0)
    real, calls = os.replace, []

    def flaky(src: Any, dst: Any) -> None:
        calls.append(1)
        if len(calls) == fail_at:
            raise OSError(errno.EIO, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(fio.os, "replace", flaky)
    with pytest.raises(OutputError):
        _tiny_checkpoint(tmp_path, 2.0)
    monkeypatch.setattr(fio.os, "replace", real)
    saved = ckpt.load_checkpoint(tmp_path)
    assert saved is not None and float(saved.learner["value"]) == 1.0
    assert torch.equal(saved.learner["model"]["w"], torch.ones(2))
    _tiny_checkpoint(tmp_path, 3.0)  # the next save cleans up and wins
    assert float(ckpt.load_checkpoint(tmp_path).learner["value"]) == 3.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_existing_run_folder_needs_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "metrics.json").write_text("{}")
    code, _, err = run_cli(["run", *FAST, "--strategies", "naive", "--out", str(tmp_path)], capsys)
    assert code == 2 and "--force" in one_error_line(err)
    assert (tmp_path / "metrics.json").read_text() == "{}"


# -- safe loading -----------------------------------------------------------------------------
class _Payload:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = run_to_the_end(tmp_path_factory.mktemp("finished") / "run", "--strategies", "naive")
    assert (out / ckpt.CHECKPOINT / "model.safetensors").is_file()
    return out


@pytest.mark.parametrize("victim", ["model.safetensors", "learner.safetensors", "learner.json"])
@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickle_is_refused_without_running(
    finished_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    victim: str,
    protocol: int,
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    marker = tmp_path / "pwned"
    (run / ckpt.CHECKPOINT / victim).write_bytes(pickle.dumps(_Payload(marker), protocol=protocol))
    code, _, err = run_cli(["run", "--resume", str(run)], capsys)
    line = one_error_line(err)
    assert code == 2
    assert victim in line and ("refusing" in line or "not a valid" in line or "not valid" in line)
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload is real: unpickling runs it
    assert marker.exists()


def test_no_unsafe_loader_in_the_package() -> None:
    unsafe = re.compile(
        r"pickle\.loads?\(|torch\.load\((?![^)]*weights_only=True)|yaml\.load\(|"
        r"allow_pickle=True|yaml\.unsafe_load|marshal\.loads?\("
    )
    offenders = [
        f"{path.relative_to(SRC)}:{n}"
        for path in SRC.rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if unsafe.search(line)
    ]
    assert not offenders, offenders


def test_corrupt_checkpoint_gives_one_line(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    model = run / ckpt.CHECKPOINT / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100])  # truncated
    code, _, err = run_cli(["run", "--resume", str(run)], capsys)
    assert code == 2 and "corrupt" in one_error_line(err)


# -- incompatible resume ----------------------------------------------------------------------
def test_resume_with_contradicting_flags_says_what_differs(
    finished_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["run", "--resume", str(finished_run), "--lr", "0.5", "--set", "ewc.ewc_lambda=3"], capsys)
    line = one_error_line(err)
    assert code == 2 and "lr: 0.001 in the run, 0.5 now" in line and "params" in line
    # repeating the saved values (and changing only where things run) is fine
    code, out, err = run_cli(
        [
            "run",
            "--resume",
            str(finished_run),
            "--epochs",
            "1",
            "--threads",
            "1",
            "--strategies",
            "naive",
        ],
        capsys,
    )
    assert code == 0, err


def test_resume_checkpoint_from_another_config(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["batch_size"] = 7
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    code, _, err = run_cli(["run", "--resume", str(run)], capsys)
    assert code == 2 and "batch_size: 64 in the run, 7 now" in one_error_line(err)


def test_resume_of_a_folder_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["run", "--resume", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "config.yaml" in one_error_line(err)


# -- output folder problems -------------------------------------------------------------------
def test_unwritable_output_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = run_cli(["run", *FAST, "--strategies", "naive", "--out", str(blocker / "run")], capsys)
    assert code == 2 and "--out" in one_error_line(err)


def test_disk_full_mid_experiment_keeps_finished_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # the disk fills up once the first run's results are written
        if (out / "metrics.json").exists():
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(fio.os, "fsync", fsync)
    code, _, err = run_cli(["run", *FAST, "--strategies", "naive,joint", "--out", str(out)], capsys)
    line = one_error_line(err)
    assert code == 2 and "disk full" in line and f"forgetless run --resume {out}" in line
    saved = json.loads((out / "metrics.json").read_text())
    assert list(saved["runs"]) == ["naive"]  # the finished run is kept, readable
    assert ckpt.load_checkpoint(out) is not None
    monkeypatch.setattr(fio.os, "fsync", real_fsync)
    code, _, err = run_cli(["run", "--resume", str(out)], capsys)
    assert code == 0, err
    assert list(json.loads((out / "metrics.json").read_text())["runs"]) == ["naive", "joint"]


# -- numerical faults -------------------------------------------------------------------------
class _NanAtTask2(Strategy):
    name = "nan-at-task-2"
    summary = "test only: a NaN loss at task 2, step 3"

    def loss(self, ctx, batch, logits):
        if ctx.task_index == 2 and ctx.step == 3:
            return torch.tensor(float("nan"))
        return None


def test_nan_loss_names_task_and_step_and_keeps_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(STRATEGIES, _NanAtTask2.name, _NanAtTask2)
    out = tmp_path / "run"
    args = [
        "run",
        *FAST,
        "--tasks",
        "4",
        "--strategies",
        f"naive,{_NanAtTask2.name}",
        "--checkpoint-every",
        "2",
        "--out",
        str(out),
    ]
    code, _, err = run_cli(args, capsys)
    line = one_error_line(err)
    assert code == 2
    assert "task 2, step 3" in line and "lower the learning rate" in line
    assert list(json.loads((out / "metrics.json").read_text())["runs"]) == ["naive"]
    partial = json.loads((out / "partial_run.json").read_text())
    assert partial["strategy"] == _NanAtTask2.name and len(partial["accuracy_matrix"]) == 2
    saved = ckpt.load_checkpoint(out)  # last good checkpoint: task 2 after 2 steps
    assert saved.run == (_NanAtTask2.name, 0)
    assert saved.learner["loop"]["task_index"] == 2 and saved.learner["loop"]["step"] == 2


@pytest.mark.skipif("ewc" not in STRATEGIES, reason="ewc not registered")
def test_huge_penalty_stops_with_advice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    args = [
        "run",
        *FAST,
        "--tasks",
        "3",
        "--strategies",
        "ewc",
        "--lr",
        "100",
        "--set",
        "ewc.ewc_lambda=1e38",
        "--out",
        str(out),
    ]
    code, _, err = run_cli(args, capsys)
    line = one_error_line(err)
    assert code == 2 and re.search(r"loss became (inf|nan) at task \d+, step \d+", line), line
    assert "lower the learning rate" in line and "ewc_lambda" in line
    assert (out / "partial_run.json").is_file() and ckpt.load_checkpoint(out) is not None


# -- config quality & fuzzing -----------------------------------------------------------------
def test_invalid_values_name_the_field() -> None:
    for values, field in [
        ({"lr": -1}, "lr"),
        ({"epochs": 0}, "epochs"),
        ({"hidden": [0]}, "hidden"),
        ({"scenario": "tusk"}, "scenario"),
        ({"nonsense": 1}, "nonsense"),
        ({"params": {"ewc": 3}}, "params.ewc"),
    ]:
        with pytest.raises(ConfigError) as info:
            make_config(**values)
        assert str(info.value).startswith(f"invalid configuration: {field}"), str(info.value)
        assert "\n" not in str(info.value)


JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
FIELDS = sorted(RunConfig.model_fields)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), VALUES, max_size=6))
def test_fuzz_config_values(values: dict[str, Any]) -> None:
    try:
        config = make_config(**values)
    except ConfigError as error:
        assert "\n" not in str(error) and str(error).startswith("invalid configuration")
    else:
        assert isinstance(config, RunConfig)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=80) | VALUES.map(lambda v: yaml.safe_dump(v)))
def test_fuzz_config_files(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(text.encode("utf-8", errors="replace"))
    try:
        data = load_config_file(path)
    except ConfigError as error:
        assert "\n" not in str(error)
        return
    try:
        make_config(**data) if all(isinstance(k, str) for k in data) else None
    except ConfigError as error:
        assert "\n" not in str(error)


def _option(name: str, values: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    return values.map(lambda v: [name, v])


GARBAGE = st.text(alphabet="abc-=.,:0123456789 ", max_size=6)
INTS = st.integers(-3, 4).map(str) | GARBAGE
FLOATS = st.sampled_from(["0", "0.001", "-1", "1e9", "nan", "inf", "0.5"]) | GARBAGE
OPTIONS = st.lists(
    st.one_of(
        _option(
            "--benchmark",
            st.sampled_from(["split-digits", "split-digit", "nope", "split-cifar100"]),
        ),
        _option("--scenario", st.sampled_from(["task", "domain", "class", "tusk", ""])),
        _option(
            "--strategies",
            st.sampled_from(
                [
                    "naive",
                    "naive,joint",
                    "ewc",
                    "er",
                    "ewc+er",
                    "packnet",
                    "progressive",
                    "nave",
                    "naive+naive",
                    "",
                    ",",
                    "ewc+",
                    "lora",
                ]
            ),
        ),
        _option("--seeds", INTS),
        _option("--seed", INTS),
        _option("--tasks", INTS),
        _option("--epochs", st.sampled_from(["1", "0", "-1", "x"])),
        _option("--batch-size", INTS),
        _option("--lr", FLOATS),
        _option("--optimizer", st.sampled_from(["adam", "sgd", "rmsprop"])),
        _option("--model", st.sampled_from(["mlp", "cnn", "resnet"])),
        _option("--hidden", st.sampled_from(["16", "16,16", "0", "a,b", "", "-3"])),
        _option("--buffer-size", INTS),
        _option("--validation", FLOATS),
        _option("--layerwise-lr-decay", FLOATS),
        _option("--warmup-steps", INTS),
        _option("--lr-schedule", st.sampled_from(["constant", "cosine", "linear"])),
        _option("--unfreeze-every", INTS),
        _option("--stop-if-drop", FLOATS),
        _option("--eval-every", INTS),
        _option("--checkpoint-every", INTS),
        _option("--device", st.sampled_from(["cpu", "cuda", "cuda:7", "tpu", "cpu:0", "", "mps"])),
        _option("--threads", INTS),
        _option(
            "--set",
            st.sampled_from(
                [
                    "ewc.ewc_lambda=-1",
                    "ewc.ewc_lambda=10",
                    "x",
                    "er.nope=1",
                    "nave.a=1",
                    "ewc.ewc_lambda=[1",
                    "ewc.=3",
                ]
            ),
        ),
        st.sampled_from([["--force"], ["--no-download"], ["--bogus"], ["--lr"], ["extra-arg"]]),
    ),
    max_size=6,
).map(lambda groups: [token for group in groups for token in group])


VALID_OPTIONS = st.lists(
    st.one_of(
        _option("--scenario", st.sampled_from(["task", "domain", "class"])),
        _option(
            "--strategies",
            st.sampled_from(
                [
                    "naive",
                    "naive,joint",
                    "ewc",
                    "er",
                    "ewc+er",
                    "packnet",
                    "progressive",
                    "lwf",
                    "si",
                    "agem",
                    "der",
                    "mas",
                    "l2sp",
                ]
            ),
        ),
        _option("--seeds", st.sampled_from(["1", "2"])),
        _option("--seed", st.sampled_from(["0", "3"])),
        _option("--tasks", st.sampled_from(["1", "2", "5"])),
        _option("--batch-size", st.sampled_from(["1", "32", "500"])),
        _option("--lr", st.sampled_from(["0.1", "1e-4"])),
        _option("--optimizer", st.sampled_from(["adam", "sgd"])),
        _option("--model", st.sampled_from(["mlp", "cnn"])),
        _option("--hidden", st.sampled_from(["8", "8,8"])),
        _option("--buffer-size", st.sampled_from(["1", "50"])),
        _option("--validation", st.sampled_from(["0", "0.2", "0.9"])),
        _option("--layerwise-lr-decay", st.sampled_from(["0.5", "1"])),
        _option("--warmup-steps", st.sampled_from(["0", "3"])),
        _option("--lr-schedule", st.sampled_from(["constant", "cosine"])),
        _option("--unfreeze-every", st.sampled_from(["1", "5"])),
        _option("--stop-if-drop", st.sampled_from(["0.1", "1"])),
        _option("--checkpoint-every", st.sampled_from(["1", "5"])),
        _option("--set", st.sampled_from(["ewc.ewc_lambda=10", "er.replay_batch_size=8"])),
        st.sampled_from([["--force"], ["--no-download"]]),
    ),
    max_size=5,
).map(lambda groups: [token for group in groups for token in group])
"""Well-formed values only: these cases get through validation to building the runs."""


@pytest.fixture
def fake_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every run 'trains' instantly (the CLI's input handling is what is fuzzed), no plots."""

    def run(self: Learner, progress: Any = None) -> RunResult:
        tasks = self.scenario.num_tasks
        return RunResult(self.name, self.seed, np.full((tasks, tasks), 0.5), np.zeros(tasks))

    monkeypatch.setattr(Learner, "run", run)
    from forgetless.reports import plots

    for name in ("accuracy_heatmaps", "accuracy_curves", "strategy_bars"):
        monkeypatch.setattr(plots, name, lambda *args, **kwargs: None)
    from forgetless.reports.plot_worker import PlotWorker

    monkeypatch.setattr(PlotWorker, "__init__", lambda self: setattr(self, "process", None))  # plots drawn here


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    options=OPTIONS | VALID_OPTIONS,
    where=st.sampled_from(["fresh", "existing", "file", "resume", "resume-missing"]),
)
def test_fuzz_cli_never_shows_a_traceback(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fake_training: None,
    options: list[str],
    where: str,
) -> None:
    counter = getattr(test_fuzz_cli_never_shows_a_traceback, "counter", 0) + 1
    test_fuzz_cli_never_shows_a_traceback.counter = counter  # type: ignore[attr-defined]
    root = tmp_path / f"case{counter}"
    root.mkdir()
    if where == "fresh":
        tail = ["--out", str(root / "run")]
    elif where == "existing":
        (root / "metrics.json").write_text("{}")
        tail = ["--out", str(root)]
    elif where == "file":
        (root / "f").write_text("x")
        tail = ["--out", str(root / "f")]
    elif where == "resume":
        assert run_cli(["run", *FAST, "--strategies", "naive", "--out", str(root / "r")], capsys)[0] == 0
        tail = ["--resume", str(root / "r")]
    else:
        tail = ["--resume", str(root / "missing")]
    code, out, err = run_cli(["run", "--tasks", "2", "--quiet", *options, *tail], capsys)
    event(f"exit {code} ({where})")
    assert "Traceback" not in out + err
    assert "internal error" not in err, err
    assert code in (0, 2), (code, err)
    if code == 2:
        assert one_error_line(err).startswith("error:")


@pytest.mark.parametrize("every", [1, 5, 64])
def test_deferred_nan_check_names_the_first_bad_step(every: int) -> None:
    """The accelerator path (flag kept on the device, read every k steps) reports the same step.

    Forced on CPU by setting ``nonfinite.check_every``; the end-of-task check catches a NaN that falls
    between two reads.
    """
    config = make_config(benchmark="split-digits", scenario="class", epochs=1, hidden=[16], tasks=5, batch_size=16)
    scenario = build_scenario("split-digits", "class", 5, seed=0)
    model = build_model("mlp", scenario.input_shape, scenario.head_sizes, False, [16])
    learner = Learner(scenario, model, [_NanAtTask2()], config)
    learner.nonfinite.check_every = every
    with pytest.raises(NumericalError, match=r"loss became nan at task 2, step 3 "):
        learner.run()
    assert len(learner.rows) == 2  # the completed tasks' rows are kept


# -- checkpoint integrity ---------------------------------------------------------------------
def _flip_a_byte(path: Path, offset_from_end: int) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("victim", "offset"),
    [("model.safetensors", 7), ("strategies.safetensors", 3), ("learner.json", 40), ("experiment.json", 20)],
)
def test_a_changed_byte_anywhere_in_a_checkpoint_is_refused(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], victim: str, offset: int
) -> None:
    """Bytes flipped inside tensor data (which safetensors and JSON parse without complaint)
    or an edited JSON value resume into different results unless the content hash catches them."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    target = run / ckpt.CHECKPOINT / victim
    if target.stat().st_size <= offset:
        pytest.skip(f"{victim} is too small here")
    _flip_a_byte(target, offset)
    code, _, err = run_cli(["run", "--resume", str(run)], capsys)
    line = one_error_line(err)
    assert code == 2 and victim in line and "SHA-256" in line and "refusing" in line


def test_a_checkpoint_without_its_manifest_is_refused(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / ckpt.CHECKPOINT / ckpt.MANIFEST).unlink()
    code, _, err = run_cli(["run", "--resume", str(run)], capsys)
    assert code == 2 and ckpt.MANIFEST in one_error_line(err)


def test_manifest_lists_every_file_with_its_hash(finished_run: Path) -> None:
    import hashlib

    folder = finished_run / ckpt.CHECKPOINT
    manifest = json.loads((folder / ckpt.MANIFEST).read_text())
    assert manifest["version"] == ckpt.VERSION
    names = {p.name for p in folder.iterdir()} - {ckpt.MANIFEST}
    assert set(manifest["files"]) == names and "model.safetensors" in names
    for name, recorded in manifest["files"].items():
        assert recorded["sha256"] == hashlib.sha256((folder / name).read_bytes()).hexdigest()


@pytest.mark.parametrize("dangling", [False, True])
def test_a_symlinked_checkpoint_folder_is_replaced_by_the_link_not_the_target(tmp_path: Path, dangling: bool) -> None:
    """The checkpoint written through a link twice: each swap replaces the link, the linked
    folder is left as it was, and no stale previous-version link blocks the next swap."""
    run = tmp_path / "run"
    run.mkdir()
    elsewhere = tmp_path / "elsewhere"
    if not dangling:
        elsewhere.mkdir()
        (elsewhere / "keep.txt").write_text("not ours")
    (run / ckpt.CHECKPOINT).symlink_to(elsewhere, target_is_directory=True)
    state = {"model": {"w": torch.zeros(2)}, "learner": {}, "experiment": {"run": {"strategy": "naive", "seed": 0}}}
    for value in (1.0, 2.0):
        ckpt.save_checkpoint(run, {"w": torch.full((2,), value)}, {"loop": {}}, state["experiment"])
        loaded = ckpt.load_checkpoint(run)
        assert loaded is not None and float(loaded.learner["model"]["w"][0]) == value
    assert not (run / ckpt.CHECKPOINT).is_symlink()
    assert not fio.previous_folder(run / ckpt.CHECKPOINT).exists()
    if not dangling:
        assert (elsewhere / "keep.txt").read_text() == "not ours"
