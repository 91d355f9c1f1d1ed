"""The forgetless CLI with faults injected from outside the package (tests only).

``python tests/faulty_cli.py ARGS`` runs ``forgetless ARGS`` after wrapping two library
functions according to environment variables:

* ``FAULT_KILL_AT_STEP=N``: send a signal to this process right after its N-th optimizer step
  (counted over every learner of the process, before that step's checkpoint is written);
  ``FAULT_SIGNAL=INT`` makes it a Ctrl-C, else a SIGKILL;
* ``FAULT_KILL_IN_CHECKPOINT=N``: SIGKILL this process while it writes its N-th checkpoint,
  after every file and before the manifest and the rename;
* ``FAULT_RANK=R``: under ``torchrun``, inject the faults into the process of ``RANK`` R only.

The package itself carries no fault-injection code.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any


def _kill_after_steps(count: int, signum: int) -> None:
    from forgetless.training.learner import Learner

    original = Learner._step
    done = [0]

    def step(self: Learner, *args: Any, **kwargs: Any) -> bool:
        stop = original(self, *args, **kwargs)
        done[0] += 1
        if done[0] == count:
            os.kill(os.getpid(), signum)
        return stop

    Learner._step = step  # type: ignore[method-assign]


def _kill_in_checkpoint(count: int) -> None:
    from forgetless.training import checkpoint

    original = checkpoint.write_manifest
    written = [0]

    def write_manifest(folder: Any) -> None:
        written[0] += 1
        if written[0] == count:
            os.kill(os.getpid(), signal.SIGKILL)
        original(folder)

    checkpoint.write_manifest = write_manifest  # type: ignore[assignment]


def main() -> None:
    chosen = os.environ.get("FAULT_RANK")
    if chosen is not None and chosen != os.environ.get("RANK", "0"):
        os.environ.pop("FAULT_KILL_AT_STEP", None)
        os.environ.pop("FAULT_KILL_IN_CHECKPOINT", None)
    if steps := os.environ.get("FAULT_KILL_AT_STEP"):
        signum = signal.SIGINT if os.environ.get("FAULT_SIGNAL", "KILL").upper() == "INT" else signal.SIGKILL
        _kill_after_steps(int(steps), signum)
    if writes := os.environ.get("FAULT_KILL_IN_CHECKPOINT"):
        _kill_in_checkpoint(int(writes))
    from forgetless.cli.main import main as forgetless

    sys.argv = ["forgetless", *sys.argv[1:]]
    forgetless()


if __name__ == "__main__":
    main()
