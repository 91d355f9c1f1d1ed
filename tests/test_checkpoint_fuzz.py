"""Hypothesis-driven mutation of a checkpoint (issue #15, item 4).

Two attackers, both against the checkpoint of a real run resumed through the CLI:

* **Bytes changed without re-signing** (a flipped bit anywhere in any file, tensor data
  included): the SHA-256 manifest must refuse every one, in one line naming the file.
* **JSON changed and re-signed** (a forged manifest that matches the edit): a key deleted, a
  value replaced by one of another JSON type, an unknown key added, anywhere in the tree of
  ``learner.json`` or ``experiment.json``. The resume must either refuse it in one line (exit 2)
  or end (exit 0) with exactly the accuracy matrix of the untouched checkpoint: never an internal
  error, a traceback, or a different result.

A value replaced by another of the *same* type and range (a forged but well-formed accuracy)
is not detectable by any schema, only by the hash, and is not generated here.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cli_helpers import finished_run, one_error_line, run_cli
from forgetless.training import checkpoint as ckpt

pytestmark = pytest.mark.slow


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code, _, err = run_cli(argv, capsys)
    return code, err


def _matrices(run: Path) -> dict[str, Any]:
    runs = json.loads((run / "metrics.json").read_text())["runs"]
    return {name: [r["accuracy_matrix"] for r in records] for name, records in runs.items()}


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A finished two-strategy run (its checkpoint is the last run's end) and its matrices."""
    run = finished_run(tmp_path_factory.mktemp("fuzz") / "run", "--strategies", "naive,ewc")
    return run, _matrices(run)


def _copy(run: Path) -> Path:
    target = Path(tempfile.mkdtemp(prefix="fuzz-")) / "run"
    shutil.copytree(run, target)
    return target


