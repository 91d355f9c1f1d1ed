"""The run folder: resolved config, metrics.json, accuracy_matrix.csv and plots.

Rewritten (atomically) after every finished run, so an experiment that fails or is interrupted
later keeps everything computed up to then.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from forgetless.config import dump_config
from forgetless.io import atomic_write_json, atomic_write_text
from forgetless.metrics import forgetting_per_task
from forgetless.reports.plot_worker import PlotWorker
from forgetless.training.experiment import ExperimentResult


def _run_record(result: ExperimentResult, name: str, index: int) -> dict[str, Any]:
    run = result.runs[name][index]
    record = run.to_record()
    return {
        "seed": record.pop("seed"),
        "metrics": run.metrics(result.joint_reference(index)),
        "forgetting_per_task": forgetting_per_task(run.matrix).round(6).tolist(),
        **record,
    }


def mean_matrices(result: ExperimentResult) -> dict[str, np.ndarray]:
    return {name: np.mean([r.matrix for r in runs], axis=0) for name, runs in result.runs.items()}


def save_experiment(
    result: ExperimentResult, out: Path, plots_too: bool = True, plotter: PlotWorker | None = None
) -> None:
    """Write (or rewrite) every file of the run folder ``out`` from ``result``; the plots are
    drawn by ``plotter`` when one is given (:mod:`.plot_worker`), else in this process."""
    out = Path(out)
    config = result.config
    read_from = "".join(f"#   {s if s.isprintable() else json.dumps(s)}\n" for s in result.data_sources)
    header = f"# data read from:\n{read_from}" if read_from else ""
    atomic_write_text(out / "config.yaml", header + dump_config(config))
    summary = result.summary() if _has_complete_run(result) else {}
    metrics = {
        "benchmark": config.benchmark,
        "scenario": config.scenario,
        "tasks": config.tasks,
        "seeds": [config.seed + i for i in range(config.seeds)],
        "summary": summary,
        "data_sources": result.data_sources,
        "fwt_reference": "accuracy of the randomly initialised model on each task (same seed)",
        "runs": {name: [_run_record(result, name, i) for i in range(len(runs))] for name, runs in result.runs.items()},
    }
    atomic_write_json(out / "metrics.json", metrics)

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    size = config.tasks or 0
    writer.writerow(["strategy", "seed", "after_task", *[f"task_{j}" for j in range(size)]])
    for name, runs in result.runs.items():
        for run in runs:
            for i, row in enumerate(run.matrix):
                writer.writerow([name, run.seed, i, *[f"{v:.6f}" for v in row]])
    atomic_write_text(out / "accuracy_matrix.csv", buffer.getvalue())

    if plots_too and summary:
        if plotter is not None:
            plotter.draw(mean_matrices(result), summary, out)
        else:
            from forgetless.reports import plots  # matplotlib only on this path

            plots.draw_all(mean_matrices(result), summary, out)


def start_plots(result: ExperimentResult, out: Path, plotter: PlotWorker) -> None:
    """Hand the plots of ``result`` (its files already saved by :func:`save_experiment`) to
    ``plotter``, which draws them while the caller goes on; ``plotter.finish()`` waits for them."""
    if _has_complete_run(result):
        plotter.start(mean_matrices(result), result.summary(), Path(out))


def _has_complete_run(result: ExperimentResult) -> bool:
    """Whether some combination has a run with a full (square) accuracy matrix."""
    return any(runs and runs[0].matrix.shape[0] == runs[0].matrix.shape[1] for runs in result.runs.values())
