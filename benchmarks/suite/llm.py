"""Section ``llm``: the LLM demo's tokens/s, from :mod:`benchmarks.bench_hf` in a subprocess."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.suite.shared import BENCHMARKS, ROOT, ScenarioCache

TITLE = "tokens/s of the LLM demo (benchmarks.bench_hf, when it runs)"
_TOKENS_LINE = re.compile(r"^\s*([\w-]+): ([\d,]+) tokens/s\s*$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("llm section")
    group.add_argument("--llm-steps", type=int, default=3, help="steps per bench_hf run")
    group.add_argument("--llm-timeout", type=float, default=300.0, help="seconds")


def quick(args: argparse.Namespace) -> None:
    args.llm_steps = min(args.llm_steps, 2)


def run(args: argparse.Namespace, cache: ScenarioCache) -> dict[str, Any]:
    """``python -m benchmarks.bench_hf`` (the HF engineer's script) in a subprocess.

    Its JSON is read when it finishes; if it fails part-way, the runs it printed before failing
    (``name: N tokens/s``) are kept and the failure is reported.
    """
    if not (BENCHMARKS / "bench_hf.py").exists():
        return {"status": "not measured", "reason": "benchmarks/bench_hf.py is absent"}
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "benchmarks.bench_hf", "--out", folder]
        command += ["--steps", str(args.llm_steps), "--threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.llm_timeout, cwd=ROOT)
        report_file = Path(folder) / "bench_hf.json"
        report = json.loads(report_file.read_text()) if report_file.exists() else None
    runs = {
        match.group(1): {"tokens_per_second": float(match.group(2).replace(",", ""))}
        for match in map(_TOKENS_LINE.match, done.stdout.splitlines())
        if match
    }
    if report is not None:
        runs = report.get("runs", runs)
    out: dict[str, Any] = {"steps": args.llm_steps, "runs": runs}
    if report is not None:
        out.update(status="ok", model=report.get("model"), seq_len=report.get("seq_len"))
    else:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        out.update(status="partial" if runs else "not measured", reason=f"bench_hf failed: {last}")
    if "plain" in runs:
        out["tokens_per_second"] = runs["plain"]["tokens_per_second"]
    return out


def markdown(llm: dict[str, Any]) -> list[str]:
    lines = ["## LLM demo (benchmarks/bench_hf.py)", ""]
    if llm.get("reason"):
        lines += [f"{llm['status']}: {llm['reason']}", ""]
    if llm.get("runs"):
        lines += [
            f"{llm.get('model') or 'tiny GPT-2'}, {llm['steps']} timed steps per run.",
            "",
            "| run | tokens/s |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v['tokens_per_second']:,.0f} |" for k, v in llm["runs"].items()]
        lines.append("")
    return lines
