"""Fast tests of the Hugging Face integration on tiny randomly initialised models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from forgetless.errors import ConfigError, DataError  # noqa: E402
from forgetless.integrations.hf import (  # noqa: E402
    CapabilityTracker,
    FinetuneConfig,
    ForgettingCallback,
    MixingBatchSampler,
    Perplexity,
    ewc_penalty,
    l2sp_penalty,
    load_texts,
    run_finetune,
)
from forgetless.integrations.hf.capabilities import Capability, knn_accuracy  # noqa: E402
from forgetless.integrations.hf.tiny import byte_tokenizer  # noqa: E402

PROSE = "In the beginning the model could read plain English prose quite well.\n" * 80
CODE = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n" * 80


def tiny_config() -> GPT2Config:
    return GPT2Config(
        vocab_size=257,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=256,
        eos_token_id=256,
        pad_token_id=256,
    )


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(tiny_config()).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    (folder.parent / "prose.txt").write_text(PROSE)
    (folder.parent / "code.txt").write_text(CODE)
    return folder


def small_run(folder: Path, **changes) -> FinetuneConfig:
    values = dict(
        model=str(folder),
        task=str(folder.parent / "code.txt"),
        keep=[f"perplexity:{folder.parent / 'prose.txt'}"],
        steps=4,
        batch_size=4,
        seq_len=32,
        eval_every=2,
        eval_size=4,
        train_size=16,
        lr=1e-2,
    )
    return FinetuneConfig(**{**values, **changes})


# -- perplexity -----------------------------------------------------------------------------
def test_perplexity_is_exp_of_mean_token_nll_by_hand() -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_config()).eval()
    ids = torch.randint(0, 257, (3, 10))
    total, count = 0.0, 0
    with torch.no_grad():  # one forward per prefix: no shifting logic shared with the code
        for row in ids:
            for t in range(1, row.shape[0]):
                logits = model(input_ids=row[:t].unsqueeze(0)).logits[0, -1].double()
                total -= float(torch.log_softmax(logits, -1)[row[t]])
                count += 1
    expected = math.exp(total / count)
    assert Perplexity("p", ids, batch_size=2).evaluate(model) == pytest.approx(expected, rel=1e-5)


# -- penalties ------------------------------------------------------------------------------
def _perturb(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    deltas = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            before = p.clone()
            p.add_(torch.randn(p.shape, generator=generator) * 0.01)
            deltas[name] = p - before  # the difference as float32 sees it
    return deltas


def test_l2sp_is_zero_at_anchor_and_has_the_analytic_gradient() -> None:
    model = GPT2LMHeadModel(tiny_config())
    penalty = l2sp_penalty(model, alpha=3.0)
    assert float(penalty.penalty(model).detach()) == 0.0
    deltas = _perturb(model, 1)
    model.zero_grad()
    value = penalty.penalty(model)
    value.backward()
    expected = sum(1.5 * float(d.double().square().sum()) for d in deltas.values())
    assert float(value.detach()) == pytest.approx(expected, rel=1e-4)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, 3.0 * deltas[name], rtol=1e-4, atol=1e-7)


def test_ewc_is_zero_at_anchor_and_has_the_analytic_gradient() -> None:
    model = GPT2LMHeadModel(tiny_config())
    generator = torch.Generator().manual_seed(2)
    fisher = {n: torch.rand(p.shape, generator=generator) for n, p in model.named_parameters() if ".h.0." in n}
    penalty = ewc_penalty(model, fisher, lam=10.0)
    assert float(penalty.penalty(model).detach()) == 0.0
    deltas = _perturb(model, 3)
    model.zero_grad()
    value = penalty.penalty(model)
    value.backward()
    expected = sum(5.0 * float((fisher[n] * deltas[n].square()).double().sum()) for n in fisher)
    assert float(value.detach()) == pytest.approx(expected, rel=1e-4)
    for name, p in model.named_parameters():
        if name in fisher:
            torch.testing.assert_close(p.grad, 10.0 * fisher[name] * deltas[name], rtol=1e-4, atol=1e-8)
        else:
            assert p.grad is None or not p.grad.any()


def test_fisher_uses_model_sampled_tokens_and_a_module_subset() -> None:
    from forgetless.integrations.hf import estimate_fisher

    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_config())
    blocks = torch.randint(0, 257, (6, 12))
    capability = Perplexity("p", blocks[:2], blocks)
    fisher = estimate_fisher(model, capability, 4, torch.Generator().manual_seed(0), modules=["transformer.h.1"])
    assert fisher and all(n.startswith("transformer.h.1.") for n in fisher)
    assert all(v.dtype == torch.float32 and (v >= 0).all() for v in fisher.values())
    assert all(p.requires_grad for p in model.parameters())  # restored
    # Reference for one row: the squared gradient of the NLL of tokens drawn from the model.
    one = estimate_fisher(model, capability, 1, torch.Generator().manual_seed(5), modules=["transformer.ln_f"])
    generator = torch.Generator().manual_seed(5)
    row = torch.randperm(6, generator=generator)[:1]
    ids = blocks[row]
    logits = model.eval()(input_ids=ids).logits[0, :-1]
    drawn = torch.multinomial(torch.softmax(logits.detach(), -1), 1, generator=generator)[:, 0]
    nll = -torch.log_softmax(logits, -1)[torch.arange(11), drawn].sum()
    grad = torch.autograd.grad(nll, model.transformer.ln_f.weight)[0]
    torch.testing.assert_close(one["transformer.ln_f.weight"], grad.square(), rtol=1e-4, atol=1e-9)


# -- mixing ---------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio,batch", [(0.25, 16), (0.1, 20), (0.5, 6), (0.0, 8)])
def test_mixing_sampler_delivers_the_ratio_in_every_batch(ratio: float, batch: int) -> None:
    sampler = MixingBatchSampler(n_task=37, n_general=11, batch_size=batch, ratio=ratio, num_batches=50, seed=0)
    k = round(ratio * batch)
    seen_task: list[int] = []
    for indices in sampler:
        assert len(indices) == batch
        assert sum(i >= 37 for i in indices) == k
        seen_task += [i for i in indices if i < 37]
    counts = torch.bincount(torch.tensor(seen_task), minlength=37)
    assert counts.max() - counts.min() <= 1  # passes without replacement


def test_mixing_sampler_resumes_exactly() -> None:
    first = MixingBatchSampler(20, 9, 8, 0.25, num_batches=3, seed=4)
    list(first)
    state = first.state_dict()
    expected = list(first)
    second = MixingBatchSampler(20, 9, 8, 0.25, num_batches=3, seed=99)
    second.load_state_dict(state)
    assert list(second) == expected


def test_mixing_sampler_rejects_a_ratio_that_rounds_to_zero() -> None:
    with pytest.raises(ConfigError, match="0 rows"):
        MixingBatchSampler(10, 10, 4, 0.05)


def test_replay_loss_is_the_row_weighted_mean(tiny_lm_dir: Path) -> None:
    from forgetless.integrations.hf.trainer import ForgetlessTrainer

    model = GPT2LMHeadModel.from_pretrained(tiny_lm_dir)
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tiny_lm_dir.parent / "t"), report_to=[], use_cpu=True)
    task = torch.randint(0, 257, (3, 8))
    replay = torch.randint(0, 257, (1, 8))
    trainer = ForgetlessTrainer(
        model=model, args=args, replay_loss=lambda m, b: m(input_ids=b["input_ids"], labels=b["input_ids"]).loss
    )
    loss = trainer.compute_loss(model, {"task": {"input_ids": task, "labels": task}, "replay": {"input_ids": replay}})
    expected = (3 * model(input_ids=task, labels=task).loss + model(input_ids=replay, labels=replay).loss) / 4
    torch.testing.assert_close(loss, expected)


# -- callback -------------------------------------------------------------------------------
class Scripted(Capability):
    """Returns the next scripted accuracy at each evaluation."""

    metric = "accuracy"

    def __init__(self, scores: list[float]) -> None:
        super().__init__("scripted")
        self.scores = list(scores)

    def evaluate(self, model: torch.nn.Module) -> float:
        return self.scores.pop(0)


def test_callback_stops_at_the_crossing_and_restores_the_best_weights(tiny_lm_dir: Path) -> None:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from forgetless.integrations.hf.mixing import RowsDataset

    weights_at: dict[int, dict[str, torch.Tensor]] = {}

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            weights_at[state.global_step] = {n: p.detach().clone() for n, p in model.named_parameters()}

    # evaluations at steps 0, 2, 4, 6: drops 0, 0.05, 0.10 (== threshold: kept), 0.11 (stop)
    tracker = CapabilityTracker([Scripted([0.9, 0.85, 0.8, 0.79, 0.5])], eval_every=2)
    guard = ForgettingCallback(tracker, stop_if_drop=0.1)
    model = GPT2LMHeadModel.from_pretrained(tiny_lm_dir)
    ids = torch.randint(0, 257, (64, 16))
    args = TrainingArguments(
        output_dir=str(tiny_lm_dir.parent / "cb"),
        max_steps=20,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=RowsDataset({"input_ids": ids, "labels": ids}),
        callbacks=[Record(), guard],
    )
    trainer.train()
    assert guard.stopped_at == 6
    assert trainer.state.global_step == 6
    assert [r["step"] for r in tracker.history] == [0, 2, 4, 6]
    summary = guard.summary()
    assert summary["restored_step"] == 4
    assert summary["capabilities"]["scripted"]["after"] == pytest.approx(0.8)
    for name, p in model.named_parameters():
        assert torch.equal(p, weights_at[4][name]), name
    assert not torch.equal(
        weights_at[4]["transformer.h.0.attn.c_attn.weight"], weights_at[6]["transformer.h.0.attn.c_attn.weight"]
    )


def test_tracker_needs_a_capability() -> None:
    with pytest.raises(ConfigError, match="no capability"):
        CapabilityTracker([])


# -- LoRA and the whole run -----------------------------------------------------------------
def test_lora_leaves_every_base_weight_bit_identical(tiny_lm_dir: Path) -> None:
    original = GPT2LMHeadModel.from_pretrained(tiny_lm_dir).state_dict()
    summary = run_finetune(small_run(tiny_lm_dir, lora=True, lora_targets=["c_attn", "c_fc"]))
    model = summary["_model"]
    base = {
        n.replace("base_model.model.", "").replace(".base_layer", ""): p
        for n, p in model.named_parameters()
        if "lora_" not in n
    }
    assert set(base) >= {n for n in original if n != "lm_head.weight"}
    for name, value in original.items():
        if name in base:
            assert torch.equal(base[name], value), name
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # the adapters did train


def test_finetune_with_every_mitigation_reports_forgetting(tiny_lm_dir: Path, tmp_path: Path) -> None:
    import json

    from forgetless.integrations.hf.finetune import write_report

    cfg = small_run(
        tiny_lm_dir,
        l2sp=1.0,
        ewc=10.0,
        ewc_samples=2,
        replay_ratio=0.25,
        layerwise_lr_decay=0.8,
        warmup_steps=2,
        unfreeze_every=2,
    )
    summary = run_finetune(cfg)
    assert summary["run"] == "l2sp(1)+ewc(10)+replay(0.25)+llrd(0.8)+unfreeze(2)"
    assert summary["steps"] == [0, 2, 4] and summary["strategies"]["ewc"]["penalty_bytes"] > 0
    cap = next(iter(summary["capabilities"].values()))
    assert cap["drop"] == pytest.approx(cap["after"] / cap["before"] - 1)
    write_report({"x": summary}, tmp_path)
    assert json.loads((tmp_path / "forgetting.json").read_text())["x"]["steps_trained"] == 4
    assert (tmp_path / "capability_curves.png").stat().st_size > 0


def test_layerwise_lr_decay_and_gradual_unfreezing() -> None:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from forgetless.integrations.hf.schedules import GradualUnfreezing
    from forgetless.training.optim import layer_groups, layerwise_param_groups

    model = GPT2LMHeadModel(tiny_config())
    groups = layerwise_param_groups(layer_groups(model), lr=1.0, decay=0.5)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lr_of[id(model.transformer.wte.weight)] == 0.125  # depth 0 of L=2: 0.5^3
    assert lr_of[id(model.transformer.h[0].attn.c_attn.weight)] == 0.25
    assert lr_of[id(model.transformer.h[1].mlp.c_fc.weight)] == 0.5
    assert lr_of[id(model.transformer.ln_f.weight)] == 1.0
    unfreeze = GradualUnfreezing(every=3)
    state, control = TrainerState(), TrainerControl()
    args = TrainingArguments(output_dir="/tmp/unused", report_to=[], use_cpu=True)
    unfreeze.on_train_begin(args, state, control, model=model)
    assert not model.transformer.h[1].attn.c_attn.weight.requires_grad
    assert model.transformer.ln_f.weight.requires_grad
    state.global_step = 3
    unfreeze.on_step_end(args, state, control, model=model)
    assert model.transformer.h[1].attn.c_attn.weight.requires_grad
    assert not model.transformer.h[0].attn.c_attn.weight.requires_grad
    unfreeze.on_train_end(args, state, control, model=model)
    assert all(p.requires_grad for p in model.parameters())


def test_knn_accuracy_majority_vote() -> None:
    memory = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 1])
    queries = torch.tensor([[1.0, 0.05], [0.05, 1.0]])
    assert knn_accuracy(memory, labels, queries, torch.tensor([0, 1]), k=3) == 1.0
    assert knn_accuracy(memory, labels, queries, torch.tensor([1, 1]), k=3) == 0.5


# -- bad input ------------------------------------------------------------------------------
def test_bad_inputs_raise_one_line_errors(tiny_lm_dir: Path, tmp_path: Path, monkeypatch) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("foo,bar\n1,2\n")
    with pytest.raises(DataError, match="no text column .*found foo, bar"):
        load_texts(bad)
    with pytest.raises(DataError, match="does not exist"):
        run_finetune(small_run(tiny_lm_dir, model=str(tmp_path / "missing")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set"):
        run_finetune(small_run(tiny_lm_dir, model="gpt2"))
    with pytest.raises(ConfigError, match="no capability"):
        run_finetune(small_run(tiny_lm_dir, keep=[]))
    with pytest.raises(ConfigError, match="beyond the model's maximum 64"):
        run_finetune(small_run(tiny_lm_dir, seq_len=65))
    with pytest.raises(ConfigError, match="perplexity needs a causal LM"):
        labelled = tmp_path / "labelled.jsonl"
        labelled.write_text('{"text": "a b", "label": "x"}\n{"text": "c d", "label": "y"}\n' * 8)
        run_finetune(small_run(tiny_lm_dir, task=str(labelled)))
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="replay_ratio"):
        small_run(tiny_lm_dir, replay_ratio=-0.1)


# -- multiple choice (benchmark-style scoring) -------------------------------------------------
def _reference_choice_scores(model, tokenizer, items, seq_len: int, normalize: bool) -> list[list[float]]:
    """One unpadded sequence at a time: sum of log p(choice token | everything before it)."""
    scores = []
    with torch.no_grad():
        for item in items:
            context = tokenizer(item.context, add_special_tokens=False)["input_ids"]
            row = []
            for choice in item.choices:
                ending = tokenizer(choice, add_special_tokens=False)["input_ids"]
                ids = (context + ending)[-seq_len:]
                log_probs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
                total = sum(float(log_probs[t - 1, ids[t]]) for t in range(len(ids) - len(ending), len(ids)))
                row.append(total / len(choice) if normalize else total)
            scores.append(row)
    return scores


@pytest.mark.parametrize("normalize", [True, False])
def test_multiple_choice_scores_equal_the_log_likelihood_by_hand(tiny_lm_dir: Path, normalize: bool) -> None:
    from forgetless.integrations.hf import ChoiceItem, MultipleChoice

    model = GPT2LMHeadModel.from_pretrained(tiny_lm_dir).eval()
    tokenizer = byte_tokenizer()
    items = [
        ChoiceItem("The cat sat on the", [" mat.", " roof of the old house.", " x"], 0),
        ChoiceItem("def f(x):\n    return", [" x + 1", " x"], 1),
        ChoiceItem("A" * 80 + " long context cut from the left", [" yes", " no, not at all"], 1),  # > seq_len
    ]
    capability = MultipleChoice("mc", tokenizer, items, seq_len=48, normalize=normalize, batch_size=4)
    scores = capability.choice_scores(model)
    expected = _reference_choice_scores(model, tokenizer, items, 48, normalize)
    flat = [s for row in expected for s in row]
    assert torch.allclose(scores, torch.tensor(flat, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    chosen = [max(range(len(row)), key=row.__getitem__) for row in expected]
    assert capability.predictions(model).tolist() == chosen
    hits = sum(c == item.answer for c, item in zip(chosen, items, strict=True))
    assert capability.evaluate(model) == pytest.approx(hits / len(items))


def test_choice_items_from_jsonl_and_one_line_errors(tmp_path: Path) -> None:
    from forgetless.integrations.hf import load_choices

    good = tmp_path / "mc.jsonl"
    good.write_text(
        '{"question": "2+2=", "choices": ["3", "4"], "answer": 1}\n'
        '{"ctx": "Sky is", "endings": [" blue", " green"], "label": " blue"}\n'
    )
    items = load_choices(good)
    # question/choices/answer is MMLU's shape: prompted as lm-eval's mmlu_continuation
    assert [(i.context, i.answer) for i in items] == [("Question: 2+2=\nAnswer:", 1), ("Sky is", 0)]
    cases = {
        '{"choices": ["a", "b"], "answer": 0}': "no context",
        '{"context": "x", "choices": ["a"], "answer": 0}': "at least two",
        '{"context": "x", "choices": ["a", "b"], "answer": 2}': "out of range",
        '{"context": "x", "choices": ["a", "b"], "answer": "c"}': "not one of the choices",
        "[1, 2]": "expected an object",
        "{oops": "not JSON",
    }
    for line, message in cases.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_text(line + "\n")
        with pytest.raises(DataError, match=message) as error:
            load_choices(bad)
        assert "\n" not in str(error.value) and "bad.jsonl:1" in str(error.value)
    with pytest.raises(DataError, match="kjv-word-order"):
        load_choices("builtin:kjv-word-ordere")


def test_finetune_keeps_a_choice_capability(tiny_lm_dir: Path, tmp_path: Path) -> None:
    items = tmp_path / "mc.jsonl"
    line = '{{"context": "plain English {}", "choices": [" prose", " code"], "answer": 0}}\n'
    items.write_text("".join(line.format(i) for i in range(6)))
    keep = [f"choice:{items}", f"perplexity:{tiny_lm_dir.parent / 'prose.txt'}"]
    summary = run_finetune(small_run(tiny_lm_dir, keep=keep))
    choice = summary["capabilities"][f"choice:{items}"]
    assert 0.0 <= choice["before"] <= 1.0 and choice["drop"] == pytest.approx(choice["before"] - choice["after"])


@pytest.mark.skipif(__import__("shutil").which("bible") is None, reason="needs apt-get install bible-kjv")
def test_kjv_word_order_items_are_true_endings_against_shufflings_of_their_words() -> None:
    from forgetless.integrations.hf import load_choices

    items = load_choices("builtin:kjv-word-order")
    _, held_out = load_texts("builtin:kjv").split(0.5, 0)
    verses = {" ".join(line.split()[1:]) for doc in held_out.texts for line in doc.splitlines()}
    for item in items[:: max(1, len(items) // 300)]:
        true = item.choices[item.answer]
        first = item.context.split("\n")[-1]
        assert f"{first}{true}" in verses  # the held-out verse itself, not one the demo pretrains on
        assert len(set(item.choices)) == 4
        assert all(sorted(c.split()) == sorted(true.split()) for c in item.choices)
    assert 0.15 < sum(i.answer == 0 for i in items) / len(items) < 0.35  # the answer's position is shuffled


# -- cleanup on errors ----------------------------------------------------------------------
def test_finetune_removes_its_trainer_folder_when_training_raises(
    tiny_lm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from forgetless.integrations.hf.trainer import ForgetlessTrainer

    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_root))

    def fail(self, *args, **kwargs):
        assert any(scratch_root.iterdir())  # the trainer folder exists while it trains
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(ForgetlessTrainer, "train", fail)
    with pytest.raises(RuntimeError, match="simulated") as failure:
        run_finetune(small_run(tiny_lm_dir))
    # removed by the time the caller sees the error, not when its traceback is collected (a
    # notebook or an error reporter keeps it alive: the folder would stay until then)
    assert failure.value is not None and list(scratch_root.iterdir()) == []


def test_one_depth_rule_for_every_transformer_and_the_trainer_split_of_weight_decay() -> None:
    from transformers import BertConfig, BertForSequenceClassification

    from forgetless.training.optim import layer_groups, layerwise_param_groups

    bert = BertForSequenceClassification(
        BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32)
    )
    names = {id(p): n for n, p in bert.named_parameters()}
    levels = [[names[id(p)] for p in level] for level in layer_groups(bert)]
    assert len(levels) == 5  # embeddings, 3 encoder layers, top
    assert all("embeddings" in n for n in levels[0])
    for i in range(3):
        assert all(f"encoder.layer.{i}." in n for n in levels[1 + i])
    assert {n.split(".")[0] + "." + n.split(".")[1] for n in levels[-1]} == {
        "bert.pooler",
        "classifier.weight",
        "classifier.bias",
    }
    groups = layerwise_param_groups(layer_groups(bert), lr=1.0, decay=0.5, weight_decay=0.1)
    for group in groups:
        assert group["lr"] == 0.5 ** (4 - group["level"])
        assert group["weight_decay"] == (0.1 if all(p.dim() > 1 for p in group["params"]) else 0.0)
        assert len({p.dim() > 1 for p in group["params"]}) == 1
    assert sum(len(g["params"]) for g in groups) == len(list(bert.parameters()))


def test_trainer_unfreezing_is_the_core_schedule_and_resumes_at_the_step_reached() -> None:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from forgetless.integrations.hf.schedules import GradualUnfreezing, StepView
    from forgetless.training import schedules

    args = TrainingArguments(output_dir="/tmp/unused", report_to=[], use_cpu=True)
    every, steps = 2, 8
    callback_model, core_model = GPT2LMHeadModel(tiny_config()), GPT2LMHeadModel(tiny_config())
    callback, core = GradualUnfreezing(every), schedules.GradualUnfreezing(every)
    state, control = TrainerState(), TrainerControl()
    callback.on_train_begin(args, state, control, model=callback_model)
    core.before_task(StepView(core_model, 0))
    trace = []
    for step in range(1, steps + 1):
        state.global_step = step
        callback.on_step_end(args, state, control, model=callback_model)
        core.after_step(StepView(core_model, step), None, None)
        flags = [p.requires_grad for p in callback_model.parameters()]
        assert flags == [p.requires_grad for p in core_model.parameters()], step
        trace.append(flags)
    assert not all(trace[0]) and all(trace[-1])  # starts from the top, ends fully unfrozen
    resumed = GPT2LMHeadModel(tiny_config())
    state.global_step = 5  # a Trainer resumed from checkpoint-5
    GradualUnfreezing(every).on_train_begin(args, state, control, model=resumed)
    assert [p.requires_grad for p in resumed.parameters()] == trace[4]


@pytest.mark.parametrize(
    ("explicit", "accepts", "items", "loss_func", "scaled"),
    [
        (None, True, 8, None, True),
        (None, True, None, None, False),
        (None, False, 8, None, False),
        (None, False, None, len, True),  # a compute_loss_func normalises the loss itself
        (False, True, 8, None, False),  # a subclass's own say wins, as in Trainer.training_step
        (True, False, None, None, True),
    ],
)
def test_the_penalty_follows_the_trainers_own_accumulation_rule(explicit, accepts, items, loss_func, scaled) -> None:
    from types import SimpleNamespace

    from forgetless.integrations.hf.trainer import ForgettingTrainerMixin

    trainer = SimpleNamespace(
        loss_is_scaled_for_ga=explicit, model_accepts_loss_kwargs=accepts, compute_loss_func=loss_func
    )
    assert ForgettingTrainerMixin._loss_scaled_for_accumulation(trainer, items) is scaled


def test_bf16_finetune_on_cpu_tracks_fp32_and_fp16_is_refused_there(tiny_lm_dir: Path) -> None:
    from forgetless.errors import ConfigError

    full = run_finetune(small_run(tiny_lm_dir, device="cpu"))
    half = run_finetune(small_run(tiny_lm_dir, device="cpu", precision="bf16"))
    before = next(iter(full["capabilities"].values()))["before"]
    half_before = next(iter(half["capabilities"].values()))["before"]
    assert half_before != before and abs(half_before / before - 1) < 0.01  # accelerate autocasts every forward
    after_full, after_half = full["task"]["after"], half["task"]["after"]
    assert after_half != after_full and abs(after_half / after_full - 1) < 0.1
    assert all(p.dtype == torch.float32 for p in half["_model"].parameters())
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        run_finetune(small_run(tiny_lm_dir, device="cpu", precision="fp16"))


def test_a_diverging_finetune_stops_in_one_line_and_keeps_the_report_in_out(
    tiny_lm_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli_helpers import one_error_line, run_cli

    argv = ["finetune", "--model", str(tiny_lm_dir), "--task", str(tiny_lm_dir.parent / "code.txt")]
    argv += ["--keep", f"perplexity:{tiny_lm_dir.parent / 'prose.txt'}", "--steps", "4", "--batch-size", "2"]
    argv += ["--seq-len", "32", "--eval-every", "2", "--eval-size", "4", "--train-size", "8", "--quiet"]
    argv += ["--out", str(tmp_path)]
    assert run_cli(argv, capsys)[0] == 0
    good = (tmp_path / "forgetting.json").read_bytes()
    code, _, err = run_cli([*argv, "--lr", "1e30", "--force"], capsys)
    assert code == 2 and "diverged" in one_error_line(err)
    assert (tmp_path / "forgetting.json").read_bytes() == good
