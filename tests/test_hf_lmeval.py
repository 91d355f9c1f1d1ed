"""``--keep lmeval:TASK``: lm-evaluation-harness tasks run in memory on the live model (issue #16,
item 3). On a local task definition (a YAML multiple-choice task over a JSONL file, offline):
the score is what the harness reports for the same model called directly, and it follows the
model as it changes."""

from __future__ import annotations

import json
import math
import os
import random
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the local task's data only; no hub
pytest.importorskip("lm_eval", reason="the lmeval extra is not installed: pip install 'forgetless[lmeval]'")

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from cli_helpers import one_error_line, run_cli  # noqa: E402
from forgetless.errors import ConfigError, MissingExtraError  # noqa: E402
from forgetless.integrations.hf.capabilities import KeepOptions, parse_keep  # noqa: E402
from forgetless.integrations.hf.capabilities.lmeval import LmEvalTasks  # noqa: E402
from forgetless.integrations.hf.tiny import byte_tokenizer  # noqa: E402

FRUITS = [" apple", " berry", " cherry", " damson"]


def tiny_lm(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=257, n_positions=96, n_embd=32, n_layer=2, n_head=2, bos_token_id=256)
    config.eos_token_id = config.pad_token_id = 256
    return GPT2LMHeadModel(config)


