"""Section ``eval``: a full ``T x T`` accuracy matrix (``task_accuracies`` over ``T`` tasks, ``T`` times)."""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

from benchmarks.common import stopwatch
from benchmarks.suite.shared import ScenarioCache, met
from forgetless.models import build_model
from forgetless.strategies import make_strategies
from forgetless.training.evaluation import task_accuracies
from forgetless.training.learner import Learner

TITLE = "a full T x T accuracy matrix, float32 and bfloat16 autocast"
TARGET_SECONDS = 5.0
"""Longest acceptable time for the whole matrix."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("eval section")
    group.add_argument("--eval-benchmark", default="permuted-fmnist")
    group.add_argument("--eval-tasks", type=int, default=20)


def quick(args: argparse.Namespace) -> None:
    args.eval_tasks = min(args.eval_tasks, 10)


def forward_flops_per_sample(model: nn.Module) -> int:
    """Multiply-adds x 2 of every Linear layer (the MLP's whole forward cost)."""
    return sum(2 * m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))


def run(args: argparse.Namespace, cache: ScenarioCache) -> dict[str, Any]:
    """The matrix timed in float32 (exact) and under bfloat16 autocast, with the largest accuracy
    difference between the two. The model is trained on the first task (one epoch) so that
    predictions are not random ties."""
    config, scenario = cache.get(args.eval_benchmark, None, args.eval_tasks)
    torch.manual_seed(0)
    model = build_model(
        config.model or "mlp",
        scenario.input_shape,
        scenario.head_sizes,
        scenario.uses_task_id,
        config.hidden,
    )
    Learner(scenario.subsample(tasks=1), model, make_strategies("naive"), config).train_task(0)
    rows = scenario.num_tasks
    out: dict[str, Any] = {
        "benchmark": args.eval_benchmark,
        "scenario": scenario.kind,
        "tasks": rows,
        "matrix": f"{rows}x{rows}",
        "test_samples_per_task": int(scenario.tasks[0].test_y.shape[0]),
        "eval_batch_size": config.eval_batch_size,
        "target": f"< {TARGET_SECONDS:g} s",
    }
    test_rows = sum(int(t.test_y.shape[0]) for t in scenario.tasks) * rows
    flops = forward_flops_per_sample(model) * test_rows
    accuracies = {}
    for precision in ("float32", "bfloat16"):
        task_accuracies(model, scenario, config.eval_batch_size, tasks=[0], precision=precision)  # warm-up
        accuracies[precision] = task_accuracies(model, scenario, config.eval_batch_size, precision=precision)
        seconds = stopwatch(
            lambda p=precision: [
                task_accuracies(model, scenario, config.eval_batch_size, precision=p) for _ in range(rows)
            ]
        )
        prefix = "" if precision == "float32" else "bfloat16_"
        out.update(
            {
                f"{prefix}seconds": seconds,
                f"{prefix}samples_per_second": test_rows / seconds,
                f"{prefix}gflops_per_second": flops / seconds / 1e9,
                f"{prefix}target_met": seconds < TARGET_SECONDS,
            }
        )
    out["forward_gflops"] = flops / 1e9
    out["bfloat16_max_accuracy_difference"] = float(abs(accuracies["float32"] - accuracies["bfloat16"]).max())
    out["bfloat16_speedup"] = out["seconds"] / out["bfloat16_seconds"]
    return out


def markdown(ev: dict[str, Any]) -> list[str]:
    lines = [
        f"## Evaluation: {ev['matrix']} accuracy matrix ({ev['benchmark']}, {ev['scenario']}-IL)",
        "",
        f"{ev['seconds']:.2f} s for {ev['tasks']} x {ev['tasks']} task evaluations of "
        f"{ev['test_samples_per_task']} test samples "
        f"({ev['samples_per_second']:,.0f} samples/s, {ev['gflops_per_second']:.0f} GFLOP/s "
        f"over {ev['forward_gflops']:.0f} GFLOP of forward passes); "
        f"target {ev['target']}: {met(ev['target_met'])}.",
        "",
    ]
    if "bfloat16_seconds" in ev:
        lines += [
            f"With `--eval-precision bfloat16` (autocast): {ev['bfloat16_seconds']:.2f} s "
            f"({ev['bfloat16_speedup']:.1f}x faster, {ev['bfloat16_gflops_per_second']:.0f} GFLOP/s); "
            f"largest accuracy difference to float32 {ev['bfloat16_max_accuracy_difference']:.4f} "
            f"(model trained on task 1); target {ev['target']}: {met(ev['bfloat16_target_met'])}.",
            "",
        ]
    return lines
