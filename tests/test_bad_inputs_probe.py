"""The bad inputs of the hostile probe's config and CLI cases (issue #15, second pass): each a
clean refusal, exit 2 and one ``error:`` line in the CLI, a ConfigError/DataError in the API.

Each test records the behaviour before the fix in its docstring (``old:``).
"""

from __future__ import annotations

import logging
import sys
import types
import warnings
from pathlib import Path

import pytest
import yaml

from cli_helpers import FAST, one_error_line, run_cli
from forgetless.config import MAX_DEPTH, load_config_file, make_config
from forgetless.errors import ConfigError, DataError
from forgetless.models.model import user_backbone
from forgetless.strategies import make_strategies


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code, _, err = run_cli(argv, capsys)
    line = one_error_line(err)
    assert code == 2, err
    assert line.startswith("error: "), line
    return line


def config_of(text: str | bytes, tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# -- 1. a package.module:factory that is not a factory of backbones ----------------------------
@pytest.mark.parametrize(
    ("spec", "expected"),
    [("os:system", r"calling system\(\(1, 8, 8\)\) raised TypeError"), ("math:pi", r"'pi' is a float, not a function")],
)
def test_a_model_spec_that_is_no_backbone_factory_is_refused(spec: str, expected: str) -> None:
    """old: ``os:system`` -> internal TypeError (os.system called with the input shape)."""
    with pytest.raises(ConfigError, match=rf"^--model {spec}: {expected}.*a factory is a function of the input shape"):
        user_backbone(spec, (1, 8, 8))


def test_a_model_spec_that_is_no_backbone_factory_is_one_line_in_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["run", *FAST, "--strategies", "naive", "--model", "os:system", "--out", str(tmp_path / "r")]
    line = refused(argv, capsys)
    assert "--model os:system: calling system" in line and "returns a torch nn.Module" in line


# -- 2. a config that is not UTF-8 text --------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "byte"),
    [(bytes(range(256)) * 4, "0x80 at offset 128"), ("seed: 1\n".encode("utf-16"), "0xff at offset 0")],
    ids=["binary", "utf-16"],
)
def test_a_config_that_is_not_utf8_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, byte: str
) -> None:
    """old: UnicodeDecodeError (internal error, exit 1)."""
    path = config_of(content, tmp_path)
    with pytest.raises(ConfigError, match=rf"is not UTF-8 text \(byte {byte}\): a config must be UTF-8 YAML text"):
        load_config_file(path)
    line = refused(["run", "--quiet", "--config", str(path), "--out", str(tmp_path / "r")], capsys)
    assert "must be UTF-8 YAML text" in line
    assert not (tmp_path / "r").exists()


def test_a_config_with_control_characters_is_refused(tmp_path: Path) -> None:
    """old: "is not valid YAML: fix its syntax", which names no character."""
    with pytest.raises(ConfigError, match=r"holds the control character U\+0001 \(offset 7\)"):
        load_config_file(config_of("seed: 1\x01\n", tmp_path))


# -- 3. a config nested too deeply -------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "params: " + "[" * 5000 + "]" * 5000 + "\n",  # too deep for the YAML parser itself
        "params: " + "{a: " * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1) + "\n",  # parsed, then refused
        "params:\n" + "".join(" " * (i + 1) + f"k{i}:\n" for i in range(MAX_DEPTH + 1)),  # block style
        "params: &a [*a]\n",  # a list holding itself
    ],
    ids=["5000-levels", "past-the-limit", "block-style", "self-reference"],
)
def test_a_deeply_nested_config_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    """old: RecursionError (internal error, exit 1)."""
    path = config_of(text, tmp_path)
    with pytest.raises(ConfigError, match=rf"is nested too deeply \(more than {MAX_DEPTH} levels\)"):
        load_config_file(path)
    assert "nested too deeply" in refused(["run", "--quiet", "--config", str(path)], capsys)


