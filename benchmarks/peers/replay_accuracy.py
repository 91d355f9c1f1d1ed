"""Accuracy of the replay methods in forgetless and Mammoth on identical settings, over seeds.

Class-IL Split Fashion-MNIST, 5 tasks of 2 classes in the order 0..9, MLP 784-400-400-10, SGD
lr 0.01 momentum 0.9, batch 128, 1 epoch per task, reservoir buffer 500, replay batch 128, DER
alpha 0.3, DER++ alpha 0.3 beta 0.5, CPU, one thread. forgetless reads ``fl-config.yaml`` beside
this file; Mammoth gets the same settings as flags. One process per (tool, method, seed),
interleaved (seed by seed, method by method, tool by tool) so that load from other processes hits
both tools alike.

Per tool and method: final class-IL accuracy (mean +- std over the seeds), task-IL accuracy (both
tools report it from the same forward pass: Mammoth prints it, forgetless's ``metrics.json`` of a
class-IL run has ``task_il_acc``) and whole-process wall seconds (launch to exit). Written as
``replay_accuracy.json`` (every run, its command, its final accuracy row) and
``replay_accuracy.md`` (the table) to ``--out``.

Standard library only; run it with the forgetless venv's python. Mammoth is set up as README.md
beside this file says; when it is missing it is skipped with a one-line note. ``--merge`` reruns
only the tools of ``--tools`` that are set up here and keeps every other tool's stored runs from
``OUT/NAME.json`` (e.g. forgetless rerun on a machine without Mammoth's venv)::

    python -m benchmarks.peers.replay_accuracy --tools forgetless,forgetless-xavier --merge
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.peers.peer_paths import add_tool_paths

HERE = Path(__file__).resolve().parent
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
METHODS = ("naive", "er", "der", "derpp")
MAMMOTH_COMMON = (
    "--dataset seq-fmnist --backbone mnistmlp --mlp_hidden_size 400 --lr 0.01 --optim_mom 0.9 "
    "--batch_size 128 --n_epochs 1 --base_path data/ --num_workers 0 --non_verbose 1"
).split()
MAMMOTH_METHOD = {
    "naive": ["--model", "sgd"],
    "er": ["--model", "er", "--buffer_size", "500", "--minibatch_size", "128"],
    "der": ["--model", "der", "--buffer_size", "500", "--minibatch_size", "128", "--alpha", "0.3"],
    "derpp": ["--model", "derpp", "--buffer_size", "500", "--minibatch_size", "128", "--alpha", "0.3", "--beta", "0.5"],
}
MAMMOTH_ACC = re.compile(r"Accuracy for \d+ task\(s\):\s+\[Class-IL\]:\s+([0-9.]+)\s*%\s+\[Task-IL\]:\s+([0-9.]+)\s*%")
MAMMOTH_ROW = re.compile(r"Raw accuracy values: Class-IL \[([^\]]*)\]")


@dataclass
class Run:
    """One process: its wall seconds and what it reported."""

    tool: str
    method: str
    seed: int
    wall: float
    rc: int
    class_il: float | None = None
    task_il: float | None = None
    final_row: list[float] | None = None


@dataclass
class Tool:
    """A library and setting: how to build the command for (method, seed), how to read it."""

    name: str
    settings: str
    cwd: Path | None
    command: object  # (method, seed, scratch) -> argv
    read: object  # (output, scratch, method) -> (class_il, task_il, final_row)
    runs: list[Run] = field(default_factory=list)


def parse_seeds(text: str) -> list[int]:
    """``0-4`` or ``0,2,3`` (or a mix: ``0-2,5``) to a list of seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        seeds += list(range(int(low), int(high) + 1)) if high else [int(low)]
    return seeds


def forgetless_tool(name: str, settings: str, launcher: list[str], config: Path, extra: list[str]) -> Tool:
    """forgetless on ``config`` (``launcher``: the command line up to ``run``; ``extra`` flags appended)."""

    def command(method: str, seed: int, scratch: Path) -> list[str]:
        return [
            *launcher, "run", "--config", str(config), "--strategies", method, "--seed", str(seed),
            "--threads", "1", "--quiet", "--force", "--out", str(scratch / "out"), *extra,
        ]  # fmt: skip

    def read(_: str, scratch: Path, method: str) -> tuple[float | None, float | None, list[float] | None]:
        run = json.loads((scratch / "out" / "metrics.json").read_text())["runs"][method][0]
        return run["metrics"]["acc"], run["metrics"].get("task_il_acc"), run["accuracy_matrix"][-1]

    return Tool(name, settings, None, command, read)


def mammoth_tool(args: argparse.Namespace) -> Tool:
    """Mammoth's ``main.py`` with the settings of fl-config.yaml as flags."""

    def command(method: str, seed: int, _: Path) -> list[str]:
        return [str(args.mammoth_python), "main.py", *MAMMOTH_COMMON, *MAMMOTH_METHOD[method], "--seed", str(seed)]

    def read(output: str, _: Path, __: str) -> tuple[float | None, float | None, list[float] | None]:
        found, rows = MAMMOTH_ACC.findall(output), MAMMOTH_ROW.findall(output)
        if not found:
            return None, None, None
        row = [float(v) / 100 for v in rows[-1].split(",")] if rows else None
        return float(found[-1][0]) / 100, float(found[-1][1]) / 100, row

    settings = "main.py --backbone mnistmlp (Xavier init, all 10 outputs trained from task 1)"
    return Tool("mammoth", settings, args.mammoth, command, read)


