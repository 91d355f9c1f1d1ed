"""Reduced ResNet-18 on CIFAR-shaped batches: the crop-flip augmentation's share of a training
step, and forgetless's step against a plain PyTorch step on the same device.

Synthetic ``uint8 [batch, 3, 32, 32]`` inputs (CIFAR is not downloadable here; the shapes and
dtypes are Split CIFAR-10's). Per round, interleaved: ``plain`` (scale, forward, cross-entropy,
backward, SGD step), ``augment`` (crop-flip of the batch alone) and ``library`` (forgetless's
learner ``_step`` on the same batch, with crop-flip). Targets (issue #17): augmentation <= 5 %
of a step; the library's step <= 1.10x the plain one. On an accelerator: ``--device cuda``.

    python -m benchmarks.bench_backbone --repeats 5 --steps 20 --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import configure_threads, interleaved, median, paired_ratios
from forgetless.config import make_config
from forgetless.data.scenarios import Scenario, Task
from forgetless.strategies.base import TrainingSet
from forgetless.training.augment import crop_flip
from forgetless.training.experiment import build_learner


def synthetic_cifar(batch: int, device: str) -> Scenario:
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch * 4, 3, 32, 32), dtype=torch.uint8, generator=generator)
    y = torch.randint(0, 2, (batch * 4,), generator=generator)
    task = Task(0, x, y, x[:batch], y[:batch], (0, 1))
    return Scenario("class", "synthetic-cifar", [task], (3, 32, 32), 255.0, [2], [2]).to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    configure_threads(args.threads)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    scenario = synthetic_cifar(args.batch, args.device)
    config = make_config(
        benchmark="split-cifar10", model="reduced-resnet18", hidden=[20], optimizer="sgd", lr=0.1,
        batch_size=args.batch, augment="crop-flip", device=args.device, tasks=1, epochs=1, strategies=["naive"],
    )  # fmt: skip
    learner = build_learner(config, scenario, "naive", 0)
    model, task = learner.model.train(), scenario.tasks[0]
    data = TrainingSet(task.train_x, task.train_y, None)
    learner._set_active_outputs(2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    index = torch.arange(args.batch, device=args.device)
    generator = torch.Generator().manual_seed(1)

    def timed(step) -> float:
        sync()
        started = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        return (time.perf_counter() - started) / args.steps

    def plain() -> None:
        x = crop_flip(scenario.to_float(task.train_x[: args.batch]), 4, generator)
        loss = F.cross_entropy(model(x), task.train_y[: args.batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    candidates = {
        "plain": lambda _: timed(plain),
        "augment": lambda _: timed(lambda: crop_flip(scenario.to_float(task.train_x[: args.batch]), 4, generator)),
        "library": lambda _: timed(lambda: learner._step(data, index, optimizer, None)),
    }
    times = interleaved(candidates, args.repeats)
    report = {
        "device": args.device,
        "batch": args.batch,
        "seconds_per_step": {name: median(values) for name, values in times.items()},
        "augment_share_of_plain_step": paired_ratios(times["augment"], times["plain"]),
        "library_over_plain": paired_ratios(times["library"], times["plain"]),
        "raw": times,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "raw"}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
