"""The ``choice`` capability scored as lm-evaluation-harness does, its report figures (items,
standard error, chance) and per-capability stop thresholds."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, TrainerControl, TrainerState, TrainingArguments  # noqa: E402

from cli_helpers import one_error_line, run_cli  # noqa: E402
from forgetless.errors import ConfigError, DataError  # noqa: E402
from forgetless.integrations.hf import (  # noqa: E402
    CapabilityTracker,
    ChoiceItem,
    FinetuneConfig,
    ForgettingCallback,
    MultipleChoice,
    load_choices,
    run_finetune,
)
from forgetless.integrations.hf.capabilities import Capability, KeepOptions  # noqa: E402
from forgetless.integrations.hf.capabilities.choice import encode_pair, mean_stderr  # noqa: E402
from forgetless.integrations.hf.finetune import write_report  # noqa: E402
from forgetless.integrations.hf.tiny import byte_tokenizer  # noqa: E402
from forgetless.training.brake import StopRule, parse_thresholds  # noqa: E402


def tiny_model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=257, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=256, eos_token_id=256
    )
    return GPT2LMHeadModel(config).eval()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def log_likelihood(model: GPT2LMHeadModel, context: str, continuation: str) -> float:
    """By hand: sum over the continuation's bytes of log p(byte | every byte before it)."""
    tokenizer = byte_tokenizer()
    ids = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    start = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    return sum(float(log_probs[t - 1, ids[t]]) for t in range(start, len(ids)))


# -- the delimiter and the tokenization ---------------------------------------------------------
def test_each_choice_is_scored_as_space_plus_choice_after_the_context() -> None:
    model, tokenizer = tiny_model(), byte_tokenizer()
    items = [
        ChoiceItem("The cat sat on the", ["mat", "roof of the house"], 0),
        ChoiceItem("2 + 2 =", [" 4", "5"], 0),  # " 4" already has its space: no double space
        ChoiceItem("Colour:", ["red", "blue"], 1, target_delimiter="\n"),  # the row's own delimiter
    ]
    capability = MultipleChoice("mc", tokenizer, items, seq_len=48, normalize=False)
    expected = [
        log_likelihood(model, "The cat sat on the", " mat"),
        log_likelihood(model, "The cat sat on the", " roof of the house"),
        log_likelihood(model, "2 + 2 =", " 4"),
        log_likelihood(model, "2 + 2 =", " 5"),
        log_likelihood(model, "Colour:", "\nred"),
        log_likelihood(model, "Colour:", "\nblue"),
    ]
    torch.testing.assert_close(capability.log_likelihoods(model), torch.tensor(expected, dtype=torch.float64))
    assert log_likelihood(model, "2 + 2 =", "  4") != pytest.approx(expected[2])  # the double space differs
    bare = MultipleChoice("bare", tokenizer, items[:1], seq_len=48, normalize=False, target_delimiter="")
    torch.testing.assert_close(
        bare.log_likelihoods(model),
        torch.tensor([log_likelihood(model, "The cat sat on the", c) for c in items[0].choices], dtype=torch.float64),
    )


def test_pairs_are_encoded_as_the_harness_does() -> None:
    tokenizer = byte_tokenizer()
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    # trailing whitespace of the context moves to the continuation
    assert encode_pair(tokenizer, "Answer: ", "yes") == (ids("Answer:"), ids(" yes"))
    # an empty context is the BOS token
    assert encode_pair(tokenizer, "", " yes") == ([tokenizer.bos_token_id], ids(" yes"))


# -- acc and acc_norm ---------------------------------------------------------------------------
def test_acc_and_acc_norm_come_from_one_pass_and_can_disagree(monkeypatch: pytest.MonkeyPatch) -> None:
    tokenizer = byte_tokenizer()
    items = [ChoiceItem("Q", ["a", "bbbbbbbbbb"], 1), ChoiceItem("R", ["cc", "d"], 0)]
    # item 0: ll -2 vs -5 -> acc picks "a"; per character -2 vs -0.5 -> acc_norm picks the answer
    # item 1: ll -1 vs -3 -> both pick "cc" (the answer)
    lls = torch.tensor([-2.0, -5.0, -1.0, -3.0], dtype=torch.float64)
    passes = []
    for normalize, main in ((True, 1.0), (False, 0.5)):
        capability = MultipleChoice("mc", tokenizer, items, seq_len=16, normalize=normalize)
        monkeypatch.setattr(capability, "log_likelihoods", lambda model: passes.append(1) or lls)
        assert capability.evaluate(torch.nn.Linear(1, 1)) == main
        figures = capability.figures()
        assert figures["acc"] == 0.5 and figures["acc_norm"] == 1.0
        assert figures["acc_stderr"] == pytest.approx(math.sqrt(0.25 / 1)) and figures["acc_norm_stderr"] == 0.0
        assert capability.metric == ("acc_norm" if normalize else "acc")
    assert len(passes) == 2  # one scoring pass per evaluation gives both accuracies