def items(n: int = 24, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    answers = [rng.randrange(4) for _ in range(n)]  # the label names the fruit's first letter
    return [
        {"question": f"Crate {i} ({FRUITS[a][1]}) holds", "choices": FRUITS, "answer": a} for i, a in enumerate(answers)
    ]


def write_task(folder: Path, name: str, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        f"  data_files:\n    test: {data}\n"
        f"  cache_dir: {folder / 'hf-cache'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
    )


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lmeval-tasks")
    write_task(folder, "crates", items())
    write_task(folder, "crates_b", items(16, seed=1))
    return folder


def harness(model: torch.nn.Module, tasks: Path, names: list[str], limit: int | None) -> dict:
    """The harness called directly, the way its docs show for an already-loaded model."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=byte_tokenizer(), batch_size=16)
    manager = TaskManager(include_path=str(tasks), include_defaults=False)
    return simple_evaluate(lm, tasks=names, task_manager=manager, limit=limit)["results"]


def build(spec: str, **options: int) -> LmEvalTasks:
    kind, source = parse_keep(spec)
    return kind.from_source(source, byte_tokenizer(), KeepOptions(**options))


def teach_one_answer(model: torch.nn.Module, fruit: str, steps: int = 40) -> None:
    """Teach the model that every crate holds ``fruit``: it then picks it for every item."""
    tok = byte_tokenizer()
    ids = tok([f"{r['question']}{fruit}" for r in items()], padding=True, return_tensors="pt")
    labels = ids["input_ids"].masked_fill(ids["attention_mask"] == 0, -100)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(**ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_score_equals_the_harness_and_follows_the_model(tasks: Path) -> None:
    model = tiny_lm()
    capability = build(f"lmeval:crates?include={tasks},limit=20")
    assert capability.metric == "acc_norm" and capability.higher_is_better
    before = capability.evaluate(model)
    direct = harness(model, tasks, ["crates"], 20)["crates"]
    assert before == direct["acc_norm,none"]
    figures = capability.figures()
    assert figures["crates/n"] == 20 and figures["crates/acc_norm"] == before
    assert figures["crates/acc_norm_stderr"] == pytest.approx(direct["acc_norm_stderr,none"], rel=1e-12)
    assert capability.facts() == {"items": 20}

    teach_one_answer(model, FRUITS[3])  # the same model object, changed in place (as in training)
    after = capability.evaluate(model)
    assert model.training  # the training mode is restored
    assert after == harness(model, tasks, ["crates"], 20)["crates"]["acc_norm,none"]
    share = sum(r["answer"] == 3 for r in items()[:20]) / 20  # right exactly where damson is
    assert after == share != before, (before, after, share)


def test_named_metric_two_tasks_mean_and_default_limit(tasks: Path) -> None:
    model = tiny_lm(seed=3)
    capability = build(f"lmeval:crates,crates_b?include={tasks},metric=acc", choice_size=8)
    assert capability.limit == 8 and capability.metric == "acc"  # the default limit: --choice-size
    score = capability.evaluate(model)
    direct = harness(model, tasks, ["crates", "crates_b"], 8)
    values = [direct[t]["acc,none"] for t in ("crates", "crates_b")]
    assert score == pytest.approx(sum(values) / 2, abs=1e-15)
    figures = capability.figures()
    assert [figures["crates/acc"], figures["crates_b/acc"]] == values
    errors = [direct[t]["acc_stderr,none"] for t in ("crates", "crates_b")]
    assert figures["acc_stderr"] == pytest.approx(math.sqrt(sum(e * e for e in errors)) / 2, rel=1e-12)
    all_items = build(f"lmeval:crates_b?include={tasks},limit=all")
    assert all_items.limit is None
    all_items.evaluate(model)
    assert all_items.figures()["crates_b/n"] == 16


def test_evaluation_leaves_the_training_rng_alone(tasks: Path) -> None:
    capability = build(f"lmeval:crates?include={tasks},limit=4")
    model = tiny_lm()
    torch.manual_seed(7)
    random.seed(7)
    expected = (torch.rand(3), random.random())
    torch.manual_seed(7)
    random.seed(7)
    capability.evaluate(model)  # the harness seeds nothing of ours
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]


def local_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip the scan of the harness's ~15k built-in task files (10-40 s) where a test looks up a
    name that is not in its include folder; the CLI test below does the real, full lookup."""
    from lm_eval.tasks import TaskManager

    from forgetless.integrations.hf.capabilities import lmeval

    def manager(names: list[str], include: str | None) -> TaskManager:
        return TaskManager(include_path=include, include_defaults=False)

    monkeypatch.setattr(lmeval, "task_manager", manager)


def test_bad_specs_are_one_line_errors(tasks: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local_only(monkeypatch)
    with pytest.raises(ConfigError, match="lm-eval task 'crate' is not installed.*did you mean 'crates'"):
        build(f"lmeval:crate?include={tasks}")
    with pytest.raises(ConfigError, match="no metric 'f1'.*acc, acc_norm"):
        build(f"lmeval:crates?include={tasks},metric=f1")
    with pytest.raises(ConfigError, match="unknown option 'limt'"):
        build(f"lmeval:crates?limt=3,include={tasks}")
    with pytest.raises(ConfigError, match="limit='-2' is not valid"):
        build(f"lmeval:crates?include={tasks},limit=-2")
    with pytest.raises(ConfigError, match="must be KEY=VALUE"):
        build(f"lmeval:crates?include={tasks},fast")
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # the harness not installed
    with pytest.raises(MissingExtraError, match=r"forgetless\[lmeval\]"):
        build(f"lmeval:crates?include={tasks}")


def finetune_argv(tasks: Path, tmp_path: Path, keep: str, out: str) -> list[str]:
    folder = tmp_path / "model"
    if not folder.is_dir():
        tiny_lm().save_pretrained(folder)
        byte_tokenizer().save_pretrained(folder)
    task = tmp_path / "task.txt"
    task.write_text("The crates are stacked by the door.\n" * 200)
    argv = ["finetune", "--model", str(folder), "--task", str(task), "--keep", keep, "--steps", "2"]
    argv += ["--batch-size", "2", "--seq-len", "32", "--eval-every", "2", "--eval-size", "4", "--quiet"]
    return [*argv, "--device", "cpu", "--out", str(tmp_path / out)]


def test_finetune_keeps_an_lmeval_task(tasks: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keep = f"lmeval:crates?include={tasks},limit=8"
    code, _, err = run_cli(finetune_argv(tasks, tmp_path, keep, "report"), capsys)
    assert code == 0, err
    (run,) = json.loads((tmp_path / "report" / "forgetting.json").read_text()).values()
    entry = run["capabilities"][keep]
    assert entry["metric"] == "acc_norm" and 0.0 <= entry["after"] <= 1.0
    assert entry["figures_after"]["crates/n"] == 8 and entry["items"] == 8


@pytest.mark.slow
def test_cli_names_a_task_the_harness_does_not_have(
    tasks: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The full lookup: the harness's built-in tasks are scanned (10-40 s), the name is not there."""
    code, _, err = run_cli(finetune_argv(tasks, tmp_path, "lmeval:arc_easyy,crates", "bad"), capsys)
    line = one_error_line(err)
    assert code == 2 and "lm-eval task 'arc_easyy' is not installed" in line and "'arc_easy'" in line
    assert not (tmp_path / "bad" / "forgetting.json").exists()
