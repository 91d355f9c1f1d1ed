"""Section ``buffer``: bytes per stored sample of the replay memory, and the cost of add/sample."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch

from benchmarks.common import mib, stopwatch
from benchmarks.suite.shared import ScenarioCache

TITLE = "replay buffer: bytes per stored sample, microseconds per add/sample of a batch"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No flags of its own (``--benchmark`` chooses the data)."""


def quick(args: argparse.Namespace) -> None:
    """Already quick."""


def run(args: argparse.Namespace, cache: ScenarioCache) -> dict[str, Any]:
    """Bytes per stored sample, and microseconds per add/sample call of a batch."""
    try:
        from forgetless.strategies._buffer import MemoryBuffer
    except ImportError:
        return {"status": "not available"}
    config, scenario = cache.get(args.benchmark, "class")
    task = scenario.tasks[0]
    batch = config.batch_size
    raw, labels = task.train_x[: 4 * batch], task.train_y[: 4 * batch]
    logits = torch.randn(raw.shape[0], scenario.head_sizes[0])
    float_input_bytes = int(np.prod(scenario.input_shape)) * 4
    cases = {
        "reservoir": dict(selection="reservoir", logits=None),
        "balanced": dict(selection="balanced", logits=None),
        "reservoir + logits (DER)": dict(selection="reservoir", logits=logits),
    }
    rows = []
    for label, case in cases.items():
        capacity = config.buffer_size
        buffer = MemoryBuffer(capacity, case["selection"], seed=0, num_groups=scenario.head_sizes[0])

        def add(buffer=buffer, case=case) -> None:
            for start in range(0, raw.shape[0], batch):
                part = slice(start, start + batch)
                extra = case["logits"][part] if case["logits"] is not None else None
                buffer.add(raw[part], labels[part], 0, logits=extra, groups=labels[part])

        add()
        add_seconds = min(stopwatch(add) for _ in range(5)) / (raw.shape[0] // batch)
        sample_seconds = min(stopwatch(lambda b=buffer: b.sample(batch)) for _ in range(20))
        rows.append(
            {
                "case": label,
                "capacity": capacity,
                "bytes_per_sample": buffer.bytes_per_sample(),
                "input_dtype": str(buffer.inputs.dtype).replace("torch.", ""),
                "float32_input_bytes": float_input_bytes,
                "total_mib": mib(buffer.memory_bytes()),
                "add_batch_microseconds": add_seconds * 1e6,
                "sample_batch_microseconds": sample_seconds * 1e6,
            }
        )
    return {"status": "ok", "batch": batch, "rows": rows}


def markdown(buffer: dict[str, Any]) -> list[str]:
    if buffer["status"] != "ok":
        return []
    lines = [
        "## Replay buffer memory",
        "",
        f"| case | capacity | input dtype | bytes/sample | (float32 input alone) | total MiB "
        f"| add {buffer['batch']} rows µs | sample {buffer['batch']} rows µs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in buffer["rows"]:
        lines.append(
            f"| {row['case']} | {row['capacity']} | {row['input_dtype']} "
            f"| {row['bytes_per_sample']} | {row['float32_input_bytes']} "
            f"| {row['total_mib']:.2f} | {row['add_batch_microseconds']:.0f} "
            f"| {row['sample_batch_microseconds']:.0f} |"
        )
    return [*lines, ""]
