"""Replay strategies: step time against naive, GEM per number of tasks, buffer memory and sampling.

Split Fashion-MNIST, class-IL, MLP 784-400-400, batch 128, buffer 500, Adam, fixed thread count.
Step time of a strategy = training seconds of a task / optimizer steps of that task (evaluation
excluded), measured on task 2 (index 1: one earlier task, buffer full); strategies are repeated
interleaved in one process and the medians reported, with the ratio to naive per repeat. GEM and
A-GEM are also timed on every later task (1..4 earlier tasks). Buffer sampling is timed for
growing draw sizes, against a per-sample Python loop doing the same gather.

    python -m benchmarks.bench_replay --threads 1 --repeats 5 --out benchmarks/results/replay.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import speed_target, strategy_names
from forgetless.config import make_config
from forgetless.data.scenarios import Scenario
from forgetless.strategies._buffer import MemoryBuffer, ReplayStrategy
from forgetless.training.experiment import build_learner, load_scenario, resolve

STRATEGIES = ["naive", *strategy_names("replay", kind=ReplayStrategy)]
"""naive (the reference) and every registered buffer-based replay strategy."""


def step_times(scenario: Scenario, config, strategy: str, tasks: int, seed: int) -> list[float]:
    """Seconds per optimizer step on each task ``1..tasks-1`` (buffer filled by earlier ones)."""
    learner = build_learner(config, scenario, strategy, seed)
    for index in range(tasks):
        learner.train_task(index)
    result = learner.result
    return [result.train_seconds[i] / result.steps[i] for i in range(1, tasks)]


def sampling_times(repeats: int) -> list[dict[str, float]]:
    """Median microseconds of ``sample(n)`` on a full 5000-row uint8 buffer vs a Python loop."""
    buffer = MemoryBuffer(5000, seed=0)
    images = torch.randint(0, 256, (5000, 1, 28, 28), dtype=torch.uint8)
    buffer.add(images, torch.randint(0, 10, (5000,)), 0)
    rows = []
    for n in (16, 128, 1024):
        vectorised, looped = [], []
        for _ in range(repeats * 20):
            started = time.perf_counter()
            buffer.sample(n)
            vectorised.append(time.perf_counter() - started)
            index = torch.randperm(5000)[:n]
            started = time.perf_counter()
            torch.stack([buffer.inputs[i] for i in index.tolist()])  # per-sample reference
            torch.stack([buffer.labels[i] for i in index.tolist()])
            looped.append(time.perf_counter() - started)
        rows.append(
            {
                "rows": n,
                "sample_us": 1e6 * statistics.median(vectorised),
                "python_loop_us": 1e6 * statistics.median(looped),
            }
        )
    add = []
    batch = images[:128]
    labels = torch.zeros(128, dtype=torch.int64)
    for _ in range(repeats * 20):
        started = time.perf_counter()
        buffer.add(batch, labels, 1)
        add.append(time.perf_counter() - started)
    rows.append({"rows": 128, "add_us": 1e6 * statistics.median(add)})
    return rows


def memory_rows(scenario: Scenario, config) -> list[dict[str, int]]:
    """Bytes per stored sample and in all, for each buffer-based strategy after one task."""
    rows = []
    for strategy in STRATEGIES[1:]:
        learner = build_learner(config, scenario, strategy, 0)
        learner.train_task(0)
        buffer = learner.strategies[0].buffer
        rows.append(
            {
                "strategy": strategy,
                "capacity": buffer.capacity,
                "bytes_per_sample": buffer.bytes_per_sample(),
                "input_bytes_per_sample": buffer.inputs[0].numel() * buffer.inputs.element_size(),
                "buffer_bytes": buffer.memory_bytes(),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--per-task", type=int, default=3000, help="training images per task")
    parser.add_argument("--buffer-size", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/replay.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = resolve(
        make_config(
            benchmark="split-fmnist",
            scenario="class",
            strategies=["naive"],
            threads=args.threads,
            buffer_size=args.buffer_size,
        )
    )
    scenario = load_scenario(config, 0).subsample(train=args.per_task)
    tasks = scenario.num_tasks

    per_strategy: dict[str, list[list[float]]] = {s: [] for s in STRATEGIES}
    for strategy in STRATEGIES:  # warm-up
        step_times(scenario, config, strategy, 2, 0)
    for repeat in range(args.repeats):  # interleaved: load on a shared machine hits every side
        for strategy in STRATEGIES:
            later = tasks if strategy in ("gem", "agem", "naive") else 2
            per_strategy[strategy].append(step_times(scenario, config, strategy, later, repeat))

    naive = [r[0] for r in per_strategy["naive"]]
    step_rows = []
    for strategy in STRATEGIES:
        first = [r[0] for r in per_strategy[strategy]]
        ratios = [a / b for a, b in zip(first, naive)]
        step_rows.append(
            {
                "strategy": strategy,
                "step_ms": 1e3 * statistics.median(first),
                "ratio_to_naive": statistics.median(ratios),
                "target": None if strategy == "naive" else speed_target(strategy),
            }
        )
    per_tasks = []
    for earlier in range(1, tasks):
        row = {"earlier_tasks": earlier}
        for strategy in ("naive", "agem", "gem"):
            row[f"{strategy}_step_ms"] = 1e3 * statistics.median(r[earlier - 1] for r in per_strategy[strategy])
        row["gem_ratio"] = row["gem_step_ms"] / row["naive_step_ms"]
        row["agem_ratio"] = row["agem_step_ms"] / row["naive_step_ms"]
        per_tasks.append(row)
    sampling = sampling_times(args.repeats)
    memory = memory_rows(scenario, config)

    print(
        f"## Replay step time (split-fmnist class-IL, buffer {args.buffer_size}, "
        f"{args.threads} thread(s), median of {args.repeats})\n"
    )
    print("| strategy | ms / step | x naive | target |\n|---|---:|---:|---:|")
    for r in step_rows:
        target = f"<= {r['target']}x" if r["target"] else ""
        print(f"| {r['strategy']} | {r['step_ms']:.2f} | {r['ratio_to_naive']:.2f} | {target} |")
    print("\n| earlier tasks | naive ms | A-GEM ms (x) | GEM ms (x) |\n|---:|---:|---:|---:|")
    for r in per_tasks:
        print(
            f"| {r['earlier_tasks']} | {r['naive_step_ms']:.2f} | {r['agem_step_ms']:.2f} "
            f"({r['agem_ratio']:.2f}) | {r['gem_step_ms']:.2f} ({r['gem_ratio']:.2f}) |"
        )
    print("\n| strategy | bytes / sample | input bytes | buffer bytes |\n|---|---:|---:|---:|")
    for r in memory:
        print(f"| {r['strategy']} | {r['bytes_per_sample']} | {r['input_bytes_per_sample']} | {r['buffer_bytes']} |")
    print("\n| rows | sample() us | per-sample Python loop us |\n|---:|---:|---:|")
    for r in sampling[:-1]:
        print(f"| {r['rows']} | {r['sample_us']:.1f} | {r['python_loop_us']:.1f} |")
    print(f"\nadd(128 rows) into a full buffer: {sampling[-1]['add_us']:.1f} us")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "torch": torch.__version__,
                "threads": args.threads,
                "repeats": args.repeats,
                "per_task": args.per_task,
                "buffer_size": args.buffer_size,
                "step": step_rows,
                "per_earlier_tasks": per_tasks,
                "memory": memory,
                "sampling": sampling,
            },
            indent=2,
        )
    )
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    main()