def test_the_metric_and_the_delimiter_are_options_of_the_keep_spec(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "mc.jsonl", [{"context": "x", "choices": ["a", "b"], "answer": 0}])
    tokenizer, options = byte_tokenizer(), KeepOptions(seq_len=16)
    default = MultipleChoice.from_source(str(data), tokenizer, options)
    assert default.metric == "acc_norm" and default.target_delimiter == " " and default.name == f"choice:{data}"
    chosen = MultipleChoice.from_source(f"{data}?metric=acc,target_delimiter=\\n", tokenizer, options)
    assert chosen.metric == "acc" and chosen.target_delimiter == "\n"
    for bad, needle in ((f"{data}?metric=f1", "metric 'f1'"), (f"{data}?shots=5", "unknown option 'shots=5'")):
        with pytest.raises(ConfigError, match=needle) as error:
            MultipleChoice.from_source(bad, tokenizer, options)
        assert "\n" not in str(error.value)


# -- row shapes ------------------------------------------------------------------------------------
def test_every_benchmark_shape_with_letter_and_index_answers(tmp_path: Path) -> None:
    rows = [
        # HellaSwag: activity label, ctx_a + capitalised ctx_b, [title] and [step] artefacts cleaned
        {
            "activity_label": "Baking",
            "ctx_a": "A man mixes flour.",
            "ctx_b": "then he",
            "endings": ["bakes [title] bread.", " eats it."],
            "label": "1",
        },
        {"ctx": "She runs", "endings": ["fast", "slow"], "label": 0},
        # ARC: answerKey a letter, or a digit among digit labels
        {
            "question": "Which is a gas?",
            "choices": {"text": ["rock", "air", "ice"], "label": ["A", "B", "C"]},
            "answerKey": "B",
        },
        {
            "question": "2+1?",
            "choices": {"text": ["1", "2", "3", "4"], "label": ["1", "2", "3", "4"]},
            "answerKey": "3",
        },
        # PIQA
        {"goal": "Open a jar", "sol1": "twist the lid", "sol2": "freeze it", "label": 0},
        # MMLU: an index, or a letter
        {
            "question": " Capital of France? ",
            "subject": "geo",
            "choices": ["Rome", "Paris", "Oslo", "Bern"],
            "answer": 1,
        },
        {"question": "3*3?", "choices": ["6", "9", "12", "3"], "answer": "B"},
        # generic: a letter answer too
        {"context": "Sky is", "options": [" blue", " green"], "gold": "A"},
    ]
    items = load_choices(write_jsonl(tmp_path / "all.jsonl", rows))
    assert [i.shape for i in items] == ["hellaswag", "hellaswag", "arc", "arc", "piqa", "mmlu", "mmlu", "generic"]
    assert [i.answer for i in items] == [1, 0, 1, 2, 0, 1, 1, 0]
    assert items[0].context == "Baking: A man mixes flour. Then he"
    assert items[0].choices == ["bakes. bread.", "eats it."]
    assert items[2].context == "Question: Which is a gas?\nAnswer:" and items[2].choices == ["rock", "air", "ice"]
    assert items[4].context == "Question: Open a jar\nAnswer:" and items[4].choices == ["twist the lid", "freeze it"]
    assert items[5].context == "Question: Capital of France?\nAnswer:" and items[5].choices[1] == "Paris"
    assert items[7].context == "Sky is" and items[7].choices == [" blue", " green"]
    letters = load_choices(tmp_path / "all.jsonl", mmlu_format="letters")[5]
    assert letters.context == "Capital of France?\nA. Rome\nB. Paris\nC. Oslo\nD. Bern\nAnswer:"
    assert letters.choices == ["A", "B", "C", "D"] and letters.answer == 1


