"""The record of one published protocol: its table row, its config, and its local stand-in.

A :class:`Protocol` names a row of a paper's table (the :class:`Published` number, where it was
checked), the run that row describes as a :class:`~forgetless.config.RunConfig` dict, the data
it needs, and the same protocol on Fashion-MNIST (:meth:`Protocol.stand_in_config`) with the
number measured here for it (:class:`Measured`: mean over seeds and the tolerance CI holds it to).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Metric = Literal["acc", "task_il_acc"]
"""``acc``: final average accuracy over all tasks (ACC, Lopez-Paz & Ranzato 2017, eq. 1) of the
run's own scenario; ``task_il_acc``: the same with each prediction restricted to its task's
classes (the Task-IL numbers the DER paper reports from its Class-IL runs)."""

STAND_IN_BENCHMARKS: dict[str, str] = {
    "split-mnist": "split-fmnist",
    "permuted-mnist": "permuted-fmnist",
}
"""Benchmark -> its Fashion-MNIST version (same shapes, class counts and task cuts)."""

DATA_OF: dict[str, str] = {
    "split-mnist": "MNIST",
    "permuted-mnist": "MNIST",
    "split-fmnist": "Fashion-MNIST",
    "permuted-fmnist": "Fashion-MNIST",
    "split-cifar10": "CIFAR-10",
    "split-cifar100": "CIFAR-100",
}
"""Benchmark -> the data set it reads, as people name it."""


@dataclass(frozen=True)
class Published:
    """A number in a paper or a reference repository, as a fraction (0.9579, not 95.79)."""

    value: float
    metric: Metric = "acc"
    spread: float | None = None
    """The ``±`` printed beside it, as a fraction; ``None`` where none is given."""
    spread_kind: str = ""
    """What the ``±`` is, e.g. ``SEM over 20 runs`` or ``std over 10 runs``."""
    verified: bool = False
    """Whether the value was checked against the source text (see :attr:`checked_in`)."""
    checked_in: str = ""
    """Where the value was checked (file and commit); empty when unverified."""

    def text(self) -> str:
        spread = f" ± {100 * self.spread:.2f}" if self.spread is not None else ""
        flag = "" if self.verified else " (unverified)"
        return f"{100 * self.value:.2f}{spread}{flag}"


@dataclass(frozen=True)
class Measured:
    """What the stand-in gave on this machine (CPU, one thread): mean, per-seed values, tolerance."""

    values: tuple[float, ...]
    """The metric per seed (seeds 0, 1, ...)."""
    tolerance: float
    """``|ours - reference|`` allowed: the larger of 0.03 and 4x the seed std seen here."""
    seconds: float
    """Wall time of one seed here (one CPU thread), rounded."""

    @property
    def reference(self) -> float:
        return sum(self.values) / len(self.values)


@dataclass(frozen=True)
class Protocol:
    """One published table row, runnable with ``forgetless reproduce NAME``."""

    name: str
    source: str
    """The paper (authors, year, venue) or repository the number comes from."""
    row: str
    """Table and row, e.g. ``Table 2, EWC, Class-IL``."""
    published: Published
    config: dict[str, Any]
    """RunConfig fields as the source states them (``strategies`` holds one combination)."""
    notes: str = ""
    """Where our run differs from the paper's, and how each setting was converted."""
    needs: tuple[str, ...] = ()
    """What forgetless lacks to run this row (a strategy, a training option); empty: runnable."""
    stand_in: bool = True
    """Whether the row has a Fashion-MNIST stand-in (only MNIST protocols do)."""
    measured: Measured | None = None
    """The stand-in measured here."""
    original: Measured | None = None
    """The published protocol itself (its own data) measured here; none yet: MNIST and CIFAR are
    not on this machine."""
    ci: bool = False
    """Whether ``tests/test_reproduce.py`` checks the stand-in (cheap ones only)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def benchmark(self) -> str:
        return str(self.config["benchmark"])

    @property
    def data(self) -> str:
        """The data set the published protocol reads."""
        return DATA_OF.get(self.benchmark, self.benchmark)

    @property
    def stand_in_benchmark(self) -> str | None:
        return STAND_IN_BENCHMARKS.get(self.benchmark) if self.stand_in else None

    def stand_in_config(self) -> dict[str, Any] | None:
        """The same protocol on Fashion-MNIST; ``None`` where there is none."""
        bench = self.stand_in_benchmark
        return None if bench is None else {**self.config, "benchmark": bench}

    def status(self) -> str:
        """``needs: ...``, ``verified here``, ``stand-in verified``, ``stand-in not measured`` or
        ``needs data: ...``."""
        if self.needs:
            return "needs: " + ", ".join(self.needs)
        if self.original is not None:
            return "verified here"
        if self.measured is not None:
            return "stand-in verified"
        if self.stand_in_benchmark is not None:
            return "stand-in not measured"
        return f"needs data: {self.data} (not downloadable here)"

    def command(self, stand_in: bool = True) -> str:
        flag = " --stand-in" if stand_in and self.stand_in_benchmark is not None else ""
        return f"forgetless reproduce {self.name}{flag}"
