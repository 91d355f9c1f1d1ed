"""Named benchmarks: a data source, a builder and sensible defaults for each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from forgetless.data import scenarios
from forgetless.data.scenarios import Scenario, ScenarioKind
from forgetless.errors import ConfigError, unknown_name


@dataclass(frozen=True)
class Benchmark:
    """How to build one benchmark, and the defaults a run uses unless told otherwise."""

    name: str
    dataset: str
    builder: Literal["split", "permuted", "rotated", "domains"] = "split"
    n_tasks: int = 5
    scenario: ScenarioKind = "class"
    model: str = "mlp"
    hidden: tuple[int, ...] = (400, 400)
    epochs: int = 1
    description: str = ""
    first_task_classes: int | None = None
    """Split benchmarks: the first task's classes (the rest shared evenly), else all even."""


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark(
            "split-digits",
            "digits",
            "split",
            5,
            "class",
            "mlp",
            (100, 100),
            20,
            "UCI digits (bundled with scikit-learn, offline): 5 tasks of 2 classes",
        ),
        Benchmark(
            "split-mnist",
            "mnist",
            "split",
            5,
            "class",
            "mlp",
            (400, 400),
            1,
            "MNIST: 5 tasks of 2 digits",
        ),
        Benchmark(
            "split-fmnist",
            "fashion-mnist",
            "split",
            5,
            "class",
            "mlp",
            (400, 400),
            1,
            "Fashion-MNIST: 5 tasks of 2 classes",
        ),
        Benchmark(
            "permuted-mnist",
            "mnist",
            "permuted",
            5,
            "domain",
            "mlp",
            (400, 400),
            1,
            "MNIST with one fixed pixel permutation per task",
        ),
        Benchmark(
            "permuted-fmnist",
            "fashion-mnist",
            "permuted",
            5,
            "domain",
            "mlp",
            (400, 400),
            1,
            "Fashion-MNIST with one fixed pixel permutation per task",
        ),
        Benchmark(
            "rotated-fmnist",
            "fashion-mnist",
            "rotated",
            5,
            "domain",
            "mlp",
            (400, 400),
            1,
            "Fashion-MNIST rotated by a fixed angle per task (0..180 degrees)",
        ),
        Benchmark(
            "split-cifar10",
            "cifar10",
            "split",
            5,
            "class",
            "cnn",
            (32, 64),
            1,
            "CIFAR-10 (binary distribution): 5 tasks of 2 classes",
        ),
        Benchmark(
            "split-cifar100",
            "cifar100",
            "split",
            10,
            "class",
            "cnn",
            (32, 64),
            1,
            "CIFAR-100 (binary distribution): 10 tasks of 10 classes",
        ),
        Benchmark(
            "split-image-folder",
            "image-folder",
            "split",
            5,
            "class",
            "cnn",
            (32, 64),
            1,
            "your images: --data-dir ROOT with ROOT/<class>/*.png|jpg (or ROOT/train, ROOT/test); 5 tasks",
        ),
        Benchmark(
            "split-tiny-imagenet",
            "tiny-imagenet",
            "split",
            10,
            "class",
            "reduced-resnet18",
            (20,),
            1,
            "Tiny-ImageNet (Le & Yang 2015), 64x64: 10 tasks of 20 classes",
        ),
        Benchmark(
            "core50-ni",
            "core50",
            "domains",
            8,
            "domain",
            "reduced-resnet18",
            (20,),
            1,
            "CORe50 new instances (Lomonaco & Maltoni 2017): 8 training sessions of the 50 objects",
        ),
        Benchmark(
            "core50-nc",
            "core50",
            "split",
            9,
            "class",
            "reduced-resnet18",
            (20,),
            1,
            "CORe50 new classes (Lomonaco & Maltoni 2017): 10 objects, then 8 tasks of 5 (s3, s7, s10 test)",
            first_task_classes=10,
        ),
        Benchmark(
            "core50-ni-category",
            "core50-category",
            "domains",
            8,
            "domain",
            "reduced-resnet18",
            (20,),
            1,
            "CORe50 new instances by category: 8 training sessions, 10 categories",
        ),
        Benchmark(
            "core50-nc-category",
            "core50-category",
            "split",
            5,
            "class",
            "reduced-resnet18",
            (20,),
            1,
            "CORe50 new classes by category: 5 tasks of 2 categories",
        ),
    ]
}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise unknown_name("benchmark", name, list(BENCHMARKS))
    return BENCHMARKS[name]


def build_scenario(
    name: str,
    kind: ScenarioKind | None = None,
    n_tasks: int | None = None,
    seed: int = 0,
    class_order_seed: int | None = None,
    data_dir: Path | None = None,
    download: bool = True,
    image_size: int | None = None,
) -> Scenario:
    """Load the data of benchmark ``name`` and cut it into a scenario of ``kind``.

    ``seed`` fixes the permutations of permuted benchmarks; ``class_order_seed`` shuffles the
    class order of split benchmarks (``None``: classes in their natural order); ``image_size``
    resizes the images of benchmarks read from image files.
    """
    from forgetless.data.images import check_copy_fits
    from forgetless.data.sources import load_dataset

    bench = get_benchmark(name)
    kind = kind or bench.scenario
    if kind not in scenarios.SCENARIOS:
        raise unknown_name("scenario", kind, list(scenarios.SCENARIOS))
    n_tasks = bench.n_tasks if n_tasks is None else n_tasks
    if n_tasks < 1:
        raise ConfigError(f"--tasks must be at least 1, got {n_tasks}")
    data = load_dataset(bench.dataset, data_dir=data_dir, download=download, image_size=image_size)
    if bench.builder == "split":
        if class_order_seed is not None:
            check_copy_fits(data, "a shuffled class order", "leave class_order_seed unset")
        elif not (_sorted(data.train_y) and _sorted(data.test_y)):
            check_copy_fits(data, f"{name}'s split (its images are not stored class by class)")
        order = scenarios.class_order(data.num_classes, class_order_seed)
        scenario = scenarios.split(data, n_tasks, kind, order, first_task_classes=bench.first_task_classes)
    elif bench.builder == "domains":
        scenario = scenarios.by_domain(data, n_tasks, kind)
    elif bench.builder == "permuted":
        check_copy_fits(data, "a permuted stream")
        scenario = scenarios.permuted(data, n_tasks, kind, seed=seed)
    else:
        check_copy_fits(data, "a rotated stream")
        scenario = scenarios.rotated(data, n_tasks, kind)
    scenario.name = name
    return scenario


def _sorted(labels) -> bool:
    """Whether labels never decrease (each class one run of rows: a split slices views)."""
    return bool((labels[1:] >= labels[:-1]).all()) if len(labels) > 1 else True
