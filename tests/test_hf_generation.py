"""``--keep generation:PROMPTS``: seeded continuations scored for fluency (the base model's
perplexity of the generated text) and diversity (distinct-n, repetition), issue #16 item 3."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel  # noqa: E402

from cli_helpers import one_error_line, run_cli  # noqa: E402
from forgetless.errors import ConfigError, DataError  # noqa: E402
from forgetless.integrations.hf.capabilities import KeepOptions, parse_keep  # noqa: E402
from forgetless.integrations.hf.capabilities.generation import (  # noqa: E402
    Generation,
    distinct_n,
    load_prompts,
    repetition_rate,
)
from forgetless.integrations.hf.tiny import byte_tokenizer  # noqa: E402

PROMPTS = ["In the beginning", "And God said, Let", "The LORD is my", "Blessed are the", "For unto us a"]


def config(**extra: int) -> GPT2Config:
    return GPT2Config(
        vocab_size=257, n_positions=96, n_embd=32, n_layer=2, n_head=2, bos_token_id=256, eos_token_id=256, **extra
    )


def tiny_lm(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config(pad_token_id=256))


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n\n")
    return path


def build(spec: str, **options: int) -> Generation:
    kind, source = parse_keep(spec)
    return kind.from_source(source, byte_tokenizer(), KeepOptions(**options))


def perturb(model: torch.nn.Module, scale: float = 0.5, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale * param.std().clamp_min(1e-3))


def direct_fluency(model: torch.nn.Module, prompt_ids: list[list[int]], continuations: list[list[int]]) -> float:
    """exp(mean NLL of the continuation tokens given the prompt), one sequence at a time."""
    total, count = 0.0, 0
    model.eval()  # GPT-2's dropout off
    with torch.no_grad():
        for prompt, cont in zip(prompt_ids, continuations, strict=True):
            ids = torch.tensor([prompt + cont])
            log_probs = F.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
            targets = ids[0, 1:]
            nll = -log_probs[torch.arange(len(targets)), targets][len(prompt) - 1 :]
            total, count = total + float(nll.sum()), count + len(cont)
    return math.exp(total / count)


def test_same_seed_same_texts_other_seed_other_texts(prompts: Path) -> None:
    model = tiny_lm()
    spec = f"generation:{prompts}?max_new_tokens=12,temperature=0.9,top_p=0.9,batch_size=2"
    first, again = build(spec), build(spec)
    first.prepare(model)
    again.prepare(model)
    assert first.evaluate(model) == again.evaluate(model) and first.texts == again.texts
    first.evaluate(model)
    assert first.texts == again.texts  # every evaluation draws the same random numbers
    assert all(len(c) == 12 for c in first.generate(model))  # EOS suppressed: fixed length
    other = build(spec.replace("batch_size=2", "seed=5,batch_size=2"))
    other.prepare(model)
    other.evaluate(model)
    assert other.texts != first.texts
    greedy = build(f"generation:{prompts}?temperature=0,max_new_tokens=6", seed=9)
    greedy.prepare(model)
    assert greedy.generate(model) == build(f"generation:{prompts}?temperature=0,max_new_tokens=6").generate(model)


def test_evaluation_leaves_the_training_rng_and_mode_alone(prompts: Path) -> None:
    model = tiny_lm().train()
    capability = build(f"generation:{prompts}?max_new_tokens=4")
    capability.prepare(model)
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    capability.evaluate(model)
    assert torch.equal(torch.rand(4), expected) and model.training


def test_fluency_is_the_base_models_perplexity_of_the_fine_tuned_models_text(prompts: Path) -> None:
    model = tiny_lm()
    base = copy.deepcopy(model).eval()
    capability = build(f"generation:{prompts}?max_new_tokens=10,batch_size=3")
    assert capability.metric == "fluency" and not capability.higher_is_better
    capability.prepare(model)  # step 0: the base model is captured here
    before = capability.evaluate(model)
    assert before == pytest.approx(direct_fluency(base, capability.prompt_ids, capability.generate(model)), rel=1e-6)
    perturb(model)  # "fine-tuned"
    after = capability.evaluate(model)
    continuations = capability.generate(model)
    assert after == pytest.approx(direct_fluency(base, capability.prompt_ids, continuations), rel=1e-6)
    assert after != pytest.approx(direct_fluency(model, capability.prompt_ids, continuations), rel=1e-3)
    figures = capability.figures()
    assert figures["fluency"] == after and figures["tokens"] == 5 * 10
    assert figures["distinct-1"] == distinct_n(continuations, 1)
    assert figures["repetition"] == repetition_rate(continuations, 4)
    assert capability.drop(before, after) == pytest.approx(after / before - 1)

    resumed = build(f"generation:{prompts}?max_new_tokens=10,batch_size=3")
    resumed.load_state_dict(capability.state_dict())  # a resume: the base weights come back
    assert resumed.evaluate(model) == pytest.approx(after, rel=1e-12)


def test_fluency_under_lora_is_the_model_with_its_adapters_off(prompts: Path) -> None:
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_lm(), peft.LoraConfig(r=4, target_modules=["c_attn"], lora_dropout=0.0))
    capability = build(f"generation:{prompts}?max_new_tokens=8")
    capability.prepare(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    score = capability.evaluate(model)
    continuations = capability.generate(model)  # the adapted model's text, scored adapters off:
    with model.disable_adapter():
        expected = direct_fluency(model, capability.prompt_ids, continuations)
    assert score == pytest.approx(expected, rel=1e-6)


def test_distinct_n_and_repetition_by_hand() -> None:
    a, b = [1, 2, 1, 2, 1], [3, 3, 3]
    assert distinct_n([a, b], 1) == 3 / 8
    assert distinct_n([a, b], 2) == 3 / 6  # (1,2) (2,1) (3,3); 6 bigrams; none spans a and b
    assert repetition_rate([a, b], 2) == (4 - 2 + 2 - 1) / 6
    assert repetition_rate([[1, 2, 3, 4]], 2) == 0.0 and distinct_n([[]], 2) == 0.0
    high = build_metric("distinct-2")
    assert high.higher_is_better and high.drop(0.8, 0.6) == pytest.approx(0.2)


def build_metric(metric: str) -> Generation:
    return Generation("generation:x", byte_tokenizer(), PROMPTS, metric=metric)


def test_prompt_sources_and_bad_input(tmp_path: Path, prompts: Path) -> None:
    rows = tmp_path / "prompts.jsonl"
    rows.write_text(json.dumps({"prompt": "Hello"}) + "\n" + json.dumps({"text": "World"}) + "\n")
    assert load_prompts(str(rows)) == ["Hello", "World"]
    assert load_prompts(str(prompts)) == PROMPTS
    assert len(build(f"generation:{prompts}?prompts=3").prompts) == 3
    rows.write_text(json.dumps({"question": "Hi"}) + "\n")
    with pytest.raises(DataError, match="string 'prompt'"):
        load_prompts(str(rows))
    with pytest.raises(DataError, match="must be an existing .txt or .jsonl"):
        build(f"generation:{tmp_path / 'none.txt'}")
    with pytest.raises(ConfigError, match="top_p='1.5' is not valid"):
        build(f"generation:{prompts}?top_p=1.5")
    with pytest.raises(ConfigError, match="metric='bleu' is not valid.*fluency"):
        build(f"generation:{prompts}?metric=bleu")
    classifier = GPT2ForSequenceClassification(config(pad_token_id=256, num_labels=2))
    with pytest.raises(ConfigError, match="has no generation head.*AutoModelForCausalLM"):
        build(f"generation:{prompts}").prepare(classifier)


def test_builtin_kjv_openings() -> None:
    import shutil

    if shutil.which("bible") is None:
        pytest.skip("builtin:kjv needs the `bible` command (apt-get install bible-kjv)")
    capability = build("generation:builtin:kjv?prompts=8")
    assert len(capability.prompts) == 8 and all(len(p.split()) == 6 for p in capability.prompts)
    assert capability.prompts == build("generation:builtin:kjv?prompts=8").prompts


def test_finetune_reports_generation_figures(tmp_path: Path, prompts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "model"
    tiny_lm().save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    task = tmp_path / "task.txt"
    task.write_text("The crates are stacked by the door.\n" * 200)
    keep = f"generation:{prompts}?max_new_tokens=8"
    argv = ["finetune", "--model", str(folder), "--task", str(task), "--keep", keep, "--steps", "2"]
    argv += ["--batch-size", "2", "--seq-len", "32", "--eval-every", "2", "--eval-size", "4", "--quiet"]
    argv += ["--device", "cpu", "--lr", "1e-2", "--out", str(tmp_path / "report")]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    (run,) = json.loads((tmp_path / "report" / "forgetting.json").read_text()).values()
    entry = run["capabilities"][keep]
    assert entry["metric"] == "fluency" and entry["higher_is_better"] is False
    assert set(entry["figures_after"]) == {"fluency", "distinct-1", "distinct-2", "repetition", "tokens"}
    assert entry["after"] != entry["before"]  # the text and its score moved with the weights

    bad = [*argv[:5], "--keep", f"generation:{prompts}?temprature=1", *argv[7:-1], str(tmp_path / "bad")]
    code, _, err = run_cli(bad, capsys)
    assert code == 2 and "unknown option 'temprature'" in one_error_line(err)
