"""Smoke test of the benchmark suite's harness (``python -m benchmarks.run_all``) on a tiny config.

Not a timing test: it checks that every section runs and that the JSON and Markdown it writes
have the documented schema. Split-digits (offline), one strategy, one round.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from benchmarks import common, run_all

TINY = [
    "--benchmark", "split-digits",
    "--strategies", "naive",
    "--repeats", "1",
    "--sections", "strategies,fisher,buffer,eval,scaling",
    "--fisher-samples", "16",
    "--fisher-repeats", "1",
    "--eval-benchmark", "split-digits",
    "--eval-tasks", "3",
    "--scaling-benchmark", "split-digits",
    "--scaling-tasks", "2,3",
    "--scaling-strategies", "naive,not-a-strategy",
    "--scaling-train", "100",
    "--scaling-test", "50",
]  # fmt: skip


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("suite")
    args = run_all.parse_args([*TINY, "--out", str(out)])
    run_all.run_suite(args)
    torch.set_num_threads(1)
    return json.loads((out / "suite.json").read_text()), out


def test_json_schema(suite: tuple[dict, Path]) -> None:
    results, _ = suite
    assert set(results) == {"strategies", "fisher", "buffer", "eval", "scaling", "meta"}
    assert results["meta"]["threads"] == 1 and results["meta"]["total_seconds"] > 0

    section = results["strategies"]
    assert section["benchmark"] == "split-digits" and section["repeats"] == 1
    assert len(section["plain"]["class"]["seconds_all"]) == 1
    (naive,) = section["rows"]
    assert naive["strategy"] == "naive" and naive["status"] == "ok" and naive["scenario"] == "class"
    for key in ("seconds", "samples_per_second", "peak_rss_mib", "rss_increase_mib", "acc", "bwt"):
        assert isinstance(naive[key], float) and naive[key] == naive[key], key  # a number, not NaN
    assert 0.0 <= naive["acc"] <= 1.0 and -1.0 <= naive["bwt"] <= 1.0
    assert naive["ratio_naive"]["median"] == pytest.approx(1.0)
    assert naive["ratio_plain"]["median"] > 0 and naive["target"] == "<= 1.1x plain"
    assert isinstance(naive["target_met"], bool)
    assert naive["samples_per_second"] == pytest.approx(section["train_samples"] * section["epochs"] / naive["seconds"])

    fisher = results["fisher"]
    assert fisher["status"] == "ok" and fisher["samples"] == 16
    for label in ("fisher_sampled", "mas"):
        assert set(fisher[label]["seconds"]) == {"identity", "vmap", "loop"}
        assert fisher[label]["max_relative_difference"] < 1e-4  # batched == loop (float32)

    buffer = results["buffer"]
    assert buffer["status"] == "ok"
    by_case = {row["case"]: row for row in buffer["rows"]}
    # digits: 64 uint8 pixels + label + task id (int64 each); DER adds 10 logits + active count
    assert by_case["reservoir"]["bytes_per_sample"] == 64 + 8 + 8
    assert by_case["reservoir + logits (DER)"]["bytes_per_sample"] == 64 + 8 + 8 + 10 * 4 + 8

    evaluation = results["eval"]
    assert evaluation["matrix"] == "3x3" and evaluation["seconds"] > 0

    scaling = results["scaling"]
    assert scaling["not_available"] == ["not-a-strategy"]
    assert [(r["strategy"], r["tasks"]) for r in scaling["rows"]] == [("naive", 2), ("naive", 3)]
    assert all(r["train_seconds"] + r["eval_seconds"] <= r["seconds"] * 1.5 for r in scaling["rows"])


def test_markdown_has_every_section(suite: tuple[dict, Path]) -> None:
    _, out = suite
    text = (out / "suite.md").read_text()
    for heading in (
        "## Strategies",
        "## Fisher",
        "## Replay buffer",
        "## Evaluation",
        "## Scaling",
    ):
        assert heading in text
    assert "| naive | baseline | class-IL |" in text


def test_unregistered_strategy_is_reported_not_run(tmp_path: Path) -> None:
    args = run_all.parse_args(
        ["--benchmark", "split-digits", "--strategies", "naive,not-a-strategy", "--repeats", "1"]
        + ["--sections", "strategies", "--out", str(tmp_path)]
    )
    results = run_all.run_suite(args)
    rows = {r["strategy"]: r for r in results["strategies"]["rows"]}
    assert rows["not-a-strategy"]["status"] == "not available"
    assert "not available" in (tmp_path / "suite.md").read_text()


def test_unknown_section_is_refused() -> None:
    with pytest.raises(SystemExit):
        run_all.parse_args(["--sections", "strategies,bogus"])


def test_paired_ratios_pairs_rounds() -> None:
    ratios = common.paired_ratios([2.0, 3.0, 10.0], [1.0, 2.0, 4.0])
    assert ratios == {"median": 2.0, "min": 1.5, "max": 2.5}  # per round, not ratio of medians


def test_peak_rss_sees_an_allocation() -> None:
    # Hold the block until the sampler thread has had its turn: on a busy CI machine the thread
    # may not be scheduled during a short-lived allocation, which is a missed sample, not a bug.
    with common.PeakRSS(interval=0.001) as memory:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        block.add_(1)
        deadline = time.monotonic() + 10.0
        while memory.peak_so_far_bytes < memory.reading.before_bytes + 48 * 2**20:
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        del block
    assert memory.reading.peak_bytes >= memory.reading.before_bytes + 48 * 2**20


def test_every_strategy_declares_its_family_and_speed_target() -> None:
    from forgetless.strategies import discover

    for name, cls in discover().items():
        assert cls.family in common.FAMILY_ORDER, name
        assert cls.speed_target is None or cls.speed_target >= 1.0, name
    assert common.speed_target("naive") == pytest.approx(1.10)
    assert common.speed_target("not-a-strategy") is None and common.family("not-a-strategy") == "other"


def test_strategy_names_come_from_the_registry_by_family() -> None:
    names = common.strategy_names()
    assert names[0] == "naive" and {"ewc", "er", "lwf", "packnet"} <= set(names)
    assert set(common.strategy_names("distillation")) == {"lwf"}
    families = [common.FAMILY_ORDER.index(common.family(n)) for n in names[1:]]
    assert families == sorted(families)