def tools(args: argparse.Namespace) -> list[Tool]:
    """The tools asked for that are set up here (a note for each one skipped)."""
    extra = [f"--set={item}" for item in args.set]
    sets = " ".join(extra)
    fl, cfg = [str(args.forgetless)], args.config
    adam = ["--optimizer", "adam", "--lr", "0.001"]
    found = {
        "forgetless": forgetless_tool("forgetless", f"{cfg.name} {sets}".strip(), fl, cfg, extra),
        "forgetless-xavier": forgetless_tool(
            "forgetless-xavier", f"{cfg.name} {sets} --init xavier", fl, cfg, [*extra, "--init", "xavier"]
        ),
        "forgetless-adam": forgetless_tool(
            "forgetless-adam", f"{cfg.name} {sets}, Adam lr 1e-3 (its default)", fl, cfg, [*extra, *adam]
        ),
    }
    if (args.mammoth / "main.py").is_file() and args.mammoth_python.is_file():
        found["mammoth"] = mammoth_tool(args)
    else:
        print(f"note: Mammoth skipped (no {args.mammoth}/main.py or {args.mammoth_python})")
    return [found[name] for name in args.tools.split(",") if name in found]


def run_once(tool: Tool, method: str, seed: int, timeout: float) -> Run:
    """One process of ``tool`` for (method, seed), timed from launch to exit."""
    with tempfile.TemporaryDirectory(prefix=f"replay-{tool.name}-") as tmp:
        scratch = Path(tmp)
        argv = tool.command(method, seed, scratch)
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                argv, cwd=tool.cwd, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=timeout
            )
            rc, output = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc, output = 124, str(exc.stdout or "") + str(exc.stderr or "")
        run = Run(tool.name, method, seed, time.perf_counter() - start, rc)
        if rc == 0:
            try:
                run.class_il, run.task_il, run.final_row = tool.read(output, scratch, method)
            except (OSError, KeyError, ValueError, IndexError) as exc:
                print(f"  {tool.name} {method} seed {seed}: could not read its result ({exc})")
        else:
            print(
                f"  {tool.name} {method} seed {seed}: exit {rc}; last output:\n" + "\n".join(output.splitlines()[-15:])
            )
        return run


def mean_std(values: list[float]) -> dict[str, float] | None:
    """Mean and sample standard deviation (0 for one value), or None when there are none."""
    if not values:
        return None
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def summarise(found: list[Tool], methods: list[str]) -> dict[str, dict[str, dict]]:
    """Per method, per tool: class-IL, task-IL and wall mean +- std, per-seed class-IL."""
    out: dict[str, dict[str, dict]] = {}
    for method in methods:
        for tool in found:
            ok = [r for r in tool.runs if r.method == method and r.rc == 0]
            out.setdefault(method, {})[tool.name] = {
                "settings": tool.settings,
                "class_il": mean_std([r.class_il for r in ok if r.class_il is not None]),
                "task_il": mean_std([r.task_il for r in ok if r.task_il is not None]),
                "wall": mean_std([r.wall for r in ok]),
                "per_seed_class_il": {r.seed: r.class_il for r in ok},
                "failed": [r.seed for r in tool.runs if r.method == method and (r.rc != 0 or r.class_il is None)],
            }
    return out


