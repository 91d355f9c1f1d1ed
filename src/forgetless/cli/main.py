"""The ``forgetless`` command line (typer + rich)."""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from forgetless.errors import ConfigError, ForgetlessError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    help="Measure and prevent catastrophic forgetting.",
    pretty_exceptions_enable=False,
)
console = Console()
if not console.is_terminal:  # logs and pipes: wide enough for the summary table
    console = Console(width=120)
errors = Console(stderr=True)


_RUN_DIR: list[Path | None] = [None]
"""The run folder of the current ``forgetless run`` (for the resume hint after Ctrl-C)."""


def _split_list(value: str | None) -> list[str] | None:
    """``"a, b"`` -> ``["a", "b"]``; an empty item stays (``"a,,b"``) for the validators to refuse."""
    if value is None:
        return None
    return [v.strip() for v in value.split(",")] if value.strip() else []


def _path_option(value: str | None, flag: str) -> Path | None:
    """A path option as a Path; an empty one (``--out ""``) is refused, not read as the current folder."""
    if value is None:
        return None
    if not value.strip():
        raise ConfigError(f"{flag} is empty: name a folder (. for the current one), or leave {flag} off")
    return Path(value)


@app.command()
def run(
    benchmark: Optional[str] = typer.Option(None, help="benchmark name (see `forgetless list`)"),
    scenario: Optional[str] = typer.Option(None, help="task | domain | class"),
    strategies: Optional[str] = typer.Option(
        None, help="comma-separated runs to compare; a+b composes methods in one run"
    ),
    seeds: Optional[int] = typer.Option(None, help="number of seeds (mean ± std)"),
    seed: Optional[int] = typer.Option(None, help="first seed"),
    tasks: Optional[int] = typer.Option(None, help="number of tasks"),
    epochs: Optional[int] = typer.Option(None, help="epochs per task"),
    batch_size: Optional[int] = typer.Option(None, help="training batch size"),
    lr: Optional[float] = typer.Option(None, help="learning rate"),
    optimizer: Optional[str] = typer.Option(None, help="adam | sgd"),
    model: Optional[str] = typer.Option(
        None,
        help="mlp | cnn | reduced-resnet18 | resnet18 | resnet34 | resnet50 | hf:NAME_OR_PATH (pretrained "
        "transformers vision encoder) | package.module:factory",
    ),
    freeze_backbone: Optional[bool] = typer.Option(
        None, "--freeze-backbone/--train-backbone", help="train the head only (linear probe of a pretrained backbone)"
    ),
    channels_last: Optional[bool] = typer.Option(
        None, "--channels-last/--no-channels-last", help="conv models: NHWC weights and batches (no-op for MLP/ViT)"
    ),
    compile_: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the training forward"),
    flat_parameters: Optional[bool] = typer.Option(
        None,
        "--flat-parameters/--no-flat-parameters",
        help="parameters as views of one buffer (default: on for penalties and GEM/A-GEM outside task-IL)",
    ),
    hidden: Optional[str] = typer.Option(
        None, help="hidden widths, e.g. 400,400 (at least one; leave it off for the model's default)"
    ),
    init: Optional[str] = typer.Option(None, help="weight init: pytorch (default) | xavier"),
    buffer_size: Optional[int] = typer.Option(None, help="replay budget in samples"),
    augment: Optional[str] = typer.Option(None, help="none (default) | crop-flip: batched, on the device"),
    precision: Optional[str] = typer.Option(None, help="fp32 (default) | bf16 | fp16: training autocast"),
    validation: Optional[float] = typer.Option(
        None, help="hold out this fraction of training data and evaluate on it (tuning)"
    ),
    layerwise_lr_decay: Optional[float] = typer.Option(None, help="lr factor per depth level"),
    warmup_steps: Optional[int] = typer.Option(None, help="linear warmup steps per task"),
    lr_schedule: Optional[str] = typer.Option(None, help="constant | cosine"),
    unfreeze_every: Optional[int] = typer.Option(None, help="gradual unfreezing period (steps)"),
    stop_if_drop: Optional[float] = typer.Option(None, help="stop a task when earlier tasks drop by this"),
    eval_every: Optional[int] = typer.Option(None, help="steps between safety-brake evaluations"),
    checkpoint_every: Optional[int] = typer.Option(None, help="checkpoint every N steps"),
    eval_precision: Optional[str] = typer.Option(
        None, help="float32 (exact, default) | bfloat16 | float16: autocast dtype of evaluation"
    ),
    device: Optional[str] = typer.Option(None, help="cpu | cuda | cuda:N"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads"),
    data_dir: Optional[str] = typer.Option(
        None, metavar="PATH", help="folder holding the data set files (split-image-folder: the folder of your images)"
    ),
    image_size: Optional[int] = typer.Option(
        None, help="resize image-file data sets (image folder, Tiny-ImageNet, CORe50) to NxN pixels"
    ),
    no_download: bool = typer.Option(False, "--no-download", help="never download data"),
    set_: list[str] = typer.Option([], "--set", help="strategy parameter, e.g. ewc.ewc_lambda=100"),
    config: Optional[str] = typer.Option(None, "--config", metavar="PATH", help="YAML file with the same fields"),
    out: Optional[str] = typer.Option(None, metavar="PATH", help="results folder (default: runs/<name>-<time>)"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing results folder"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
    resume: Optional[str] = typer.Option(
        None, "--resume", metavar="PATH", help="continue the run in this folder from its last checkpoint"
    ),
) -> None:
    """Train strategies on a continual-learning benchmark and report forgetting.

    Exit codes: 0 done, 1 internal error, 2 bad input / data / output / NaN loss,
    130 interrupted (a checkpoint was saved: continue with --resume).
    """
    from forgetless.config import load_config_file, make_config, parse_assignments

    config_file, out_dir, data_folder, resume_dir = (
        _path_option(value, flag)
        for value, flag in ((config, "--config"), (out, "--out"), (data_dir, "--data-dir"), (resume, "--resume"))
    )
    values: dict[str, Any] = load_config_file(config_file) if config_file is not None else {}
    flags = {
        "benchmark": benchmark,
        "scenario": scenario,
        "strategies": _split_list(strategies),
        "seeds": seeds,
        "seed": seed,
        "tasks": tasks,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": optimizer,
        "model": model,
        "hidden": _parse_widths(hidden),
        "init": init,
        "buffer_size": buffer_size,
        "augment": augment,
        "precision": precision,
        "validation": validation,
        "layerwise_lr_decay": layerwise_lr_decay,
        "warmup_steps": warmup_steps,
        "lr_schedule": lr_schedule,
        "unfreeze_every": unfreeze_every,
        "stop_if_drop": stop_if_drop,
        "eval_every": eval_every,
        "checkpoint_every": checkpoint_every,
        "eval_precision": eval_precision,
        "device": device,
        "threads": threads,
        "data_dir": data_folder,
        "image_size": image_size,
        "out": out_dir,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    if no_download:
        values["download"] = False
    switches = (("freeze_backbone", freeze_backbone), ("channels_last", channels_last), ("compile", compile_))
    for name, flag in (*switches, ("flat_parameters", flat_parameters)):
        if flag is not None:  # a flag left off keeps the --config file's value
            values[name] = flag
    if set_:
        merged = dict(values.get("params") or {})
        for name, extra in parse_assignments(set_).items():
            merged[name] = {**merged.get(name, {}), **extra}
        values["params"] = merged
    if resume_dir is not None:
        _run(_resume_config(resume_dir, values), force=False, quiet=quiet, resume=True)
        return
    cfg = make_config(**values)
    _run(cfg, force=force, quiet=quiet)


def _parse_widths(hidden: str | None) -> list[int] | None:
    """``--hidden 400,400`` -> ``[400, 400]``; an empty value or item (``--hidden ""``, ``400,,400``)
    is refused: a model has at least one hidden width, and leaving the option off gives the default."""
    if hidden is None:
        return None
    try:
        return [int(h) for h in hidden.split(",")]
    except ValueError:
        raise ConfigError(
            f"--hidden {hidden!r} must be comma-separated integers, e.g. 400,400 "
            "(leave --hidden off for the model's default widths)"
        ) from None


def _resume_config(folder: Path, given: dict[str, Any]):
    """The saved config of run folder ``folder``; flags may repeat it but not contradict it."""
    from forgetless.config import load_config_file, make_config
    from forgetless.io import check_path_length
    from forgetless.training.checkpoint import config_differences
    from forgetless.training.experiment import resolve

    check_path_length(folder, "--resume", extra=0, error=ConfigError)
    if not (folder / "config.yaml").is_file():
        raise ConfigError(f"--resume {folder}: no config.yaml there; give the folder of a forgetless run")
    saved = resolve(make_config(**load_config_file(folder / "config.yaml")))
    if given.get("out") is not None and Path(given["out"]).resolve() != folder.resolve():
        raise ConfigError(f"--resume {folder} continues in that folder: drop --out {given['out']}")
    values = saved.model_dump()
    params = {k: dict(v) for k, v in (values.get("params") or {}).items()}
    for name, extra in (given.get("params") or {}).items():
        params[name] = {**params.get(name, {}), **extra}
    values.update({k: v for k, v in given.items() if k != "params"})
    values.update(params=params, out=folder)
    candidate = resolve(make_config(**values))
    differences = config_differences(saved.model_dump(mode="json"), candidate.model_dump(mode="json"))
    if differences:
        raise ConfigError(
            f"cannot resume {folder} with other settings ({'; '.join(differences)}): "
            "drop those flags (the saved config is used), or start a new run with another --out"
        )
    return candidate


def _run(cfg, force: bool, quiet: bool, resume: bool = False) -> None:
    from forgetless.config import dump_config
    from forgetless.errors import OutputError
    from forgetless.io import atomic_write_text, prepare_run_dir
    from forgetless.reports.plot_worker import PlotWorker
    from forgetless.reports.results import save_experiment, start_plots
    from forgetless.reports.table import reading, summary_table
    from forgetless.training import distributed
    from forgetless.training.checkpoint import (
        Interrupted,
        RunInterrupted,
        load_checkpoint,
        remove_checkpoint,
        validate_checkpoint,
    )
    from forgetless.training.experiment import default_out_dir, run_experiment, validate

    cfg = validate(cfg)
    group = distributed.setup(cfg.device)  # under torchrun: every rank trains, rank 0 alone writes
    if not group.is_main:
        quiet = True
    if cfg.compile:  # --compile and --model hf: are checked before the run folder is written
        from forgetless.training.compiled import check_compile

        check_compile(cfg.device)
    if cfg.model and cfg.model.startswith("hf:"):
        from forgetless.models.hf_vision import vision_config

        vision_config(cfg.model)
    out = cfg.out or default_out_dir(cfg)
    if group.world_size > 1 and cfg.out is None:  # the ranks' clocks may name different folders
        out = Path(group.broadcast_text(str(out)))
    cfg = cfg.model_copy(update={"out": out})
    if resume:
        saved = load_checkpoint(out)
        if saved is not None:
            validate_checkpoint(saved)
        if saved is not None and not quiet:
            console.print(f"resuming {out} from {saved.where()}")
        if group.is_main:
            prepare_run_dir(out, force=True)  # exists: check it is still writable
    elif group.is_main:
        prepare_run_dir(out, force=force)
        remove_checkpoint(out)  # a --force run never resumes from an older run's checkpoint
        atomic_write_text(out / "config.yaml", dump_config(cfg))  # --resume needs it at once
    group.barrier()  # the other ranks start once rank 0 has prepared the folder
    _RUN_DIR[0] = out

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("task {task.fields[task_index]}"),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )

    def make_callback(combination: str, seed: int):
        bar = progress.add_task(f"{combination} (seed {seed})", total=None, task_index=0)
        state = {"last": -1}

        def callback(task_index: int, step: int, total: int) -> None:
            if task_index != state["last"]:
                state["last"] = task_index
                progress.update(bar, total=total, completed=0, task_index=task_index)
            progress.update(bar, completed=step)

        return callback

    plots_started = [False]

    def save(result) -> None:
        if not group.is_main:
            return
        if sum(len(runs) for runs in result.runs.values()) == len(cfg.strategies) * cfg.seeds:
            start_plots(result, out, plotter)  # the last run: the worker draws while the files are written
            plots_started[0] = True
        save_experiment(result, out, plots_too=False)

    # imports matplotlib on the other core while the run trains
    with PlotWorker() if group.is_main else contextlib.nullcontext() as plotter:
        try:
            with progress:
                result = run_experiment(cfg, progress=make_callback, on_run_done=save, run_dir=out, resume=resume)
        except OutputError as error:
            raise OutputError(
                f"{error} (results up to the last checkpoint are kept: fix this, then `forgetless run --resume {out}`)"
            ) from None
        except KeyboardInterrupt as interrupt:  # click turns a KeyboardInterrupt into a silent abort
            if isinstance(interrupt, RunInterrupted):
                raise Interrupted(str(interrupt)) from None
            raise Interrupted(
                f"results of finished runs and the last checkpoint are in {out}; "
                f"continue with `forgetless run --resume {out}`"
            ) from None
        if not group.is_main:
            return
        if not plots_started[0]:
            start_plots(result, out, plotter)
        console.print(summary_table(result))  # printed while the plots are drawn
        for sentence in reading(result):
            console.print(sentence, highlight=False)
        plotter.finish()
    console.print(f"results in [bold]{out}[/] (metrics.json, accuracy_matrix.csv, *.png)")


@app.command("list")
def list_names(
    markdown: bool = typer.Option(
        False, "--markdown", help="the strategies' reference table (docs/strategies.md) in Markdown"
    ),
) -> None:
    """Benchmarks, scenarios and strategies (with their family), one line each."""
    from forgetless.data.benchmarks import BENCHMARKS
    from forgetless.data.scenarios import SCENARIOS
    from forgetless.strategies import discover, strategy_table

    if markdown:
        typer.echo(strategy_table(), nl=False)
        return
    for title, rows in (
        ("benchmarks", [(b.name, f"{b.description} [default: {b.scenario}-IL]") for b in BENCHMARKS.values()]),
        ("scenarios", list(SCENARIOS.items())),
        (
            "strategies",
            [
                (s.name, f"[dim]\\[{s.family}][/] {_summary(s)}")
                for s in sorted(discover().values(), key=lambda s: s.name)
            ],
        ),
    ):
        table = Table(title=title, show_header=False, title_justify="left")
        table.add_column(style="bold cyan")
        table.add_column()
        for name, text in rows:
            table.add_row(name, text)
        console.print(table)


def _summary(strategy: type) -> str:
    """The strategy's one line, plus the extra to install when a package it needs is missing."""
    from forgetless.extras import EXTRA_OF, available

    missing = sorted({EXTRA_OF[m] for m in strategy.requires if not available(m)})
    if not missing:
        return strategy.summary
    return strategy.summary + "".join(f' [dim](needs: pip install "forgetless\\[{e}]")[/]' for e in missing)


def _register_subcommands() -> None:
    """Let each module ``forgetless.cli.<name>`` with a ``register(app)`` add its commands."""
    import importlib
    import pkgutil

    import forgetless.cli as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "main" and not info.name.startswith("_"):
            module = importlib.import_module(f"forgetless.cli.{info.name}")
            if hasattr(module, "register"):
                module.register(app)


_register_subcommands()


def _click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(exit, usage error, abort) classes of the click that typer runs on.

    Typer >= 0.29 vendors its own click (``typer._click``), older typer uses the ``click``
    package: both are reached through typer's own exports, so neither is imported here.
    """
    usage = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    click_exceptions = sys.modules[usage.__module__]
    exits = {typer.Exit, getattr(click_exceptions, "Exit", typer.Exit)}
    aborts = {typer.Abort, getattr(click_exceptions, "Abort", typer.Abort)}
    return tuple(exits), (usage,), tuple(aborts)


def _interrupt_hint() -> str:
    if _RUN_DIR[0] is None:
        return "nothing was computed yet"
    return (
        f"results of finished runs and the last checkpoint are in {_RUN_DIR[0]}; "
        f"continue with `forgetless run --resume {_RUN_DIR[0]}`"
    )


_LINE_BREAKS = {ord(c): c.encode("unicode_escape").decode() for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}
"""Every character at which ``str.splitlines`` breaks a line, to its escape (``\\n``, ``\\x1e``)."""


def _say(label: str, message: str) -> None:
    """``label: message`` on stderr as one line, whatever a file name or key in it holds."""
    errors.print(f"[bold red]{label}[/] {escape(message.translate(_LINE_BREAKS))}", highlight=False, soft_wrap=True)


def _speaks_for_itself() -> bool:
    """Under torchrun, whether this rank prints its error line: rank 0 always; another rank once it
    has joined the process group (before that its errors are the config checks rank 0 prints too)."""
    from forgetless.training import distributed

    group = distributed.current()
    return os.environ.get("RANK", "0") == "0" or group.world_size > 1


def _freeze_at_exit() -> None:
    """Once per process: at exit, skip the interpreter's last garbage collection.

    ``gc.freeze()`` as the last exit handler moves every object left to the permanent
    generation, so the collection the interpreter runs while shutting down does not walk the
    objects of torch and its modules again (about a tenth of a short run, all of it after the
    results are written). Files are closed by then; nothing is left to a finaliser.
    """
    if not getattr(_freeze_at_exit, "registered", False):
        atexit.register(gc.freeze)  # registered first, so run last (handlers run in reverse)
        _freeze_at_exit.registered = True  # type: ignore[attr-defined]


def main() -> None:
    """Entry point: one clear line and a non-zero exit code for every user error."""
    _freeze_at_exit()
    try:
        app(standalone_mode=False)
    except ForgetlessError as error:
        kind = "interrupted" if error.exit_code == 130 else "error"
        if _speaks_for_itself():
            rank = os.environ.get("RANK", "0")
            _say(f"{kind}:" if rank == "0" else f"{kind} (rank {rank}):", str(error))
        sys.exit(error.exit_code)
    except KeyboardInterrupt as interrupt:
        from forgetless.training.checkpoint import RunInterrupted

        message = str(interrupt) if isinstance(interrupt, RunInterrupted) else _interrupt_hint()
        _say("interrupted:", message)
        sys.exit(130)
    except Exception as error:  # click usage errors and anything unexpected
        exits, usage_errors, aborts = _click_exceptions()
        if isinstance(error, exits):
            sys.exit(error.exit_code)
        if isinstance(error, usage_errors):
            if not _speaks_for_itself():
                sys.exit(error.exit_code)
            message = " ".join(error.format_message().split())
            _say("error:", f"{message} (see --help)")
            sys.exit(error.exit_code)
        if isinstance(error, aborts):  # click's form of a KeyboardInterrupt outside training
            _say("interrupted:", _interrupt_hint())
            sys.exit(130)
        if os.environ.get("FORGETLESS_DEBUG"):
            raise
        _say(
            "internal error:",
            f"{type(error).__name__}: {error} (set FORGETLESS_DEBUG=1 for the traceback and report it)",
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
