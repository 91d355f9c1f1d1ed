"""Shared mechanics of the benchmarks: the plain-loop reference, interleaved timing, peak RSS.

Every benchmark script in this folder times the library against what a researcher would write by
hand, in the same process, with repeats *interleaved* (A B A B ..., not A A B B) so that load
from other processes on a shared machine hits both sides alike; figures are medians.

Import it as ``from benchmarks.common import plain_loop``; the benchmarks run as modules from the
repository root (``python -m benchmarks.bench_core``). The strategies' ``family`` and
``speed_target`` come from the registry (:func:`strategy_names`, :func:`speed_target`).
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from forgetless.config import RunConfig, make_config
from forgetless.data.scenarios import Scenario
from forgetless.models import build_model
from forgetless.strategies import Strategy, discover
from forgetless.training.evaluation import task_accuracies
from forgetless.training.experiment import build_learner, load_scenario, resolve
from forgetless.training.learner import Learner

T = TypeVar("T")


FAMILY_ORDER = ("baseline", "regularization", "distillation", "replay", "isolation")
"""The order of the strategy families in the tables (any other family comes last)."""


# -- strategy metadata (from the registry) ------------------------------------------------------
def strategy_names(*families: str, kind: type[Strategy] = Strategy) -> list[str]:
    """Registered strategies of ``families`` (all when none) that subclass ``kind`` and run in
    ``forgetless run``: ``naive`` first, then by :data:`FAMILY_ORDER` and name."""
    registry = discover()

    def order(name: str) -> tuple[bool, int, str]:
        family = registry[name].family
        rank = FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER)
        return name != "naive", rank, name

    chosen = [
        n
        for n, cls in registry.items()
        if (not families or cls.family in families) and issubclass(cls, kind) and "run" in cls.stacks
    ]
    return sorted(chosen, key=order)


def family(name: str) -> str:
    """The registered strategy's ``family`` (``other`` for a name not registered)."""
    cls = discover().get(name)
    return cls.family if cls is not None else "other"


def speed_target(name: str) -> float | None:
    """The registered strategy's ``speed_target``: its highest acceptable wall-time ratio to
    ``naive`` (``naive``'s own: to :func:`plain_loop`), ``None`` where it has none."""
    cls = discover().get(name)
    return cls.speed_target if cls is not None else None


def configure_threads(threads: int) -> None:
    """Fix the intra-op thread count (timings are only comparable at one fixed count)."""
    torch.set_num_threads(threads)


def resolved_config(benchmark: str, scenario: str | None = None, **values: Any) -> RunConfig:
    """The benchmark's defaults (tasks, epochs, model, hidden) with ``values`` on top."""
    return resolve(make_config(benchmark=benchmark, scenario=scenario, strategies=["naive"], **values))


def load(config: RunConfig, seed: int = 0) -> Scenario:
    """The scenario of a resolved config, in memory."""
    return load_scenario(config, seed)


class Stopwatch:
    """Wall-clock and process CPU seconds of a ``with`` block.

    On a machine shared with other work, wall time includes time spent waiting for a core; with
    one intra-op thread, process CPU time does not, so its ratios are the steadier of the two.
    """

    wall: float = 0.0
    cpu: float = 0.0

    def __enter__(self) -> Stopwatch:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


# -- the two sides of every comparison ----------------------------------------------------------
def plain_loop(scenario: Scenario, config: RunConfig, seed: int, watch: Stopwatch | None = None) -> float:
    """The reference: what a researcher would write by hand, no library involved.

    Same arithmetic as the learner running ``naive``: slice a batch by a seeded permutation of
    in-memory uint8 tensors, scale to float, forward, cross-entropy, backward, Adam step; after
    every task, evaluate every task. Task-IL scenarios pass the task id to the multi-head model.
    Returns wall seconds (model construction excluded); ``watch`` also gets the CPU seconds.
    """
    torch.manual_seed(seed)
    model = build_model(
        config.model or "mlp",
        scenario.input_shape,
        scenario.head_sizes,
        scenario.uses_task_id,
        list(config.hidden or [400, 400]),
    )
    generator = torch.Generator().manual_seed(seed)
    watch = watch or Stopwatch()
    with watch:
        for index, task in enumerate(scenario.tasks):
            task_id = index if scenario.uses_task_id else None
            if scenario.active_outputs:
                model.head.set_active_outputs(scenario.active_outputs[index])
            optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)  # as the library
            for _ in range(config.epochs or 1):
                order = torch.randperm(task.num_train, generator=generator)
                for batch in order.split(config.batch_size):
                    x = task.train_x[batch].to(torch.float32).div_(scenario.max_value)
                    loss = F.cross_entropy(model(x, task_id), task.train_y[batch])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
            task_accuracies(model, scenario, config.eval_batch_size)
    return watch.wall


