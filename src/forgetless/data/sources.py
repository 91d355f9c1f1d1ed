"""The registry of built-in data sets, all loaded through one signature."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from forgetless.data.cifar import load_cifar10, load_cifar100
from forgetless.data.dataset import ImageDataset
from forgetless.data.digits import load_digits_dataset
from forgetless.data.idx import load_fashion_mnist, load_mnist
from forgetless.errors import unknown_name


def _digits(data_dir: Path | str | None = None, download: bool = True) -> ImageDataset:
    """scikit-learn's 8x8 digits; bundled, so ``data_dir`` and ``download`` are ignored."""
    return load_digits_dataset()


#: name -> loader ``(data_dir=None, download=True) -> ImageDataset``.
DATA_SOURCES: dict[str, Callable[..., ImageDataset]] = {
    "digits": _digits,
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
}


def load_dataset(name: str, data_dir: Path | str | None = None, download: bool = True) -> ImageDataset:
    """Load a built-in data set by name (see :data:`DATA_SOURCES`)."""
    loader = DATA_SOURCES.get(name)
    if loader is None:
        raise unknown_name("data set", name, list(DATA_SOURCES))
    return loader(data_dir=data_dir, download=download)
