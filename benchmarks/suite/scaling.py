"""Section ``scaling``: wall time for 5, 10, 20 permuted tasks (training data subsampled per task)."""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks.common import library_run
from benchmarks.suite.shared import ScenarioCache, error_text, int_list, str_list
from forgetless.config import RunConfig, parse_assignments
from forgetless.metrics import summarize
from forgetless.strategies import discover

TITLE = "wall time against the number of tasks (naive, ewc, online-ewc, gem)"
STRATEGIES = ("naive", "ewc", "ewc:merge_terms=false", "online-ewc", "gem")
"""``name:param=value`` is a variant with that strategy parameter set (here: EWC with one term per task)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scaling section")
    group.add_argument("--scaling-benchmark", default="permuted-fmnist")
    group.add_argument("--scaling-tasks", type=int_list, default=[5, 10, 20])
    group.add_argument("--scaling-strategies", type=str_list, default=list(STRATEGIES))
    group.add_argument("--scaling-train", type=int, default=6000, help="training samples per task")
    group.add_argument("--scaling-test", type=int, default=1000, help="test samples per task")
    group.add_argument(
        "--scaling-max-seconds",
        type=float,
        default=150.0,
        help="a strategy whose run took longer skips the larger task counts",
    )


def quick(args: argparse.Namespace) -> None:
    args.scaling_tasks = [n for n in args.scaling_tasks if n <= 10] or args.scaling_tasks[:1]


def _variant(label: str, config: RunConfig) -> tuple[str, RunConfig]:
    """``"ewc:merge_terms=false"`` -> ``("ewc", config with params.ewc.merge_terms = False)``."""
    name, _, assignment = label.partition(":")
    if not assignment:
        return name, config
    extra = parse_assignments([f"{name}.{assignment}"])
    params = {**config.params, name: {**config.params.get(name, {}), **extra[name]}}
    return name, config.model_copy(update={"params": params})


def run(args: argparse.Namespace, cache: ScenarioCache) -> dict[str, Any]:
    """Wall time vs number of tasks, training and evaluation apart, per strategy."""
    registry = discover()
    largest = max(args.scaling_tasks)
    config, full = cache.get(args.scaling_benchmark, None, largest)
    variants = {label: _variant(label, config) for label in args.scaling_strategies}
    strategies = [label for label, (name, _) in variants.items() if name in registry]
    rows: list[dict[str, Any]] = []
    if strategies:
        name, variant_config = variants[strategies[0]]
        library_run(full.subsample(256, 256, tasks=1), variant_config, name, 0)  # warm-up
    too_slow: dict[str, str] = {}
    for n_tasks in args.scaling_tasks:
        scenario = full.subsample(args.scaling_train, args.scaling_test, tasks=n_tasks)
        for label in strategies:
            name, variant_config = variants[label]
            if label in too_slow:
                rows.append({"strategy": label, "tasks": n_tasks, "status": too_slow[label]})
                continue
            try:
                seconds, learner = library_run(scenario, variant_config, name, 0)
            except Exception as error:
                rows.append({"strategy": label, "tasks": n_tasks, "status": error_text(error)})
                continue
            per_task = learner.result.train_seconds
            rows.append(
                {
                    "strategy": label,
                    "tasks": n_tasks,
                    "status": "ok",
                    "seconds": seconds,
                    "train_seconds": float(sum(per_task)),
                    "eval_seconds": learner.result.eval_seconds,
                    "first_task_train_seconds": per_task[0],
                    "last_task_train_seconds": per_task[-1],
                    "train_seconds_per_task": list(per_task),
                    "acc": summarize(learner.result.matrix)["acc"],
                }
            )
            print(f"  {label} x {n_tasks} tasks: {seconds:.2f} s", flush=True)
            if seconds > args.scaling_max_seconds:
                too_slow[label] = (
                    f"skipped: its {n_tasks}-task run took {seconds:.0f} s "
                    f"(> --scaling-max-seconds {args.scaling_max_seconds:g})"
                )
    missing = [label for label, (name, _) in variants.items() if name not in registry]
    return {
        "benchmark": args.scaling_benchmark,
        "scenario": full.kind,
        "train_samples_per_task": min(args.scaling_train, full.tasks[0].num_train),
        "test_samples_per_task": min(args.scaling_test, int(full.tasks[0].test_y.shape[0])),
        "not_available": missing,
        "rows": rows,
    }


def markdown(scaling: dict[str, Any]) -> list[str]:
    lines = [
        f"## Scaling with the number of tasks ({scaling['benchmark']}, "
        f"{scaling['scenario']}-IL, {scaling['train_samples_per_task']} training / "
        f"{scaling['test_samples_per_task']} test samples per task, subsampled)",
        "",
        "| strategy | tasks | wall s | train s | eval s | first task train s | last task train s | ACC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(scaling["rows"], key=lambda r: (r["strategy"], r["tasks"])):
        if row["status"] != "ok":
            lines.append(f"| {row['strategy']} | {row['tasks']} | {row['status']} ||||||")
            continue
        lines.append(
            f"| {row['strategy']} | {row['tasks']} | {row['seconds']:.2f} "
            f"| {row['train_seconds']:.2f} | {row['eval_seconds']:.2f} "
            f"| {row['first_task_train_seconds']:.3f} | "
            f"{row['last_task_train_seconds']:.3f} | {row['acc']:.3f} |"
        )
    if scaling["not_available"]:
        lines.append(f"\nnot available: {', '.join(scaling['not_available'])}")
    return [*lines, ""]
