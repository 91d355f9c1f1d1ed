"""Instruction data in the fine-tuning path (issue #16, item 2): chat, Alpaca and
prompt/completion rows, rendered with the tokenizer's chat template or the default templates,
trained and scored on the response tokens only; datasets.Dataset / hub: inputs; one-line errors.

old: ``--text-column messages`` trained on the Python repr of the message list (exit 0); rows
of any other shape were read as text, or refused for a missing ``text`` column.
"""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from cli_helpers import one_error_line, run_cli  # noqa: E402
from forgetless.errors import ConfigError, DataError, MissingExtraError  # noqa: E402
from forgetless.integrations.hf import FinetuneConfig, Perplexity, build_capability, run_finetune  # noqa: E402
from forgetless.integrations.hf.capabilities import lm_rows  # noqa: E402
from forgetless.integrations.hf.data import load_texts  # noqa: E402
from forgetless.integrations.hf.instruct import (  # noqa: E402
    encode_example,
    encode_pieces,
    instruction_rows,
    render_pieces,
    render_text,
)
from forgetless.integrations.hf.tiny import byte_tokenizer  # noqa: E402

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""A small ChatML template (the shape of Qwen's and many others')."""

HELLO = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
}
SUMS = {
    "messages": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "6"},
    ]
}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def chat_rows(n: int, offset: int = 0) -> list[dict]:
    """Short arithmetic conversations: a system prompt, a question, the answer."""
    rows = []
    for i in range(offset, offset + n):
        a, b = i % 7, i % 5
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "Add."},
                    {"role": "user", "content": f"{a}+{b}?"},
                    {"role": "assistant", "content": f"{a + b}"},
                ]
            }
        )
    return rows


@pytest.fixture
def tok():
    return byte_tokenizer()


@pytest.fixture
def templated():
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = CHATML
    return tokenizer


def trained_text(tokenizer, ids: list[int], trained: list[bool]) -> str:
    return tokenizer.decode([i for i, t in zip(ids, trained, strict=True) if t])


def tiny_lm() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=257,
        n_positions=96,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=256,
        eos_token_id=256,
        pad_token_id=256,
    )
    return GPT2LMHeadModel(config).eval()


# -- detection and the default templates --------------------------------------------------------
def test_chat_rows_render_in_the_default_role_tagged_template(tmp_path: Path, tok) -> None:
    data = load_texts(write_jsonl(tmp_path / "chat.jsonl", [HELLO, SUMS]))
    assert data.format == "chat" and not data.labelled
    assert data.texts == [
        "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello!\n",
        "<|user|>\n2+2?\n<|assistant|>\n4\n<|user|>\n3+3?\n<|assistant|>\n6\n",
    ]
    assert render_text(data.examples[0], tok) == data.texts[0]  # no chat template: the default
    ids, trained = encode_example(tok, data.examples[1])
    assert tok.decode(ids) == data.texts[1] + "<|endoftext|>"
    assert trained_text(tok, ids, trained) == "4\n6\n<|endoftext|>"


def test_alpaca_rows_render_in_the_default_template(tmp_path: Path, tok) -> None:
    rows = [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Greet.", "input": "", "output": "Hi there"},
        {"instruction": "Name a colour.", "context": "", "response": "Red", "category": "open_qa"},  # Dolly
    ]
    data = load_texts(write_jsonl(tmp_path / "alpaca.jsonl", rows))
    assert data.format == "alpaca"
    assert not data.labelled  # Dolly's "category" is not taken for a label: instruction data is LM data
    assert data.texts == [
        "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n5",
        "### Instruction:\nGreet.\n\n### Response:\nHi there",
        "### Instruction:\nName a colour.\n\n### Response:\nRed",
    ]
    ids, trained = encode_example(tok, data.examples[0])
    assert trained_text(tok, ids, trained) == "5<|endoftext|>"


def test_prompt_completion_rows_are_a_raw_continuation_even_with_a_chat_template(
    tmp_path: Path, tok, templated
) -> None:
    rows = [{"prompt": "The capital of France is", "completion": " Paris."}]
    data = load_texts(write_jsonl(tmp_path / "pc.jsonl", rows))
    assert data.format == "prompt-completion" and data.texts == ["The capital of France is Paris."]
    for tokenizer in (tok, templated):
        ids, trained = encode_example(tokenizer, data.examples[0])
        assert tokenizer.decode(ids) == "The capital of France is Paris.<|endoftext|>"
        assert trained_text(tokenizer, ids, trained) == " Paris.<|endoftext|>"


def test_conversational_prompt_completion_and_sharegpt_rows_are_chat(tmp_path: Path, tok) -> None:
    rows = [
        {
            "prompt": [{"role": "user", "content": "Hi"}],
            "completion": [
                {"role": "assistant", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]}
            ],
        },
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]},
    ]
    data = load_texts(write_jsonl(tmp_path / "mixed.jsonl", rows))
    assert data.texts == ["<|user|>\nHi\n<|assistant|>\nHello\n", "<|user|>\nHi\n<|assistant|>\nYo\n"]
    assert [trained_text(tok, *encode_example(tok, e)) for e in data.examples] == [
        "Hello\n<|endoftext|>",
        "Yo\n<|endoftext|>",
    ]


def test_a_json_array_and_a_csv_of_alpaca_rows(tmp_path: Path) -> None:
    rows = [{"instruction": "Greet.", "input": "", "output": f"Hi {i}"} for i in range(3)]
    array = tmp_path / "alpaca_data.json"  # the shape Stanford Alpaca ships
    array.write_text(json.dumps(rows, indent=2))
    table = tmp_path / "alpaca.csv"
    table.write_text("instruction,input,output\n" + "".join(f"Greet.,,Hi {i}\n" for i in range(3)))
    assert (
        load_texts(array).texts
        == load_texts(table).texts
        == [f"### Instruction:\nGreet.\n\n### Response:\nHi {i}" for i in range(3)]
    )


def test_format_overrides_the_detection(tmp_path: Path) -> None:
    both = tmp_path / "both.jsonl"  # rows holding a text and a chat
    write_jsonl(both, [{"text": "plain words", **HELLO}])
    assert load_texts(both).format == "chat"
    assert load_texts(both, format="text").texts == ["plain words"]
    assert load_texts(both, text_column="text").texts == ["plain words"]
    dialog = write_jsonl(tmp_path / "dialog.jsonl", [{"dialog": HELLO["messages"]}])
    assert load_texts(dialog, format="chat", text_column="dialog").texts[0].startswith("<|system|>\nBe brief.")


# -- a tokenizer's chat template ------------------------------------------------------------------
def test_a_chat_template_renders_the_conversation_and_masks_its_headers(tmp_path: Path, templated) -> None:
    data = load_texts(write_jsonl(tmp_path / "chat.jsonl", [HELLO, SUMS]))
    first, second = data.examples
    assert render_text(first, templated) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
    )
    assert [p for p in render_pieces(second, templated) if p[1]] == [("4<|im_end|>\n", True), ("6<|im_end|>\n", True)]
    ids, trained = encode_example(templated, second)
    assert templated.decode(ids) == render_text(second, templated)  # no EOS after a template's own end of turn
    assert trained_text(templated, ids, trained) == "4<|im_end|>\n6<|im_end|>\n"


def test_alpaca_through_a_chat_template_is_a_user_and_an_assistant_turn(tmp_path: Path, templated) -> None:
    data = load_texts(write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Add.", "input": "2 3", "output": "5"}]))
    assert render_text(data.examples[0], templated) == (
        "<|im_start|>user\nAdd.\n\n2 3<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n"
    )
    assert trained_text(templated, *encode_example(templated, data.examples[0])) == "5<|im_end|>\n"


def test_a_template_that_rewrites_earlier_turns_is_one_line(tmp_path: Path, templated) -> None:
    templated.chat_template = "{% for m in messages|reverse %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    data = load_texts(write_jsonl(tmp_path / "chat.jsonl", [HELLO]))
    with pytest.raises(DataError, match=r"chat\.jsonl:1: the tokenizer's chat template is not prefix-stable"):
        encode_example(templated, data.examples[0])
    templated.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(DataError, match=r"chat template refused it \(roles must alternate\)"):
        encode_example(templated, data.examples[0])


# -- the loss mask --------------------------------------------------------------------------------
def test_labels_are_minus_100_except_on_exactly_the_response_tokens(tmp_path: Path, tok) -> None:
    data = load_texts(write_jsonl(tmp_path / "chat.jsonl", [HELLO, SUMS]))
    rows = lm_rows(tok, data, seq_len=64)
    assert set(rows) == {"input_ids", "attention_mask", "labels"} and rows["input_ids"].shape[0] == 2
    responses = ["Hello!\n<|endoftext|>", "4\n6\n<|endoftext|>"]
    for ids, mask, labels, example, response in zip(
        rows["input_ids"], rows["attention_mask"], rows["labels"], data.examples, responses, strict=True
    ):
        trained = labels != -100
        assert torch.equal(labels[trained], ids[trained])  # a trained label is the token itself
        assert tok.decode(ids[trained]) == response
        assert tok.decode(ids[mask.bool()]) == example.text + "<|endoftext|>"
        assert not trained[~mask.bool()].any()  # padding is never trained


def test_a_token_across_the_prompt_boundary_is_trained_with_the_response() -> None:
    """A BPE token ``" Paris"`` holds the prompt's trailing space: it is trained (the model must
    produce it), so the response is never left without its first token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.train_from_iterator(["The capital is Paris"] * 50, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core)
    ids, trained = encode_pieces(tokenizer, [("The capital is ", False), ("Paris", True)], add_eos=False)
    assert tokenizer.convert_ids_to_tokens(ids)[-1] == "ĠParis" and trained[-1] and not any(trained[:-1])


