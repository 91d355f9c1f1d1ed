"""Section ``strategies``: every registered strategy against the plain PyTorch loop and ``naive``.

Each strategy on ``--benchmark`` (Split Fashion-MNIST: 5 tasks, MLP 784-400-400-10, batch 128, 1
epoch per task, Adam, CPU): wall time (training + the evaluation after each task), samples/s, peak
RSS, final ACC and BWT, ratio to the plain hand-written loop and to ``naive``, all run in the same
invocation with repeats interleaved. Class-IL, except strategies that support only task-IL (those
needing task ids): those run task-IL, against a task-IL plain loop and a task-IL ``naive``. The
family and the speed target of each row are the strategy class's ``family`` and ``speed_target``.
"""

from __future__ import annotations

import argparse
import traceback
from collections.abc import Callable
from functools import partial
from typing import Any

from benchmarks.common import (
    PeakRSS,
    Stopwatch,
    family,
    interleaved,
    library_run,
    median,
    mib,
    paired_ratios,
    plain_loop,
    speed_target,
    strategy_names,
)
from benchmarks.suite.shared import ScenarioCache, error_text, fmt, met, scenario_kind, str_list
from forgetless.config import RunConfig
from forgetless.data.scenarios import Scenario
from forgetless.metrics import summarize
from forgetless.strategies import discover

TITLE = "each strategy vs the plain loop and naive: wall time, memory, ACC/BWT, speed target"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("strategies section")
    group.add_argument("--strategies", type=str_list, default=None, help="comma list (default: all registered)")
    group.add_argument("--repeats", type=int, default=2, help="interleaved timed rounds")
    group.add_argument(
        "--max-strategy-seconds",
        type=float,
        default=45.0,
        help="a strategy slower than this in its measured pass is timed once, not per round",
    )


def quick(args: argparse.Namespace) -> None:
    args.repeats = 1


def _watched_plain(scenario: Scenario, config: RunConfig, seed: int) -> Stopwatch:
    watch = Stopwatch()
    plain_loop(scenario, config, seed, watch)
    return watch


def _watched_library(scenario: Scenario, config: RunConfig, name: str, seed: int) -> Stopwatch:
    watch = Stopwatch()
    library_run(scenario, config, name, seed, watch)
    return watch


def _ratios(key: str, reference: str, wall: dict, cpu: dict) -> dict[str, Any] | None:
    """Ratios of ``key`` to ``reference`` (wall time, and process CPU time under ``cpu``).

    Per-round ratios when both ran in every round; else (a slow one timed once) the ratio of
    the medians.
    """
    if reference not in wall or key not in wall:
        return None

    def ratios(times: dict) -> dict[str, float]:
        if len(times[key]) == len(times[reference]):
            return paired_ratios(times[key], times[reference])
        value = median(times[key]) / median(times[reference])
        return {"median": value, "min": value, "max": value}

    return {**ratios(wall), "cpu": ratios(cpu)}


