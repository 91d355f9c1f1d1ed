"""Draw a run folder's plots in a helper process started with the run.

Importing matplotlib costs about 0.4 s, a tenth of a whole ``forgetless run`` on the suite's
setting. :class:`PlotWorker` starts ``python -m forgetless.reports.plot_worker`` when the run
starts: it imports matplotlib on the other core while the run trains (the hot loop does not
wait for it), then reads the results as JSON on its standard input and draws the plots. A
worker that cannot start or dies is not an error: the plots are then drawn in this process.
"""

from __future__ import annotations

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
        payload = {"matrices": {k: np.asarray(v).tolist() for k, v in matrices.items()}, "summary": summary}
        payload["out"] = str(out)
        process, self.process = self.process, None
        if process is not None:
            try:
                _, error = process.communicate(json.dumps(payload), timeout=PLOT_TIMEOUT_SECONDS)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait()
            else:
                if process.returncode == 0:
                    return
                if process.returncode == 2:
                    raise OutputError(error.strip().splitlines()[-1])
        from forgetless.reports import plots

        plots.draw_all(matrices, summary, Path(out))

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

    text = sys.stdin.read()
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
