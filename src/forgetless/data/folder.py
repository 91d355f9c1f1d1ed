"""Your own images in a class-per-sub-folder tree (the layout of torchvision's ``ImageFolder``).

``ROOT/<class>/**/*.png|jpg|jpeg`` (any case; sub-folders of a class folder are read too,
hidden files and folders and other files are skipped). Classes are the sub-folder names, sorted
(Python string order), labelled ``0..K-1`` in that order. With ``ROOT/train/<class>`` and
``ROOT/test/<class>`` (or ``ROOT/val/<class>``) those splits are used as they are; otherwise
each class is split on its own (stratified): a seeded ``test_fraction`` of its images, at least
one, is the test set. Images are decoded once to ``uint8 [N, C, H, W]`` (C = 1 when every image
is grayscale, else 3 RGB) and kept in the user cache (:mod:`forgetless.data.images`). Without
``image_size`` every image must have the same size; with it each is resized to
``image_size x image_size`` (antialiased bilinear, aspect ratio not kept).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from forgetless.data.dataset import ImageDataset
from forgetless.data.images import ImageRef, ImageTable, file_stamp, fingerprint, is_image_name, load_table
from forgetless.errors import DataError

NAME = "image-folder"
TEST_FRACTION = 0.2
"""Share of each class held out as its test set when the folder has no train/test split."""
SPLIT_SEED = 0
LAYOUT = "ROOT/<class>/*.png|jpg|jpeg (or ROOT/train/<class> and ROOT/test/<class>)"


def class_images(folder: Path) -> list[Path]:
    """The image files under one class folder, recursively, sorted by their relative path."""
    found: list[Path] = []
    for here, dirs, names in os.walk(folder, onerror=_raise):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(here) / n for n in names if is_image_name(n)]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _raise(error: OSError) -> None:
    raise DataError(f"cannot read {error.filename}: {error.strerror or error}")


def class_folders(root: Path) -> dict[str, Path]:
    """``{class name: folder}`` of the visible sub-folders of ``root``, sorted by name."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as error:
        raise DataError(f"cannot read {root}: {error.strerror or error}") from None
    return {e.name: Path(e.path) for e in entries if not e.name.startswith(".") and e.is_dir()}


def _listed(root: Path, folders: dict[str, Path]) -> dict[str, list[Path]]:
    listed = {}
    for name, folder in folders.items():
        images = class_images(folder)
        if not images:
            raise DataError(f"{folder}: class folder holds no .png/.jpg/.jpeg image: add images or remove the folder")
        listed[name] = images
    if not listed:
        raise DataError(f"{root} holds no class sub-folders: lay the images out as {LAYOUT}")
    return listed


def _test_folder(root: Path) -> Path | None:
    if not (root / "train").is_dir():
        return None
    for name in ("test", "val"):
        if (root / name).is_dir():
            return root / name
    return None


def stratified_split(counts: list[int], test_fraction: float, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per class of ``counts[k]`` images: sorted (train, test) positions, a seeded
    ``round(test_fraction * n)`` (at least 1, at most n - 1) of them in test."""
    rng = np.random.default_rng(seed)
    out = []
    for n in counts:
        order = rng.permutation(n)
        n_test = min(n - 1, max(1, round(test_fraction * n)))
        out.append((np.sort(order[n_test:]), np.sort(order[:n_test])))
    return out


def _table(root: Path, test_fraction: float, seed: int) -> tuple[ImageTable, str]:
    held_out = _test_folder(root)
    if held_out is not None:
        train = _listed(root / "train", class_folders(root / "train"))
        names = tuple(train)
        test = _listed(held_out, class_folders(held_out))
        unknown = [name for name in test if name not in train]
        if unknown:
            raise DataError(
                f"{held_out / unknown[0]}: test class {unknown[0]!r} has no folder in {root / 'train'}: every test "
                "class needs training images (add them, or remove the folder)"
            )
        index = {name: k for k, name in enumerate(names)}
        table = ImageTable(
            [ImageRef(p) for name in names for p in train[name]],
            np.repeat(np.arange(len(names)), [len(train[n]) for n in names]),
            [ImageRef(p) for name in test for p in test[name]],
            np.repeat([index[n] for n in test], [len(test[n]) for n in test]).astype(np.int64),
            names,
        )
        return table, f"{held_out.name} folder"
    listed = _listed(root, class_folders(root))
    names = tuple(listed)
    for name in names:
        if len(listed[name]) < 2:
            raise DataError(
                f"{root / name}: class folder holds one image: a class needs at least 2 (one to train on, one to "
                "test on); add images, or give ROOT/train and ROOT/test folders"
            )
    parts = stratified_split([len(listed[n]) for n in names], test_fraction, seed)
    train_refs, test_refs, train_y, test_y = [], [], [], []
    for k, (name, (train_at, test_at)) in enumerate(zip(names, parts, strict=True)):
        train_refs += [ImageRef(listed[name][i]) for i in train_at]
        test_refs += [ImageRef(listed[name][i]) for i in test_at]
        train_y += [k] * len(train_at)
        test_y += [k] * len(test_at)
    table = ImageTable(train_refs, np.asarray(train_y), test_refs, np.asarray(test_y), names)
    return table, f"test fraction {test_fraction:g}, seed {seed}"


def load_image_folder(
    data_dir: Path | str | None = None,
    download: bool = True,
    image_size: int | None = None,
    *,
    test_fraction: float = TEST_FRACTION,
    seed: int = SPLIT_SEED,
) -> ImageDataset:
    """The images under ``data_dir`` (``--data-dir``), one sub-folder per class; see the module
    docstring. ``download`` is ignored (nothing to download)."""
    if data_dir is None:
        raise DataError(f"the {NAME} data set reads your images: pass --data-dir ROOT, laid out as {LAYOUT}")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from forgetless.io import check_path_length

    check_path_length(Path(data_dir), "--data-dir", extra=0, error=DataError)
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise DataError(f"--data-dir {root} {what}: give the folder of your images, laid out as {LAYOUT}")
    root = root.resolve()
    table, split = _table(root, test_fraction, seed)
    stamps = [file_stamp(ref.path, ref.path.relative_to(root).as_posix()) for ref in table.train + table.test]
    sources = (f"{root} ({len(stamps):,} images, {split}; files+sizes+times sha256 {fingerprint(stamps)})",)
    return load_table(
        NAME,
        table,
        key_parts=[split, *stamps],
        origin=f"{root}",
        sources=sources,
        image_size=image_size,
    )
