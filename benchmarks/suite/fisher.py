"""Section ``fisher``: the diagonal Fisher (and MAS importance) batched vs one backward per sample."""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

import torch

from benchmarks.common import median, stopwatch
from benchmarks.suite.shared import ScenarioCache, met
from forgetless.models import build_model

TITLE = "diagonal Fisher and MAS importance: batched identity vs vmap vs a per-sample loop"
TARGET = 10.0
"""Lowest acceptable speed-up of the batched Fisher over the per-sample loop."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fisher section")
    group.add_argument("--fisher-samples", type=int, default=500)
    group.add_argument("--fisher-repeats", type=int, default=3)


def quick(args: argparse.Namespace) -> None:
    args.fisher_repeats = 1


def run(args: argparse.Namespace, cache: ScenarioCache) -> dict[str, Any]:
    """Batched per-sample statistics (identity ``phi(D)^T phi(A)``) vs one backward per sample."""
    try:
        from forgetless.strategies import _fisher
    except ImportError:
        return {"status": "not available"}
    config, scenario = cache.get(args.benchmark, "class")
    torch.manual_seed(0)
    model = build_model(config.model or "mlp", scenario.input_shape, scenario.head_sizes, False, config.hidden)
    task = scenario.tasks[0]
    n = min(args.fisher_samples, task.num_train)
    x, y = scenario.to_float(task.train_x[:n]), task.train_y[:n]

    def fisher(method: str) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(0)
        return _fisher.fisher_diagonal(model, x, None, y, "sampled", generator, method)

    def mas(method: str) -> dict[str, torch.Tensor]:
        return _fisher.mas_importance(model, x, None, method)

    out: dict[str, Any] = {
        "status": "ok",
        "samples": n,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    for label, fn in (("fisher_sampled", fisher), ("mas", mas)):
        methods = ("identity", "vmap", "loop")
        results = {m: fn(m) for m in methods}  # warm-up, and the values to compare
        times: dict[str, list[float]] = {m: [] for m in methods}
        for _ in range(args.fisher_repeats):
            for m in methods:
                times[m].append(stopwatch(partial(fn, m)))
        reference = results["loop"]
        error = max(
            float((results["identity"][k] - reference[k]).abs().max() / reference[k].abs().max().clamp_min(1e-30))
            for k in reference
        )
        out[label] = {
            "seconds": {m: median(times[m]) for m in methods},
            "speedup_batched_vs_loop": median(times["loop"]) / median(times["identity"]),
            "speedup_vmap_vs_loop": median(times["loop"]) / median(times["vmap"]),
            "max_relative_difference": error,
        }
    out["target"] = f">= {TARGET:g}x"
    out["target_met"] = out["fisher_sampled"]["speedup_batched_vs_loop"] >= TARGET
    return out


def markdown(fisher: dict[str, Any]) -> list[str]:
    lines = ["## Fisher / MAS importance: batched vs per-sample loop", ""]
    if fisher["status"] != "ok":
        return [*lines, f"{fisher['status']}", ""]
    lines += [
        f"{fisher['samples']} samples, {fisher['parameters']:,} parameters. Batched = one "
        f"backward per chunk and the identity `phi(D)^T phi(A)`; target {fisher['target']}: "
        f"{met(fisher['target_met'])}.",
        "",
        "| statistic | batched s | vmap s | loop s | batched speed-up | vmap speed-up | max rel. diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in ("fisher_sampled", "mas"):
        part = fisher[label]
        s = part["seconds"]
        lines.append(
            f"| {label} | {s['identity']:.4f} | {s['vmap']:.4f} | {s['loop']:.3f} | "
            f"{part['speedup_batched_vs_loop']:.1f}x "
            f"| {part['speedup_vmap_vs_loop']:.1f}x "
            f"| {part['max_relative_difference']:.1e} |"
        )
    return [*lines, ""]
