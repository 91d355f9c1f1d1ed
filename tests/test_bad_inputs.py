"""Every bad input a clean error (issue #15): one line naming the problem and the fix, exit
code 2, no traceback, nothing computed lost; a typed ForgetlessError in the Python API.

Each test records the behaviour before the fix in its docstring (``old:``).
"""

from __future__ import annotations

import gzip
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import FAST, finished_run, one_error_line, run_cli
from forgetless.config import MAX_SEED, load_config_file, make_config
from forgetless.data import files
from forgetless.data.custom import from_tensors
from forgetless.data.idx import IDX_FILES, load_mnist
from forgetless.data.scenarios import from_task_data, split
from forgetless.errors import ConfigError, DataError, OutputError
from forgetless.strategies import discover, make_strategies
from forgetless.training import checkpoint as ckpt
from forgetless.training.experiment import check_memory, load_scenario, resolve


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code, _, err = run_cli(argv, capsys)
    line = one_error_line(err)
    assert code == 2, err
    return line


# -- 1. seeds ---------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [str(2**63), str(2**64)])
def test_a_seed_beyond_64_bits_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], seed: str) -> None:
    """old: 2**63 ran (exit 0), 2**64 was exit 1 "internal error: ValueError: Overflow when
    unpacking long long"."""
    line = refused(["run", *FAST, "--strategies", "naive", "--seed", seed, "--out", str(tmp_path / "r")], capsys)
    assert "seed" in line and str(MAX_SEED) in line and "--seed" in line
    assert not (tmp_path / "r").exists()


def test_the_last_seed_of_a_multi_seed_run_must_fit_too() -> None:
    with pytest.raises(ConfigError, match=r"seeds .* go past the largest seed .* fewer --seeds"):
        make_config(seed=MAX_SEED, seeds=2)
    assert make_config(seed=MAX_SEED).seed == MAX_SEED
    with pytest.raises(ConfigError, match="class_order_seed"):
        make_config(class_order_seed=2**64)


# -- 2. integer YAML keys ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "key"),
    [("3: 4\n", "3"), ("params: {1: {x: 2}}\n", "params.1"), ("params: {ewc: {1: 2}}\n", "params.ewc.1")],
)
def test_an_integer_yaml_key_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str) -> None:
    """old: a top-level ``3: 4`` was exit 1 "internal error: TypeError: keywords must be
    strings"; ``params: {1: ...}`` said "params.1.[key]: Input should be a valid string"."""
    config = tmp_path / "c.yaml"
    config.write_text(text)
    line = refused(["run", *FAST, "--config", str(config), "--out", str(tmp_path / "r")], capsys)
    assert f"key {key} is not a name" in line and str(config) in line
    with pytest.raises(ConfigError, match="is not a name"):
        load_config_file(config)


# -- 3. sizes that cannot fit in memory -------------------------------------------------------
def test_a_huge_hidden_width_says_how_much_memory_it_needs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """old: exit 1 "internal error: RuntimeError: [enforce fail at alloc_cpu.cpp:127] ...
    DefaultCPUAllocator: can't allocate memory: you tried to allocate 25600000000000 bytes"."""
    argv = [*FAST, "--hidden", "100000000000"]  # the last --hidden wins
    line = refused(["run", *argv, "--strategies", "naive", "--out", str(tmp_path / "r")], capsys)
    assert "GiB" in line and "--hidden 100000000000" in line and "lower --hidden" in line
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_a_huge_buffer_says_how_much_memory_it_needs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """old: exit 1 "internal error: RuntimeError: ... you tried to allocate 64000000000000 bytes"."""
    argv = ["run", *FAST, "--strategies", "er", "--buffer-size", "1000000000000", "--out", str(tmp_path / "r")]
    line = refused(argv, capsys)
    assert "GiB" in line and "--buffer-size 1000000000000" in line and "replay buffer" in line


def test_memory_estimate_follows_the_shapes() -> None:
    config = resolve(make_config(benchmark="split-digits", tasks=2, hidden=[1000, 1000], strategies=["naive", "er"]))
    scenario = load_scenario(config, 0)
    check_memory(config, scenario, available=2**30)  # ~1M parameters: fits in 1 GiB
    with pytest.raises(ConfigError, match=r"would need at least .* GiB .*--hidden 1000,1000"):
        check_memory(config, scenario, available=10 * 2**20)
    big = config.model_copy(update={"hidden": [16], "buffer_size": 10**8})
    with pytest.raises(ConfigError, match=r"--buffer-size 100000000: .* GiB for a replay buffer"):
        check_memory(big, scenario, available=2**30)


