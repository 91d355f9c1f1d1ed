"""What a run costs as a user runs it: the whole ``forgetless run`` process vs its own work.

Two commands, each a fresh process timed from launch to exit (imports, data, training,
evaluation, checkpoints, results folder and plots), repeats interleaved:

* ``default``: ``forgetless run`` exactly as the README's first command runs it (the embedded
  Split digits, naive + ewc + er + joint). Target: under 60 s on a 2-core machine.
* ``fmnist-naive``: ``forgetless run --benchmark split-fmnist --strategies naive --threads 1``,
  the suite's setting. Target: whole process <= 1.5x its in-process training + evaluation
  (``wall_seconds`` in ``metrics.json``: the learner's training steps and the evaluation of
  every task after every task).

The second pass of each command is what a user sees from the second run on (the data set
decoded once into the user cache); the first, cold pass is reported apart. Prints a Markdown
table and writes JSON.

    python -m benchmarks.bench_startup --repeats 5 --out benchmarks/results/startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS: dict[str, list[str]] = {
    "default": ["run"],
    "fmnist-naive": ["run", "--benchmark", "split-fmnist", "--strategies", "naive", "--threads", "1"],
}


def forgetless_command() -> list[str]:
    """The installed ``forgetless`` script next to this Python, else ``python -m``."""
    script = Path(sys.executable).with_name("forgetless")
    return [str(script)] if script.exists() else [sys.executable, "-m", "forgetless.cli.main"]


def timed_run(args: list[str], out: Path, env: dict[str, str]) -> dict[str, float]:
    """One whole process: wall and CPU seconds, and the run's own train+eval seconds."""
    shutil.rmtree(out, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [*forgetless_command(), *args, "--quiet", "--out", str(out)], check=True, env=env, capture_output=True
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    metrics = json.loads((out / "metrics.json").read_text())
    work = sum(run["wall_seconds"] for runs in metrics["runs"].values() for run in runs)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "train_eval": work, "ratio": wall / work}


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/startup.json"))
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="forgetless-startup-"))
    env = {**os.environ, "XDG_CACHE_HOME": str(scratch / "cache")}  # a cold cache to start from
    cold = {name: timed_run(cmd, scratch / name, env) for name, cmd in COMMANDS.items()}
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):  # interleaved: drift on a shared machine hits both alike
        for name, cmd in COMMANDS.items():
            rounds[name].append(timed_run(cmd, scratch / name, env))
    shutil.rmtree(scratch, ignore_errors=True)
    table = {
        name: {key: spread([r[key] for r in runs]) for key in ("wall", "cpu", "train_eval", "ratio")}
        | {"cold_wall": cold[name]["wall"]}
        for name, runs in rounds.items()
    }
    print("| command | whole process s (min / median / max) | cold s | train+eval s (median) | whole / train+eval |")
    print("|---|---|---|---|---|")
    for name, row in table.items():
        wall, ratio = row["wall"], row["ratio"]
        print(
            f"| {name} | {wall['min']:.2f} / {wall['median']:.2f} / {wall['max']:.2f} | {row['cold_wall']:.2f} | "
            f"{row['train_eval']['median']:.2f} | {ratio['median']:.2f} ({ratio['min']:.2f}-{ratio['max']:.2f}) |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"repeats": args.repeats, "commands": COMMANDS, "results": table, "rounds": rounds}
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
