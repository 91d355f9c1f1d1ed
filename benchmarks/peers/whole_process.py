"""Whole-process timing of forgetless, Mammoth and Avalanche doing the same continual-learning run.

Each candidate is a command run from launch to exit: Naive fine-tuning on Split Fashion-MNIST,
class-IL, 5 tasks of 2 classes, MLP 784-400-400-10, batch 128, 1 epoch per task, CPU, 1 thread.
Repeats are interleaved (F F' M A, F F' M A, ...) so that load from other processes hits every
candidate alike. Per candidate: wall seconds (subprocess launch to exit), user+sys CPU seconds
(``getrusage(RUSAGE_CHILDREN)`` deltas) and final average accuracy; for forgetless also its own
in-process train+eval seconds from ``metrics.json``. Ratios are per-round peer / reference.

Standard library only; run it with the forgetless venv's python. A peer that is not set up (see
README.md beside this file) is skipped with a one-line note.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.peers.peer_paths import ROOT, add_tool_paths

HERE = Path(__file__).resolve().parent
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
MAMMOTH_ARGS = (
    "--dataset seq-fmnist --model sgd --backbone mnistmlp --mlp_hidden_size 400 --lr 0.01 --optim_mom 0.9 "
    "--batch_size 128 --n_epochs 1 --seed 0 --base_path data/ --num_workers 0 --non_verbose 1"
).split()
MAMMOTH_ACC = re.compile(r"Accuracy for \d+ task\(s\):\s+\[Class-IL\]:\s+([0-9.]+)\s*%")
AVALANCHE_ACC = re.compile(r"final average accuracy:\s+([0-9.]+)")


@dataclass
class Run:
    """One timed process."""

    wall: float
    cpu: float
    rc: int
    acc: float | None = None
    inproc: float | None = None  # forgetless: train + eval seconds it measured itself


@dataclass
class Candidate:
    """A tool and setting: how to build its command, where to run it, how to read its result."""

    name: str
    settings: str
    command: Callable[[Path], list[str]]  # gets a fresh scratch folder
    read: Callable[[str, Path], tuple[float | None, float | None]]  # (output, scratch) -> (acc, inproc)
    cwd: Path | None = None
    runs: list[Run] = field(default_factory=list)


def read_forgetless(_: str, scratch: Path) -> tuple[float | None, float | None]:
    """ACC and in-process train+eval seconds of the naive run in ``scratch/out/metrics.json``."""
    run = json.loads((scratch / "out" / "metrics.json").read_text())["runs"]["naive"][0]
    return run["metrics"]["acc"], run["wall_seconds"]


def read_regex(pattern: re.Pattern[str], scale: float = 1.0) -> Callable[[str, Path], tuple[float | None, None]]:
    """A reader taking the last match of ``pattern`` in the output as the accuracy."""

    def read(output: str, _: Path) -> tuple[float | None, None]:
        found = pattern.findall(output)
        return (float(found[-1]) * scale if found else None), None

    return read


def candidates(args: argparse.Namespace) -> list[Candidate]:
    """The candidates that are set up here, with a note for each one skipped."""
    fl = [str(args.forgetless), "run", "--strategies", "naive", "--threads", "1", "--quiet", "--force"]
    found = [
        Candidate(
            "forgetless",
            "Adam lr 1e-3 (its default)",
            lambda s: [*fl, "--benchmark", "split-fmnist", "--out", str(s / "out")],
            read_forgetless,
        ),
        Candidate(
            "forgetless-sgd",
            "SGD lr 0.01 momentum 0.9 (fl-config.yaml)",
            lambda s: [*fl, "--config", str(HERE / "fl-config.yaml"), "--out", str(s / "out")],
            read_forgetless,
        ),
    ]
    if (args.mammoth / "main.py").is_file() and args.mammoth_python.is_file():
        found.append(
            Candidate(
                "mammoth",
                "--model sgd, SGD lr 0.01 momentum 0.9",
                lambda s: [str(args.mammoth_python), "main.py", *MAMMOTH_ARGS],
                read_regex(MAMMOTH_ACC, 0.01),
                cwd=args.mammoth,
            )
        )
    else:
        print(f"note: Mammoth skipped (no {args.mammoth}/main.py or {args.mammoth_python})")
    if args.avalanche_python.is_file():
        found.append(
            Candidate(
                "avalanche",
                "Naive, SGD lr 0.01 momentum 0.9",
                lambda s: [str(args.avalanche_python), "-m", "benchmarks.peers.avalanche_split_fmnist"],
                read_regex(AVALANCHE_ACC),
                cwd=ROOT,
            )
        )
    else:
        print(f"note: Avalanche skipped (no {args.avalanche_python})")
    wanted = set(args.tools.split(","))
    return [c for c in found if c.name in wanted]


def time_once(cand: Candidate, timeout: float) -> Run:
    """Run the candidate's command once; wall and user+sys CPU seconds of the whole process."""
    with tempfile.TemporaryDirectory(prefix=f"peers-{cand.name}-") as tmp:
        scratch = Path(tmp)
        cmd = cand.command(scratch)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, cwd=cand.cwd, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=timeout
            )
            rc, output = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc, output = 124, str(exc.stdout or "") + str(exc.stderr or "")
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        run = Run(wall=wall, cpu=cpu, rc=rc)
        if rc == 0:
            try:
                run.acc, run.inproc = cand.read(output, scratch)
            except (OSError, KeyError, ValueError) as exc:
                print(f"  {cand.name}: could not read its result ({exc})")
        else:
            print(f"  {cand.name}: exit {rc}; last output:\n" + "\n".join(output.splitlines()[-15:]))
        return run