# -- 4. paths over the OS limits --------------------------------------------------------------
def test_an_out_name_longer_than_the_file_system_allows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """old: exit 1 "internal error: OSError: [Errno 36] File name too long"."""
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    line = refused(["run", *FAST, "--strategies", "naive", "--out", str(tmp_path / ("a" * (name_max + 45)))], capsys)
    assert "--out" in line and str(name_max) in line and "shorter" in line


def test_an_out_path_longer_than_the_system_allows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path_max = os.pathconf(tmp_path, "PC_PATH_MAX")
    deep = tmp_path.joinpath(*["b" * 200] * (path_max // 200 + 1))
    line = refused(["run", *FAST, "--strategies", "naive", "--out", str(deep)], capsys)
    assert "--out" in line and str(path_max) in line and "shorter path" in line


def test_resume_and_data_dir_with_a_too_long_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """old: both exit 1 "internal error: OSError: [Errno 36] File name too long"."""
    long = tmp_path / ("a" * 300)
    assert "--resume" in refused(["run", "--resume", str(long)], capsys)
    argv = ["run", *FAST, "--benchmark", "split-mnist", "--strategies", "naive", "--no-download"]
    line = refused([*argv, "--data-dir", str(long), "--out", str(tmp_path / "r")], capsys)
    assert "--data-dir" in line and "shorter" in line


# -- 5, 8. fine-tuning: binary task files, an --out that is a file, a wrong text column -------
@pytest.fixture
def needs_transformers() -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    pytest.importorskip("accelerate")


FINETUNE = ["finetune", "--model", "unused", "--keep", "perplexity:builtin:python-prose", "--steps", "2", "--quiet"]


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv"])
def test_a_binary_task_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], needs_transformers: None, suffix: str
) -> None:
    """old: .txt trained on the bytes (exit 0); .jsonl/.csv were exit 1 "internal error:
    UnicodeDecodeError: 'utf-8' codec can't decode ..."."""
    task = tmp_path / f"task{suffix}"
    task.write_bytes(bytes(range(256)) * 12)
    line = refused([*FINETUNE, "--task", str(task), "--out", str(tmp_path / "o")], capsys)
    assert str(task) in line and "binary" in line and "UTF-8" in line


def test_a_task_file_that_is_not_utf8(tmp_path: Path) -> None:
    from forgetless.integrations.hf.data import load_texts

    task = tmp_path / "latin.csv"
    task.write_bytes("text\ncaf\xe9 cr\xe8me\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"not UTF-8 text \(byte 0xe9 at offset 8\)"):
        load_texts(task)
    prose = tmp_path / "prose.txt"  # a stray byte in plain text is tolerated
    prose.write_bytes(b"plain prose " * 50 + b"\xff")
    assert load_texts(prose).texts


def test_finetune_out_naming_a_file_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], needs_transformers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """old: the whole fine-tune ran, then exit 1 "internal error: FileExistsError: [Errno 17]
    File exists" (the results were lost)."""
    from forgetless.integrations.hf import finetune

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained before checking --out")

    monkeypatch.setattr(finetune, "run_finetune", never)
    task = tmp_path / "task.txt"
    task.write_text("some text " * 100)
    out = tmp_path / "report"
    out.write_text("mine")
    line = refused([*FINETUNE, "--task", str(task), "--out", str(out)], capsys)
    assert "--out" in line and "is a file" in line
    assert out.read_text() == "mine"


def test_finetune_refuses_an_out_holding_a_report_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], needs_transformers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """old: a second fine-tune into the same --out replaced the first report silently (issue #16);
    now as ``forgetless run``: refused before training, --force to overwrite."""
    from forgetless.integrations.hf import finetune

    trained: list[bool] = []

    def stop_here(*args: object, **kwargs: object) -> None:
        trained.append(True)
        raise SystemExit(0)

    monkeypatch.setattr(finetune, "run_finetune", stop_here)
    task = tmp_path / "task.txt"
    task.write_text("some text " * 100)
    out = tmp_path / "report"
    out.mkdir()
    (out / "forgetting.json").write_text("{}")
    line = refused([*FINETUNE, "--task", str(task), "--out", str(out)], capsys)
    assert "--out" in line and "--force" in line and not trained
    assert (out / "forgetting.json").read_text() == "{}"
    code, _, _ = run_cli([*FINETUNE, "--task", str(task), "--out", str(out), "--force"], capsys)
    assert code == 0 and trained == [True]


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [("--ewc", "inf", "--ewc inf: give a finite number"), ("--seed", str(2**64), "2**32-1"), ("--lr", "nan", "--lr")],
)
def test_finetune_refuses_seeds_and_non_finite_options_up_front(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], needs_transformers: None, flag: str, value: str, words: str
) -> None:
    """old: --ewc inf trained (exit 0); --seed 2**64 was exit 1 "internal error: ValueError: Seed
    must be between 0 and 2**32 - 1"."""
    task = tmp_path / "task.txt"
    task.write_text("some text " * 100)
    line = refused([*FINETUNE, "--task", str(task), flag, value, "--out", str(tmp_path / "o")], capsys)
    assert words in line


