"""Where the forgetless command and the peers' checkouts and venvs are: flags shared by the
scripts of this folder, each defaulting to an environment variable, then ``$PEERS_DIR``
(``/work/peers``)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

PEERS = Path(os.environ.get("PEERS_DIR", "/work/peers"))
ROOT = Path(__file__).resolve().parents[2]
"""The repository root: the working folder of ``python -m benchmarks.peers.NAME`` (the peers'
venvs too)."""


def add_tool_paths(parser: argparse.ArgumentParser, *peers: str) -> None:
    """``--forgetless`` always; ``--mammoth``/``--mammoth-python`` and ``--avalanche-python``
    for the ``peers`` named (``"mammoth"``, ``"avalanche"``)."""
    env = os.environ.get
    beside = shutil.which("forgetless", path=str(Path(sys.executable).parent))
    parser.add_argument("--forgetless", type=Path, default=Path(env("FORGETLESS", "") or beside or "forgetless"))
    if "mammoth" in peers:
        parser.add_argument("--mammoth", type=Path, default=Path(env("MAMMOTH_DIR", str(PEERS / "mammoth"))))
        python = env("MAMMOTH_PYTHON", str(PEERS / "venv-mammoth/bin/python"))
        parser.add_argument("--mammoth-python", type=Path, default=Path(python))
    if "avalanche" in peers:
        python = env("AVALANCHE_PYTHON", str(PEERS / "venv-avalanche/bin/python"))
        parser.add_argument("--avalanche-python", type=Path, default=Path(python))
