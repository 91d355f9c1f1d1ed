"""MNIST and Fashion-MNIST from their IDX files.

IDX format (http://yann.lecun.com/exdb/mnist/): a big-endian header -- two zero bytes, a type
byte (``0x08`` = unsigned byte), the number of dimensions -- then one ``uint32`` per dimension,
then the data, row-major. Files may be gzip-compressed (``.gz``, as distributed) or not.
Fashion-MNIST (https://github.com/zalandoresearch/fashion-mnist) uses the same files and names.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from forgetless.data.cache import cached_dataset, file_key
from forgetless.data.dataset import ImageDataset
from forgetless.data.files import find_dataset_files
from forgetless.errors import DataError

IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_UBYTE = 0x08


def _corrupt(path: Path, problem: str) -> DataError:
    return DataError(f"{path} is truncated or corrupt ({problem}): delete it and download it again")


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file (gzip-compressed if its name ends in ``.gz``)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from error
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise _corrupt(path, f"bad gzip data: {error}") from error
    header = 4 + 4 * ndim
    if raw[:4] != bytes((0, 0, _UBYTE, ndim)):
        raise DataError(
            f"{path} is not an IDX file of unsigned bytes with {ndim} dimension(s) "
            f"(magic number {raw[:4].hex() or 'missing'}, expected 0000{_UBYTE:02x}{ndim:02x}): "
            "delete it and download it again"
        )
    if len(raw) < header:
        raise _corrupt(path, f"{len(raw)} bytes, shorter than its {header}-byte header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + math.prod(dims)
    if len(raw) != expected:
        shape = "x".join(map(str, dims))
        raise _corrupt(path, f"{len(raw)} bytes, its {shape} header promises {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def load_idx_pair(
    images_path: Path,
    labels_path: Path,
    image_shape: tuple[int, int] = (28, 28),
    num_classes: int = 10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read matching image and label IDX files: ``uint8 [N, 1, H, W]`` and ``int64 [N]``."""
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if images.shape[1:] != image_shape:
        raise DataError(
            f"{images_path} holds {images.shape[1]}x{images.shape[2]} images, "
            f"expected {image_shape[0]}x{image_shape[1]}"
        )
    if len(labels) != len(images):
        raise DataError(
            f"{labels_path} holds {len(labels)} labels but {images_path} holds "
            f"{len(images)} images: the files do not belong together"
        )
    if len(labels) and int(labels.max()) >= num_classes:
        raise DataError(f"{labels_path} holds label {int(labels.max())}, expected labels 0..{num_classes - 1}")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _load(name: str, class_names: tuple[str, ...], data_dir: Path | str | None, download: bool) -> ImageDataset:
    uncompressed = [f.removesuffix(".gz") for f in IDX_FILES]
    folder = find_dataset_files(name, IDX_FILES, data_dir, download, alternatives=[uncompressed])

    def pick(filename: str) -> Path:
        gz = folder / filename
        return gz if gz.is_file() else folder / filename.removesuffix(".gz")

    files = [pick(filename) for filename in IDX_FILES]

    def decode() -> ImageDataset:
        train_x, train_y = load_idx_pair(files[0], files[1])
        test_x, test_y = load_idx_pair(files[2], files[3])
        return ImageDataset(name, train_x, train_y, test_x, test_y, 10, max_value=255.0, class_names=class_names)

    dataset = cached_dataset(name, [file_key(f) for f in files], decode)
    return replace(dataset, sources=tuple(str(f.resolve()) for f in files))


def load_mnist(data_dir: Path | str | None = None, download: bool = True) -> ImageDataset:
    """MNIST handwritten digits (LeCun et al.): 60000 train / 10000 test, 1x28x28, 10 classes."""
    return _load("mnist", MNIST_CLASSES, data_dir, download)


def load_fashion_mnist(data_dir: Path | str | None = None, download: bool = True) -> ImageDataset:
    """Fashion-MNIST (Xiao et al., 2017): 60000 train / 10000 test, 1x28x28, 10 classes."""
    return _load("fashion-mnist", FASHION_MNIST_CLASSES, data_dir, download)