def test_a_slow_tokenizer_is_masked_piece_by_piece() -> None:
    class Bytes:  # no offset mapping: each piece is tokenized on its own
        is_fast = False
        eos_token_id = 0

        def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
            return {"input_ids": list(text.encode())}

    ids, trained = encode_pieces(Bytes(), [("Q: ", False), ("yes", True)], add_eos=True)
    assert ids == [*b"Q: yes", 0] and trained == [False] * 3 + [True] * 4


def test_truncation_to_seq_len_keeps_the_mask_aligned(tmp_path: Path, tok) -> None:
    long_answer = {"instruction": "Count.", "output": "one two three four five six seven"}
    cut_away = {"instruction": "x" * 80, "output": "never seen"}
    data = load_texts(write_jsonl(tmp_path / "a.jsonl", [long_answer, cut_away]))
    rows = instruction_rows(tok, data, seq_len=40)
    assert rows["input_ids"].shape == (1, 40)  # the second example's response does not fit: dropped
    ids, labels = rows["input_ids"][0], rows["labels"][0]
    prompt = "### Instruction:\nCount.\n\n### Response:\n"
    assert tok.decode(ids) == (prompt + long_answer["output"])[:40]
    assert tok.decode(ids[labels != -100]) == long_answer["output"][: 40 - len(prompt)]
    with pytest.raises(DataError, match=r"no example keeps a response token within --seq-len 20.*raise --seq-len"):
        instruction_rows(tok, data.subset([1]), seq_len=20)


