"""Re-signed checkpoint edits that a schema of types cannot see but the run's own shapes can
(found by the hostile probe, issue #15): integer weights or Fisher, optimizer settings of another
type, an emptied or misshapen optimizer state, a misshapen replay buffer, penalty terms without
parameters or one too many. Each is refused in one line naming the file, before training.

The checkpoint is a real one: ``forgetless run --strategies ewc+er`` SIGKILLed in its second
task, between two ``--checkpoint-every`` checkpoints (EWC holds one term, ER a buffer, Adam its
moments).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from cli_helpers import one_error_line, run_cli
from forgetless.training import checkpoint as ckpt

pytestmark = pytest.mark.slow

FAULTY_CLI = str(Path(__file__).with_name("faulty_cli.py"))


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fit") / "run"
    args = ["run", "--benchmark", "split-digits", "--strategies", "ewc+er", "--epochs", "2", "--batch-size", "32"]
    args += ["--hidden", "48,48", "--checkpoint-every", "5", "--buffer-size", "60", "--threads", "1", "--quiet"]
    done = subprocess.run(
        [sys.executable, FAULTY_CLI, *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("FAULT_")}, "FAULT_KILL_AT_STEP": "27"},
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    loop = json.loads((out / "checkpoint" / "learner.json").read_text())["data"]["loop"]
    assert loop["in_task"] and loop["task_index"] == 1, loop
    return out


def _tensor_keys(tree: Any, path: tuple = ()) -> list[tuple[tuple, str]]:
    """``(path, safetensors key)`` of every tensor reference in a JSON part."""
    if isinstance(tree, dict):
        if set(tree) == {"__tensor__"}:
            return [(path, tree["__tensor__"])]
        return [hit for k, v in tree.items() for hit in _tensor_keys(v, (*path, k))]
    if isinstance(tree, list):
        return [hit for i, v in enumerate(tree) for hit in _tensor_keys(v, (*path, i))]
    return []


def _edit_tensor(folder: Path, part: str, where: str, change: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Replace the first tensor of ``part`` whose JSON path contains ``where``."""
    document = json.loads((folder / f"{part}.json").read_text())
    key = next(k for path, k in _tensor_keys(document["data"]) if where in ".".join(map(str, path)))
    tensors = load_file(str(folder / f"{part}.safetensors"))
    tensors[key] = change(tensors[key]).contiguous()
    save_file(tensors, str(folder / f"{part}.safetensors"))


def _edit_json(folder: Path, part: str, change: Callable[[Any], None]) -> None:
    path = folder / f"{part}.json"
    document = json.loads(path.read_text())
    change(document["data"])
    path.write_text(json.dumps(document))


def _model_int(folder: Path) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].to(torch.int64)
    save_file(tensors, str(folder / "model.safetensors"))


def _ewc_term(data: Any) -> dict:
    return next(s for s in data if isinstance(s, dict) and "penalty" in s)["penalty"]["terms"]


EDITS: dict[str, tuple[Callable[[Path], None], str]] = {
    "integer weights": (_model_int, "model.safetensors"),
    "integer Fisher": (
        lambda f: _edit_tensor(f, "strategies", "importance", lambda t: t.to(torch.int64)),
        "not a float tensor",
    ),
    "optimizer lr text": (
        lambda f: _edit_json(f, "optimizer", lambda d: d["optimizer"]["param_groups"][0].__setitem__("lr", "x")),
        "param_groups[0].lr",
    ),
    "optimizer state emptied": (
        lambda f: _edit_json(f, "optimizer", lambda d: d["optimizer"].__setitem__("state", {})),
        "empty after",
    ),
    "Adam moment misshapen": (
        lambda f: _edit_tensor(f, "optimizer", "exp_avg", lambda t: torch.zeros(3, 1)),
        "exp_avg",
    ),
    "buffer labels misshapen": (
        lambda f: _edit_tensor(f, "strategies", "labels", lambda t: torch.zeros(7)),
        "buffer labels",
    ),
    "penalty term without names": (
        lambda f: _edit_json(f, "strategies", lambda d: _ewc_term(d)["0"].__setitem__("names", [])),
        "names",
    ),
    "one penalty term too many": (
        lambda f: _edit_json(f, "strategies", lambda d: _ewc_term(d).__setitem__("99", dict(_ewc_term(d)["0"]))),
        "holds 2 penalty terms",
    ),
    "loop epoch forged in range": (
        lambda f: _edit_json(f, "learner", lambda d: d["loop"].__setitem__("epoch", 1 - d["loop"]["epoch"])),
        "loop.step",
    ),
    "penalty weight forged in range": (
        lambda f: _edit_json(f, "strategies", lambda d: _ewc_term(d)["0"].__setitem__("weight", 0.0)),
        "always writes 1.0",
    ),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_a_re_signed_edit_that_does_not_fit_the_run_is_refused(
    killed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: str
) -> None:
    run = tmp_path / "run"
    shutil.copytree(killed, run)
    change, says = EDITS[edit]
    folder = run / ckpt.CHECKPOINT
    change(folder)
    ckpt.write_manifest(folder)
    code, _, err = run_cli(["run", "--resume", str(run)], capsys)
    line = one_error_line(err)
    assert code == 2 and says in line, line
    assert (folder / "manifest.json").is_file()  # nothing removed: the checkpoint is still there


def test_the_untouched_checkpoint_resumes(killed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The checks refuse only edits: the killed run itself resumes to the end."""
    run = tmp_path / "run"
    shutil.copytree(killed, run)
    code, _, err = run_cli(["run", "--resume", str(run)], capsys)
    assert code == 0, err
    assert json.loads((run / "metrics.json").read_text())["runs"]