def test_an_unknown_shape_is_one_line_naming_the_fields_and_the_shapes(tmp_path: Path) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"premise": "p", "hypothesis": "h", "label": 1}])
    with pytest.raises(DataError) as error:
        load_choices(bad)
    message = str(error.value)
    assert "\n" not in message and f"{bad}:1" in message and "premise, hypothesis, label" in message
    assert all(shape in message for shape in ("HellaSwag", "ARC", "PIQA", "MMLU", "generic"))
    for row, needle in (
        ({"question": "q", "choices": ["a", "b"], "answer": "E"}, "out of range"),
        ({"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "c"}, "not one"),
        ({"goal": "g", "sol1": "a", "sol2": "b", "label": True}, "answer must be"),
    ):
        with pytest.raises(DataError, match=needle):
            load_choices(write_jsonl(tmp_path / "one.jsonl", [row]))


# -- items, standard error, chance, the at-chance warning -----------------------------------------
class FixedChoice(MultipleChoice):
    """A multiple-choice capability whose log-likelihoods are scripted per evaluation."""

    def __init__(self, name: str, items: list[ChoiceItem], scripted: list[list[float]]) -> None:
        super().__init__(name, byte_tokenizer(), items, seq_len=16)
        self.scripted = [torch.tensor(s, dtype=torch.float64) for s in scripted]

    def log_likelihoods(self, model: torch.nn.Module) -> torch.Tensor:
        return self.scripted.pop(0)


def test_items_stderr_chance_and_the_at_chance_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = [ChoiceItem("q", ["a", "b"], 0)] * 6 + [ChoiceItem("q", ["a", "b", "c", "d"], 0)] * 2
    right = [0.0, -9.0] * 6 + [0.0, -9.0, -9.0, -9.0] * 2  # every item right
    half = [0.0, -9.0] * 3 + [-9.0, 0.0] * 3 + [-9.0, 0.0, -9.0, -9.0] * 2  # 3 of 8 right
    near = FixedChoice("choice:near", items, [half, right])
    sure = FixedChoice("choice:sure", items, [right, half])
    tracker = CapabilityTracker([near, sure], eval_every=1)
    with caplog.at_level(logging.WARNING):
        tracker.evaluate(torch.nn.Linear(1, 1), 0)
        tracker.evaluate(torch.nn.Linear(1, 1), 1)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "choice:near" in warned[0] and "chance" in warned[0] and "\n" not in warned[0]
    summary = tracker.summary()
    near_s, sure_s = summary["capabilities"]["choice:near"], summary["capabilities"]["choice:sure"]
    chance = (6 * 0.5 + 2 * 0.25) / 8
    outcomes = np.array([1, 1, 1, 0, 0, 0, 0, 0], dtype=float)
    harness_stderr = outcomes.std(ddof=1) / math.sqrt(len(outcomes))  # lm-eval's mean_stderr
    assert near_s["items"] == 8 and near_s["chance"] == pytest.approx(chance)
    assert near_s["before"] == pytest.approx(3 / 8) and near_s["stderr_before"] == pytest.approx(harness_stderr)
    assert mean_stderr(3 / 8, 8) == pytest.approx(math.sqrt(3 / 8 * 5 / 8 / 7))
    assert near_s["stderr_after"] == 0.0 and near_s["at_chance"] and not sure_s["at_chance"]
    assert sure_s["figures_before"]["acc"] == 1.0 and sure_s["figures_after"]["acc_norm"] == pytest.approx(3 / 8)
    assert summary["warnings"] == warned
    # the side figures reach the Trainer's log beside the metric
    logged = ForgettingCallback(tracker).metrics(tracker.history[-1])
    assert logged["keep/choice:sure"] == pytest.approx(3 / 8) and logged["keep/choice:sure/acc"] == pytest.approx(3 / 8)
    assert logged["keep/choice:near/acc_norm"] == 1.0 and logged["keep/choice:near/acc_stderr"] == 0.0
    assert ForgettingCallback(tracker).metrics(tracker.history[0], "eval_")["eval_keep_choice:sure_acc"] == 1.0
    # the report: JSON, CSV, markdown and the plot's dashed chance line
    figures = []
    from matplotlib.figure import Figure

    monkeypatch.setattr(Figure, "savefig", lambda self, path, **kw: figures.append(self))
    summary["task"] = {"metric": "perplexity", "name": "task", "before": 9.0, "after": 5.0, "curve": [9.0, 5.0]}
    write_report({"naive": summary}, tmp_path)
    saved = json.loads((tmp_path / "forgetting.json").read_text())["naive"]
    assert saved["capabilities"]["choice:near"]["items"] == 8 and saved["warnings"] == warned
    csv = (tmp_path / "before_after.csv").read_text().splitlines()
    assert csv[0].endswith("drop_abs,drop_rel,items,stderr_before,stderr_after,chance")
    assert csv[1].startswith("naive,choice:near,acc_norm,0.375,1,-0.625,-0.625,-1.66667,8,")
    markdown = (tmp_path / "report.md").read_text()
    assert "0.375 ± 0.183" in markdown and "**warning**: choice:near" in markdown
    dashed = [line for ax in figures[0].axes for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert [line.get_ydata()[0] for line in dashed] == [pytest.approx(chance)] * 2
    assert "(n=8)" in figures[0].axes[0].get_title()


def test_a_baseline_below_chance_is_warned_about_too(caplog: pytest.LogCaptureFixture) -> None:
    items = [ChoiceItem("q", ["a", "b"], 0)] * 10
    wrong = FixedChoice("choice:wrong", items, [[-9.0, 0.0] * 10])  # every answer wrong: stderr 0
    tracker = CapabilityTracker([wrong], eval_every=1)
    with caplog.at_level(logging.WARNING):
        tracker.evaluate(torch.nn.Linear(1, 1), 0)
    assert [r.getMessage() for r in caplog.records] == tracker.summary()["warnings"]
    assert "below chance (0.500)" in tracker.summary()["warnings"][0]


# -- per-capability thresholds ---------------------------------------------------------------------
class Scripted(Capability):
    """The next scripted score at each evaluation."""

    def __init__(self, name: str, scores: list[float], higher_is_better: bool = True) -> None:
        super().__init__(name)
        self.scores = list(scores)
        self.higher_is_better = higher_is_better
        self.metric = "accuracy" if higher_is_better else "perplexity"

    def evaluate(self, model: torch.nn.Module) -> float:
        return self.scores.pop(0)


def guarded_run(stop_if_drop: object, perplexity: list[float], choice: list[float]) -> ForgettingCallback:
    """Evaluations at steps 0, 1, 2, ... of a callback driven by hand (no Trainer)."""
    capabilities = [
        Scripted("perplexity:text.txt", perplexity, higher_is_better=False),
        Scripted("choice:builtin:kjv-word-order", choice),
    ]
    guard = ForgettingCallback(CapabilityTracker(capabilities, eval_every=1), stop_if_drop=stop_if_drop)
    model = torch.nn.Linear(2, 1)
    args = TrainingArguments(output_dir="/tmp/forgetless-unused", report_to=[], use_cpu=True)
    state, control = TrainerState(), TrainerControl()
    guard.on_train_begin(args, state, control, model=model)
    while not control.should_training_stop and state.global_step < len(perplexity) - 1:
        state.global_step += 1
        with torch.no_grad():
            model.weight.add_(1.0)
        guard.on_step_end(args, state, control, model=model)
    return guard


def test_each_capability_stops_the_run_by_its_own_threshold() -> None:
    # perplexity +30 % at step 1 (relative drop 0.3), the choice accuracy -0.04 then -0.08
    perplexity, choice = [10.0, 13.0, 13.0], [0.5, 0.46, 0.42]
    assert guarded_run("perplexity=0.5,choice=0.05", perplexity, choice).stopped_by == [
        {"capability": "choice:builtin:kjv-word-order", "drop": pytest.approx(0.08), "threshold": 0.05}
    ]
    by_perplexity = guarded_run("perplexity=0.2,choice=0.05", perplexity, choice)
    assert by_perplexity.stopped_at == 1 and [c["capability"] for c in by_perplexity.stopped_by] == [
        "perplexity:text.txt"
    ]
    assert by_perplexity.summary()["restored_step"] == 0
    # a full name wins over its kind; a kind without a threshold never stops
    assert guarded_run({"choice:builtin:kjv-word-order": 0.1, "choice": 0.01}, perplexity, choice).stopped_at is None
    # one number for all: the perplexity's 0.3 crosses 0.25 first
    assert guarded_run(0.25, perplexity, choice).stopped_at == 1
    rule = StopRule(parse_thresholds("0.1,choice=0.05"))
    assert rule.limit("perplexity:x") == 0.1 and rule.limit("choice:y") == 0.05


def test_bad_threshold_specs_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for spec, needle in (
        ("perplexity=abc", "give D or KIND=D"),
        ("perplexity=-1", "'-1' is not a drop >= 0"),
        ("nan", "'nan' is not a drop"),
        ("choice=0.1,choice=0.2", "given twice"),
    ):
        with pytest.raises(ConfigError, match=needle) as error:
            parse_thresholds(spec)
        assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="'knn' is no kind or name of the kept capabilities") as error:
        guarded_run("knn=0.1", [1.0], [1.0])
    assert "perplexity:text.txt, choice:builtin:kjv-word-order" in str(error.value)
    with pytest.raises(ConfigError, match="perplexity:text.txt"):
        FinetuneConfig(model="m", task="t.txt", keep=["perplexity:text.txt"], stop_if_drop="choice=0.1")
    prose = tmp_path / "prose.txt"
    prose.write_text("plain text\n" * 40)
    argv = ["finetune", "--model", "m", "--task", str(prose), "--keep", f"perplexity:{prose}", "--out"]
    code, _, err = run_cli([*argv, str(tmp_path / "o"), "--stop-if-drop", "accuracy=0.1"], capsys)
    line = one_error_line(err)
    assert code == 2 and "--stop-if-drop" in line and f"perplexity:{prose}" in line


def test_thresholds_by_kind_are_saved_and_compared_on_resume() -> None:
    from forgetless.integrations.hf.finetune import _differences

    keep = ["perplexity:a.txt", "choice:builtin:kjv-word-order"]
    cfg = FinetuneConfig(model="m", task="t.txt", keep=keep, stop_if_drop="perplexity=0.2,choice=0.05")
    assert cfg.stop_if_drop == {"perplexity": 0.2, "choice": 0.05}
    saved = json.loads(json.dumps(cfg.model_dump(mode="json")))
    assert FinetuneConfig.model_validate(saved) == cfg
    other = FinetuneConfig(model="m", task="t.txt", keep=keep, stop_if_drop="perplexity=0.2,choice=0.1")
    assert [d.split(":")[0] for d in _differences(saved, other.model_dump(mode="json"))] == ["stop_if_drop"]
    assert FinetuneConfig(model="m", task="t.txt", keep=keep, stop_if_drop=0.1).stop_if_drop == 0.1


# -- end to end ------------------------------------------------------------------------------------
def test_finetune_reports_both_accuracies_items_stderr_and_chance(tmp_path: Path) -> None:
    folder = tmp_path / "tiny"
    tiny_model().save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    (tmp_path / "code.txt").write_text("def add(a, b):\n    return a + b\n" * 400)
    (tmp_path / "prose.txt").write_text("The model could read plain English prose quite well.\n" * 200)
    rows = [{"goal": f"Say hello {i}", "sol1": "hello", "sol2": "goodbye now", "label": 0} for i in range(6)]
    items = write_jsonl(tmp_path / "piqa.jsonl", rows)
    keep = [f"choice:{items}?metric=acc", f"perplexity:{tmp_path / 'prose.txt'}"]
    cfg = FinetuneConfig(
        model=str(folder),
        task=str(tmp_path / "code.txt"),
        keep=keep,
        steps=2,
        batch_size=4,
        seq_len=32,
        eval_every=1,
        eval_size=4,
        choice_size=6,
        train_size=8,
        lr=1e-2,
        stop_if_drop="perplexity=5,choice=1",
    )
    summary = run_finetune(cfg, out=tmp_path / "out")
    choice = summary["capabilities"][keep[0]]
    assert choice["metric"] == "acc" and choice["items"] == 6 and choice["chance"] == 0.5
    assert set(choice["figures_before"]) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
    assert choice["before"] == choice["figures_before"]["acc"] and choice["drop_abs"] == pytest.approx(choice["drop"])
    perplexity = summary["capabilities"][keep[1]]
    assert perplexity["drop_rel"] == pytest.approx(perplexity["drop"])
    assert perplexity["drop_abs"] == pytest.approx(perplexity["after"] - perplexity["before"])
    assert summary["stop_if_drop"] == {"perplexity": 5.0, "choice": 1.0}
    assert (tmp_path / "out" / "report.md").is_file()
