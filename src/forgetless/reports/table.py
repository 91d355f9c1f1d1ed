"""The rich summary table printed at the end of a run."""

from __future__ import annotations

from rich import box
from rich.table import Table

from forgetless.training.experiment import ExperimentResult


def summary_table(result: ExperimentResult) -> Table:
    """ACC, BWT, FWT, forgetting (and intransigence with a joint run), wall time per strategy."""
    summary = result.summary()
    config = result.config
    seeds = config.seeds
    table = Table(
        title=f"{config.benchmark} · {config.scenario}-incremental · {config.tasks} tasks · "
        f"{seeds} seed{'s' if seeds > 1 else ''}"
    )
    table.box = box.SIMPLE_HEAD
    table.add_column("strategy", style="bold", no_wrap=True)
    columns = [("acc", "ACC↑"), ("bwt", "BWT↑"), ("fwt", "FWT↑"), ("forgetting", "Forget↓")]
    if "joint" in summary:
        columns.append(("intransigence", "Intrans↓"))
    for _, label in columns:
        table.add_column(label, justify="right", no_wrap=True)
    table.add_column("wall s", justify="right", no_wrap=True)
    notes = ["mean±std over seeds; ↑ higher is better, ↓ lower is better"] if seeds > 1 else []
    if "joint" in summary:
        notes.append("joint: the upper bound, every task's data at the first task (FWT not meaningful)")
    table.caption = "\n".join(notes) or None
    for name, metrics in summary.items():
        cells = []
        for key, _ in columns:
            value = metrics.get(key)
            if value is None or (name == "joint" and key == "fwt"):
                cells.append("–")
            elif seeds > 1:
                cells.append(f"{value['mean']:.3f}±{value['std']:.2f}")
            else:
                cells.append(f"{value['mean']:.3f}")
        wall = metrics["wall_seconds"]
        cells.append(f"{wall['mean']:.1f}")
        table.add_row(name, *cells)
    return table
