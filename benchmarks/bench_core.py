"""naive (the library's learner) vs a plain hand-written PyTorch loop, in one process.

Split Fashion-MNIST, 5 tasks, MLP 784-400-400, batch 128, 1 epoch per task, Adam, fixed thread
count. Both sides do the same arithmetic on the same in-memory uint8 tensors: slice a batch by a
seeded permutation, scale to float, forward, cross-entropy, backward, step; evaluate every task
after every task. Prints a Markdown table and writes JSON.

    python benchmarks/bench_core.py --threads 1 --repeats 5 --out benchmarks/results/core.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from forgetless.config import make_config
from forgetless.training.evaluation import task_accuracies
from forgetless.training.experiment import build_learner, load_scenario, resolve


def plain_loop(scenario, config, seed: int) -> float:
    """The reference: what a researcher would write by hand, no library involved."""
    torch.manual_seed(seed)
    from forgetless.models import build_model

    model = build_model("mlp", scenario.input_shape, scenario.head_sizes, False, [400, 400])
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for index, task in enumerate(scenario.tasks):
        model.head.set_active_outputs(scenario.active_outputs[index])
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        order = torch.randperm(task.num_train, generator=generator)
        for batch in order.split(config.batch_size):
            x = task.train_x[batch].to(torch.float32).div_(255.0)
            loss = F.cross_entropy(model(x), task.train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        task_accuracies(model, scenario, config.eval_batch_size)
    return time.perf_counter() - started


def library(scenario, config, seed: int) -> float:
    learner = build_learner(config, scenario, "naive", seed)
    learner.evaluate()  # the random-init row the plain loop does not compute: exclude it
    started = time.perf_counter()
    for index in range(scenario.num_tasks):
        learner.train_task(index)
    return time.perf_counter() - started


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
