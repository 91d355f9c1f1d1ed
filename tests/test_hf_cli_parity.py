"""``forgetless finetune`` parity with a practitioner's script (issue #16, item 7).

``--peft lora|dora|prefix|prompt|ia3`` through peft's own configs, ``--grad-accum``,
``--config FILE.yaml``, ``--bf16``, ``--lora-alpha``, ``--merge-lora``, a saved adapter that
names its base by absolute path, the note of a stop at the first evaluation, and the refusal to
overwrite a report. Tiny GPT-2 (2 layers, width 32, no dropout) pretrained a few seconds on
prose, then fine-tuned on code for 2-4 steps on CPU, seeded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel  # noqa: E402

from cli_helpers import one_error_line, run_cli  # noqa: E402
from forgetless.errors import ConfigError  # noqa: E402
from forgetless.integrations.hf.capabilities import lm_blocks  # noqa: E402
from forgetless.integrations.hf.data import TextData  # noqa: E402
from forgetless.integrations.hf.finetune import FinetuneConfig, run_finetune, save_finetuned  # noqa: E402
from forgetless.integrations.hf.tiny import byte_tokenizer, pretrain_lm  # noqa: E402

PROSE = "In the beginning the model could read plain English prose quite well.\n" * 80
CODE = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n" * 80
ADAPTER_NAMES = {
    "lora": ("lora_A", "lora_B"),
    "dora": ("lora_A", "lora_B", "lora_magnitude_vector"),
    "prefix": ("prompt_encoder",),
    "prompt": ("prompt_encoder",),
    "ia3": ("ia3_l",),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``model/`` (pretrained 60 steps on the prose: fine-tuning on code makes it forget),
    ``prose.txt``, ``code.txt``."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("parity")
    config = GPT2Config(
        vocab_size=257,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=256,
        eos_token_id=256,
        pad_token_id=256,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model, tokenizer = GPT2LMHeadModel(config), byte_tokenizer()
    pretrain_lm(model, lm_blocks(tokenizer, TextData([PROSE]), 32), seconds=60.0, lr=5e-3, max_steps=60)
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    (folder / "prose.txt").write_text(PROSE)
    (folder / "code.txt").write_text(CODE)
    return folder


def config(data: Path, **changes) -> FinetuneConfig:
    values = dict(
        model=str(data / "model"),
        task=str(data / "code.txt"),
        keep=[f"perplexity:{data / 'prose.txt'}"],
        steps=2,
        batch_size=4,
        seq_len=32,
        eval_every=2,
        eval_size=4,
        train_size=16,
        lr=1e-2,
        peft_tokens=4,
        device="cpu",
    )
    return FinetuneConfig(**{**values, **changes})


def argv(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "finetune",
        "--model",
        str(data / "model"),
        "--task",
        str(data / "code.txt"),
        "--keep",
        f"perplexity:{data / 'prose.txt'}",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--seq-len",
        "32",
        "--eval-every",
        "2",
        "--eval-size",
        "4",
        "--train-size",
        "16",
        "--lr",
        "1e-2",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        str(out),
        *extra,
    ]


def logits_of(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([list(b"def add(a, b):\n    return a + b\n")])


# -- --peft --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lora", "dora", "prefix", "prompt", "ia3"])
def test_each_peft_kind_trains_its_adapter_and_nothing_else(data: Path, kind: str) -> None:
    original = GPT2LMHeadModel.from_pretrained(data / "model").state_dict()
    summary = run_finetune(config(data, peft=kind))
    model = summary["_model"]
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(any(mark in n for mark in ADAPTER_NAMES[kind]) for n in trainable), list(trainable)
    assert summary["peft"] == kind and summary["trainable_parameters"] == sum(p.numel() for p in trainable.values())
    base = model.get_base_model().state_dict()
    for name, value in original.items():  # the base weights, as peft wraps them, bit for bit
        wrapped = name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(base.get(name, base.get(wrapped)), value), name
    fresh = run_finetune(config(data, peft=kind, steps=1, lr=1e-12))["_model"]  # ~ the adapter at init
    init = dict(fresh.named_parameters())
    changed = [n for n, p in trainable.items() if not torch.allclose(p, init[n], atol=1e-7)]
    assert changed == list(trainable), set(trainable) - set(changed)  # every adapter tensor moved in 2 steps
    assert summary["steps_trained"] == 2


@pytest.mark.parametrize("kind", ["lora", "prefix", "prompt", "ia3"])
def test_ewc_and_l2sp_take_the_trainable_parameters_of_each_peft_kind(data: Path, kind: str) -> None:
    summary = run_finetune(config(data, peft=kind, strategies=["l2sp+ewc"], ewc_samples=2, params={}))
    trainable = sum(p.numel() for p in summary["_model"].parameters() if p.requires_grad)
    report = summary["strategies"]
    assert set(report) == {"l2sp", "ewc"}
    assert report["ewc"]["penalty_bytes"] > 0
    assert report["ewc"]["penalty_bytes"] <= 2 * 4 * trainable  # a Fisher and an anchor per trainable weight
    plain = run_finetune(config(data, peft=kind))
    assert summary["task"]["after"] != plain["task"]["after"]  # the penalties acted


def test_prompt_tuning_outputs_line_up_with_the_input_tokens(data: Path) -> None:
    summary = run_finetune(config(data, peft="prompt"))
    model = summary["_model"]
    assert logits_of(model, IDS).shape[1] == IDS.shape[1]  # the 4 virtual positions dropped
    model.eval()
    with torch.no_grad():  # by hand: the virtual tokens' embeddings, then the real ones
        embeds = torch.cat([model.get_prompt(batch_size=1), model.word_embeddings(IDS)], dim=1)
        full = model.base_model(inputs_embeds=embeds).logits
        torch.testing.assert_close(model(input_ids=IDS).logits, full[:, 4:])
        labels = torch.cat([torch.full((1, 4), -100), IDS], dim=1)  # peft's own loss: virtual labels -100
        by_hand = torch.nn.functional.cross_entropy(full[0, :-1], labels[0, 1:], ignore_index=-100)
        assert float(model(input_ids=IDS, labels=IDS).loss) == pytest.approx(float(by_hand), rel=1e-5)


def test_peft_on_a_classifier_and_one_line_refusals(data: Path, tmp_path: Path) -> None:
    rows = [{"text": ("good fine nice " if i % 2 else "bad awful poor ") * 2, "label": i % 2} for i in range(40)]
    task = tmp_path / "sentiment.jsonl"
    task.write_text("\n".join(json.dumps(r) for r in rows))
    classify = dict(task=str(task), keep=[f"accuracy:{task}"], seq_len=16, eval_size=8)
    for kind in ("lora", "ia3", "prompt"):
        summary = run_finetune(config(data, peft=kind, **classify))
        trainable = [n for n, p in summary["_model"].named_parameters() if p.requires_grad]
        assert summary["objective"] == "classify" and any("score" in n for n in trainable), trainable
        assert all(any(m in n for m in (*ADAPTER_NAMES[kind], "score")) for n in trainable), trainable
    try:  # peft's prefix tuning needs past_key_values in the classifier's forward (GPT-2's has none today)
        run_finetune(config(data, peft="prefix", **classify))
    except ConfigError as error:
        assert "--peft prefix cannot run on this model" in str(error) and "\n" not in str(error)
    with pytest.raises(ConfigError, match="--lora and --peft prompt"):
        run_finetune(config(data, lora=True, peft="prompt"))
    with pytest.raises(ConfigError, match="beyond the model's 64 positions"):
        run_finetune(config(data, peft="prefix", peft_tokens=40))


# -- gradient accumulation -----------------------------------------------------------------------
def test_grad_accum_two_batches_is_one_batch_twice_as_large(data: Path) -> None:
    accumulated = run_finetune(config(data, batch_size=2, grad_accum=2, lr=1e-3))
    large = run_finetune(config(data, batch_size=4, lr=1e-3))
    small = run_finetune(config(data, batch_size=2, lr=1e-3))
    assert accumulated["steps_trained"] == large["steps_trained"] == 2
    weights = [dict(s["_model"].named_parameters()) for s in (accumulated, large, small)]

    def distance(a: dict, b: dict) -> float:
        return sum(float(((a[n] - b[n]) ** 2).sum()) for n in a) ** 0.5

    # the same rows (one sampler order), summed over 2 batches of 2: Adam's steps agree to float
    # rounding (measured 3e-4 of the distance to a run with half the batch)
    gap, apart = distance(weights[0], weights[1]), distance(weights[1], weights[2])
    assert gap < 1e-2 * apart, (gap, apart)
    assert accumulated["task"]["after"] == pytest.approx(large["task"]["after"], rel=1e-5)


# -- --config, --bf16 ----------------------------------------------------------------------------
def test_config_file_options_and_flags_that_override_them(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = tmp_path / "finetune.yaml"
    options.write_text(
        f"model: {data / 'model'}\ntask: {data / 'code.txt'}\nkeep: [perplexity:{data / 'prose.txt'}]\n"
        "steps: 3\nbatch-size: 4\nseq_len: 32\neval_every: 2\neval_size: 4\ntrain_size: 16\nlr: 1e-2\n"
        "peft: lora\nlora_alpha: 4\nlora_r: 2\nlora_targets: [c_attn]\ngrad_accum: 2\nbf16: true\nquiet: true\n"
        "device: cpu\nset: {l2sp: {alpha: 0.5}}\nstrategies: [l2sp]\n"
    )
    out = tmp_path / "run"
    code, _, err = run_cli(["finetune", "--config", str(options), "--steps", "2", "--out", str(out)], capsys)
    assert code == 0, err
    run = next(iter(json.loads((out / "forgetting.json").read_text()).values()))
    saved = run["config"]
    assert saved["steps"] == 2 and run["steps_trained"] == 2  # the flag beats the file
    assert (saved["peft"], saved["lora_alpha"], saved["lora_r"], saved["lora_targets"]) == ("lora", 4.0, 2, ["c_attn"])
    assert (saved["grad_accum"], saved["precision"], saved["params"]) == (2, "bf16", {"l2sp": {"alpha": 0.5}})
    assert run["run"] == "lora(r=2)+l2sp(0.5)"

    options.write_text("lora_alfa: 4\n")
    code, _, err = run_cli(["finetune", "--config", str(options), "--out", str(tmp_path / "x")], capsys)
    line = one_error_line(err)
    assert code == 2 and "unknown option 'lora_alfa'" in line and "did you mean lora_alpha?" in line
    code, _, err = run_cli([*argv(data, tmp_path / "y"), "--bf16", "--precision", "fp16"], capsys)
    assert code == 2 and "--bf16 and --precision fp16" in one_error_line(err)
    code, _, err = run_cli([*argv(data, tmp_path / "y"), "--lora", "--peft", "ia3"], capsys)
    assert code == 2 and "--lora and --peft ia3" in one_error_line(err)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# -- saving: merged model, absolute base path ------------------------------------------------------
@pytest.mark.parametrize("kind", ["lora", "dora", "ia3"])
def test_a_merged_model_loads_without_peft_and_gives_the_adapter_logits(data: Path, tmp_path: Path, kind: str) -> None:
    summary = run_finetune(config(data, peft=kind))
    expected = logits_of(summary["_model"], IDS)
    save_finetuned(summary, tmp_path / "merged", merge=True)
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert type(plain) is GPT2LMHeadModel
    torch.testing.assert_close(logits_of(plain, IDS), expected, atol=1e-5, rtol=1e-5)
    base = logits_of(GPT2LMHeadModel.from_pretrained(data / "model"), IDS)
    assert (expected - base).abs().max() > 1e-4  # the merged weights carry the fine-tune


def test_a_saved_adapter_loads_from_another_folder_and_merge_lora_saves_its_plain_model(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from peft import AutoPeftModelForCausalLM

    work = tmp_path / "work"
    work.mkdir()
    (work / "base").symlink_to(data / "model", target_is_directory=True)
    monkeypatch.chdir(work)
    extra = ("--peft", "lora", "--save-model", "--seed", "1")
    adapter_run, merged_run = tmp_path / "adapter", tmp_path / "merged"
    code, _, err = run_cli([*argv(data, adapter_run, *extra)[:2], "base", *argv(data, adapter_run, *extra)[3:]], capsys)
    assert code == 0, err
    code, _, err = run_cli(argv(data, merged_run, *extra, "--merge-lora"), capsys)
    assert code == 0, err
    adapter = json.loads((adapter_run / "model" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str((data / "model").resolve())  # --model base, made absolute
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = AutoPeftModelForCausalLM.from_pretrained(adapter_run / "model")
    plain = AutoModelForCausalLM.from_pretrained(merged_run / "model")
    assert not (merged_run / "model" / "adapter_config.json").exists() and type(plain) is GPT2LMHeadModel
    torch.testing.assert_close(logits_of(plain, IDS), logits_of(loaded, IDS), atol=1e-5, rtol=1e-5)


def test_merge_lora_is_refused_in_one_line_before_training(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (("--peft", "prompt", "--save-model", "--merge-lora"), "--peft prompt has no weights to fold"),
        (("--peft", "lora", "--merge-lora"), "add --save-model"),
        (("--save-model", "--merge-lora"), "--peft none has no adapter"),
    ]
    for extra, message in cases:
        out = tmp_path / "run"
        code, _, err = run_cli(argv(data, out, *extra), capsys)
        assert code == 2 and message in one_error_line(err)
        assert not (out / "forgetting.json").exists()


# -- the stop at step 0, overwriting --------------------------------------------------------------
def test_a_stop_at_the_first_evaluation_says_nothing_was_learned(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code, printed, err = run_cli(argv(data, out, "--stop-if-drop", "0.0", "--steps", "4"), capsys)
    assert code == 0, err
    run = next(iter(json.loads((out / "forgetting.json").read_text()).values()))
    assert (run["stopped_at"], run["restored_step"]) == (2, 0)
    assert run["note"].startswith("nothing was learned") and "\n" not in run["note"]
    assert "raise the threshold, lower --lr, or evaluate later" in run["note"]
    assert "nothing was learned" in " ".join(printed.split())
    fine = run_cli(argv(data, tmp_path / "fine", "--stop-if-drop", "100"), capsys)
    assert fine[0] == 0, fine[2]
    assert "note" not in next(iter(json.loads((tmp_path / "fine" / "forgetting.json").read_text()).values()))


def test_an_existing_report_is_not_overwritten_without_force(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert run_cli(argv(data, out), capsys)[0] == 0
    first = (out / "forgetting.json").read_bytes()
    code, _, err = run_cli(argv(data, out, "--lr", "1e-3"), capsys)
    assert code == 2 and "already holds a run" in one_error_line(err) and "--force" in one_error_line(err)
    assert (out / "forgetting.json").read_bytes() == first
    code, _, err = run_cli(argv(data, out, "--lr", "1e-3", "--force"), capsys)
    assert code == 0, err
    assert (out / "forgetting.json").read_bytes() != first


# -- resume with the new fields, and an older checkpoint without them ------------------------------
def test_old_checkpoint_configs_without_the_new_fields_compare_equal() -> None:
    from forgetless.integrations.hf.finetune import ADDED_FIELDS, _differences

    cfg = FinetuneConfig(model="m", task="t.txt", keep=["perplexity:p.txt"])
    old = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in ADDED_FIELDS}
    assert _differences(old, cfg.model_dump(mode="json")) == []
    changed = FinetuneConfig(model="m", task="t.txt", keep=["perplexity:p.txt"], grad_accum=2)
    assert _differences(old, changed.model_dump(mode="json")) == ["grad_accum: 1 in the run, 2 now"]


@pytest.mark.parametrize("extra", [("--peft", "prompt", "--grad-accum", "2"), ("--peft", "dora", "--bf16")])
def test_a_killed_peft_finetune_with_the_new_options_resumes_to_the_uninterrupted_report(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, extra: tuple
) -> None:
    from transformers import TrainerCallback

    from forgetless.integrations.hf.trainer import ForgetlessTrainer

    class KillAfter3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt

    options = ("--steps", "6", "--checkpoint-every", "2", "--batch-size", "2", *extra)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    code, _, err = run_cli(argv(data, whole, *options), capsys)
    assert code == 0, err
    init = ForgetlessTrainer.__init__

    def with_kill(self, *args, **kwargs):
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), KillAfter3()]
        init(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(ForgetlessTrainer, "__init__", with_kill)
        code, _, err = run_cli(argv(data, killed, *options), capsys)
    assert code == 130 and not (killed / "forgetting.json").exists(), err
    code, _, err = run_cli(["finetune", "--resume", str(killed), "--quiet"], capsys)
    assert code == 0, err

    def report(out: Path) -> dict:
        runs = json.loads((out / "forgetting.json").read_text())
        return {
            name: {k: v for k, v in run.items() if k not in ("wall_seconds", "tokens_per_second")}
            for name, run in runs.items()
        }

    assert report(killed) == report(whole)
