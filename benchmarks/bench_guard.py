"""What the forgetting guard costs a fine-tune: its evaluations against the training time.

The LLM demo's setting (`forgetless demo llm`: a tiny byte-level GPT-2 pretrained on the King
James Bible, fine-tuned on Python's standard library code, kept: the Bible's held-out perplexity
and 120 word-order choice items) at ``--eval-every 50``. Each evaluation's seconds are the
tracker's own (``eval_seconds`` of every record); the training time is the Trainer's ``train()``
wall time less those. Reported: the share of the evaluations made during training (steps 50,
100, ...) and of all of them (the step-0 baseline included, which every report needs for its
"before"). Target (issue #16): <= 5 % at ``eval_every=50``.

    python -m benchmarks.bench_guard --steps 200 --repeats 2 --out /tmp/guard.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path


def one_run(model: str, general: str, steps: int, eval_every: int) -> float:
    """One demo fine-tune; returns its tokens/s (the timings are recorded by :func:`main`'s probes)."""
    from forgetless.integrations.hf.finetune import FinetuneConfig, run_finetune

    keep = [f"perplexity:{general}"] + (["choice:builtin:kjv-word-order"] if general == "builtin:kjv" else [])
    cfg = FinetuneConfig(
        model=model,
        task="builtin:python-code",
        keep=keep,
        choice_size=120,
        steps=steps,
        batch_size=16,
        seq_len=128,
        lr=1e-3,
        warmup_steps=10,
        eval_every=eval_every,
        eval_size=48,
        train_size=2000,
    )
    return float(run_finetune(cfg)["tokens_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--pretrain-seconds", type=float, default=60.0, help="the demo model's pretraining budget")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from forgetless.integrations.hf.data import load_texts
    from forgetless.integrations.hf.tiny import pretrained_tiny_gpt2

    general = "builtin:kjv" if shutil.which("bible") else "builtin:python-prose"
    pretraining, _ = load_texts(general).split(0.5, 0)
    model = str(pretrained_tiny_gpt2(pretraining, args.pretrain_seconds, 128, tag=general.split(":")[1]))

    from transformers import Trainer

    from forgetless.integrations.hf.tracker import CapabilityTracker

    evaluations: list[tuple[int, float]] = []
    trains: list[float] = []
    evaluate, train = CapabilityTracker.evaluate, Trainer.train

    def timed_evaluate(self, model, step, *args, **kwargs):  # every guard evaluation, with its step
        started = time.perf_counter()
        out = evaluate(self, model, step, *args, **kwargs)
        evaluations.append((int(step), time.perf_counter() - started))
        return out

    def timed_train(self, *args, **kwargs):  # Trainer.train(): training and every evaluation in it
        started = time.perf_counter()
        out = train(self, *args, **kwargs)
        trains.append(time.perf_counter() - started)
        return out

    CapabilityTracker.evaluate, Trainer.train = timed_evaluate, timed_train
    rounds = []
    try:
        for _ in range(args.repeats):
            evaluations.clear()
            tokens_per_second = one_run(model, general, args.steps, args.eval_every)
            during = sum(seconds for step, seconds in evaluations if step > 0)
            baseline = sum(seconds for step, seconds in evaluations if step == 0)
            training = max(1e-9, trains[-1] - during - baseline)
            rounds.append(
                {
                    "evaluations": [(step, round(seconds, 3)) for step, seconds in evaluations],
                    "training_seconds": training,
                    "during_share": during / training,
                    "all_share": (during + baseline) / training,
                    "tokens_per_second": tokens_per_second,
                }
            )
    finally:
        CapabilityTracker.evaluate, Trainer.train = evaluate, train
    during = [r["during_share"] for r in rounds]
    every = [r["all_share"] for r in rounds]
    print(f"LLM demo, {args.steps} steps, eval every {args.eval_every} ({len(rounds)} runs)")
    print(
        f"  evaluations during training: {100 * statistics.median(during):.1f} % of training time "
        f"({100 * min(during):.1f}-{100 * max(during):.1f})"
    )
    print(
        f"  with the step-0 baseline:    {100 * statistics.median(every):.1f} % "
        f"({100 * min(every):.1f}-{100 * max(every):.1f})"
    )
    for r in rounds:
        print(f"  evaluations (step, s): {r['evaluations']}")
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "rounds": rounds}, indent=1))


if __name__ == "__main__":
    main()