def test_nesting_up_to_the_limit_and_shared_anchors_load(tmp_path: Path) -> None:
    deep = "params: " + "{a: " * (MAX_DEPTH - 1) + "1" + "}" * (MAX_DEPTH - 1) + "\n"
    assert isinstance(load_config_file(config_of(deep, tmp_path))["params"], dict)
    rows = "".join(f"r{i}: &r{i} [{', '.join([f'*r{i - 1}'] * 9)}]\n" for i in range(1, 20))
    bomb = "r0: &r0 [x]\n" + rows  # 9**19 paths, 20 distinct lists: checked in no time
    assert len(load_config_file(config_of(bomb, tmp_path))) == 20


# -- 4. YAML values of the wrong type ----------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("seed: '0'\n", r"seed: the text '0' where an integer is expected: write the number unquoted"),
        ("epochs: true\n", r"epochs: true \(a boolean\) where an integer is expected"),
        ("lr: '0.01'\n", r"lr: the text '0.01' where a number is expected"),
        ("lr: false\n", r"lr: false \(a boolean\) where a number is expected"),
        ("tasks: '2'\n", r"tasks: the text '2' where an integer is expected"),  # int | None
        ("hidden: [16, '16']\n", r"hidden: item 1 is the text '16' where an integer is expected"),
        ("download: 'no'\n", r"download: 'no' where a boolean is expected: write true or false"),
        ("download: 0\n", r"download: 0 where a boolean is expected"),
        ("out: ''\n", r"out: an empty path"),
    ],
)
def test_yaml_values_of_the_wrong_type_are_refused(tmp_path: Path, text: str, expected: str) -> None:
    """old: ``seed: '0'`` ran with seed 0, ``epochs: true`` with 1 epoch, ``out: ''`` in the
    current folder (pydantic's lax coercion)."""
    with pytest.raises(ConfigError, match=rf"^invalid configuration: {expected}"):
        make_config(**load_config_file(config_of(text, tmp_path)))


def test_numbers_read_as_numbers_yaml_1_2_exponents_included(tmp_path: Path) -> None:
    """PyYAML (YAML 1.1) reads ``1e-3`` as text; the config loader reads it as the number."""
    assert yaml.safe_load("lr: 1e-3") == {"lr": "1e-3"}  # why the loader needs its own resolver
    text = "lr: 1e-3\nweight_decay: 5E-4\nmomentum: .5e-1\nseed: 3\nhidden: [16, 8]\n"
    text += "buffer_size: 2e2\ndownload: false\n"
    config = make_config(**load_config_file(config_of(text, tmp_path)))
    assert (config.lr, config.weight_decay, config.momentum) == (0.001, 0.0005, 0.05)
    assert (config.seed, config.hidden, config.buffer_size, config.download) == (3, [16, 8], 200, False)
    assert load_config_file(config_of("name: 1e\nother: e5\n", tmp_path)) == {"name": "1e", "other": "e5"}
    with pytest.raises(ConfigError, match=r"^invalid configuration: lr: the text '1e-3'"):  # quoted: text
        make_config(**load_config_file(config_of("lr: '1e-3'\n", tmp_path)))


def test_the_api_is_as_strict_and_cli_flags_arrive_typed() -> None:
    with pytest.raises(ConfigError, match=r"seed: the text '0'"):
        make_config(seed="0")
    with pytest.raises(ConfigError, match=r"epochs: true \(a boolean\)"):
        make_config(epochs=True)
    config = make_config(seed=0, epochs=1, lr=1, hidden=[16], out=".", data_dir=Path("data"))
    assert (config.lr, config.out, config.data_dir) == (1.0, Path("."), Path("data"))


