"""What the data-parallel tests share: two gloo processes on this machine's CPU via ``torchrun``.

``torchrun_command()`` launches ``WORLD`` ranks; ``gloo_env()`` gives them one thread each, no GPU,
no variables of an outer launcher and loopback sockets; ``require_process_group(folder)`` skips a
test (with the reason) where this machine cannot form a 2-process gloo group at all (no loopback
networking, a sandbox without sockets): that is the environment, not our code.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

WORLD = 2

PREFLIGHT = """
import torch, torch.distributed as dist
dist.init_process_group("gloo")
value = torch.ones(1) * (dist.get_rank() + 1)
dist.all_reduce(value)
assert float(value) == 3.0
dist.destroy_process_group()
"""


def load_module(path: Path) -> ModuleType:
    """The worker script at ``path`` as a module (its helpers are used by the test too)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torchrun_command() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--standalone"]


def gloo_env(**extra: str) -> dict[str, str]:
    """One thread a rank, no GPU, no torchrun variables of an outer launcher, loopback sockets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAULT_")}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", **extra)
    if sys.platform.startswith("linux") and Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one machine: loopback, whatever the hostname resolves to
    return env


def require_process_group(folder: Path, env: dict[str, str] | None = None) -> None:
    """Skip unless a 2-process gloo group forms here (module docstring)."""
    script = folder / "preflight.py"
    script.write_text(PREFLIGHT)
    try:
        done = subprocess.run(
            [*torchrun_command(), str(script)], env=env or gloo_env(), capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        pytest.skip("a 2-process gloo group did not form within 120 s on this machine")
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines()]
        # a rank's own exception line, not the launcher's ChildFailedError wrapper
        errors = [line for line in lines if re.match(r"[\w.]*(Error|Exception): ", line) and "ChildFailed" not in line]
        last = (errors or [line for line in lines if line.strip("=-")] or ["no output"])[0][:200]
        pytest.skip(f"this machine cannot run a 2-process gloo group: {last}")
