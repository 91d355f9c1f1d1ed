"""A core-only install: no module imports an optional package where it is not used.

The optional packages are hidden from a subprocess (``sys.modules[name] = None`` makes every
import of them fail), which is what a bare ``pip install forgetless`` looks like to our code.
``.ci/run`` checks the same in a real fresh virtual environment with the core dependencies only.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from forgetless.extras import EXTRA_OF

TESTS = Path(__file__).parent
HIDDEN = sorted(EXTRA_OF) + ["click"]  # typer >= 0.29 vendors click: the core must not need it


def run_hidden(code: str, *args: str) -> subprocess.CompletedProcess:
    prelude = f"import sys\nfor name in {HIDDEN!r}:\n    sys.modules[name] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code, *args], capture_output=True, text=True, timeout=300)


def test_every_module_imports_without_the_extras():
    done = run_hidden(f"import runpy; runpy.run_path({str(TESTS / 'core_imports.py')!r}, run_name='__main__')")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 failed" in done.stdout
    assert 'pip install "forgetless[hf]"' in done.stdout


def cli(*args: str) -> subprocess.CompletedProcess:
    return run_hidden("from forgetless.cli.main import main\nsys.argv = ['forgetless', *sys.argv[1:]]\nmain()", *args)


def test_run_and_list_work_without_the_extras(tmp_path):
    done = cli("run", "--strategies", "naive,er", "--tasks", "2", "--quiet", "--out", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "r" / "metrics.json").is_file()
    listed = cli("list")
    assert listed.returncode == 0, listed.stderr
    assert "gem" in listed.stdout


def test_a_method_whose_extra_is_missing_is_one_line_with_the_extra(tmp_path):
    cases = [
        (["run", "--strategies", "naive,gem"], 'pip install "forgetless[replay]"'),
        (["run", "--strategies", "lora", "--scenario", "task"], 'pip install "forgetless[hf]"'),
        (["finetune", "--model", "m", "--task", "t.jsonl", "--out", str(tmp_path / "f")], "forgetless[hf]"),
        (["demo", "encoder", "--out", str(tmp_path / "d")], "forgetless[hf]"),
    ]
    for args, fix in cases:
        out = tmp_path / "never-written"
        done = cli(*args, *(["--out", str(out)] if args[0] == "run" else []))
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and fix in lines[0], (args, done.stderr)
        assert "Traceback" not in done.stderr
        assert not out.exists()  # refused before anything is written


def test_every_import_is_declared_and_direct():
    """deptry: no import of an undeclared package (DEP001) or of a transitive one (DEP003)."""
    root = TESTS.parent
    done = subprocess.run(
        [sys.executable, "-m", "deptry", "src", "tests", "benchmarks"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_code_is_ruff_clean():
    root = TESTS.parent
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "src", "tests", "benchmarks"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
