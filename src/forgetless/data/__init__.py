"""Data: sources (digits, MNIST, Fashion-MNIST, CIFAR, your own), scenarios and benchmarks."""

from forgetless.data.benchmarks import BENCHMARKS, build_scenario, get_benchmark
from forgetless.data.dataset import ImageDataset
from forgetless.data.scenarios import SCENARIOS, Scenario, Task, permuted, rotated, split

__all__ = [
    "BENCHMARKS",
    "SCENARIOS",
    "ImageDataset",
    "Scenario",
    "Task",
    "build_scenario",
    "get_benchmark",
    "permuted",
    "rotated",
    "split",
]