def test_a_text_column_on_a_file_without_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], needs_transformers: None
) -> None:
    """old: --text-column was ignored for .txt files (trained, exit 0)."""
    task = tmp_path / "task.txt"
    task.write_text("some text " * 100)
    line = refused([*FINETUNE, "--task", str(task), "--text-column", "body", "--out", str(tmp_path / "o")], capsys)
    assert "--text-column 'body'" in line and ".jsonl, .csv and .tsv" in line


def test_a_text_column_empty_in_every_row_names_the_columns(tmp_path: Path) -> None:
    """old: rows of empty text, then "fewer than 16 tokens of text; give more text"."""
    from forgetless.integrations.hf.data import load_texts

    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"title": "", "body": f"a long document {i}"}) + "\n" for i in range(20)))
    with pytest.raises(DataError) as info:
        load_texts(task, text_column="title")
    message = str(info.value)
    assert "'title' is empty in every row" in message and "columns: title, body" in message and "'body'" in message
    mixed = tmp_path / "mixed.jsonl"  # a column only later rows have is still found
    mixed.write_text('{"id": 1}\n' + "".join(json.dumps({"id": i, "doc": "text"}) + "\n" for i in range(5)))
    assert load_texts(mixed, text_column="doc").texts[-1] == "text"


# -- 6, 7. bring-your-own data ----------------------------------------------------------------
def _task(low: int, n: int = 20, n_test: int = 10) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(low)
    return (
        torch.rand(n, 1, 4, 4, generator=g),
        torch.arange(n) % 2 + low,
        torch.rand(n_test, 1, 4, 4, generator=g),
        torch.arange(n_test) % 2 + low,
    )


def _with(task: tuple[torch.Tensor, ...], **changes: object) -> tuple[object, ...]:
    names = ("train_x", "train_y", "test_x", "test_y")
    return tuple(changes.get(n, t) for n, t in zip(names, task, strict=True))


