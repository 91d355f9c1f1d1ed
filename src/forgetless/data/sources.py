"""The registry of built-in data sets, all loaded through one signature."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from forgetless.data.cifar import load_cifar10, load_cifar100
from forgetless.data.core50 import load_core50, load_core50_category
from forgetless.data.dataset import ImageDataset
from forgetless.data.digits import load_digits_dataset
from forgetless.data.folder import load_image_folder
from forgetless.data.idx import load_fashion_mnist, load_mnist
from forgetless.data.tinyimagenet import load_tiny_imagenet
from forgetless.errors import ConfigError, unknown_name


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
    "image-folder": load_image_folder,
    "tiny-imagenet": load_tiny_imagenet,
    "core50": load_core50,
    "core50-category": load_core50_category,
}

#: The sources decoded from image files, whose loaders also take ``image_size`` (``--image-size``).
RESIZABLE = frozenset({"image-folder", "tiny-imagenet", "core50", "core50-category"})


def load_dataset(
    name: str, data_dir: Path | str | None = None, download: bool = True, image_size: int | None = None
) -> ImageDataset:
    """Load a built-in data set by name (see :data:`DATA_SOURCES`); ``image_size`` resizes the
    images of the :data:`RESIZABLE` ones to ``image_size x image_size``."""
    loader = DATA_SOURCES.get(name)
    if loader is None:
        raise unknown_name("data set", name, list(DATA_SOURCES))
    if name in RESIZABLE:
        return loader(data_dir=data_dir, download=download, image_size=image_size)
    if image_size is not None:
        raise ConfigError(
            f"--image-size applies to data sets read from image files ({', '.join(sorted(RESIZABLE))}), "
            f"not to {name}: drop it"
        )
    return loader(data_dir=data_dir, download=download)
