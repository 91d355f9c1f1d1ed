"""``forgetless demo words|encoder|llm``: offline demos of forgetting and its cures.

``words`` needs the core alone; ``encoder`` and ``llm`` fine-tune Hugging Face models (the
``hf`` and ``demo`` extras).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from forgetless.cli.finetune import LiveProgress, console, needs_hf, results_table, run_with_progress

demo_app = typer.Typer(help="Offline demos of catastrophic forgetting and its cures.", no_args_is_help=True)


def _run_demo(demo_name: str, title: str, threads: int, quiet: bool, **options: Any) -> None:
    """Run ``forgetless.integrations.hf.demos.<demo_name>`` with live progress, print its table."""
    needs_hf(f"forgetless demo {demo_name.removesuffix('_demo')}", demo=demo_name == "encoder_demo")
    import torch

    from forgetless.integrations.hf import demos

    torch.set_num_threads(threads)
    live = LiveProgress(quiet)
    with live.progress:
        runs = getattr(demos, demo_name)(run=run_with_progress(live), **options)
    console.print(results_table(runs, title))
    console.print(f"report in [bold]{options['out']}[/] (forgetting.json, before_after.csv, capability_curves.png)")


@demo_app.command("encoder")
def demo_encoder(
    out: Path = typer.Option(..., help="report folder"),
    steps: int = typer.Option(60, help="fine-tuning steps per run"),
    threads: int = typer.Option(2, help="torch CPU threads"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """MiniLM keeps tweet sentiment while learning news topics: naive vs LoRA vs L2-SP vs replay."""
    _run_demo(
        "encoder_demo",
        "all-MiniLM-L6-v2: tweet sentiment kept, BBC topics learned",
        threads,
        quiet,
        out=out,
        steps=steps,
    )


@demo_app.command("llm")
def demo_llm(
    out: Path = typer.Option(..., help="report folder"),
    pretrain_seconds: float = typer.Option(120.0, help="pretraining budget of the tiny GPT-2 (cached)"),
    steps: int = typer.Option(100, help="fine-tuning steps per run"),
    threads: int = typer.Option(2, help="torch CPU threads"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """Tiny byte-level GPT-2 keeps general prose while learning Python code: naive vs 25% replay."""
    console.print("pretraining (or loading the cached) tiny GPT-2 …")
    _run_demo(
        "llm_demo",
        "tiny byte-level GPT-2: general text kept, Python code learned",
        threads,
        quiet,
        out=out,
        pretrain_seconds=pretrain_seconds,
        steps=steps,
    )


@demo_app.command("words")
def demo_words(
    seed: int = typer.Option(0, help="random seed (same seed, same screen)"),
    out: Optional[Path] = typer.Option(None, help="results folder (default: runs/demo-words-domain-<time>)"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing results folder"),
    quiet: bool = typer.Option(False, "--quiet", help="no live display; print the final table only"),
    svg: Optional[Path] = typer.Option(None, help="also save the final screen as an SVG here"),
    threads: int = typer.Option(1, help="torch CPU threads"),
) -> None:
    """Four word lists learned in turn by a tiny character model: naive forgets, replay and EWC keep."""
    from forgetless.demos.words import main as words_demo

    words_demo(seed=seed, out=out, force=force, quiet=quiet, svg=svg, threads=threads)


def register(app: typer.Typer) -> None:
    """Add ``demo words|encoder|llm`` to the main app."""
    app.add_typer(demo_app, name="demo")
