"""CIFAR-10 and CIFAR-100 from their binary distributions (never the pickled "python version").

Source: https://www.cs.toronto.edu/~kriz/cifar.html (Krizhevsky, 2009).

* ``cifar-10-binary.tar.gz`` holds ``cifar-10-batches-bin/data_batch_{1..5}.bin`` and
  ``test_batch.bin``; each record is 1 label byte then 3072 pixel bytes.
* ``cifar-100-binary.tar.gz`` holds ``cifar-100-binary/train.bin`` and ``test.bin``; each record
  is a coarse label byte, a fine label byte, then 3072 pixel bytes. We use the fine labels.

Pixels are 1024 red, 1024 green then 1024 blue bytes, each plane row-major 32x32, so a record
reshapes straight to ``[3, 32, 32]``. Either the extracted files or the tarball will do; the
tarball is read in place (members matched by base name, nothing is written to disk).
"""

from __future__ import annotations

import tarfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from forgetless.data.cache import cached_dataset, file_key
from forgetless.data.dataset import ImageDataset
from forgetless.data.files import find_dataset_files
from forgetless.errors import DataError

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip
PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class CifarFormat:
    """Layout of one CIFAR binary distribution."""

    name: str
    tarball: str
    subdir: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_bytes: int  # label bytes before the pixels of each record
    label_index: int  # which of them is the label we use
    class_names: tuple[str, ...]


CIFAR10 = CifarFormat(
    "cifar10", "cifar-10-binary.tar.gz", "cifar-10-batches-bin",
    tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",), 1, 0, CIFAR10_CLASSES,
)  # fmt: skip
CIFAR100 = CifarFormat(
    "cifar100", "cifar-100-binary.tar.gz", "cifar-100-binary",
    ("train.bin",), ("test.bin",), 2, 1, CIFAR100_CLASSES,
)  # fmt: skip


def parse_records(
    blob: bytes, source: str, label_bytes: int, label_index: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split CIFAR binary records into ``uint8 [N, 3, 32, 32]`` images and ``int64`` labels."""
    size = label_bytes + PIXELS
    if not blob or len(blob) % size:
        raise DataError(
            f"{source} holds {len(blob)} bytes, not a whole number of {size}-byte "
            "records: it is truncated or corrupt; delete it and download it again"
        )
    records = np.frombuffer(blob, dtype=np.uint8).reshape(-1, size)
    labels = records[:, label_index].astype(np.int64)
    if int(labels.max()) >= num_classes:
        raise DataError(
            f"{source} holds label {int(labels.max())}, expected 0..{num_classes - 1}: is it the right CIFAR file?"
        )
    return records[:, label_bytes:].reshape(-1, 3, 32, 32), labels


def read_tar_members(path: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """Read the regular-file members of a tarball whose base names are in ``names``."""
    wanted, found = set(names), {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                base = PurePosixPath(member.name).name
                if member.isfile() and base in wanted and base not in found:
                    found[base] = tar.extractfile(member).read()  # type: ignore[union-attr]
                    if len(found) == len(wanted):
                        break
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path} is truncated or corrupt ({error}): delete it and download it again") from error
    missing = sorted(wanted - set(found))
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}: is it the binary version? delete it and download it again")
    return found


def _sources(fmt: CifarFormat, folder: Path) -> list[Path]:
    """The extracted batch files (in ``folder`` or its sub-folder) if all are there, else the tarball."""
    names = fmt.train_files + fmt.test_files
    for where in (folder, folder / fmt.subdir):
        if all((where / n).is_file() for n in names):
            return [where / n for n in names]
    return [folder / fmt.tarball]


def _read_blobs(fmt: CifarFormat, sources: list[Path]) -> dict[str, tuple[bytes, str]]:
    """Each needed file's bytes and a name for it in messages, from files or the tarball."""
    names = fmt.train_files + fmt.test_files
    if len(sources) == len(names):
        try:
            return {n: (path.read_bytes(), str(path)) for n, path in zip(names, sources, strict=True)}
        except OSError as error:
            raise DataError(f"cannot read {error.filename}: {error.strerror}") from error
    tarball = sources[0]
    return {n: (b, f"{n} in {tarball}") for n, b in read_tar_members(tarball, names).items()}


def load_cifar(fmt: CifarFormat, data_dir: Path | str | None = None, download: bool = True) -> ImageDataset:
    """Load one CIFAR binary distribution, from its extracted files or its tarball."""
    names = list(fmt.train_files + fmt.test_files)
    folder = find_dataset_files(
        fmt.name,
        [fmt.tarball],
        data_dir,
        download,
        alternatives=[names, [f"{fmt.subdir}/{n}" for n in names]],
    )
    sources = _sources(fmt, folder)
    dataset = cached_dataset(fmt.name, [file_key(path) for path in sources], lambda: _decode(fmt, sources))
    return replace(dataset, sources=tuple(str(path.resolve()) for path in sources))


def _decode(fmt: CifarFormat, sources: list[Path]) -> ImageDataset:
    blobs = _read_blobs(fmt, sources)
    num_classes = len(fmt.class_names)

    def part(files: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [parse_records(*blobs[f], fmt.label_bytes, fmt.label_index, num_classes) for f in files]
        x = np.concatenate([p[0] for p in pairs])
        y = np.concatenate([p[1] for p in pairs])
        return torch.from_numpy(x), torch.from_numpy(y)

    train_x, train_y = part(fmt.train_files)
    test_x, test_y = part(fmt.test_files)
    return ImageDataset(
        fmt.name,
        train_x,
        train_y,
        test_x,
        test_y,
        num_classes=num_classes,
        max_value=255.0,
        class_names=fmt.class_names,
    )


def load_cifar10(data_dir: Path | str | None = None, download: bool = True) -> ImageDataset:
    """CIFAR-10: 50000 train / 10000 test colour images, 3x32x32, 10 classes."""
    return load_cifar(CIFAR10, data_dir, download)


def load_cifar100(data_dir: Path | str | None = None, download: bool = True) -> ImageDataset:
    """CIFAR-100 with its 100 fine labels: 50000 train / 10000 test, 3x32x32."""
    return load_cifar(CIFAR100, data_dir, download)
