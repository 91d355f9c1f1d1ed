"""The benchmark suite: every registered strategy against the plain PyTorch loop, in one process.

    python benchmarks/run_all.py --threads 1 --out benchmarks/results

Writes ``suite.json`` and ``suite.md`` to ``--out``. Sections (``--sections``, default all):

* ``strategies``: each strategy on Split Fashion-MNIST (5 tasks, MLP 784-400-400-10, batch 128,
  1 epoch per task, Adam, CPU): wall time (training + the evaluation after each task), samples/s,
  peak RSS, final ACC and BWT, ratio to the plain hand-written loop and to ``naive``, both run
  in the same invocation with repeats interleaved. Class-IL, except strategies that support only
  task-IL (architecture methods needing task ids): those run task-IL, against a task-IL plain
  loop and a task-IL ``naive``.
* ``fisher``: diagonal Fisher (and MAS importance) batched vs the per-sample loop.
* ``buffer``: bytes per stored sample of the replay memory, and the cost of add/sample.
* ``eval``: a full 20 x 20 accuracy matrix on Permuted Fashion-MNIST (``task_accuracies`` over
  20 tasks, 20 times).
* ``llm``: the LLM demo's tokens/s, from ``bench_hf.py`` when it provides them.
* ``scaling``: wall time for 5, 10, 20 permuted tasks (training data subsampled per task) for
  naive, ewc, online-ewc and gem.

``--profile NAME`` instead runs one strategy under ``torch.profiler`` and prints the top ops.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common import (
    PeakRSS,
    Stopwatch,
    configure_threads,
    interleaved,
    library_run,
    load,
    median,
    mib,
    paired_ratios,
    plain_loop,
    resolved_config,
    stopwatch,
)
from forgetless.config import RunConfig, parse_assignments
from forgetless.data.scenarios import Scenario
from forgetless.metrics import summarize
from forgetless.models import build_model
from forgetless.strategies import discover, make_strategies
from forgetless.training.evaluation import task_accuracies
from forgetless.training.learner import Learner

BENCHMARKS = Path(__file__).resolve().parent
SECTIONS = ("strategies", "fisher", "buffer", "eval", "llm", "scaling")

FAMILIES: dict[str, str] = {
    "naive": "baseline",
    "joint": "baseline",
    "ewc": "regularization",
    "online-ewc": "regularization",
    "si": "regularization",
    "mas": "regularization",
    "l2sp": "regularization",
    "lwf": "regularization",
    "er": "replay",
    "gem": "replay",
    "agem": "replay",
    "der": "replay",
    "derpp": "replay",
    "generative-replay": "replay",
    "progressive": "architecture",
    "packnet": "architecture",
    "supermask": "architecture",
    "lora": "architecture",
    "adapter": "architecture",
}
"""The strategies the suite expects (issue 8); any other registered one is measured too."""

TARGETS: dict[str, tuple[str, float]] = {
    "naive": ("plain", 1.10),
    "ewc": ("naive", 1.3),
    "online-ewc": ("naive", 1.3),
    "si": ("naive", 1.3),
    "mas": ("naive", 1.3),
    "l2sp": ("naive", 1.3),
    "er": ("naive", 2.0),
    "derpp": ("naive", 2.0),
    "agem": ("naive", 2.5),
}
"""Strategy -> (reference, highest acceptable ratio of wall times)."""

FISHER_TARGET = 10.0
EVAL_TARGET_SECONDS = 5.0
SCALING_STRATEGIES = ("naive", "ewc", "ewc:merge_terms=false", "online-ewc", "gem")
"""``name:param=value`` is a variant with that strategy parameter set (here: EWC with one term per task)."""


# -- helpers ------------------------------------------------------------------------------------
def _error_text(error: BaseException) -> str:
    return f"error: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200]


def _scenario_kind(strategy_cls: type) -> str:
    """Class-IL where the strategy supports it, else task-IL (methods that need task ids)."""
    return "class" if "class" in strategy_cls.scenarios else "task"


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def forward_flops_per_sample(model: nn.Module) -> int:
    """Multiply-adds x 2 of every Linear layer (the MLP's whole forward cost)."""
    return sum(2 * m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))


