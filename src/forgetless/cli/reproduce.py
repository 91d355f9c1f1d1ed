"""``forgetless reproduce NAME``: run a published protocol and print our number beside the paper's."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from forgetless.errors import ConfigError


def _console():
    from forgetless.cli.main import console

    return console


def reproduce(
    name: Optional[str] = typer.Argument(None, help="protocol name (see --list)"),
    stand_in: bool = typer.Option(False, "--stand-in", help="run the Fashion-MNIST version of the protocol"),
    seeds: int = typer.Option(1, "--seeds", min=1, max=100, help="seeds (mean ± std)"),
    seed: int = typer.Option(0, "--seed", min=0, help="first seed"),
    out: Optional[Path] = typer.Option(None, "--out", help="also save the run (metrics.json, plots) in this folder"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing --out folder"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="folder holding the data set files"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads"),
    list_: bool = typer.Option(False, "--list", help="list the protocols and their status"),
    markdown: bool = typer.Option(False, "--markdown", help="print REPRODUCIBILITY.md (generated from the registry)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Run a published table row (van de Ven 2019, DER 2020, continual-learning-baselines) and
    print our number beside the published one. Exit 2: unknown name, missing data, unsupported row."""
    from forgetless.reproduce import PROTOCOLS, get_protocol
    from forgetless.reproduce import markdown as render

    console = _console()
    if markdown:
        typer.echo(render(), nl=False)
        return
    if list_:
        _list(PROTOCOLS.values(), data_dir)
        return
    if name is None:
        raise ConfigError(
            "give a protocol name, e.g. forgetless reproduce der2020-seq-mnist-er-200-class --stand-in (see --list)"
        )
    protocol = get_protocol(name)
    if threads:
        import torch

        torch.set_num_threads(threads)
    if out is not None:
        from forgetless.io import prepare_run_dir

        prepare_run_dir(out, force=force)
    outcome = _run(protocol, stand_in, seeds, seed, data_dir, quiet)
    console.print(_table(outcome))
    if out is not None:
        from forgetless.config import dump_config
        from forgetless.io import atomic_write_text
        from forgetless.reports.results import save_experiment

        atomic_write_text(out / "config.yaml", dump_config(outcome.result.config))
        save_experiment(outcome.result, out)
        console.print(f"results in [bold]{out}[/]")


def _run(protocol, stand_in: bool, seeds: int, seed: int, data_dir: Path | None, quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from forgetless.reproduce.registry import run_protocol

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("task {task.fields[task_index]}"),
        TimeElapsedColumn(),
        console=_console(),
        disable=quiet,
    )

    def make_callback(combination: str, run_seed: int):
        bar = progress.add_task(f"{protocol.name} (seed {run_seed})", total=None, task_index=0)

        def callback(task_index: int, step: int, total: int) -> None:
            progress.update(bar, total=total, completed=step, task_index=task_index)

        return callback

    with progress:
        return run_protocol(protocol, stand_in, seeds, seed, data_dir, progress=make_callback)


def _table(outcome) -> Table:
    p = outcome.protocol
    table = Table(title=f"{p.name}: {p.source}, {p.row}", title_justify="left")
    for column in ("run", "metric", "published", "ours", "stand-in reference ± tol.", "reading"):
        table.add_column(column)
    where = f"stand-in ({p.stand_in_benchmark})" if outcome.stand_in else p.benchmark
    ours = f"{100 * outcome.mean:.2f} ± {100 * outcome.std:.2f} ({len(outcome.values)} seed(s))"
    measured = p.measured
    reference = (
        "not measured" if measured is None else f"{100 * measured.reference:.2f} ± {100 * measured.tolerance:.2f}"
    )
    inside = outcome.within_tolerance()
    if inside is None:
        reading = "compare with published" if not outcome.stand_in else "no reference yet"
    else:
        reading = "within tolerance" if inside else "[bold red]outside tolerance[/]"
    table.add_row(where, p.published.metric, p.published.text(), ours, reference, reading)
    return table


def _list(protocols, data_dir: Path | None) -> None:
    """One plain line per protocol (no wrapping, so it greps): name, published, ours, status."""
    from forgetless.reproduce.registry import data_available

    here: dict[str, bool] = {}
    rows = [("name", "published", "stand-in ours", "status")]
    for p in protocols:
        if p.benchmark not in here:
            here[p.benchmark] = data_available(p.benchmark, data_dir)
        status = p.status()
        if not p.needs and p.stand_in_benchmark is not None:
            status += "; " + (
                f"{p.data} is here: run without --stand-in"
                if here[p.benchmark]
                else f"needs data: {p.data} (not downloadable here)"
            )
        ours = "-" if p.measured is None else f"{100 * p.measured.reference:.2f}"
        rows.append((p.name, p.published.text().replace(" (unverified)", " *"), ours, status))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3])
    typer.echo("* unverified: not checked against the source text (see REPRODUCIBILITY.md)")


def register(app: typer.Typer) -> None:
    """Add ``reproduce`` to the main app."""
    app.command("reproduce")(reproduce)