def library_run(
    scenario: Scenario,
    config: RunConfig,
    combination: str,
    seed: int,
    watch: Stopwatch | None = None,
) -> tuple[float, Learner]:
    """Train ``combination`` with the library's learner; returns (wall seconds, learner).

    Timed: every task's training and the evaluation after it (the accuracy matrix), exactly the
    plain loop's work. Not timed: building the model and strategies, and the random-init row.
    ``watch`` also gets the CPU seconds.
    """
    learner = build_learner(config, scenario, combination, seed)
    learner.evaluate()  # the random-init row the plain loop does not compute: exclude it
    watch = watch or Stopwatch()
    with watch:
        for index in range(scenario.num_tasks):
            learner.train_task(index)
    return watch.wall, learner


# -- timing -------------------------------------------------------------------------------------
def interleaved(
    candidates: dict[str, Callable[[int], T]],
    repeats: int,
    warmup: bool = True,
    on_round: Callable[[int], None] | None = None,
) -> dict[str, list[T]]:
    """What each candidate measured over ``repeats`` rounds; a round runs every candidate once.

    ``candidates[name](repeat)`` runs once and returns its own measurement (seconds, or a
    :class:`Stopwatch`), so setup can be left out. With ``warmup`` every candidate runs once,
    unmeasured, before the first round. ``on_round(r)`` is called after round ``r``.
    """
    if warmup:
        for run in candidates.values():
            run(0)
    times: dict[str, list[T]] = {name: [] for name in candidates}
    for repeat in range(repeats):
        for name, run in candidates.items():
            times[name].append(run(repeat))
        if on_round is not None:
            on_round(repeat)
    return times


def stopwatch(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, float]:
    """Median, min and max of per-round ratios (round ``r`` of both sides ran back to back)."""
    ratios = [a / b for a, b in zip(numerator, denominator, strict=True) if b > 0]
    if not ratios:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"median": median(ratios), "min": min(ratios), "max": max(ratios)}


# -- memory -------------------------------------------------------------------------------------
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_bytes() -> int:
    """Resident set size now (``/proc/self/statm``; falls back to the lifetime peak)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except OSError:
        return max_rss_bytes()


def max_rss_bytes() -> int:
    """Lifetime peak RSS of this process (``getrusage``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@dataclass
class MemoryReading:
    peak_bytes: int
    """Highest RSS seen while the block ran."""
    before_bytes: int
    """RSS when the block started."""

    @property
    def increase_bytes(self) -> int:
        return max(0, self.peak_bytes - self.before_bytes)


class PeakRSS:
    """Peak resident memory of a block, sampled by a background thread.

    ``getrusage`` gives only the lifetime peak of the process, useless for the second strategy
    measured in one process; ``tracemalloc`` does not see tensor storage. So a thread reads
    ``/proc/self/statm`` every ``interval`` seconds. Use it on untimed passes only (the thread
    costs a little CPU).

    >>> with PeakRSS() as memory:
    ...     run()
    >>> memory.reading.increase_bytes
    """

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self._stop = threading.Event()
        self._peak = 0
        self.reading = MemoryReading(0, 0)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, current_rss_bytes())

    @property
    def peak_so_far_bytes(self) -> int:
        """Highest resident memory the sampler has seen so far (readable while the block runs)."""
        return self._peak

    def __enter__(self) -> PeakRSS:
        before = current_rss_bytes()
        self._peak = before
        self.reading = MemoryReading(before, before)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, current_rss_bytes())
        self.reading = MemoryReading(self._peak, self.reading.before_bytes)


def mib(n_bytes: float) -> float:
    return n_bytes / 2**20
