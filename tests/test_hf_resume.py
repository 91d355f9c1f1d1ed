"""ForgettingCallback across Trainer checkpoints, and its figures in the Trainer's logs.

Tiny byte-level GPT-2 (2 layers, width 32, no dropout), seeded, 8 steps on CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from forgetless.integrations.hf import (  # noqa: E402
    CapabilityTracker,
    ForgetlessTrainer,
    ForgettingCallback,
    Perplexity,
    RowsDataset,
)
from forgetless.integrations.hf.capabilities import Capability  # noqa: E402
from forgetless.integrations.hf.tiny import tiny_gpt2  # noqa: E402

KEEP = "general"


def tiny_model():
    return tiny_gpt2(n_layer=2, n_embd=32, n_head=2, n_positions=64, seed=0)


def rows(seed: int, n: int = 32, length: int = 16) -> torch.Tensor:
    return torch.randint(0, 257, (n, length), generator=torch.Generator().manual_seed(seed))


def perplexity_tracker() -> CapabilityTracker:
    task = Perplexity("task", rows(2, 4))
    return CapabilityTracker([Perplexity(KEEP, rows(1, 4))], task=task, eval_every=2)


def arguments(out: Path, **changes) -> TrainingArguments:
    values = dict(
        output_dir=str(out),
        max_steps=8,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        save_strategy="steps",
        save_steps=4,
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    return TrainingArguments(**{**values, **changes})


class StopAt(TrainerCallback):
    """Interrupt the run after ``step`` (as a crash after the checkpoint would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


class Weights(TrainerCallback):
    """The trainable weights after each optimizer step."""

    def __init__(self) -> None:
        self.at: dict[int, dict[str, torch.Tensor]] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.at[state.global_step] = {n: p.detach().clone() for n, p in model.named_parameters()}


class Spy(TrainerCallback):
    """What the report_to integrations see: every ``on_log`` call."""

    def __init__(self) -> None:
        self.logs: list[tuple[int, dict]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append((state.global_step, dict(logs)))


def train(trainer_cls, args, guard, *extra, resume: str | None = None, attach: bool = False, **kwargs):
    data = rows(0)
    trainer = trainer_cls(
        model=tiny_model(),
        args=args,
        train_dataset=RowsDataset({"input_ids": data, "labels": data}),
        callbacks=[guard, *extra],
        **kwargs,
    )
    if attach:
        guard.attach(trainer)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def report(guard: ForgettingCallback) -> dict:
    summary = guard.summary()
    cap = summary["capabilities"][KEEP]
    return {
        "steps": summary["steps"],
        **{k: cap[k] for k in ("before", "after", "drop", "max_drop", "forgetting", "curve")},
        "task": summary["task"]["curve"],
        "drops": [r["drops"] for r in guard.tracker.history],
    }


@pytest.mark.parametrize("trainer_cls", [ForgetlessTrainer, Trainer])
def test_resumed_run_reports_the_same_forgetting_as_an_uninterrupted_one(tmp_path: Path, trainer_cls) -> None:
    whole = ForgettingCallback(perplexity_tracker())
    train(trainer_cls, arguments(tmp_path / "whole"), whole)

    first = ForgettingCallback(perplexity_tracker())
    train(trainer_cls, arguments(tmp_path / "first"), first, StopAt(4))
    assert (tmp_path / "first" / "checkpoint-4").is_dir()
    # a fresh process: new model, new tracker and callback, another output folder for the Forgetless trainer
    out = tmp_path / ("second" if trainer_cls is ForgetlessTrainer else "first")
    resumed = ForgettingCallback(perplexity_tracker())
    trainer = train(trainer_cls, arguments(out), resumed, resume=str(tmp_path / "first" / "checkpoint-4"))
    assert trainer.state.global_step == 8

    expected, got = report(whole), report(resumed)
    assert got["steps"] == [0, 2, 4, 6, 8]
    assert got == expected  # bit for bit: the resume is exact on CPU
    assert got["drop"] > 0  # the fine-tune did make general text worse
    # the log of the resumed run (the checkpoint's entries, then its own) holds every evaluation once
    logged = [(e["step"], e[f"keep/{KEEP}"]) for e in trainer.state.log_history if f"keep/{KEEP}" in e]
    assert logged == list(zip(got["steps"], got["curve"], strict=True))


@pytest.mark.parametrize("trainer_cls", [ForgetlessTrainer, Trainer])
def test_every_evaluation_is_in_the_trainer_log(tmp_path: Path, trainer_cls) -> None:
    """A stock Trainer too, without ``attach``: the callback finds the trainer that runs it."""
    spy = Spy()
    guard = ForgettingCallback(perplexity_tracker())
    trainer = train(trainer_cls, arguments(tmp_path, save_strategy="no"), guard, spy)
    assert guard._trainer is not None and guard._trainer() is trainer
    entries = {e["step"]: e for e in trainer.state.log_history if f"keep/{KEEP}" in e}
    assert sorted(entries) == [0, 2, 4, 6, 8]
    for record in guard.tracker.history:
        entry = entries[record["step"]]
        assert entry[f"keep/{KEEP}"] == record["scores"][KEEP]
        assert entry[f"forget/{KEEP}"] == record["drops"][KEEP]
        assert entry["forget/worst"] == record["drops"][KEEP]
        assert entry["task/task"] == record["task"]
    assert [s for s, logs in spy.logs if f"keep/{KEEP}" in logs] == [0, 2, 4, 6, 8]  # the integrations saw them


@pytest.mark.parametrize("trainer_cls", [ForgetlessTrainer, Trainer])
def test_kept_capabilities_drive_metric_for_best_model_and_early_stopping(tmp_path: Path, trainer_cls) -> None:
    from transformers import EarlyStoppingCallback

    guard = ForgettingCallback(perplexity_tracker())
    args = arguments(
        tmp_path,
        eval_strategy="steps",
        eval_steps=2,
        save_steps=2,
        metric_for_best_model=f"keep_{KEEP}",
        greater_is_better=False,
        load_best_model_at_end=True,
    )
    stopper = EarlyStoppingCallback(early_stopping_patience=1)
    trainer = train(trainer_cls, args, guard, stopper, eval_dataset=RowsDataset({"input_ids": rows(3, 4)}))
    evals = [e for e in trainer.state.log_history if "eval_runtime" in e]
    assert evals and all(f"eval_keep_{KEEP}" in e and f"eval_forget_{KEEP}" in e for e in evals)
    scores = {r["step"]: r["scores"][KEEP] for r in guard.tracker.history}
    assert all(e[f"eval_keep_{KEEP}"] == scores[e["step"]] for e in evals)
    assert trainer.state.best_metric == min(e[f"eval_keep_{KEEP}"] for e in evals)
    # general perplexity is best at step 2 and worse at 4: early stopping ends the run there, the
    # Trainer loads checkpoint-2, and the report's "after" is the record of step 2
    assert trainer.state.global_step == 4 and trainer.state.best_global_step == 2
    assert guard.summary()["capabilities"][KEEP]["after"] == scores[2]


class Scripted(Capability):
    """The next scripted score at each evaluation."""

    metric = "accuracy"

    def __init__(self, name: str, scores: list[float]) -> None:
        super().__init__(name)
        self.scores = list(scores)

    def evaluate(self, model: torch.nn.Module) -> float:
        return self.scores.pop(0)


def test_a_stop_after_resume_restores_the_best_weights_stored_in_the_checkpoint(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    # steps 0, 2, 4 before the interruption: the task is best at step 2, every drop acceptable
    def tracker(keep: list[float], task: list[float]) -> CapabilityTracker:
        return CapabilityTracker([Scripted(KEEP, keep)], task=Scripted("task", task), eval_every=2)

    weights = Weights()
    first = ForgettingCallback(tracker([0.9, 0.85, 0.86], [0.1, 0.5, 0.3]), stop_if_drop=0.1)
    train(Trainer, arguments(tmp_path), first, weights, StopAt(4))
    assert first.best_record["step"] == 2
    stored = load_file(str(tmp_path / "checkpoint-4" / "forgetless_best.safetensors"))
    assert not list(tmp_path.glob("checkpoint-4/forgetless*.pt")) and not list(tmp_path.glob("checkpoint-4/*.pkl"))

    # resumed: step 6 keeps 0.85 (drop 0.05), step 8 falls to 0.7 (drop 0.2 > 0.1): stop, restore step 2
    spy = Spy()
    guard = ForgettingCallback(tracker([0.85, 0.7], [0.2, 0.2]), stop_if_drop=0.1)
    trainer = train(Trainer, arguments(tmp_path), guard, spy, resume=str(tmp_path / "checkpoint-4"), attach=True)
    assert guard.stopped_at == 8
    summary = guard.summary()
    assert summary["restored_step"] == 2 and summary["steps"] == [0, 2, 4, 6, 8]
    assert summary["capabilities"][KEEP]["before"] == 0.9
    assert summary["capabilities"][KEEP]["after"] == 0.85
    params = dict(trainer.model.named_parameters())
    for name, value in weights.at[2].items():
        assert torch.equal(params[name], value), name
        assert torch.equal(stored[name], value), name
    assert not torch.equal(
        weights.at[2]["transformer.h.0.attn.c_attn.weight"], weights.at[4]["transformer.h.0.attn.c_attn.weight"]
    )
    events = [e for e in trainer.state.log_history if "forget/stopped_at_step" in e]
    assert len(events) == 1 and events[0]["forget/stopped_at_step"] == 8 and events[0]["forget/restored_step"] == 2
    assert any("forget/stopped_at_step" in logs for _, logs in spy.logs)

    from forgetless.training.checkpoint import CheckpointError

    other = ForgettingCallback(CapabilityTracker([Scripted("other", [])]))
    with pytest.raises(CheckpointError, match="same --keep capabilities"):
        other.load(tmp_path / "checkpoint-4")


def test_resuming_a_checkpoint_without_the_callback_state_is_refused(tmp_path: Path) -> None:
    from forgetless.training.checkpoint import CheckpointError

    data = rows(0)
    Trainer(
        model=tiny_model(),
        args=arguments(tmp_path, max_steps=4),
        train_dataset=RowsDataset({"input_ids": data, "labels": data}),
    ).train()
    guard = ForgettingCallback(perplexity_tracker())
    with pytest.raises(CheckpointError, match="no forgetless state"):
        train(Trainer, arguments(tmp_path), guard, resume=str(tmp_path / "checkpoint-4"))
