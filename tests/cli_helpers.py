"""Running ``forgetless`` in-process from tests, and reading its one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from forgetless.cli import main as cli

FAST = ["--benchmark", "split-digits", "--epochs", "1", "--tasks", "2", "--hidden", "16"]
FAST += ["--batch-size", "64", "--threads", "1", "--quiet"]
"""A run of a few seconds on the embedded digits."""


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``forgetless ARGV`` in-process: (exit code, stdout, stderr)."""
    old = sys.argv
    sys.argv = ["forgetless", *argv]
    code = 0
    try:
        cli.main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = old
        cli._RUN_DIR[0] = None
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    """The single line of ``err``; fails on a second line, a traceback or an internal error."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "internal error" not in err, err
    return lines[0]


def finished_run(out: Path, *argv: str) -> Path:
    """``forgetless run FAST ARGV --out OUT`` done in-process (a module fixture's run folder)."""
    old = sys.argv
    sys.argv = ["forgetless", "run", *FAST, *argv, "--out", str(out)]
    try:
        cli.main()
    finally:
        sys.argv = old
        cli._RUN_DIR[0] = None
    return out
