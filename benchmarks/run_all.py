"""The benchmark suite: every registered strategy against the plain PyTorch loop, in one process.

    python -m benchmarks.run_all --threads 1 --out benchmarks/results

Writes ``suite.json`` and ``suite.md`` to ``--out``. Each section is a module of
:mod:`benchmarks.suite` (``--sections``, default all, in this order):

* ``strategies``: each strategy on Split Fashion-MNIST against the plain loop and ``naive``
  (wall time, samples/s, peak RSS, ACC/BWT; the speed target of each strategy class).
* ``fisher``: diagonal Fisher (and MAS importance) batched vs the per-sample loop.
* ``buffer``: bytes per stored sample of the replay memory, and the cost of add/sample.
* ``eval``: a full 20 x 20 accuracy matrix on Permuted Fashion-MNIST.
* ``llm``: the LLM demo's tokens/s, from ``benchmarks.bench_hf`` when it provides them.
* ``scaling``: wall time for 5, 10, 20 permuted tasks for naive, ewc, online-ewc and gem.

``--profile NAME`` instead runs one strategy under ``torch.profiler`` and prints the top ops.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from benchmarks.common import configure_threads
from benchmarks.suite import buffer, evaluation, fisher, llm, profile, scaling, strategies
from benchmarks.suite.shared import ScenarioCache, cpu_name, fmt, str_list

SECTIONS: dict[str, ModuleType] = {
    "strategies": strategies,
    "fisher": fisher,
    "buffer": buffer,
    "eval": evaluation,
    "llm": llm,
    "scaling": scaling,
}
"""Section name -> its module (``run``, ``markdown``, ``add_arguments``, ``quick``), in run order."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    sections = "; ".join(f"{name}: {module.TITLE}" for name, module in SECTIONS.items())
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (fixed)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for suite.json/.md")
    parser.add_argument("--sections", type=str_list, default=list(SECTIONS), help=f"comma list of: {sections}")
    parser.add_argument("--benchmark", default="split-fmnist", help="benchmark of strategies, fisher, buffer")
    parser.add_argument("--quick", action="store_true", help="1 round, 10x10 eval, 2 LLM steps, scaling to 10 tasks")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failing strategies")
    for module in SECTIONS.values():
        module.add_arguments(parser)
    profile.add_arguments(parser)
    args = parser.parse_args(argv)
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}: choose from {', '.join(SECTIONS)}")
    if args.quick:
        for module in SECTIONS.values():
            module.quick(args)
    return args


def _load_average() -> float | None:
    """The 1-minute load average (other processes competing for the cores), where known."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def to_markdown(results: dict[str, Any]) -> str:
    """``suite.md``: a header on how it ran, then each section's part."""
    meta = results["meta"]
    lines = [
        "# forgetless benchmark suite",
        "",
        f"`{meta['command']}` - {meta['date']}, torch {meta['torch']}, "
        f"{meta['threads']} thread(s), {meta['cpu']} ({meta['cpu_count']} cores); suite took "
        f"{meta['total_seconds']:.0f} s; 1-min load average "
        f"{fmt(meta['load_average_1min']['start'])} at start, "
        f"{fmt(meta['load_average_1min']['end'])} at end.",
        "",
    ]
    for name, module in SECTIONS.items():
        if results.get(name):
            lines += module.markdown(results[name])
    return "\n".join(lines) + "\n"


def run_suite(args: argparse.Namespace) -> dict[str, Any]:
    """Run the chosen sections; returns the JSON-able results (also written to ``args.out``)."""
    configure_threads(args.threads)
    cache = ScenarioCache(args.threads)
    started = time.perf_counter()
    load_before = _load_average()
    results: dict[str, Any] = {}
    for name, module in SECTIONS.items():
        if name in args.sections:
            print(f"[{name}]", flush=True)
            section_started = time.perf_counter()
            results[name] = module.run(args, cache)
            results[name]["section_seconds"] = time.perf_counter() - section_started
    results["meta"] = {
        "command": " ".join(["python -m benchmarks.run_all", *sys.argv[1:]]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "threads": args.threads,
        "quick": args.quick,
        "total_seconds": time.perf_counter() - started,
        "load_average_1min": {"start": load_before, "end": _load_average()},
        "cpu_count": os.cpu_count(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "suite.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    (args.out / "suite.md").write_text(to_markdown(results))
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.profile:
        configure_threads(args.threads)
        text = profile.run(args, ScenarioCache(args.threads))
        print(text)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"profile-{args.profile}.txt").write_text(text + "\n")
        return
    print(to_markdown(run_suite(args)))


if __name__ == "__main__":
    main()