class ScenarioCache:
    """Scenarios built once per (benchmark, kind, tasks) and shared by the sections."""

    def __init__(self, threads: int):
        self.threads = threads
        self._cache: dict[tuple[str, str | None, int | None], tuple[RunConfig, Scenario]] = {}

    def get(self, benchmark: str, kind: str | None, tasks: int | None = None) -> tuple[RunConfig, Scenario]:
        key = (benchmark, kind, tasks)
        if key not in self._cache:
            config = resolved_config(benchmark, kind, tasks=tasks, threads=self.threads)
            self._cache[key] = (config, load(config, 0))
        return self._cache[key]


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


# -- section: strategies ------------------------------------------------------------------------
def bench_strategies(args: argparse.Namespace, cache: ScenarioCache) -> dict[str, Any]:
    """One measured pass per strategy (ACC/BWT, peak RSS), then interleaved timed rounds."""
    registry = discover()
    wanted = args.strategies or list(dict.fromkeys([*FAMILIES, *sorted(registry)]))
    available = [n for n in wanted if n in registry and n != "naive"]
    kinds = {n: _scenario_kind(registry[n]) for n in available}
    kinds["naive"] = "class"  # naive also runs in every other scenario in use (its reference)
    used_kinds = sorted(set(kinds.values()))
    scenarios = {kind: cache.get(args.benchmark, kind) for kind in used_kinds}
    rows: dict[str, dict[str, Any]] = {}
    for name in wanted:
        if name not in registry:
            family = FAMILIES.get(name, "other")
            rows[name] = {"strategy": name, "family": family, "status": "not available"}

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
            family = FAMILIES.get(name, "other")
            row: dict[str, Any] = {
                "strategy": name,
                "family": family,
                "scenario": kind,
                "status": "ok",
            }
            try:
                watch = Stopwatch()
                with PeakRSS() as memory:
                    seconds, learner = library_run(scenario, config, name, 0, watch)
            except Exception as error:  # a strategy under development must not stop the suite
                row["status"] = _error_text(error)
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
        if row["strategy"] in TARGETS and kind == "class":
            reference, limit = TARGETS[row["strategy"]]
            ratio = row["ratio_plain" if reference == "plain" else "ratio_naive"]
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


# -- section: Fisher ----------------------------------------------------------------------------
def bench_fisher(args: argparse.Namespace, cache: ScenarioCache) -> dict[str, Any]:
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
    out["target"] = f">= {FISHER_TARGET:g}x"
    out["target_met"] = out["fisher_sampled"]["speedup_batched_vs_loop"] >= FISHER_TARGET
    return out


# -- section: buffer ----------------------------------------------------------------------------
def bench_buffer(args: argparse.Namespace, cache: ScenarioCache) -> dict[str, Any]:
    """Bytes per stored sample, and microseconds per add/sample call of a batch."""
    try:
        from forgetless.strategies._buffer import MemoryBuffer
    except ImportError:
        return {"status": "not available"}
    config, scenario = cache.get(args.benchmark, "class")
    task = scenario.tasks[0]
    batch = config.batch_size
    raw, labels = task.train_x[: 4 * batch], task.train_y[: 4 * batch]
    logits = torch.randn(raw.shape[0], scenario.head_sizes[0])
    float_input_bytes = int(np.prod(scenario.input_shape)) * 4
    cases = {
        "reservoir": dict(selection="reservoir", logits=None),
        "balanced": dict(selection="balanced", logits=None),
        "reservoir + logits (DER)": dict(selection="reservoir", logits=logits),
    }
    rows = []
    for label, case in cases.items():
        capacity = config.buffer_size
        buffer = MemoryBuffer(capacity, case["selection"], seed=0, num_groups=scenario.head_sizes[0])

        def add(buffer=buffer, case=case) -> None:
            for start in range(0, raw.shape[0], batch):
                part = slice(start, start + batch)
                extra = case["logits"][part] if case["logits"] is not None else None
                buffer.add(raw[part], labels[part], 0, logits=extra, groups=labels[part])

        add()
        add_seconds = min(stopwatch(add) for _ in range(5)) / (raw.shape[0] // batch)
        sample_seconds = min(stopwatch(lambda b=buffer: b.sample(batch)) for _ in range(20))
        per_sample = buffer.bytes_per_sample()
        rows.append(
            {
                "case": label,
                "capacity": capacity,
                "bytes_per_sample": per_sample,
                "input_dtype": str(buffer.inputs.dtype).replace("torch.", ""),
                "float32_input_bytes": float_input_bytes,
                "total_mib": mib(buffer.memory_bytes()),
                "add_batch_microseconds": add_seconds * 1e6,
                "sample_batch_microseconds": sample_seconds * 1e6,
            }
        )
    return {"status": "ok", "batch": batch, "rows": rows}


# -- section: evaluation ------------------------------------------------------------------------
def bench_eval(args: argparse.Namespace, cache: ScenarioCache) -> dict[str, Any]:
    """A full ``T x T`` accuracy matrix: ``task_accuracies`` over ``T`` tasks, ``T`` times.

    The model is trained on the first task (one epoch) so that predictions are not random ties;
    the matrix is timed in float32 (exact) and under bfloat16 autocast (``--eval-precision``),
    and the largest accuracy difference between the two is reported.
    """
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
        "target": f"< {EVAL_TARGET_SECONDS:g} s",
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
                f"{prefix}target_met": seconds < EVAL_TARGET_SECONDS,
            }
        )
    out["forward_gflops"] = flops / 1e9
    out["bfloat16_max_accuracy_difference"] = float(abs(accuracies["float32"] - accuracies["bfloat16"]).max())
    out["bfloat16_speedup"] = out["seconds"] / out["bfloat16_seconds"]
    return out


