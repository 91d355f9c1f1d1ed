"""Regularisation strategies: Fisher estimation speed, per-step overhead, memory per task.

1. Fisher diagonal of the 784-400-400-10 MLP on ``--samples`` Fashion-MNIST inputs: the batched
   identity ``(D^2)^T (A^2)`` vs ``torch.func`` vmap vs a per-sample loop (same labels drawn),
   medians of ``--repeats`` interleaved rounds after a warm-up; the largest difference to the
   loop. MAS importance likewise.
2. Per-step training time of each regularization and distillation strategy (their families in
   the registry) vs naive, against its ``speed_target``, on Split Fashion-MNIST (``--scenario``,
   default task-IL so LwF distils through old heads), MLP 784-400-400, batch 128, Adam:
   the median interval between optimizer steps of task 3 (two earlier tasks: EWC holds two
   terms, LwF two old heads), evaluation and Fisher estimation excluded; fresh learners,
   strategies interleaved per round, ``--per-task`` training images per task.
3. Bytes of importance + anchors after each of 5 tasks (EWC grows, Online EWC constant), for
   every penalty strategy.

    python -m benchmarks.bench_regularization --threads 1 --out benchmarks/results/regularization.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import speed_target, strategy_names
from forgetless.config import make_config
from forgetless.data.scenarios import Scenario
from forgetless.models import build_model
from forgetless.strategies._fisher import fisher_diagonal, mas_importance
from forgetless.strategies._penalty import PenaltyStrategy
from forgetless.training.experiment import build_learner, load_scenario, resolve

STRATEGIES = ["naive", *strategy_names("regularization", "distillation")]
"""naive (the reference) and every registered regularization and distillation strategy."""
PENALTIES = strategy_names(kind=PenaltyStrategy)
"""The strategies whose importance + anchors are measured (every penalty strategy)."""
FISHER_TARGET = 10.0


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def bench_fisher(samples: int, repeats: int) -> dict[str, Any]:
    config = resolve(make_config(benchmark="split-fmnist", scenario="domain", tasks=5))
    scenario = load_scenario(config, 0)
    task = scenario.tasks[0]
    x, y = scenario.to_float(task.train_x[:samples]), task.train_y[:samples]
    torch.manual_seed(0)
    model = build_model("mlp", scenario.input_shape, [10], False, [400, 400])

    def fisher(method: str) -> dict[str, torch.Tensor]:
        return fisher_diagonal(model, x, None, y, "sampled", torch.Generator().manual_seed(0), method)

    def mas(method: str) -> dict[str, torch.Tensor]:
        return mas_importance(model, x, None, method)

    out: dict[str, Any] = {"samples": int(x.shape[0]), "model": "MLP 784-400-400-10"}
    methods = ("identity", "vmap", "loop")
    for label, fn in (("fisher_sampled", fisher), ("mas", mas)):
        values = {m: fn(m) for m in methods}  # warm-up and the values compared
        times: dict[str, list[float]] = {m: [] for m in methods}
        for _ in range(repeats):
            for m in methods:
                started = time.perf_counter()
                fn(m)
                times[m].append(time.perf_counter() - started)
        loop = values["loop"]
        out[label] = {
            "seconds": {m: median(times[m]) for m in methods},
            "speedup_identity_vs_loop": median(times["loop"]) / median(times["identity"]),
            "speedup_vmap_vs_loop": median(times["loop"]) / median(times["vmap"]),
            "max_abs_difference_to_loop": {
                m: max(float((values[m][k] - loop[k]).abs().max()) for k in loop) for m in ("identity", "vmap")
            },
        }
    out["target_met"] = out["fisher_sampled"]["speedup_identity_vs_loop"] >= FISHER_TARGET
    return out


def step_seconds(scenario: Scenario, config: Any, name: str, timed_task: int) -> float:
    """Median interval between optimizer steps of ``timed_task`` for a fresh learner."""
    learner = build_learner(config, scenario, name, seed=0)
    for task_index in range(timed_task):
        learner.train_task(task_index)
    stamps: list[float] = []
    learner.train_task(timed_task, lambda task, step, total: stamps.append(time.perf_counter()))
    return median([b - a for a, b in zip(stamps, stamps[1:])])


def bench_steps(scenario_kind: str, per_task: int, repeats: int) -> dict[str, Any]:
    config = resolve(make_config(benchmark="split-fmnist", scenario=scenario_kind, epochs=1, strategies=["naive"]))
    scenario = load_scenario(config, 0).subsample(train=per_task)
    times: dict[str, list[float]] = {name: [] for name in STRATEGIES}
    for name in STRATEGIES:  # warm-up
        step_seconds(scenario, config, name, 1)
    for _ in range(repeats):
        for name in STRATEGIES:
            times[name].append(step_seconds(scenario, config, name, 2))
    naive = median(times["naive"])
    rows = {}
    for name in STRATEGIES:
        ratios = [a / b for a, b in zip(times[name], times["naive"])]
        target = None if name == "naive" else speed_target(name)  # naive's own is to the plain loop
        rows[name] = {
            "step_ms": 1e3 * median(times[name]),
            "ratio_to_naive": median(times[name]) / naive,
            "paired_ratio_range": [min(ratios), max(ratios)],
            "target": target,
            "target_met": None if target is None else median(times[name]) / naive <= target,
        }
    return {"scenario": scenario_kind, "per_task": per_task, "timed_task": 2, "rows": rows}


def bench_memory(per_task: int) -> dict[str, Any]:
    config = resolve(make_config(benchmark="split-fmnist", scenario="class", epochs=1, strategies=["naive"]))
    scenario = load_scenario(config, 0).subsample(train=per_task)
    out: dict[str, Any] = {}
    for name in PENALTIES:
        learner = build_learner(config, scenario, name, seed=0)
        per_task_bytes = []
        for task_index in range(scenario.num_tasks):
            learner.train_task(task_index)
            per_task_bytes.append(learner.result.report[name]["penalty_bytes"])
        out[name] = per_task_bytes
    out["parameters"] = sum(p.numel() for p in learner.model.parameters())
    return out


def markdown(results: dict[str, Any]) -> str:
    f = results["fisher"]
    lines = [
        f"## Fisher diagonal, {f['model']}, {f['samples']} samples, {results['threads']} thread(s)",
        "",
        "| statistic | identity s | vmap s | loop s | identity speed-up | vmap speed-up | "
        "max diff identity | max diff vmap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label in ("fisher_sampled", "mas"):
        r = f[label]
        s = r["seconds"]
        d = r["max_abs_difference_to_loop"]
        lines.append(
            f"| {label} | {s['identity']:.4f} | {s['vmap']:.3f} | {s['loop']:.3f} | "
            f"{r['speedup_identity_vs_loop']:.1f}x | {r['speedup_vmap_vs_loop']:.2f}x | "
            f"{d['identity']:.1e} | {d['vmap']:.1e} |"
        )
    steps = results["steps"]
    lines += [
        "",
        f"## Step time, split-fmnist {steps['scenario']}-IL, task 3 "
        f"({steps['per_task']} images/task), target: each strategy's speed_target",
        "",
        "| strategy | ms/step | ratio to naive | paired ratio range | target |",
        "|---|---|---|---|---|",
    ]
    for name, row in steps["rows"].items():
        lo, hi = row["paired_ratio_range"]
        target = "" if row["target"] is None else f"<= {row['target']:g}x: {'met' if row['target_met'] else 'missed'}"
        lines.append(f"| {name} | {row['step_ms']:.2f} | {row['ratio_to_naive']:.2f}x | {lo:.2f}-{hi:.2f} | {target} |")
    memory = results["memory"]
    lines += [
        "",
        f"## Bytes of importance + anchors after each task ({memory['parameters']:,} parameters)",
        "",
        "| strategy | " + " | ".join(f"task {i + 1}" for i in range(5)) + " |",
        "|---|" + "---|" * 5,
    ]
    for name, values in memory.items():
        if name != "parameters":
            lines.append(f"| {name} | " + " | ".join(f"{v / 2**20:.2f} MiB" for v in values) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scenario", default="task", choices=["task", "class", "domain"])
    parser.add_argument("--per-task", type=int, default=6000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/regularization.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    results["fisher"] = bench_fisher(args.samples, args.repeats)
    results["steps"] = bench_steps(args.scenario, args.per_task, args.repeats)
    results["memory"] = bench_memory(500)
    print(markdown(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