def test_loss_and_perplexity_of_chat_rows_count_the_response_tokens_only(tmp_path: Path, tok) -> None:
    data = load_texts(write_jsonl(tmp_path / "chat.jsonl", [HELLO, SUMS, *chat_rows(6)]))
    rows = lm_rows(tok, data, seq_len=64)
    model = tiny_lm()
    with torch.no_grad():
        logits = model(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"]).logits[:, :-1]
        nll = -F.log_softmax(logits.double(), -1).gather(-1, rows["input_ids"][:, 1:, None]).squeeze(-1)
        scored = rows["labels"][:, 1:] != -100
        by_hand = nll[scored].mean()
        loss = model(**rows).loss  # the Trainer's loss: Hugging Face's shifted CE over labels != -100
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    keep = Perplexity("chat", rows)
    assert keep.evaluate(model) == pytest.approx(math.exp(by_hand.item()), rel=1e-6)
    assert scored.sum() < (rows["attention_mask"][:, 1:] == 1).sum()  # the prompts were left out
    built = build_capability("perplexity", data, tok, seq_len=64, eval_size=8, train_size=8)
    assert set(built.replay_rows()) == {"input_ids", "attention_mask", "labels"}


def test_the_fisher_of_chat_rows_ignores_the_prompt_positions(tmp_path: Path, tok) -> None:
    data = load_texts(write_jsonl(tmp_path / "chat.jsonl", chat_rows(4)))
    keep = build_capability("perplexity", data, tok, seq_len=64, eval_size=4, train_size=4)
    model = tiny_lm()
    view, packed = keep.fisher_view(model)
    logits = view(packed)
    scored = keep.replay_rows()["labels"][:, 1:] != -100
    assert torch.all(logits[~scored] == 0) and torch.any(logits[scored] != 0)


# -- datasets.Dataset / DatasetDict and hub: ------------------------------------------------------
class FakeDataset:
    """The part of ``datasets.Dataset``'s interface that forgetless reads."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows
        self.column_names = list(rows[0])

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]


class FakeDatasetDict(dict):
    pass


def test_a_dataset_and_a_dataset_dict_are_sources() -> None:
    data = load_texts(FakeDataset([HELLO, SUMS]))
    assert data.format == "chat" and data.source == "FakeDataset(2 rows)"
    splits = FakeDatasetDict(train=FakeDataset([HELLO]), test=FakeDataset([SUMS]))
    assert load_texts(splits).texts == load_texts(FakeDataset([HELLO])).texts
    assert load_texts(splits, split="test").texts[0].startswith("<|user|>\n2+2?")
    with pytest.raises(DataError, match=r"no split 'dev' \(splits: train, test\)"):
        load_texts(splits, split="dev")
    with pytest.raises(DataError, match=r"FakeDataset\(1 rows\)\[0\]: the text column 'text' holds a number"):
        load_texts(FakeDataset([{"text": 3}]))


def test_a_real_datasets_dataset_with_class_label_names() -> None:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    reviews = datasets.Dataset.from_dict({"text": ["bad", "good", "fine"], "label": [0, 1, 1]}, features=features)
    data = load_texts(datasets.DatasetDict(train=reviews))
    assert data.labels == [0, 1, 1] and data.label_names == ["neg", "pos"]
    chat = load_texts(datasets.Dataset.from_list([HELLO]))
    assert chat.texts == [HELLO_DEFAULT]


HELLO_DEFAULT = "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello!\n"


def test_hub_names_go_through_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def load_dataset(name: str, split: str | None = None):
        calls.append((name, split))
        if name == "offline/set":
            raise ConnectionError("Couldn't reach 'offline/set' on the Hub (LocalEntryNotFoundError)")
        return FakeDataset([HELLO]) if split else FakeDatasetDict(train=FakeDataset([SUMS]))

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    assert load_texts("hub:org/chat:train[:10]").texts == [HELLO_DEFAULT]
    assert load_texts("hub:org/chat").texts[0].startswith("<|user|>\n2+2?")  # the train split
    assert calls == [("org/chat", "train[:10]"), ("org/chat", None)]
    with pytest.raises(DataError) as info:
        load_texts("hub:offline/set")
    line = str(info.value)
    assert "\n" not in line and "hub:offline/set: cannot load the data set" in line and "the hub is unreachable" in line
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(MissingExtraError, match=r'pip install "forgetless\[data\]"'):
        load_texts("hub:org/chat")


def test_an_offline_hub_name_is_one_line_with_the_real_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(DataError, match=r"^hub:no-such/set-xyz:train: cannot load .*HF_HUB_OFFLINE is set[^\n]*$"):
        load_texts("hub:no-such/set-xyz:train")


# -- one-line errors ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rows", "column", "words"),
    [
        ([HELLO], "messages", ["chat.jsonl:1", "'messages' holds a list", "--format chat", "drop --text-column"]),
        ([{"text": "fine"}, {"text": {"a": 1}}], None, ["chat.jsonl:2", "'text' holds a object", "give text"]),
        ([{"body": 12.5}], "body", ["chat.jsonl:1", "'body' holds a number (12.5)"]),
        ([{"turns": HELLO["messages"]}], "turns", ["holds chat messages: pass --format chat --text-column turns"]),
        (
            [{"instruction": ["a"], "output": "b"}],
            "instruction",
            ["'instruction' holds a list", "the rows look like alpaca data: pass --format alpaca"],
        ),
    ],
)
def test_a_text_column_that_holds_no_string_is_one_line(
    tmp_path: Path, rows: list[dict], column: str | None, words: list[str]
) -> None:
    with pytest.raises(DataError) as info:
        load_texts(write_jsonl(tmp_path / "chat.jsonl", rows), text_column=column)
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message


@pytest.mark.parametrize(
    ("rows", "options", "words"),
    [
        ([{"messages": [{"role": "user", "content": "Hi"}]}], {}, "x.jsonl:1: no assistant message (roles: user)"),
        ([{"messages": [{"content": "Hi"}]}], {}, "x.jsonl:1: messages[0]: the message has no 'role' string"),
        ([{"messages": "Hi"}], {}, "'messages' must be a non-empty list of messages"),
        ([{"instruction": "Add.", "output": 5}], {}, "x.jsonl:1: 'output' holds a number (5), not a string"),
        ([{"prompt": "p", "completion": [HELLO]}], {}, "must both be strings or both lists of messages"),
        ([{"text": "t"}], {"format": "alpaca"}, "x.jsonl:1: no 'instruction' field (found text)"),
        ([{"instruction": "a", "output": "b"}], {"text_column": "x", "format": "alpaca"}, "applies to text and chat"),
        ([HELLO], {"format": "yaml"}, "unknown data format 'yaml'"),
    ],
)
def test_malformed_instruction_rows_are_one_line(tmp_path: Path, rows: list, options: dict, words: str) -> None:
    with pytest.raises((DataError, ConfigError)) as info:
        load_texts(write_jsonl(tmp_path / "x.jsonl", rows), **options)
    assert words in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_format_on_a_source_without_rows_is_refused(tmp_path: Path) -> None:
    prose = tmp_path / "prose.txt"
    prose.write_text("words " * 100)
    with pytest.raises(DataError, match=r"prose\.txt is a \.txt file without columns: --format chat needs rows"):
        load_texts(prose, format="chat")


FINETUNE = ["finetune", "--model", "unused", "--keep", "perplexity:builtin:python-prose", "--steps", "2", "--quiet"]


def test_the_cli_refuses_messages_as_a_text_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """old: trained on "[{'role': 'system', 'content': 'Be brief.'}, ..." (exit 0)."""
    task = write_jsonl(tmp_path / "chat.jsonl", [HELLO] * 10)
    argv = [*FINETUNE, "--task", str(task), "--text-column", "messages", "--out", str(tmp_path / "o")]
    code, _, err = run_cli(argv, capsys)
    line = one_error_line(err)
    assert code == 2 and f"{task}:1" in line and "'messages' holds a list" in line and "--format chat" in line
    code, _, err = run_cli(
        [*FINETUNE, "--task", str(task), "--format", "sharegpt", "--out", str(tmp_path / "p")], capsys
    )
    assert code == 2 and "--format" in one_error_line(err)


# -- end to end -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-chat-gpt2")
    tiny_lm().save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


def test_finetune_on_chat_data_keeping_chat_perplexity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_lm_dir: Path
) -> None:
    task = write_jsonl(tmp_path / "task.jsonl", chat_rows(40))
    general = write_jsonl(tmp_path / "general.jsonl", [HELLO, SUMS] * 8)
    out = tmp_path / "report"
    argv = ["finetune", "--model", str(tiny_lm_dir), "--task", str(task), "--keep", f"perplexity:{general}"]
    argv += ["--steps", "4", "--batch-size", "4", "--seq-len", "64", "--eval-every", "2", "--eval-size", "8"]
    argv += ["--lr", "1e-2", "--replay-ratio", "0.25", "--ewc", "1", "--ewc-samples", "4", "--quiet"]
    argv += ["--device", "cpu", "--out", str(out)]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    report = json.loads((out / "forgetting.json").read_text())
    (run,) = report.values()
    assert run["task_format"] == "chat" and run["steps_trained"] == 4
    keep = run["capabilities"][f"perplexity:{general}"]
    assert keep["metric"] == "perplexity" and math.isfinite(keep["before"]) and math.isfinite(keep["after"])
    assert (out / "before_after.csv").is_file() and (out / "capability_curves.png").is_file()


def test_run_finetune_takes_a_dataset(tiny_lm_dir: Path, tmp_path: Path) -> None:
    general = write_jsonl(tmp_path / "general.jsonl", chat_rows(16, offset=3))
    cfg = FinetuneConfig(
        model=str(tiny_lm_dir),
        task=FakeDatasetDict(train=FakeDataset(chat_rows(30))),
        keep=[f"perplexity:{general}"],
        steps=2,
        batch_size=4,
        seq_len=48,
        eval_every=2,
        eval_size=4,
        device="cpu",
    )
    summary = run_finetune(cfg)
    assert summary["task_source"] == "FakeDatasetDict(train)" and summary["task_format"] == "chat"
    assert summary["config"]["task"] == "FakeDatasetDict(train)"  # the report stays JSON
    assert math.isfinite(summary["task"]["after"])
    with pytest.raises(ValueError, match="datasets.Dataset"):
        FinetuneConfig(model="m", task=42)