B = _task(2)
BAD_TASKS = {
    # case: (second task, expected error, words the message must hold); old behaviour in comments
    "empty test set": (  # old: RuntimeError "max(): Expected reduction dim to be specified"
        _with(B, test_x=torch.rand(0, 1, 4, 4), test_y=torch.zeros(0, dtype=torch.long)),
        DataError,
        ["task 1 test", "at least one test example"],
    ),
    "NaN test inputs": (  # old: accepted
        _with(B, test_x=torch.full((10, 1, 4, 4), float("nan"))),
        DataError,
        ["task 1 test_x", "NaN"],
    ),
    "float test labels": (
        _with(B, test_y=B[3].float() + 0.5),
        DataError,
        ["task 1 test_y", ".long()"],
    ),  # old: accepted
    "test labels never trained": (_with(B, test_y=B[3] + 7), DataError, ["task 1 test", "[9, 10]"]),  # old: accepted
    "negative labels": (_with(B, train_y=B[1] - 5), DataError, ["task 1 train_y", "-3", "0 or more"]),  # old: accepted
    "empty task": (  # old: RuntimeError from max()
        _with(B, train_x=torch.rand(0, 1, 4, 4), train_y=torch.zeros(0, dtype=torch.long)),
        DataError,
        ["task 1 train", "at least one train example"],
    ),
    "mismatched test shape": (
        _with(B, test_x=torch.rand(10, 1, 5, 5)),
        DataError,
        ["task 1", "one shape"],
    ),  # old: accepted
    "strings": (
        ("abc", "def", "g", "h"),
        DataError,
        ["task 1 train_x", "str", "tensor or a numpy array"],
    ),  # old: TypeError
    "string labels": (_with(B, train_y=["x"] * 20), DataError, ["task 1 train_y", "numeric"]),  # old: ValueError
    "scalar inputs": (
        _with(B, train_x=torch.tensor(1.0)),
        DataError,
        ["task 1 train_x", "[N, ...]"],
    ),  # old: IndexError
    "not four items": (5, ConfigError, ["task 1", "(train_x, train_y, test_x, test_y)"]),  # old: TypeError
    "a huge label": (
        _with(B, train_y=B[1] + 2**40, test_y=B[3] + 2**40),
        DataError,
        ["task 1 train_y", "class indices"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_TASKS))
def test_from_task_data_names_the_task_split_and_fix(case: str) -> None:
    second, error, words = BAD_TASKS[case]
    with pytest.raises(error) as info:
        from_task_data("class", [_task(0), second])
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


def test_from_tensors_refuses_test_labels_past_the_training_classes() -> None:
    """old: test label 51 made a head of 52 classes, 50 of them never trained."""
    x, y, tx, ty = _task(0)
    with pytest.raises(DataError, match="test_y holds label 51 but train_y labels go up to 1"):
        from_tensors("d", x, y, tx, ty + 50)
    assert from_tensors("d", x, y, tx, ty + 1, class_names=["a", "b", "c"]).num_classes == 3


def test_a_split_task_without_test_images_is_refused() -> None:
    """old: the task had zero test images and the run reported its accuracy as 0.000."""
    data = from_tensors(
        "d", torch.rand(40, 1, 4, 4), torch.arange(40) % 4, torch.rand(10, 1, 4, 4), torch.arange(10) % 2
    )
    with pytest.raises(DataError, match=r"task 1 \(classes \[2, 3\]\) has no test example"):
        split(data, 2, "class")


# -- 9. an incomplete --data-dir --------------------------------------------------------------
def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _mnist_like(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", 20), ("t10k", 10)):
        _idx(folder / f"{prefix}-images-idx3-ubyte.gz", np.zeros((n, 28, 28)))
        _idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


def test_an_incomplete_data_dir_is_never_completed_from_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """old: a --data-dir missing one file was skipped silently and the system copy was used."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FORGETLESS_DATA", raising=False)
    monkeypatch.setattr(files, "SYSTEM_DATA_DIR", tmp_path / "system")
    _mnist_like(tmp_path / "system" / "mnist")
    mine = tmp_path / "mine"
    _mnist_like(mine)
    (mine / IDX_FILES[3]).unlink()
    with pytest.raises(DataError) as info:
        load_mnist(data_dir=mine, download=False)
    message = str(info.value)
    assert f"{mine} (--data-dir)" in message and f"lacks {IDX_FILES[3]}" in message and "one folder" in message
    monkeypatch.setenv("FORGETLESS_DATA", str(mine))
    with pytest.raises(DataError, match="FORGETLESS_DATA"):
        load_mnist(download=False)


# -- 10. non-finite hyperparameters -----------------------------------------------------------
def test_an_infinite_lambda_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """old: the run started, config.yaml stored ewc_lambda as ``null`` and the NaN run could not
    be resumed to the same error (the resume refused ``null`` as an invalid parameter)."""
    out = tmp_path / "r"
    line = refused(["run", *FAST, "--strategies", "ewc", "--set", "ewc.ewc_lambda=inf", "--out", str(out)], capsys)
    assert "ewc.ewc_lambda" in line and "finite" in line
    assert not out.exists()


def _float_fields() -> list[tuple[str, str]]:
    out = []
    for name, cls in sorted(discover().items()):
        for field, info in cls.Params.model_fields.items():
            if info.annotation in (float, float | None):
                out.append((name, field))
    return out


@pytest.mark.parametrize(("strategy", "field"), _float_fields())
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_every_strategy_refuses_non_finite_hyperparameters(strategy: str, field: str, value: float) -> None:
    """old: an unbounded float parameter took inf or nan (ewc_lambda, alpha, temperature, ...)."""
    cls = discover()[strategy]
    scenario = cls.scenarios[0]
    with pytest.raises(ConfigError, match=rf"{strategy}\.{field}"):
        make_strategies(strategy, {strategy: {field: value}}, scenario=scenario, stack=cls.stacks[0])


def test_non_finite_run_settings_and_yaml_infinities(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="weight_decay: Input should be a finite number"):
        make_config(weight_decay=float("inf"))
    config = tmp_path / "c.yaml"
    config.write_text("params: {ewc: {ewc_lambda: .inf}}\n")
    with pytest.raises(ConfigError, match=r"ewc\.ewc_lambda is inf"):
        make_config(**load_config_file(config))


# -- checkpoint schema ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return finished_run(tmp_path_factory.mktemp("schema") / "run", "--strategies", "naive")


def _edit_checkpoint(run: Path, part: str, edit) -> None:
    """Change one part of a checkpoint and re-sign it (a manifest that matches the edit)."""
    folder = run / ckpt.CHECKPOINT
    tree = ckpt.read_tree(folder, part)
    edit(tree)
    ckpt.write_tree(folder, part, tree)
    ckpt.write_manifest(folder)


def _in_task(tree: dict) -> None:
    tree["loop"].update(in_task=True, task_index=1, epoch=0, position=999, elapsed=1.0)
    tree["result"]["rows"] = tree["result"]["rows"][:1]
    tree["result"]["task_il_rows"] = tree["result"]["task_il_rows"][:1]  # class-IL: one row each
    tree["order"] = torch.arange(100)


EDITS = {
    # old behaviour: KeyError/TypeError "internal error", or a resume from a state the run never had
    "a missing loop": ("learner", lambda t: t.pop("loop"), "learner.json", "loop: Field required"),
    "a string step": ("learner", lambda t: t["loop"].update(step="3"), "learner.json", "loop.step"),
    "a task past the run": ("learner", lambda t: t["loop"].update(task_index=9), "learner.json", "loop.task_index"),
    "a negative step": ("learner", lambda t: t["loop"].update(step=-1), "learner.json", "loop.step"),
    "a position past the epoch": ("learner", _in_task, "learner.json", "loop.position: batch 999"),
    "other strategies": ("learner", lambda t: t.update(strategy_names=["ewc"]), "learner.json", "strategy_names"),
    "a run not in the config": (
        "experiment",
        lambda t: t["run"].update(strategy="er"),
        "experiment.json",
        "run.strategy: 'er' is not one of config.strategies",
    ),
    "a seed that is text": ("experiment", lambda t: t["run"].update(seed="0"), "experiment.json", "run.seed"),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_a_checkpoint_part_that_breaks_its_schema_is_named(
    checkpointed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    import shutil

    part, edit, name, field = EDITS[case]
    run = tmp_path / "run"
    shutil.copytree(checkpointed, run)
    _edit_checkpoint(run, part, edit)
    line = refused(["run", "--resume", str(run)], capsys)
    assert name in line and field in line and "delete the checkpoint folder" in line
    with pytest.raises(ckpt.CheckpointError):
        ckpt.validate_checkpoint(ckpt.load_checkpoint(run))


def test_a_valid_checkpoint_passes_its_schema(checkpointed: Path) -> None:
    saved = ckpt.load_checkpoint(checkpointed)
    assert ckpt.validate_checkpoint(saved) is saved


def test_output_error_is_typed() -> None:
    from forgetless.io import check_path_length

    with pytest.raises(OutputError):
        check_path_length(Path("/tmp") / ("x" * 4000), "--out")


def test_a_failed_force_run_never_lets_a_resume_reuse_the_old_benchmarks_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by the hostile probe: ``--force`` with another benchmark stopped on its data, the
    data was fixed, and ``--resume`` reported the old split-digits matrices as split-fmnist's."""
    import shutil

    system = Path("/usr/share/datasets/fashion-mnist")
    if not system.is_dir():
        pytest.skip("needs Debian's dataset-fashion-mnist")
    run = finished_run(tmp_path / "run")
    data = tmp_path / "fmnist"
    data.mkdir()
    names = sorted(p.name for p in system.glob("*.gz"))
    shutil.copy(system / names[0], data / names[0])  # one of four files: refused
    argv = ["run", "--benchmark", "split-fmnist", "--tasks", "2", "--epochs", "1", "--hidden", "16"]
    argv += ["--threads", "1", "--quiet", "--data-dir", str(data), "--out", str(run)]
    code, _, err = run_cli([*argv, "--force"], capsys)
    assert code == 2, err
    for name in names[1:]:
        shutil.copy(system / name, data / name)
    code, _, err = run_cli(["run", "--resume", str(run), "--quiet"], capsys)
    assert code == 2 and "metrics.json holds runs with benchmark 'split-digits'" in one_error_line(err)


def test_wide_unsigned_labels_are_checked_not_crashed_on() -> None:
    """Found by the hostile probe: uint64 labels ended in torch's "min_all not implemented"."""
    x = np.zeros((8, 1, 4, 4), np.uint8)
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1], np.uint64)
    assert from_tensors("u", x, y, x, y).train_y.dtype == torch.int64
    assert from_task_data("task", [(x, y, x, y), (x, y, x, y)]).tasks[0].train_y.dtype == torch.int64
    with pytest.raises(DataError, match="labels are class indices"):
        from_tensors("u", x, np.full(8, 2**63, np.uint64), x, y)
