"""The rich summary table printed at the end of a run."""

from __future__ import annotations

from rich import box
from rich.table import Table

from forgetless.training.experiment import ExperimentResult


def summary_table(result: ExperimentResult) -> Table:
    """ACC, BWT, FWT, forgetting (and intransigence with a joint run, task-IL ACC for a class-IL
    run), wall time per strategy."""
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
    task_il = any("task_il_acc" in metrics for metrics in summary.values())
    if task_il:
        columns.append(("task_il_acc", "task-IL ACC↑"))
    for _, label in columns:
        table.add_column(label, justify="right", no_wrap=True)
    table.add_column("wall s", justify="right", no_wrap=True)
    notes = ["mean±std over seeds; ↑ higher is better, ↓ lower is better"] if seeds > 1 else []
    if "joint" in summary:
        notes.append("joint: the upper bound, every task's data at the first task (FWT not meaningful)")
    if task_il:
        notes.append("task-IL ACC: the same predictions restricted to each test row's own task's classes")
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


def _acc(metrics: dict[str, dict[str, float]]) -> float:
    return metrics["acc"]["mean"]


def reading(result: ExperimentResult) -> list[str]:
    """Two plain sentences under the table: what naive forgot, what the best mitigation kept.

    ``forgot`` is the forgetting measure (mean over earlier tasks of the drop from their best
    accuracy to their final one, Chaudhry et al. 2018), in accuracy points; a sentence is
    left out when its run (``naive``, a mitigation) is not in the comparison.
    """
    summary = result.summary()
    joint = summary.get("joint")
    upper = f", where joint training on all tasks at once reaches {_acc(joint):.3f}" if joint else ""
    sentences = []
    naive = summary.get("naive")
    if naive is not None and "forgetting" in naive:
        sentences.append(
            f"Naive fine-tuning forgot {100 * naive['forgetting']['mean']:.1f} accuracy points of the earlier tasks "
            f"on average (BWT {naive['bwt']['mean']:+.3f}) and ends at ACC {_acc(naive):.3f}{upper}."
        )
    mitigations = {k: v for k, v in summary.items() if k not in ("naive", "joint")}
    if mitigations:
        best, metrics = max(mitigations.items(), key=lambda item: _acc(item[1]))
        kept = f"The best mitigation, {best}, ends at ACC {_acc(metrics):.3f}"
        if "forgetting" in metrics:
            kept += f" and forgot {100 * metrics['forgetting']['mean']:.1f} points"
        if naive is not None and joint is not None and _acc(joint) > _acc(naive):
            share = (_acc(metrics) - _acc(naive)) / (_acc(joint) - _acc(naive))
            kept += f", {100 * share:.0f}% of the way from naive to joint"
        others = [f"{name} {_acc(m):.3f}" for name, m in mitigations.items() if name != best]
        sentences.append(kept + (f" (the others: {', '.join(others)})." if others else "."))
    return sentences