FILES = ["model.safetensors", "learner.safetensors", "learner.json", "experiment.json", "optimizer.json"]
FILES += ["strategies.safetensors", "strategies.json", "optimizer.safetensors"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(FILES), where=st.floats(0.0, 1.0, exclude_max=True), bit=st.integers(0, 7))
def test_any_flipped_bit_is_refused_by_the_manifest(
    original: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str], name: str, where: float, bit: int
) -> None:
    run = _copy(original[0])
    try:
        path = run / ckpt.CHECKPOINT / name
        data = bytearray(path.read_bytes())
        data[int(where * len(data))] ^= 1 << bit
        path.write_bytes(bytes(data))
        code, err = _cli(["run", "--resume", str(run)], capsys)
        line = one_error_line(err)
        assert code == 2 and name in line and "SHA-256" in line
    finally:
        shutil.rmtree(run.parent, ignore_errors=True)


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (dict keys and list indices) into a JSON tree, tensor references excluded."""
    found: list[tuple] = []
    if isinstance(tree, dict) and "__tensor__" not in tree:
        for key, value in tree.items():
            found += [(*prefix, key), *_paths(value, (*prefix, key))]
    elif isinstance(tree, list):
        for index, value in enumerate(tree[:8]):  # long lists (RNG words): their first entries
            found += [(*prefix, index), *_paths(value, (*prefix, index))]
    return found


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


VALUES_OF_KIND = {
    "NoneType": st.none(),
    "bool": st.booleans(),
    "number": st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False),
    "str": st.text(max_size=6),
    "list": st.lists(st.integers(-3, 3), max_size=3),
    "dict": st.dictionaries(st.text(max_size=4), st.integers(0, 3), max_size=2),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), part=st.sampled_from(["learner", "experiment"]))
def test_a_re_signed_structural_edit_is_refused_or_harmless(
    original: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str], data: st.DataObject, part: str
) -> None:
    source, matrices = original
    run = _copy(source)
    try:
        folder = run / ckpt.CHECKPOINT
        document = json.loads((folder / f"{part}.json").read_text())
        path = data.draw(st.sampled_from(_paths(document["data"])), label="path")
        parent = document["data"]
        for key in path[:-1]:
            parent = parent[key]
        old = parent[path[-1]]
        action = data.draw(st.sampled_from(["delete", "replace", "add"] if isinstance(parent, dict) else ["replace"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "add":
            parent[data.draw(st.text(min_size=1, max_size=6).filter(lambda k: k not in parent))] = 1
        else:
            kind = data.draw(st.sampled_from(sorted(set(VALUES_OF_KIND) - {_json_kind(old)})), label="kind")
            new = data.draw(VALUES_OF_KIND[kind], label="value")
            parent[path[-1]] = new
        (folder / f"{part}.json").write_text(json.dumps(document))
        ckpt.write_manifest(folder)
        code, err = _cli(["run", "--resume", str(run)], capsys)
        event(f"{part} {action}: exit {code}")
        if code == 2:
            one_error_line(err)
        else:
            assert code == 0, err
            assert _matrices(run) == matrices, f"{part} {action} at {path}: exit 0 with another result"
    finally:
        shutil.rmtree(run.parent, ignore_errors=True)


@pytest.mark.parametrize("key", ["\x1e", "two\nlines", "\u2028"])
def test_a_line_break_inside_a_message_stays_on_its_line(
    original: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str], key: str
) -> None:
    """Found by the fuzzer: a config key holding '\\x1e' (a line break to ``str.splitlines``)
    split the resume refusal in two. Every message is printed with its line breaks escaped."""
    run = _copy(original[0])
    try:
        folder = run / ckpt.CHECKPOINT
        document = json.loads((folder / "experiment.json").read_text())
        document["data"]["config"][key] = 1
        (folder / "experiment.json").write_text(json.dumps(document))
        ckpt.write_manifest(folder)
        code, err = _cli(["run", "--resume", str(run)], capsys)
        assert code == 2 and "another config" in one_error_line(err)
    finally:
        shutil.rmtree(run.parent, ignore_errors=True)


def _set_all(tree: Any, key: str, value: Any) -> int:
    """Set every ``key`` inside ``tree`` (nested dicts and lists) to ``value``; how many."""
    if isinstance(tree, list):
        return sum(_set_all(item, key, value) for item in tree)
    if not isinstance(tree, dict):
        return 0
    count = 0
    for name in tree:
        if name == key:
            tree[name] = value
            count += 1
        else:
            count += _set_all(tree[name], key, value)
    return count


@pytest.mark.parametrize(
    ("part", "key", "value", "says"),
    [
        ("strategies", "weight", "1", "weight '1'"),
        ("strategies", "weight", -1e6, "weight -1000000.0"),
        ("learner", "active", 999, "loop.active is 999"),
        ("learner", "active", 0, "loop.active is 0"),
    ],
)
def test_edits_the_hostile_probe_found_accepted_are_refused(
    original: tuple[Path, dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
    part: str,
    key: str,
    value: Any,
    says: str,
) -> None:
    """Found by a rerun of the hostile probe: a text or negative penalty weight (an internal
    error, or a silently reversed penalty) and an edited count of active class-IL outputs."""
    run = _copy(original[0])
    try:
        folder = run / ckpt.CHECKPOINT
        document = json.loads((folder / f"{part}.json").read_text())
        assert _set_all(document["data"], key, value) > 0
        (folder / f"{part}.json").write_text(json.dumps(document))
        ckpt.write_manifest(folder)
        sources = json.loads((run / "metrics.json").read_text())["data_sources"]
        code, err = _cli(["run", "--resume", str(run)], capsys)
        assert code == 2 and says in one_error_line(err)
        assert sources and json.loads((run / "metrics.json").read_text())["data_sources"] == sources
    finally:
        shutil.rmtree(run.parent, ignore_errors=True)


@pytest.mark.parametrize("keep", [0, 1])
def test_a_penalty_that_lost_terms_is_refused(
    original: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str], keep: int
) -> None:
    """Found by the hostile probe: a re-signed checkpoint whose EWC penalty lost its terms (all,
    or all but one) resumed without them. EWC keeps one term per finished task; the count is
    checked against the tasks done when the strategy's state is loaded."""
    run = _copy(original[0])
    try:
        folder = run / ckpt.CHECKPOINT
        document = json.loads((folder / "strategies.json").read_text())
        (ewc,) = [s for s in document["data"] if isinstance(s, dict) and "penalty" in s]
        terms = ewc["penalty"]["terms"]
        assert len(terms) > 1
        ewc["penalty"]["terms"] = {k: terms[k] for k in sorted(terms, key=int)[:keep]}
        (folder / "strategies.json").write_text(json.dumps(document))
        ckpt.write_manifest(folder)
        code, err = _cli(["run", "--resume", str(run)], capsys)
        line = one_error_line(err)
        assert code == 2 and f"ewc holds {keep} penalty terms" in line and "strategies" in line, line
    finally:
        shutil.rmtree(run.parent, ignore_errors=True)