def markdown(summary: dict[str, dict[str, dict]]) -> str:
    """The summary as a markdown table (accuracies in [0, 1])."""

    def ms(x: dict | None, fmt: str = "{:.3f}") -> str:
        return f"{fmt.format(x['mean'])} ± {fmt.format(x['std'])}" if x else "-"

    lines = [
        "| method | tool | class-IL ACC mean ± std | task-IL ACC mean ± std | class-IL per seed | wall s mean ± std |",
        "|---|---|---|---|---|---|",
    ]
    for method, per_tool in summary.items():
        for name, s in per_tool.items():
            seeds = ", ".join(f"{v:.3f}" for _, v in sorted(s["per_seed_class_il"].items()) if v is not None)
            if s["failed"]:
                seeds = f"{seeds} (failed: seed {', '.join(map(str, s['failed']))})".strip()
            wall = ms(s["wall"], "{:.1f}")
            lines.append(f"| {method} | {name} | {ms(s['class_il'])} | {ms(s['task_il'])} | {seeds} | {wall} |")
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    """Command-line flags; peer locations default to $PEERS_DIR (/work/peers)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated, of " + ",".join(METHODS))
    p.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,2 (default 0-4)")
    p.add_argument(
        "--tools",
        default="forgetless,forgetless-xavier,mammoth",
        help="comma-separated: forgetless, forgetless-xavier, forgetless-adam, mammoth",
    )
    p.add_argument("--set", action="append", default=[], help="forgetless --set STRATEGY.PARAM=VALUE (repeatable)")
    p.add_argument("--config", type=Path, default=HERE / "fl-config.yaml", help="forgetless config")
    add_tool_paths(p, "mammoth")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per process")
    p.add_argument("--out", type=Path, default=HERE.parent / "results" / "peers")
    p.add_argument("--name", default="replay_accuracy", help="file stem of the outputs (default replay_accuracy)")
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the stored runs of every tool not rerun now from OUT/NAME.json (rerun only --tools set up here)",
    )
    args = p.parse_args()
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}: use some of {', '.join(METHODS)}")
    return args


def run_interleaved(found: list[Tool], methods: list[str], seeds: list[int], timeout: float) -> dict:
    """One process per (tool, method, seed), seed by seed, method by method, tool by tool; the
    runs land in ``tool.runs``. Returns the load and start time (for :func:`write_results`)."""
    load_before, started = os.getloadavg(), time.strftime("%Y-%m-%d %H:%M:%S")
    width = max((len(t.name) for t in found), default=0)
    for seed in seeds:
        for method in methods:
            for tool in found:
                run = run_once(tool, method, seed, timeout)
                tool.runs.append(run)
                acc = f"{run.class_il:.4f}" if run.class_il is not None else "-"
                print(
                    f"seed {seed} {method:6s} {tool.name:{width}s} class-IL {acc}  wall {run.wall:6.1f} s  rc {run.rc}",
                    flush=True,
                )
    return {"loadavg_before": load_before, "started": started}


def stored_tools(
    path: Path, rerun: set[str], methods: list[str], seeds: list[int]
) -> tuple[list[Tool], dict, list[str]]:
    """The tools of a stored ``NAME.json`` other than ``rerun``, with their stored runs of ``methods``
    x ``seeds``, settings and commands; when and under which load those runs were made; the
    file's tool order."""
    data = json.loads(path.read_text())
    meta, kept = data["meta"], []
    for name, command in meta["commands"].items():
        if name in rerun:
            continue
        runs = [Run(**r) for r in data["runs"] if r["tool"] == name and r["method"] in methods and r["seed"] in seeds]
        missing = sorted({(m, s) for m in methods for s in seeds} - {(r.method, r.seed) for r in runs})
        if missing:
            print(f"note: {path.name} holds no {name} run of {', '.join(f'{m} seed {s}' for m, s in missing)}")
        settings = next((per_tool[name]["settings"] for per_tool in data["summary"].values() if name in per_tool), "")
        argv = command["argv"]
        cwd = Path(command["cwd"]) if command["cwd"] else None
        kept.append(Tool(name, settings, cwd, lambda method, _, __, argv=argv: argv.get(method), None, runs))
    when = {k: meta.get(k) for k in ("started", "loadavg_before", "loadavg_after")}
    return kept, {"from": path.name, "tools": [t.name for t in kept], **when}, list(meta["commands"])


def merged(found: list[Tool], kept: list[Tool], order: list[str]) -> list[Tool]:
    """``found`` and ``kept`` in the stored file's tool ``order`` (tools new to it last)."""
    rank = {name: i for i, name in enumerate(order)}
    return sorted([*found, *kept], key=lambda t: rank.get(t.name, len(rank)))


def write_results(
    found: list[Tool],
    methods: list[str],
    seeds: list[int],
    out: Path,
    name: str,
    load: dict,
    kept_from: dict | None = None,
) -> None:
    """``NAME.json`` (meta, summary, every run) and ``NAME.md`` (the table) in ``out``; ``kept_from``
    (:func:`stored_tools`) says which tools' runs were kept from an earlier file, made when."""
    summary = summarise(found, methods)
    meta = {
        "methods": methods,
        "seeds": seeds,
        "env": ENV,
        "loadavg_before": load["loadavg_before"],
        "loadavg_after": os.getloadavg(),
        "cpus": os.cpu_count(),
        "started": load["started"],
        "commands": {
            t.name: {
                "cwd": str(t.cwd) if t.cwd else None,
                "argv": {m: t.command(m, seeds[0], Path("TMP")) for m in methods},
            }
            for t in found
        },
    }
    if kept_from is not None:
        meta["kept_from"] = kept_from
    runs = [vars(r) for t in found for r in t.runs]
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(summary)
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=2) + "\n")
    (out / f"{name}.md").write_text(table)
    print("\n" + table + f"\nwritten: {out / (name + '.json')}, {out / (name + '.md')}")


def main() -> None:
    args = parse_args()
    methods, seeds = args.methods.split(","), parse_seeds(args.seeds)
    found = tools(args)
    kept_from = None
    if args.merge:
        stored = args.out / f"{args.name}.json"
        if not stored.is_file():
            raise SystemExit(f"--merge: no {stored} to merge with")
        kept, kept_from, order = stored_tools(stored, {t.name for t in found}, methods, seeds)
    load = run_interleaved(found, methods, seeds, args.timeout)
    if args.merge:
        found = merged(found, kept, order)
    write_results(found, methods, seeds, args.out, args.name, load, kept_from)


if __name__ == "__main__":
    main()