def run(args: argparse.Namespace, cache: ScenarioCache) -> dict[str, Any]:
    """One measured pass per strategy (ACC/BWT, peak RSS), then interleaved timed rounds."""
    registry = discover()
    wanted = args.strategies or strategy_names()
    available = [n for n in wanted if n in registry and n != "naive"]
    kinds = {n: scenario_kind(registry[n]) for n in available}
    kinds["naive"] = "class"  # naive also runs in every other scenario in use (its reference)
    used_kinds = sorted(set(kinds.values()))
    scenarios = {kind: cache.get(args.benchmark, kind) for kind in used_kinds}
    rows: dict[str, dict[str, Any]] = {}
    for name in wanted:
        if name not in registry:
            rows[name] = {"strategy": name, "family": family(name), "status": "not available"}

    # measured pass: doubles as warm-up; memory is sampled here only (the sampler costs CPU)
    runners: dict[str, Callable[[int], Stopwatch]] = {}
    for kind in used_kinds:
        config, scenario = scenarios[kind]
        plain_loop(scenario, config, 0)  # warm-up of the reference
        runners[f"plain/{kind}"] = partial(_watched_plain, scenario, config)
    slow: dict[str, Stopwatch] = {}
    for kind in used_kinds:  # naive first in every scenario in use: the reference of its rows
        for name in ["naive", *[n for n in available if kinds[n] == kind]]:
            key = f"{name}/{kind}"
            config, scenario = scenarios[kind]
            row: dict[str, Any] = {"strategy": name, "family": family(name), "scenario": kind, "status": "ok"}
            try:
                watch = Stopwatch()
                with PeakRSS() as memory:
                    seconds, learner = library_run(scenario, config, name, 0, watch)
            except Exception as error:  # a strategy under development must not stop the suite
                row["status"] = error_text(error)
                if args.verbose:
                    traceback.print_exc()
                rows[key] = row
                print(f"  {key}: {row['status']}", flush=True)
                continue
            metrics = summarize(learner.result.matrix)
            row.update(
                acc=metrics["acc"],
                bwt=metrics["bwt"],
                peak_rss_mib=mib(memory.reading.peak_bytes),
                rss_increase_mib=mib(memory.reading.increase_bytes),
                first_pass_seconds=seconds,
            )
            report = learner.result.report.get(name, {})
            if "buffer_bytes_per_sample" in report:
                row["buffer_bytes_per_sample"] = report["buffer_bytes_per_sample"]
            rows[key] = row
            print(f"  {key}: {seconds:.2f} s (measured pass) acc {metrics['acc']:.3f}", flush=True)
            if seconds > args.max_strategy_seconds:
                slow[key] = watch  # timed once: the measured pass
            else:
                runners[key] = partial(_watched_library, scenario, config, name)

    # interleaved rounds (the measured pass was the warm-up): drift hits every candidate alike
    def report_round(repeat: int) -> None:
        print(f"  round {repeat + 1}/{args.repeats} done", flush=True)

    watches = interleaved(runners, args.repeats, warmup=False, on_round=report_round)
    wall = {key: [w.wall for w in ws] for key, ws in watches.items()}
    cpu = {key: [w.cpu for w in ws] for key, ws in watches.items()}
    for key, watch in slow.items():
        wall[key], cpu[key] = [watch.wall], [watch.cpu]

    out_rows = []
    for key, row in rows.items():
        if row["status"] != "ok":
            out_rows.append(row)
            continue
        kind = row["scenario"]
        config, scenario = scenarios[kind]
        samples = sum(t.num_train for t in scenario.tasks) * (config.epochs or 1)
        plain, naive = f"plain/{kind}", f"naive/{kind}"
        if key in slow:
            row["note"] = (
                f"slower than {args.max_strategy_seconds:g} s: timed once (its measured pass, "
                "with the memory sampler), against the median round of the references"
            )
        row["ratio_plain"] = _ratios(key, plain, wall, cpu)
        row["ratio_naive"] = _ratios(key, naive, wall, cpu)
        row["seconds"] = median(wall[key])
        row["seconds_all"] = wall[key]
        row["cpu_seconds"] = median(cpu[key])
        row["samples_per_second"] = samples / row["seconds"]
        limit = speed_target(row["strategy"])
        if limit is not None and kind == "class":
            reference = "plain" if row["strategy"] == "naive" else "naive"
            ratio = row[f"ratio_{reference}"]
            row["target"] = f"<= {limit:g}x {reference}"
            row["target_met"] = bool(ratio is not None and ratio["median"] <= limit)
        out_rows.append(row)
    position = {name: i for i, name in enumerate(["naive", *wanted])}
    out_rows.sort(key=lambda r: (r.get("scenario") != "class", position.get(r["strategy"], 0)))
    plain_rows = {
        kind: {
            "seconds": median(wall[f"plain/{kind}"]),
            "seconds_all": wall[f"plain/{kind}"],
            "cpu_seconds": median(cpu[f"plain/{kind}"]),
        }
        for kind in used_kinds
    }
    config, scenario = scenarios["class"] if "class" in scenarios else next(iter(scenarios.values()))
    return {
        "benchmark": args.benchmark,
        "tasks": scenario.num_tasks,
        "train_samples": sum(t.num_train for t in scenario.tasks),
        "test_samples": sum(int(t.test_y.shape[0]) for t in scenario.tasks),
        "batch_size": config.batch_size,
        "epochs": config.epochs,
        "hidden": config.hidden,
        "buffer_size": config.buffer_size,
        "repeats": args.repeats,
        "plain": plain_rows,
        "rows": out_rows,
    }


def _ratio(ratio: dict[str, Any] | None) -> str:
    """``wall median (min-max) / CPU median``."""
    if not ratio:
        return "-"
    text = f"{ratio['median']:.2f}"
    if len(ratio.get("cpu", {})) and ratio["min"] != ratio["max"]:
        text += f" ({ratio['min']:.2f}-{ratio['max']:.2f})"
    if "cpu" in ratio:
        text += f" / {ratio['cpu']['median']:.2f}"
    return text


def _target(row: dict[str, Any]) -> str:
    return f"{row['target']}: {met(row['target_met'])}" if "target" in row else ""


def markdown(section: dict[str, Any]) -> list[str]:
    plain = ", ".join(f"{k}-IL {v['seconds']:.2f} s" for k, v in section["plain"].items())
    lines = [
        f"## Strategies ({section['benchmark']}, {section['tasks']} tasks, "
        f"{section['train_samples']} training samples, MLP {section['hidden']}, "
        f"batch {section['batch_size']}, {section['epochs']} epoch/task, "
        f"buffer {section['buffer_size']})",
        "",
        f"Plain hand-written loop: {plain}. Ratios: median of the per-round wall-time ratios "
        f"over {section['repeats']} interleaved rounds (min-max in brackets) / the same for "
        "process CPU time (steadier on a shared machine). Wall time = training + "
        "evaluation of every task after each task.",
        "",
        "| strategy | family | scenario | wall s | samples/s | peak RSS MiB (+run) | ACC | BWT "
        "| x plain | x naive | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in section["rows"]:
        if row["status"] != "ok":
            lines.append(f"| {row['strategy']} | {row['family']} | - | {row['status']} |||||||| ")
            continue
        lines.append(
            f"| {row['strategy']} | {row['family']} | {row['scenario']}-IL "
            f"| {fmt(row['seconds'])} | {fmt(row['samples_per_second'], ',.0f')} "
            f"| {fmt(row['peak_rss_mib'], '.0f')} (+{fmt(row['rss_increase_mib'], '.0f')}) "
            f"| {fmt(row['acc'], '.3f')} | {fmt(row['bwt'], '.3f')} "
            f"| {_ratio(row['ratio_plain'])} | {_ratio(row['ratio_naive'])} | {_target(row)} |"
        )
    notes = [f"{r['strategy']} ({r['scenario']}-IL): {r['note']}" for r in section["rows"] if r.get("note")]
    return lines + (["", *[f"- {n}" for n in notes], ""] if notes else [""])
