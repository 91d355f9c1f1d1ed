"""forgetless inside TRL's SFTTrainer: penalties, replay, the guard's logs, resume, LoRA.

Tiny byte-level GPT-2 (2 layers, width 32, no dropout) on a 16-conversation ``messages`` data
set with a chat template that marks the assistant turns (``assistant_only_loss``); seeded, CPU.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

pytest.importorskip("trl")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

from forgetless.errors import ConfigError  # noqa: E402
from forgetless.integrations.hf import (  # noqa: E402
    ForgettingCallback,
    Perplexity,
    estimate_fisher,
    ewc_penalty,
    l2sp_penalty,
)
from forgetless.integrations.hf.strategies import FinetuneStrategies  # noqa: E402
from forgetless.integrations.hf.tiny import byte_tokenizer, tiny_gpt2  # noqa: E402
from forgetless.integrations.hf.trl import ForgetlessSFTTrainer  # noqa: E402
from forgetless.strategies._penalty import AnchoredPenalty  # noqa: E402
from test_hf_resume import KEEP, Spy, StopAt, perplexity_tracker, report  # noqa: E402

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|endoftext|>{% endgeneration %}"
    "{% else %}{{ m['content'] }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def tokenizer():
    tok = byte_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok


def chat_data(n: int = 16) -> Dataset:
    return Dataset.from_list(
        [
            {
                "messages": [
                    {"role": "user", "content": f"What is {i} plus {i}?"},
                    {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
                ]
            }
            for i in range(n)
        ]
    )


def completion_data(n: int = 16) -> Dataset:
    return Dataset.from_list([{"prompt": f"Double {i}:", "completion": f" {2 * i}."} for i in range(n)])


def tiny_model():
    return tiny_gpt2(n_layer=2, n_embd=32, n_head=2, n_positions=128, seed=0)


def config(out: Path, **changes) -> SFTConfig:
    values = dict(
        output_dir=str(out),
        max_steps=8,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        logging_steps=2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
        max_length=64,
        assistant_only_loss=True,
    )
    return SFTConfig(**{**values, **changes})


def sft(trainer_cls, args, model=None, data=None, callbacks=(), attach=False, **kwargs):
    trainer = trainer_cls(
        model=model if model is not None else tiny_model(),
        args=args,
        train_dataset=data if data is not None else chat_data(),
        processing_class=tokenizer(),
        callbacks=list(callbacks),
        **kwargs,
    )
    for guard in callbacks if attach else ():
        if isinstance(guard, ForgettingCallback):
            guard.attach(trainer)
    return trainer


def anchored(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def drift(model, start: dict[str, torch.Tensor]) -> float:
    params = dict(model.named_parameters())
    return float(sum(((params[n].detach() - w) ** 2).sum() for n, w in start.items()) ** 0.5)


@pytest.mark.parametrize("trainer_cls", [ForgetlessSFTTrainer, SFTTrainer])
@pytest.mark.parametrize("data", ["messages", "prompt-completion"])
def test_the_guard_logs_keep_and_forget_next_to_the_sft_metrics(tmp_path: Path, trainer_cls, data) -> None:
    spy = Spy()
    guard = ForgettingCallback(perplexity_tracker())
    dataset = chat_data() if data == "messages" else completion_data()
    args = config(tmp_path, **({} if data == "messages" else {"assistant_only_loss": False}))
    trainer = sft(trainer_cls, args, data=dataset, callbacks=[guard, spy])  # a stock SFTTrainer: found, not attached
    trainer.train()

    history = trainer.state.log_history
    keeps = {e["step"]: e for e in history if f"keep/{KEEP}" in e}
    assert sorted(keeps) == [0, 2, 4, 6, 8]
    for record in guard.tracker.history:
        entry = keeps[record["step"]]
        assert entry[f"keep/{KEEP}"] == record["scores"][KEEP]
        assert entry[f"forget/{KEEP}"] == record["drops"][KEEP] and "forget/worst" in entry
        assert "mean_token_accuracy" not in entry  # SFTTrainer's averaged metrics stay in its own entries
    losses = [e for e in history if "loss" in e]
    assert [e["step"] for e in losses] == [2, 4, 6, 8]  # each step's loss log survives the guard's entry
    assert all("mean_token_accuracy" in e and "entropy" in e for e in losses)
    assert [s for s, logs in spy.logs if f"keep/{KEEP}" in logs] == [0, 2, 4, 6, 8]  # the integrations saw them
    assert guard.summary()["capabilities"][KEEP]["drop"] != 0


def perturbed(scale: float = 0.05):
    """A model and an L2-SP penalty anchored away from it (the penalty is not 0 at step 1)."""
    model = tiny_model()
    penalty = l2sp_penalty(model, alpha=0.02)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))
    return model, penalty


@pytest.mark.parametrize("accumulation", [1, 2])
def test_the_loss_is_the_sft_loss_plus_the_penalty(tmp_path: Path, accumulation: int) -> None:
    # one SGD step (no clipping): the logged loss and the update of the penalised run are the plain
    # SFTTrainer's plus exactly the penalty's, whatever the gradient accumulation
    args = config(
        tmp_path,
        max_steps=1,
        logging_steps=1,
        optim="sgd",
        learning_rate=1.0,
        max_grad_norm=0.0,
        per_device_train_batch_size=4 // accumulation,
        gradient_accumulation_steps=accumulation,
    )
    model, penalty = perturbed()
    start = anchored(model)
    value = float(penalty.penalty(model).detach())
    assert value > 0.5

    plain = sft(SFTTrainer, args, model=copy.deepcopy(model))
    plain.train()
    guarded = sft(ForgetlessSFTTrainer, args, model=model, penalties=[penalty])
    guarded.train()

    loss_plain = plain.state.log_history[0]["loss"]
    loss_guarded = guarded.state.log_history[0]["loss"]
    assert loss_guarded == pytest.approx(loss_plain + value, rel=1e-5)
    assert guarded.last_penalty == pytest.approx(value / accumulation, rel=1e-5)  # the share of one micro-batch
    # the update differs by lr * d(penalty)/dw = lr * alpha * (w - w0) and nothing else
    anchor = dict(tiny_model().named_parameters())
    after_plain, after_guarded = dict(plain.model.named_parameters()), dict(guarded.model.named_parameters())
    for name, w in start.items():
        expected = -1.0 * 0.02 * (w - anchor[name].detach())
        assert torch.allclose(after_guarded[name] - after_plain[name], expected, rtol=1e-3, atol=2e-6), name


def test_l2sp_drifts_less_from_the_pretrained_weights_than_plain_sft(tmp_path: Path) -> None:
    args = config(tmp_path, max_steps=12)
    plain_model, l2sp_model = tiny_model(), tiny_model()
    start = anchored(plain_model)
    sft(SFTTrainer, args, model=plain_model).train()
    penalty = l2sp_penalty(l2sp_model, alpha=1.0)
    sft(ForgetlessSFTTrainer, args, model=l2sp_model, penalties=[penalty]).train()
    plain, with_l2sp = drift(plain_model, start), drift(l2sp_model, start)
    assert plain > 0.5
    assert with_l2sp < 0.3 * plain, (plain, with_l2sp)  # measured: 1.49 vs 10.08


@pytest.mark.parametrize("trainer_cls", [ForgetlessSFTTrainer, SFTTrainer])
def test_a_resumed_sft_run_reports_the_same_forgetting_as_an_uninterrupted_one(tmp_path: Path, trainer_cls) -> None:
    def run(out: Path, guard: ForgettingCallback, *extra, resume: str | None = None):
        kwargs = {"penalties": [lambda model: l2sp_penalty(model, 0.1)]} if trainer_cls is ForgetlessSFTTrainer else {}
        args = config(out, save_strategy="steps", save_steps=4, logging_strategy="no")
        trainer = sft(trainer_cls, args, callbacks=[guard, *extra], attach=trainer_cls is SFTTrainer, **kwargs)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    whole = ForgettingCallback(perplexity_tracker())
    run(tmp_path / "whole", whole)
    first = ForgettingCallback(perplexity_tracker())
    run(tmp_path / "first", first, StopAt(4))
    assert (tmp_path / "first" / "checkpoint-4" / "forgetless_callback.json").is_file()
    resumed = ForgettingCallback(perplexity_tracker())
    out = tmp_path / ("second" if trainer_cls is ForgetlessSFTTrainer else "first")
    trainer = run(out, resumed, resume=str(tmp_path / "first" / "checkpoint-4"))
    assert trainer.state.global_step == 8

    expected, got = report(whole), report(resumed)
    assert got["steps"] == [0, 2, 4, 6, 8]
    assert got == expected  # bit for bit on CPU
    assert got["drop"] > 0


def core_strategies(model) -> FinetuneStrategies:
    """``--strategies l2sp+ewc`` of ``forgetless finetune``, on the trained (wrapped) model."""
    general = Perplexity("general", prose_rows(4), prose_rows(16))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {"l2sp": {"alpha": 1.0}, "ewc": {"ewc_lambda": 10.0, "fisher_samples": 4}}
    return FinetuneStrategies.build(["l2sp", "ewc"], params, model, [general], names)  # prepared by the trainer


def ewc(model) -> AnchoredPenalty:
    general = Perplexity("general", prose_rows(4), prose_rows(16))
    return ewc_penalty(model, estimate_fisher(model, general, 4, torch.Generator().manual_seed(0)), 10.0)


@pytest.mark.parametrize("mitigation", ["l2sp", "ewc", "strategies"])
def test_lora_through_peft_config_trains_the_adapters_under_the_penalty_and_the_guard(
    tmp_path: Path, mitigation: str
) -> None:
    from peft import LoraConfig, PeftModel

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], task_type="CAUSAL_LM", fan_in_fan_out=True)
    guard = ForgettingCallback(perplexity_tracker())
    model = tiny_model()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    # built on the wrapped model: functions of it, called once SFTTrainer has applied peft_config
    chosen = {
        "l2sp": {"penalties": [lambda trained: l2sp_penalty(trained, 1.0)]},
        "ewc": {"penalties": [ewc]},
        "strategies": {"strategies": core_strategies},
    }[mitigation]
    trainer = sft(ForgetlessSFTTrainer, config(tmp_path), model=model, callbacks=[guard], peft_config=lora, **chosen)
    assert isinstance(trainer.model, PeftModel)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    if trainer.penalties:
        assert {n for t in trainer.penalties[0].terms for n in t.names} == set(trainable)
    trainer.train()
    assert trainer.last_penalty > 0
    assert sorted(e["step"] for e in trainer.state.log_history if f"keep/{KEEP}" in e) == [0, 2, 4, 6, 8]
    for name, value in base.items():  # the base weights are frozen
        assert torch.equal(model.get_parameter(name), value), name

    # a penalty built on the unwrapped model would anchor nothing of the trained one: refused
    with pytest.raises(ConfigError, match="lacks"):
        sft(ForgetlessSFTTrainer, config(tmp_path), peft_config=lora, penalties=[l2sp_penalty(tiny_model(), 1.0)])


def prose_rows(n: int, length: int = 16) -> torch.Tensor:
    ids = byte_tokenizer()("the cat sat on the mat and the dog sat on the log. " * 40)["input_ids"]
    return torch.tensor(ids[: n * length]).view(n, length)


def test_replay_puts_its_share_of_general_rows_in_every_sft_batch(tmp_path: Path) -> None:
    general = Perplexity("general", prose_rows(4), prose_rows(16))
    after = {}
    for ratio in (0.0, 0.25):
        trainer = sft(ForgetlessSFTTrainer, config(tmp_path, max_steps=8), replay=general, replay_ratio=ratio)
        seen: list[int] = []

        def counted(model, batch, seen=seen):
            seen.append(int(batch["input_ids"].shape[0]))
            return general.replay_loss(model, batch)

        trainer.replay_loss = counted
        trainer.train()
        assert seen == ([1] * 8 if ratio else [])  # round(0.25 * 4) general rows in each of the 8 batches
        assert all("mean_token_accuracy" in e for e in trainer.state.log_history if "loss" in e)
        after[ratio] = general.evaluate(trainer.model)
    assert after[0.25] < 0.8 * after[0.0], after  # the replayed rows were trained on

    with pytest.raises(ConfigError, match="replay="):
        sft(ForgetlessSFTTrainer, config(tmp_path), mixing_sampler=object())


def test_without_trl_the_module_is_one_line_naming_the_extra() -> None:
    import subprocess
    import sys

    code = "import sys\nsys.modules['trl'] = None\nimport forgetless.integrations.hf.trl\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "MissingExtraError: ForgetlessSFTTrainer" in done.stderr and 'pip install "forgetless[trl]"' in done.stderr
