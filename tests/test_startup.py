"""What a ``forgetless run`` process pays for besides its training (issue #12, item 5).

The gains of ``benchmarks/bench_startup.py`` guarded without timing anything: the modules the
CLI and a whole run import (no matplotlib in the run's process, no ``torch._dynamo`` from
the optimizer), the eager optimizers that avoid it (bit for bit torch's), checkpoints written
in the background (copied when taken, written in order, failures raised), and plots handed
to the helper process before the table is printed.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from forgetless.errors import OutputError
from forgetless.reports.plot_worker import PlotWorker
from forgetless.training import checkpoint as ckpt
from forgetless.training.optim import SGD, Adam

NEVER_ON_THE_RUN_PATH = ("matplotlib", "torch._dynamo", "transformers", "peft", "datasets", "sympy", "hypothesis")


def _imported_after(code: str) -> list[str]:
    """The modules of NEVER_ON_THE_RUN_PATH that a fresh interpreter holds after ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {NEVER_ON_THE_RUN_PATH!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_cli_imports_neither_torch_nor_any_optional_package():
    code = "import sys, forgetless.cli.main\nassert 'torch' not in sys.modules, 'import torch where a command needs it'"
    assert _imported_after(code) == []


def test_a_whole_run_never_imports_matplotlib_or_dynamo_in_its_own_process(tmp_path: Path):
    """matplotlib belongs to the plot worker; ``torch._dynamo`` only to ``--compile``."""
    out = tmp_path / "run"
    argv = ["forgetless", "run", "--strategies", "naive,ewc", "--tasks", "2", "--epochs", "1"]
    argv += ["--threads", "1", "--quiet", "--out", str(out)]
    code = f"import sys\nfrom forgetless.cli.main import main\nsys.argv = {argv!r}\nmain()"
    assert _imported_after(code) == []
    assert all((out / name).stat().st_size > 0 for name in ("accuracy_matrix.png", "metrics.json"))


# -- the optimizers: torch's arithmetic, without the dynamo wrappers ---------------------------
def _train(optimizer_class: type, steps: int = 6, **options) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    optimizer = optimizer_class(model.parameters(), **options)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(32, 8, generator=generator), torch.randint(0, 3, (32,), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model, optimizer


@pytest.mark.parametrize(
    ("ours", "theirs", "options"),
    [
        (Adam, torch.optim.Adam, {"lr": 1e-2, "fused": True}),
        (Adam, torch.optim.Adam, {"lr": 1e-2, "weight_decay": 1e-3}),
        (SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}),
    ],
)
def test_the_eager_optimizers_step_bit_for_bit_as_torch(ours: type, theirs: type, options: dict):
    model_a, optimizer_a = _train(ours, **options)
    model_b, optimizer_b = _train(theirs, **options)
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(a, b)
    state_a, state_b = optimizer_a.state_dict(), optimizer_b.state_dict()
    assert state_a["param_groups"] == state_b["param_groups"]
    for key, entry in state_b["state"].items():
        for name, value in entry.items():
            assert torch.equal(state_a["state"][key][name], value), (key, name)
    assert type(optimizer_a).__name__ == theirs.__name__  # checkpoints record torch's name


def test_an_eager_optimizer_resumes_from_its_state_dict_exactly():
    reference, _ = _train(Adam, steps=8, lr=1e-2, fused=True)
    model, optimizer = _train(Adam, steps=4, lr=1e-2, fused=True)
    saved = {"model": {k: v.clone() for k, v in model.state_dict().items()}, "optimizer": optimizer.state_dict()}
    restored = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    restored.load_state_dict(saved["model"])
    again = Adam(restored.parameters(), lr=1e-2, fused=True)
    again.load_state_dict(saved["optimizer"])
    generator = torch.Generator().manual_seed(1)
    for step in range(8):
        x, y = torch.randn(32, 8, generator=generator), torch.randint(0, 3, (32,), generator=generator)
        if step < 4:
            continue  # the batches the first four steps saw
        again.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(restored(x), y).backward()
        again.step()
    for a, b in zip(restored.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)


def test_an_eager_step_runs_without_autograd_and_keeps_torchs_step_hooks():
    """The single-tensor step updates leaves in place: it fails unless autograd is off inside."""
    seen: dict[str, list[str]] = {}
    for optimizer_class in (Adam, torch.optim.Adam):
        model = nn.Linear(4, 2)
        optimizer = optimizer_class(model.parameters(), lr=0.1, foreach=False)
        calls = seen.setdefault(optimizer_class.__module__, [])
        optimizer.register_step_pre_hook(lambda opt, args, kwargs, calls=calls: calls.append("pre"))
        optimizer.register_step_post_hook(lambda opt, args, kwargs, calls=calls: calls.append("post"))
        model(torch.ones(1, 4)).sum().backward()
        optimizer.step()
        assert model.weight.grad_fn is None and torch.is_grad_enabled()
    assert seen["forgetless.training.optim"] == seen["torch.optim.adam"] == ["pre", "post"]


# -- checkpoints written in the background ---------------------------------------------------
def _state(value: float) -> tuple[dict[str, torch.Tensor], dict, dict]:
    weights = {"w": torch.full((3,), value)}
    learner = {"loop": {"task_index": 0, "in_task": False}, "rows": [np.full(2, value)], "strategies": []}
    return weights, learner, {"run": {"strategy": "naive", "seed": 0}, "completed": []}


def test_a_snapshot_is_the_state_when_taken_not_when_written(tmp_path: Path):
    weights, learner, experiment = _state(1.0)
    snapshot = ckpt.snapshot_checkpoint(tmp_path, weights, learner, experiment)
    weights["w"].fill_(7.0)  # the run trains on while the snapshot is written
    learner["rows"][0][:] = 7.0
    learner["loop"]["task_index"] = 5
    writer = ckpt.CheckpointWriter()
    writer.submit(snapshot)
    writer.wait()
    saved = ckpt.load_checkpoint(tmp_path)
    assert saved is not None
    assert torch.equal(saved.learner["model"]["w"], torch.ones(3))
    assert saved.learner["rows"][0].tolist() == [1.0, 1.0]
    assert saved.learner["loop"]["task_index"] == 0


def test_background_checkpoints_land_in_order_and_equal_synchronous_ones(tmp_path: Path):
    writer = ckpt.CheckpointWriter()
    for value in (1.0, 2.0, 3.0):
        writer.submit(ckpt.snapshot_checkpoint(tmp_path / "background", *_state(value)))
    writer.wait()
    ckpt.save_checkpoint(tmp_path / "direct", *_state(3.0))
    background, direct = tmp_path / "background" / ckpt.CHECKPOINT, tmp_path / "direct" / ckpt.CHECKPOINT
    names = sorted(p.name for p in direct.iterdir())
    assert sorted(p.name for p in background.iterdir()) == names
    for name in names:
        assert (background / name).read_bytes() == (direct / name).read_bytes(), name


def test_a_failed_background_write_is_raised_by_the_next_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def full(folder: Path) -> None:
        raise OutputError(f"disk full while writing {folder}: free space or choose another --out")

    monkeypatch.setattr(ckpt, "write_manifest", full)
    writer = ckpt.CheckpointWriter()
    writer.submit(ckpt.snapshot_checkpoint(tmp_path, *_state(1.0)))
    with pytest.raises(OutputError, match="disk full"):
        writer.wait()
    writer.wait()  # raised once
    writer.submit(ckpt.snapshot_checkpoint(tmp_path, *_state(1.0)))
    writer.wait(raise_error=False)  # another error is on its way out: this one is dropped
    assert ckpt.load_checkpoint(tmp_path) is None  # nothing half-written was left in place


def test_a_failed_background_write_stops_the_next_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import forgetless.io as fio

    real = fio.os.fsync
    calls = [0]

    def fsync(fd: int) -> None:
        calls[0] += 1
        if calls[0] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(fio.os, "fsync", fsync)
    writer = ckpt.CheckpointWriter()
    writer.submit(ckpt.snapshot_checkpoint(tmp_path, *_state(1.0)))
    with pytest.raises(OutputError, match="disk full"):
        writer.submit(ckpt.snapshot_checkpoint(tmp_path, *_state(2.0)))


# -- plots handed over before the table is printed ---------------------------------------------
def test_plots_started_then_finished_are_the_plots_drawn_here(tmp_path: Path):
    from forgetless.reports import plots

    matrices = {"naive": np.eye(3), "er": np.tril(np.full((3, 3), 0.8))}
    summary = {n: {k: {"mean": 0.5, "std": 0.1} for k in ("acc", "bwt", "forgetting")} for n in matrices}
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir(), there.mkdir()
    plots.draw_all(matrices, summary, here)
    with PlotWorker() as worker:
        worker.start(matrices, summary, there)
        worker.finish()
        worker.finish()  # nothing pending: nothing drawn twice
    for name in ("accuracy_matrix.png", "accuracy_curves.png", "strategies.png"):
        assert (there / name).read_bytes() == (here / name).read_bytes(), name


def test_a_worker_gone_before_start_draws_here(tmp_path: Path):
    matrices = {"naive": np.eye(2)}
    summary = {"naive": {k: {"mean": 0.5, "std": 0.0} for k in ("acc", "bwt", "forgetting")}}
    worker = PlotWorker()
    assert worker.process is not None
    worker.process.kill()
    worker.process.wait()
    worker.start(matrices, summary, tmp_path)  # the pipe is broken: nothing raised here
    worker.finish()
    assert (tmp_path / "strategies.png").stat().st_size > 0


def test_plots_laid_out_once_are_the_pixels_of_a_plain_savefig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``plots._save`` solves the constrained layout once and switches it off before saving."""
    from forgetless.reports import plots

    rng = np.random.default_rng(0)
    names = ["naive", "ewc", "er", "online-ewc+er"]
    matrices = {n: rng.random((6, 6)) for n in names}
    summary = {n: {k: {"mean": float(rng.normal()), "std": 0.1} for k in ("acc", "bwt", "forgetting")} for n in names}
    fast, plain = tmp_path / "fast", tmp_path / "plain"
    fast.mkdir(), plain.mkdir()
    plots.draw_all(matrices, summary, fast)
    monkeypatch.setattr(plots, "_save", lambda fig, path: fig.savefig(path, dpi=plots.DPI))
    plots.draw_all(matrices, summary, plain)
    for name in ("accuracy_matrix.png", "accuracy_curves.png", "strategies.png"):
        assert (fast / name).read_bytes() == (plain / name).read_bytes(), name