def test_a_run_from_a_yaml_config_with_an_exponent_lr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The --config / --out options (now read as text, then paths) and typed flags still run."""
    path = config_of("lr: 1e-3\nseed: 1\nstrategies: [naive]\n", tmp_path)
    out = tmp_path / "run"
    code, _, err = run_cli(["run", *FAST, "--config", str(path), "--seed", "2", "--out", str(out)], capsys)
    assert code == 0, err
    saved = make_config(**load_config_file(out / "config.yaml"))
    assert (saved.lr, saved.seed, saved.strategies, saved.out) == (0.001, 2, ["naive"], out)


# -- 5. empty strategy names -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ("naive,,ewc", "'naive,,ewc' holds an empty name"),
        ("naive,", "'naive,' holds an empty name"),
        ("ewc++er", "'ewc\\+\\+er' holds an empty method name"),
    ],
)
def test_an_empty_strategy_name_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], names: str, expected: str
) -> None:
    """old: ``naive,,ewc`` ran naive and ewc (the empty name dropped)."""
    line = refused(["run", *FAST, "--strategies", names, "--out", str(tmp_path / "r")], capsys)
    assert "strategy names must be non-empty" in line
    with pytest.raises(ConfigError, match=rf"strategies: {expected}: strategy names must be non-empty"):
        make_config(strategies=names.split(","))
    assert not (tmp_path / "r").exists()


def test_make_strategies_refuses_an_empty_method_name() -> None:
    """old: "unknown strategy '': valid names: ..." (the empty name looked up)."""
    with pytest.raises(ConfigError, match=r"^strategy 'ewc\+\+er' holds an empty method name"):
        make_strategies("ewc++er")
    with pytest.raises(ConfigError, match=r"holds an empty method name"):
        make_strategies("ewc+")


# -- 6. empty paths ----------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--out", "--resume", "--data-dir", "--config"])
def test_an_empty_path_option_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    """old: ``--out ""`` wrote the run into the current folder (``Path("")`` is ``.``);
    ``--config ""`` was ignored."""
    monkeypatch.chdir(tmp_path)
    line = refused(["run", *FAST, "--strategies", "naive", flag, ""], capsys)
    assert line == f"error: {flag} is empty: name a folder (. for the current one), or leave {flag} off"
    assert list(tmp_path.iterdir()) == []  # nothing written here


def test_an_empty_path_is_refused_in_the_api() -> None:
    for field in ("out", "data_dir"):
        with pytest.raises(ConfigError, match=rf"^invalid configuration: {field}: an empty path"):
            make_config(**{field: ""})


# -- 7. an unreachable hub: its retry log silenced ---------------------------------------------
def test_an_unreachable_hub_is_one_error_without_the_retry_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """old: 11 lines of huggingface_hub retry warnings on stderr before the error line."""
    from forgetless.integrations.hf.data import load_hub_dataset

    def load_dataset(name: str, split: str | None = None):
        for attempt in range(1, 6):
            logging.getLogger("huggingface_hub.utils._http").warning("'[Errno -2]' thrown while requesting HEAD")
            logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry %d/5].", attempt)
        logging.getLogger("datasets.load").warning("Using the latest cached version")
        warnings.warn("the hub is slow", UserWarning, stacklevel=1)
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    caplog.set_level(logging.DEBUG)
    level = logging.getLogger("huggingface_hub").level
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DataError, match=r"^hub:nobody/nothing: cannot load .*the hub is unreachable[^\n]*$"):
            load_hub_dataset("hub:nobody/nothing")
    assert caplog.records == [] and caught == []
    assert logging.getLogger("huggingface_hub").level == level  # restored


# -- 8. --hidden "" ----------------------------------------------------------------------------
@pytest.mark.parametrize("hidden", ["", "16,,16", "16,"])
def test_an_empty_hidden_width_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], hidden: str) -> None:
    """old: ``--hidden ""`` ran the default widths, ``16,,16`` ran [16, 16] (empty items dropped).
    A model has at least one hidden width (``hidden: []`` is refused), so "" is a slip, not "none"."""
    argv = ["run", "--epochs", "1", "--tasks", "2", "--quiet", "--strategies", "naive"]
    line = refused([*argv, "--hidden", hidden, "--out", str(tmp_path / "r")], capsys)
    assert line == (
        f"error: --hidden {hidden!r} must be comma-separated integers, e.g. 400,400 "
        "(leave --hidden off for the model's default widths)"
    )


@pytest.mark.parametrize("kind", ["task", "domain"])
def test_a_task_of_one_class_is_refused_where_its_head_would_have_one_output(kind: str) -> None:
    """Found by the hostile probe: 4 classes in 3 task-IL tasks gave a one-class task whose one-output
    head scored 1.0 whatever the model learnt."""
    from forgetless.training.experiment import load_scenario, resolve

    config = resolve(make_config(benchmark="split-digits", scenario=kind, tasks=10))
    with pytest.raises(ConfigError, match="leave a task with one class"):
        load_scenario(config, 0)
