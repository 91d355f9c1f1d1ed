"""Tiny-ImageNet (Le & Yang 2015, "Tiny ImageNet Visual Recognition Challenge", Stanford CS231N):
200 ImageNet classes at 64x64, 500 training and 50 labelled validation images per class.

Source: http://cs231n.stanford.edu/tiny-imagenet-200.zip, read in place or extracted:

* ``tiny-imagenet-200/wnids.txt``: the classes' WordNet ids, one a line;
* ``tiny-imagenet-200/train/<wnid>/images/<wnid>_<i>.JPEG`` (and ``<wnid>_boxes.txt``, unused);
* ``tiny-imagenet-200/val/images/val_<i>.JPEG`` with ``val/val_annotations.txt``, one
  ``FILE<tab>WNID<tab>x0<tab>y0<tab>x1<tab>y1`` line per image;
* ``tiny-imagenet-200/test/images/*.JPEG``: no public labels, not used.

The labelled validation set is the test set, as in the continual-learning papers that use
Tiny-ImageNet. Labels follow the sorted wnids (torchvision ``ImageFolder``'s order), whatever
order ``wnids.txt`` lists them in; some images are grayscale JPEGs, all are decoded to RGB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from forgetless.data.dataset import ImageDataset
from forgetless.data.files import find_dataset_files
from forgetless.data.images import ImageTable, SourceTree, is_image_name, load_tree
from forgetless.errors import DataError

NAME = "tiny-imagenet"
ARCHIVE = "tiny-imagenet-200.zip"
SUBDIR = "tiny-imagenet-200"
MARKERS = ("wnids.txt", "val/val_annotations.txt")


def _zip_prefix(names: list[str]) -> str | None:
    """The folder of ``wnids.txt`` in the archive (``tiny-imagenet-200/``), the shallowest one."""
    found = [n[: -len("wnids.txt")] for n in names if n == "wnids.txt" or n.endswith("/wnids.txt")]
    return min(found, key=lambda p: p.count("/")) if found else None


def read_wnids(tree: SourceTree) -> list[str]:
    """The class ids of ``wnids.txt``, checked: non-empty, no repeats."""
    wnids = [line.strip() for line in tree.read_text("wnids.txt").splitlines() if line.strip()]
    if not wnids:
        raise DataError(f"{tree.where('wnids.txt')} lists no class: extract or download the data set again")
    repeated = sorted({w for w in wnids if wnids.count(w) > 1})
    if repeated:
        raise DataError(f"{tree.where('wnids.txt')} lists {repeated[0]} more than once: is it the right file?")
    return wnids


def read_val_annotations(tree: SourceTree, known: set[str]) -> list[tuple[str, str]]:
    """``(file name, wnid)`` of each line of ``val/val_annotations.txt``, in file order."""
    rel = "val/val_annotations.txt"
    rows = []
    for number, line in enumerate(tree.read_text(rel).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) < 2 or not fields[0].strip():
            raise DataError(
                f"{tree.where(rel)} line {number}: expected FILE<tab>WNID<tab>x0<tab>y0<tab>x1<tab>y1, got {line!r}"
            )
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in known:
            raise DataError(
                f"{tree.where(rel)} line {number}: class {wnid!r} is not in wnids.txt: is it the right file?"
            )
        rows.append((name, wnid))
    if not rows:
        raise DataError(f"{tree.where(rel)} lists no image: extract or download the data set again")
    return rows


def tiny_imagenet_table(tree: SourceTree) -> tuple[ImageTable, list[str]]:
    """The images and labels of a Tiny-ImageNet tree, and the relative paths of every image."""
    wnids = sorted(read_wnids(tree))
    index = {w: k for k, w in enumerate(wnids)}
    train_rel: list[str] = []
    train_y: list[int] = []
    for wnid in wnids:
        folder = f"train/{wnid}/images"
        names = [n for n in tree.files(folder) if is_image_name(n)]
        if not names:
            missing = "holds no image" if tree.is_dir(folder) else "is missing"
            raise DataError(
                f"{tree.where(folder)} {missing}: wnids.txt lists {wnid}, whose training images belong there; "
                "extract or download the data set again"
            )
        train_rel += [f"{folder}/{n}" for n in names]
        train_y += [index[wnid]] * len(names)
    present = set(tree.files("val/images"))
    test_rel: list[str] = []
    test_y: list[int] = []
    for name, wnid in read_val_annotations(tree, set(wnids)):
        if name not in present:
            raise DataError(
                f"{tree.where('val/images/' + name)} is missing: val/val_annotations.txt lists it; "
                "extract or download the data set again"
            )
        test_rel.append(f"val/images/{name}")
        test_y.append(index[wnid])
    table = ImageTable(
        [tree.ref(r) for r in train_rel],
        np.asarray(train_y, dtype=np.int64),
        [tree.ref(r) for r in test_rel],
        np.asarray(test_y, dtype=np.int64),
        tuple(wnids),
    )
    return table, train_rel + test_rel


def load_tiny_imagenet(
    data_dir: Path | str | None = None, download: bool = True, image_size: int | None = None
) -> ImageDataset:
    """Tiny-ImageNet: 100000 train / 10000 test (the labelled validation set), 3x64x64 (or
    ``image_size``), 200 classes; from the extracted folder or the zip, decoded once."""
    folder = find_dataset_files(
        NAME, [ARCHIVE], data_dir, download, alternatives=[list(MARKERS), [f"{SUBDIR}/{m}" for m in MARKERS]]
    )
    for root in (folder, folder / SUBDIR):
        if all((root / m).is_file() for m in MARKERS):
            tree = SourceTree.folder(root.resolve())
            break
    else:
        tree = SourceTree.zip((folder / ARCHIVE).resolve(), _zip_prefix, "wnids.txt")
    table, rels = tiny_imagenet_table(tree)
    return load_tree(NAME, tree, table, rels, image_size)