# -- section: LLM demo --------------------------------------------------------------------------
_TOKENS_LINE = re.compile(r"^\s*([\w-]+): ([\d,]+) tokens/s\s*$")


def bench_llm(args: argparse.Namespace, cache: ScenarioCache) -> dict[str, Any]:
    """Tokens/s of the LLM demo: ``bench_hf.py`` (the HF engineer's script) in a subprocess.

    Its JSON is read when it finishes; if it fails part-way, the runs it printed before failing
    (``name: N tokens/s``) are kept and the failure is reported.
    """
    script = BENCHMARKS / "bench_hf.py"
    if not script.exists():
        return {"status": "not measured", "reason": "benchmarks/bench_hf.py is absent"}
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, str(script), "--out", folder]
        command += ["--steps", str(args.llm_steps), "--threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.llm_timeout)
        report_file = Path(folder) / "bench_hf.json"
        report = json.loads(report_file.read_text()) if report_file.exists() else None
    runs = {
        match.group(1): {"tokens_per_second": float(match.group(2).replace(",", ""))}
        for match in map(_TOKENS_LINE.match, done.stdout.splitlines())
        if match
    }
    if report is not None:
        runs = report.get("runs", runs)
    out: dict[str, Any] = {"steps": args.llm_steps, "runs": runs}
    if report is not None:
        out.update(status="ok", model=report.get("model"), seq_len=report.get("seq_len"))
    else:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        out.update(status="partial" if runs else "not measured", reason=f"bench_hf.py failed: {last}")
    if "plain" in runs:
        out["tokens_per_second"] = runs["plain"]["tokens_per_second"]
    return out


# -- section: scaling ---------------------------------------------------------------------------
def _variant(label: str, config: RunConfig) -> tuple[str, RunConfig]:
    """``"ewc:merge_terms=false"`` -> ``("ewc", config with params.ewc.merge_terms = False)``."""
    name, _, assignment = label.partition(":")
    if not assignment:
        return name, config
    extra = parse_assignments([f"{name}.{assignment}"])
    params = {**config.params, name: {**config.params.get(name, {}), **extra[name]}}
    return name, config.model_copy(update={"params": params})


def bench_scaling(args: argparse.Namespace, cache: ScenarioCache) -> dict[str, Any]:
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
                rows.append({"strategy": label, "tasks": n_tasks, "status": _error_text(error)})
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


# -- Markdown -----------------------------------------------------------------------------------
def _f(value: Any, spec: str = ".2f", missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


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
    if "target" not in row:
        return ""
    return f"{row['target']}: {'met' if row['target_met'] else '**missed**'}"


def to_markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        "# forgetless benchmark suite",
        "",
        f"`{meta['command']}` - {meta['date']}, torch {meta['torch']}, "
        f"{meta['threads']} thread(s), {meta['cpu']} ({meta['cpu_count']} cores); suite took "
        f"{meta['total_seconds']:.0f} s; 1-min load average "
        f"{_f(meta['load_average_1min']['start'])} at start, "
        f"{_f(meta['load_average_1min']['end'])} at end.",
        "",
    ]
    section = results.get("strategies")
    if section:
        plain = ", ".join(f"{k}-IL {v['seconds']:.2f} s" for k, v in section["plain"].items())
        lines += [
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
                f"| {_f(row['seconds'])} | {_f(row['samples_per_second'], ',.0f')} "
                f"| {_f(row['peak_rss_mib'], '.0f')} (+{_f(row['rss_increase_mib'], '.0f')}) "
                f"| {_f(row['acc'], '.3f')} | {_f(row['bwt'], '.3f')} "
                f"| {_ratio(row['ratio_plain'])} | {_ratio(row['ratio_naive'])} | {_target(row)} |"
            )
        notes = [f"{r['strategy']} ({r['scenario']}-IL): {r['note']}" for r in section["rows"] if r.get("note")]
        lines += ["", *[f"- {n}" for n in notes], ""] if notes else [""]
    fisher = results.get("fisher")
    if fisher:
        lines += ["## Fisher / MAS importance: batched vs per-sample loop", ""]
        if fisher["status"] != "ok":
            lines += [f"{fisher['status']}", ""]
        else:
            lines += [
                f"{fisher['samples']} samples, {fisher['parameters']:,} parameters. Batched = one "
                "backward per chunk and the identity `phi(D)^T phi(A)`; target {}: {}.".format(
                    fisher["target"], "met" if fisher["target_met"] else "**missed**"
                ),
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
            lines.append("")
    buffer = results.get("buffer")
    if buffer and buffer["status"] == "ok":
        lines += [
            "## Replay buffer memory",
            "",
            f"| case | capacity | input dtype | bytes/sample | (float32 input alone) | total MiB "
            f"| add {buffer['batch']} rows µs | sample {buffer['batch']} rows µs |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in buffer["rows"]:
            lines.append(
                f"| {row['case']} | {row['capacity']} | {row['input_dtype']} "
                f"| {row['bytes_per_sample']} | {row['float32_input_bytes']} "
                f"| {row['total_mib']:.2f} | {row['add_batch_microseconds']:.0f} "
                f"| {row['sample_batch_microseconds']:.0f} |"
            )
        lines.append("")
    ev = results.get("eval")
    if ev:
        lines += [
            f"## Evaluation: {ev['matrix']} accuracy matrix ({ev['benchmark']}, {ev['scenario']}-IL)",
            "",
            f"{ev['seconds']:.2f} s for {ev['tasks']} x {ev['tasks']} task evaluations of "
            f"{ev['test_samples_per_task']} test samples "
            f"({ev['samples_per_second']:,.0f} samples/s, {ev['gflops_per_second']:.0f} GFLOP/s "
            f"over {ev['forward_gflops']:.0f} GFLOP of forward passes); "
            f"target {ev['target']}: {'met' if ev['target_met'] else '**missed**'}.",
            "",
        ]
        if "bfloat16_seconds" in ev:
            lines += [
                f"With `--eval-precision bfloat16` (autocast): {ev['bfloat16_seconds']:.2f} s "
                f"({ev['bfloat16_speedup']:.1f}x faster, {ev['bfloat16_gflops_per_second']:.0f} GFLOP/s); "
                f"largest accuracy difference to float32 {ev['bfloat16_max_accuracy_difference']:.4f} "
                f"(model trained on task 1); target {ev['target']}: "
                f"{'met' if ev['bfloat16_target_met'] else '**missed**'}.",
                "",
            ]
    llm = results.get("llm")
    if llm:
        lines += ["## LLM demo (benchmarks/bench_hf.py)", ""]
        if llm.get("reason"):
            lines += [f"{llm['status']}: {llm['reason']}", ""]
        if llm.get("runs"):
            lines += [
                f"{llm.get('model') or 'tiny GPT-2'}, {llm['steps']} timed steps per run.",
                "",
                "| run | tokens/s |",
                "|---|---|",
            ]
            lines += [f"| {k} | {v['tokens_per_second']:,.0f} |" for k, v in llm["runs"].items()]
            lines.append("")
    scaling = results.get("scaling")
    if scaling:
        lines += [
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
        lines.append("")
    return "\n".join(lines) + "\n"


# -- profiling ----------------------------------------------------------------------------------
def profile(args: argparse.Namespace, cache: ScenarioCache) -> str:
    """One run of ``args.profile`` under ``torch.profiler``: the ops by self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    registry = discover()
    kind = _scenario_kind(registry[args.profile]) if args.profile in registry else "class"
    config, scenario = cache.get(args.benchmark, kind)
    library_run(scenario, config, args.profile, 0)  # warm-up
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        seconds, _ = library_run(scenario, config, args.profile, 1)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows)
    return f"{args.profile} ({kind}-IL): {seconds:.2f} s under the profiler\n{table}"


# -- CLI ----------------------------------------------------------------------------------------
def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (fixed)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for suite.json/.md")
    parser.add_argument(
        "--sections",
        type=_str_list,
        default=list(SECTIONS),
        help="comma list of " + ",".join(SECTIONS),
    )
    parser.add_argument("--benchmark", default="split-fmnist", help="benchmark of the strategies table")
    parser.add_argument("--strategies", type=_str_list, default=None, help="comma list (default: all)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved timed rounds")
    parser.add_argument(
        "--max-strategy-seconds",
        type=float,
        default=45.0,
        help="a strategy slower than this in its measured pass is timed once, not per round",
    )
    parser.add_argument("--fisher-samples", type=int, default=500)
    parser.add_argument("--fisher-repeats", type=int, default=3)
    parser.add_argument("--eval-benchmark", default="permuted-fmnist")
    parser.add_argument("--eval-tasks", type=int, default=20)
    parser.add_argument("--llm-steps", type=int, default=3, help="steps per bench_hf.py run")
    parser.add_argument("--llm-timeout", type=float, default=300.0, help="seconds")
    parser.add_argument("--scaling-benchmark", default="permuted-fmnist")
    parser.add_argument("--scaling-tasks", type=_int_list, default=[5, 10, 20])
    parser.add_argument("--scaling-strategies", type=_str_list, default=list(SCALING_STRATEGIES))
    parser.add_argument("--scaling-train", type=int, default=6000, help="training samples per task")
    parser.add_argument(
        "--scaling-max-seconds",
        type=float,
        default=150.0,
        help="a strategy whose run took longer skips the larger task counts",
    )
    parser.add_argument("--scaling-test", type=int, default=1000, help="test samples per task")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 round, 10x10 eval, 2 LLM steps, scaling to 10 tasks",
    )
    parser.add_argument("--profile", default=None, help="profile one strategy instead of the suite")
    parser.add_argument("--profile-rows", type=int, default=25)
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failing strategies")
    args = parser.parse_args(argv)
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}: choose from {', '.join(SECTIONS)}")
    if args.quick:
        args.repeats = 1
        args.fisher_repeats = 1
        args.eval_tasks = min(args.eval_tasks, 10)
        args.llm_steps = min(args.llm_steps, 2)
        args.scaling_tasks = [n for n in args.scaling_tasks if n <= 10] or args.scaling_tasks[:1]
    return args


SECTION_RUNNERS: dict[str, Callable[[argparse.Namespace, ScenarioCache], dict[str, Any]]] = {
    "strategies": bench_strategies,
    "fisher": bench_fisher,
    "buffer": bench_buffer,
    "eval": bench_eval,
    "llm": bench_llm,
    "scaling": bench_scaling,
}


def _load_average() -> float | None:
    """The 1-minute load average (other processes competing for the cores), where known."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def run_suite(args: argparse.Namespace) -> dict[str, Any]:
    """Run the chosen sections; returns the JSON-able results (also written to ``args.out``)."""
    configure_threads(args.threads)
    cache = ScenarioCache(args.threads)
    started = time.perf_counter()
    load_before = _load_average()
    results: dict[str, Any] = {}
    for name in SECTIONS:
        if name not in args.sections:
            continue
        print(f"[{name}]", flush=True)
        section_started = time.perf_counter()
        results[name] = SECTION_RUNNERS[name](args, cache)
        results[name]["section_seconds"] = time.perf_counter() - section_started
    results["meta"] = {
        "command": "python benchmarks/run_all.py " + " ".join(sys.argv[1:])
        if sys.argv[1:]
        else "python benchmarks/run_all.py",
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
        text = profile(args, ScenarioCache(args.threads))
        print(text)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"profile-{args.profile}.txt").write_text(text + "\n")
        return
    results = run_suite(args)
    print(to_markdown(results))


if __name__ == "__main__":
    main()