def spread(values: list[float]) -> dict[str, float] | None:
    """min / median / max of the values, or None when there are none."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values)} if values else None


def summarise(cands: list[Candidate], reference: str) -> dict[str, dict]:
    """Per candidate: wall, CPU, ACC, in-process share and per-round ratios to the reference."""
    ref = next((c for c in cands if c.name == reference), None)
    out: dict[str, dict] = {}
    for c in cands:
        ok = [r for r in c.runs if r.rc == 0]
        s: dict = {
            "settings": c.settings,
            "ok_runs": len(ok),
            "runs": [vars(r) for r in c.runs],
            "wall": spread([r.wall for r in ok]),
            "cpu": spread([r.cpu for r in ok]),
            "acc": spread([r.acc for r in ok if r.acc is not None]),
        }
        inproc = [r.inproc for r in ok if r.inproc]
        if inproc:
            s["inproc"] = spread(inproc)
            s["whole_over_inproc"] = spread([r.wall / r.inproc for r in ok if r.inproc])
        if ref is not None:
            pairs = [(r, q) for r, q in zip(c.runs, ref.runs) if r.rc == 0 and q.rc == 0]
            s["wall_ratio"] = spread([r.wall / q.wall for r, q in pairs])
            s["cpu_ratio"] = spread([r.cpu / q.cpu for r, q in pairs])
        out[c.name] = s
    return out


def markdown(summary: dict[str, dict], reference: str) -> str:
    """The summary as a markdown table."""

    def f(x: dict | None, key: str = "median", fmt: str = "{:.2f}") -> str:
        return fmt.format(x[key]) if x else "-"

    def rng(x: dict | None, fmt: str = "{:.2f}") -> str:
        return f"{f(x, fmt=fmt)} [{f(x, 'min', fmt)}-{f(x, 'max', fmt)}]" if x else "-"

    lines = [
        f"| tool | settings | wall s min / median / max | CPU s median | final ACC | wall ratio to {reference}: "
        f"median [min-max] | CPU ratio median | in-process train+eval s | whole / train+eval |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        wall = s["wall"]
        walls = f"{wall['min']:.2f} / {wall['median']:.2f} / {wall['max']:.2f}" if wall else "-"
        lines.append(
            f"| {name} | {s['settings']} | {walls} | {f(s['cpu'])} | {f(s['acc'], fmt='{:.4f}')} | "
            f"{rng(s.get('wall_ratio'))} | {f(s.get('cpu_ratio'))} | {f(s.get('inproc'))} | "
            f"{rng(s.get('whole_over_inproc'))} |"
        )
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    """Command-line flags; peer locations default to $PEERS_DIR (/work/peers)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    p.add_argument("--warmup", type=int, default=0, help="untimed rounds first (file cache; default 0)")
    p.add_argument("--tools", default="forgetless,forgetless-sgd,mammoth,avalanche", help="comma-separated")
    p.add_argument("--reference", default="forgetless-sgd", help="denominator of the ratios")
    add_tool_paths(p, "mammoth", "avalanche")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per process")
    p.add_argument("--out", type=Path, default=HERE.parent / "results" / "peers")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    cands = candidates(args)
    for i in range(args.warmup):
        print(f"warm-up {i + 1}/{args.warmup}: " + " ".join(c.name for c in cands), flush=True)
        for c in cands:
            time_once(c, args.timeout)
    load_before, started = os.getloadavg(), time.strftime("%Y-%m-%d %H:%M:%S")
    for i in range(args.repeats):
        for c in cands:
            run = time_once(c, args.timeout)
            c.runs.append(run)
            acc = f"{run.acc:.4f}" if run.acc is not None else "-"
            print(
                f"round {i + 1}/{args.repeats} {c.name:15s} wall {run.wall:6.2f} s  cpu {run.cpu:6.2f} s  "
                f"acc {acc}  rc {run.rc}",
                flush=True,
            )
    summary = summarise(cands, args.reference)
    table = markdown(summary, args.reference)
    meta = {
        "repeats": args.repeats,
        "warmup": args.warmup,
        "reference": args.reference,
        "env": ENV,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "cpus": os.cpu_count(),
        "started": started,
        "commands": {c.name: {"cwd": str(c.cwd) if c.cwd else None, "argv": c.command(Path("TMP"))} for c in cands},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "whole_process.json").write_text(json.dumps({"meta": meta, "tools": summary}, indent=2) + "\n")
    (args.out / "whole_process.md").write_text(table)
    print("\n" + table + f"\nwritten: {args.out / 'whole_process.json'}, {args.out / 'whole_process.md'}")


if __name__ == "__main__":
    main()
