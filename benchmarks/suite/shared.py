"""What the suite's sections share: scenarios built once, and small formatting helpers."""

from __future__ import annotations

import math
import platform
from pathlib import Path
from typing import Any

from benchmarks.common import load, resolved_config
from forgetless.config import RunConfig
from forgetless.data.scenarios import Scenario

BENCHMARKS = Path(__file__).resolve().parents[1]
"""The ``benchmarks`` folder."""
ROOT = BENCHMARKS.parent
"""The repository root (where ``python -m benchmarks.NAME`` runs)."""


class ScenarioCache:
    """Scenarios built once per (benchmark, kind, tasks) and shared by the sections."""

    def __init__(self, threads: int):
        self.threads = threads
        self._cache: dict[tuple[str, str | None, int | None], tuple[RunConfig, Scenario]] = {}

    def get(self, benchmark: str, kind: str | None, tasks: int | None = None) -> tuple[RunConfig, Scenario]:
        key = (benchmark, kind, tasks)
        if key not in self._cache:
            config = resolved_config(benchmark, kind, tasks=tasks, threads=self.threads)
            self._cache[key] = (config, load(config, 0))
        return self._cache[key]


def error_text(error: BaseException) -> str:
    """One line for a result row: the exception's type and first line."""
    return f"error: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200]


def scenario_kind(strategy_cls: type) -> str:
    """Class-IL where the strategy supports it, else task-IL (methods that need task ids)."""
    return "class" if "class" in strategy_cls.scenarios else "task"


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fmt(value: Any, spec: str = ".2f", missing: str = "-") -> str:
    """``value`` formatted with ``spec``; ``missing`` for ``None`` or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def met(flag: bool) -> str:
    return "met" if flag else "**missed**"


def int_list(text: str) -> list[int]:
    """``"5,10,20"`` -> ``[5, 10, 20]`` (an argparse type)."""
    return [int(v) for v in text.split(",") if v.strip()]


def str_list(text: str) -> list[str]:
    """``"naive, ewc"`` -> ``["naive", "ewc"]`` (an argparse type)."""
    return [v.strip() for v in text.split(",") if v.strip()]
