"""Draw a run folder's plots in a helper process started with the run.

Importing matplotlib costs about 0.4 s, a tenth of a whole ``forgetless run`` on the suite's
setting. :class:`PlotWorker` starts ``python -m forgetless.reports.plot_worker`` when the run
starts: it imports matplotlib on the other core while the run trains (the hot loop does not
wait for it), then reads the results as one line of JSON on its standard input and draws the
plots while the run prints its table (:meth:`PlotWorker.start`, then :meth:`PlotWorker.finish`).
A worker that cannot start or dies is not an error: the plots are then drawn in this process.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from forgetless.errors import OutputError

PLOT_TIMEOUT_SECONDS = 600


class PlotWorker:
    """A plotting process, started at construction; :meth:`draw` hands it the results."""

    _pending: tuple[dict[str, np.ndarray], dict[str, Any], Path] | None = None
    """The results handed over by :meth:`start`, until :meth:`finish`."""

    def __init__(self) -> None:
        try:
            self.process: subprocess.Popen | None = subprocess.Popen(
                [sys.executable, "-m", __name__],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        except OSError:
            self.process = None

    def draw(self, matrices: dict[str, np.ndarray], summary: dict[str, Any], out: Path) -> None:
        """Draw the plots of ``out`` (in the worker, else here); a write failure is an OutputError."""
        self.start(matrices, summary, out)
        self.finish()

    def start(self, matrices: dict[str, np.ndarray], summary: dict[str, Any], out: Path) -> None:
        """Hand the results to the worker, which draws while this process goes on (:meth:`finish` waits)."""
        self._pending = (matrices, summary, Path(out))
        process = self.process
        if process is None or process.stdin is None:
            return
        payload = {"matrices": {k: np.asarray(v).tolist() for k, v in matrices.items()}, "summary": summary}
        payload["out"] = str(out)
        try:
            process.stdin.write(json.dumps(payload) + "\n")  # one line: JSON escapes every line break
            process.stdin.flush()
        except (OSError, ValueError):  # the worker is gone: finish() draws here
            self.close()

    def finish(self) -> None:
        """Wait for the plots handed over by :meth:`start`: drawn by the worker, else here now."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        process, self.process = self.process, None
        if process is not None:
            try:
                _, error = process.communicate(timeout=PLOT_TIMEOUT_SECONDS)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait()
            else:
                if process.returncode == 0:
                    return
                if process.returncode == 2:
                    raise OutputError(error.strip().splitlines()[-1])
        from forgetless.reports import plots

        matrices, summary, out = pending
        plots.draw_all(matrices, summary, out)

    def close(self) -> None:
        """Stop a worker that was never handed results (the run failed or was interrupted)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def __enter__(self) -> PlotWorker:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def main() -> int:
    """The worker: import matplotlib now, draw when the results arrive on standard input."""
    from forgetless.reports import plots

    text = sys.stdin.readline()
    if not text:  # the run ended without results (failed, interrupted or killed)
        return 0
    payload = json.loads(text)
    matrices = {name: np.asarray(matrix) for name, matrix in payload["matrices"].items()}
    out = Path(payload["out"])
    try:
        plots.draw_all(matrices, payload["summary"], out)
    except OSError as error:
        print(f"cannot write the plots in {out}: {error.strerror or error}", file=sys.stderr)
        return 2
    gc.freeze()  # the plots are written: the exit skips a last collection of matplotlib's objects
    return 0


if __name__ == "__main__":
    sys.exit(main())
