"""naive (the library's learner) vs a plain hand-written PyTorch loop, in one process.

Split Fashion-MNIST, 5 tasks, MLP 784-400-400, batch 128, 1 epoch per task, Adam, fixed thread
count. Both sides do the same arithmetic on the same in-memory uint8 tensors: slice a batch by a
seeded permutation, scale to float, forward, cross-entropy, backward, step; evaluate every task
after every task. Prints a Markdown table and writes JSON.

    python -m benchmarks.bench_core --threads 1 --repeats 5 --out benchmarks/results/core.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from benchmarks.common import library_run, plain_loop
from forgetless.config import make_config
from forgetless.training.experiment import load_scenario, resolve


def library(scenario, config, seed: int) -> float:
    """Seconds of the library's learner running ``naive`` (see :func:`common.library_run`)."""
    return library_run(scenario, config, "naive", seed)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--benchmark", default="split-fmnist")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/core.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = resolve(make_config(benchmark=args.benchmark, strategies=["naive"], threads=args.threads))
    scenario = load_scenario(config, 0)
    plain_loop(scenario, config, 0)  # warm-up
    library(scenario, config, 0)
    plain, lib = [], []
    for r in range(args.repeats):  # interleaved, so drift on a shared machine hits both
        plain.append(plain_loop(scenario, config, r))
        lib.append(library(scenario, config, r))
    ratios = [b / a for a, b in zip(plain, lib)]
    row = {
        "benchmark": args.benchmark,
        "threads": args.threads,
        "repeats": args.repeats,
        "plain_seconds_median": statistics.median(plain),
        "naive_seconds_median": statistics.median(lib),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "samples_per_second_naive": sum(t.num_train for t in scenario.tasks) / statistics.median(lib),
        "target": "naive / plain <= 1.10",
    }
    print("| plain loop s | naive s | ratio (median) | ratio min-max |")
    print("|---|---|---|---|")
    print(
        f"| {row['plain_seconds_median']:.2f} | {row['naive_seconds_median']:.2f} | "
        f"{row['ratio_median']:.3f} | {row['ratio_min']:.3f}-{row['ratio_max']:.3f} |"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
