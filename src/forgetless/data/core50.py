"""CORe50 (Lomonaco & Maltoni 2017, "CORe50: a New Dataset and Benchmark for Continuous Object
Recognition", CoRL): 50 hand-held objects of 10 categories filmed in 11 sessions (backgrounds,
lighting), about 300 frames per object and session, 128x128 RGB PNGs.

Source: http://bias.csr.unibo.it/maltoni/download/core50/core50_128x128.zip, read in place or
extracted: ``core50_128x128/s<1..11>/o<1..50>/C_<ss>_<oo>_<fff>.png`` (session, object,
frame). The paper's protocol is followed: sessions s3, s7 and s10 are the test set, the other 8
are training sessions. Labels are the object (``o1`` is 0, 50 classes) or its category (objects
in fives: o1-o5 plug adapters, o6-o10 mobile phones, ..., 10 classes, ``core50-category``).
Training images are stored session by session (every training image records its session in
:attr:`ImageDataset.train_domains`), so the new-instances stream (NI: one domain-incremental
task per training session, each tested on the whole test set) slices them without a copy; the
new-classes stream (NC) is the class-incremental split of the objects.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from forgetless.data.dataset import ImageDataset
from forgetless.data.files import candidate_folders, find_dataset_files
from forgetless.data.images import ImageTable, SourceTree, is_image_name, load_tree
from forgetless.errors import DataError

NAME = "core50"
ARCHIVE = "core50_128x128.zip"
SUBDIR = "core50_128x128"
SESSIONS = tuple(range(1, 12))
TEST_SESSIONS = (3, 7, 10)
TRAIN_SESSIONS = tuple(s for s in SESSIONS if s not in TEST_SESSIONS)
N_OBJECTS = 50
CATEGORIES = (
    "plug adapter", "mobile phone", "scissors", "light bulb", "can",
    "glasses", "ball", "marker", "cup", "remote control",
)  # fmt: skip
OBJECTS_PER_CATEGORY = N_OBJECTS // len(CATEGORIES)
OBJECT_NAMES = tuple(
    f"{CATEGORIES[i // OBJECTS_PER_CATEGORY]} {i % OBJECTS_PER_CATEGORY + 1}" for i in range(N_OBJECTS)
)
_MARKER = re.compile(r"(?:^|/)s1/o1/[^/]+$")


def _zip_prefix(names: list[str]) -> str | None:
    """The folder of ``s1/`` in the archive (``core50_128x128/``), the shallowest one."""
    found = [n[: n.rindex("s1/o1/")] for n in names if _MARKER.search(n)]
    return min(found, key=lambda p: p.count("/")) if found else None


def locate(data_dir: Path | str | None, download: bool) -> SourceTree:
    """The first candidate folder (see :mod:`forgetless.data.files`) holding the extracted
    sessions or the archive; else the archive downloaded into the user cache."""
    if data_dir is not None:
        from forgetless.io import check_path_length

        check_path_length(Path(data_dir), "--data-dir", extra=0, error=DataError)
    for folder in candidate_folders(NAME, data_dir):
        for root in (folder, folder / SUBDIR):
            if (root / "s1").is_dir():
                return SourceTree.folder(root.resolve())
        if (folder / ARCHIVE).is_file():
            return SourceTree.zip((folder / ARCHIVE).resolve(), _zip_prefix, "s1/o1/ folder")
    # not found: download the archive, or one line naming the folders searched (the alternative
    # names the extracted layout in that message; a folder never counts as the file)
    folder = find_dataset_files(NAME, [ARCHIVE], data_dir, download, alternatives=[[f"{SUBDIR}/s1/o1/"]])
    return SourceTree.zip((folder / ARCHIVE).resolve(), _zip_prefix, "s1/o1/ folder")


def _session_images(tree: SourceTree, session: int) -> list[tuple[str, int]]:
    """``(relative path, object index)`` of one session's frames, object by object."""
    found = []
    for obj in range(1, N_OBJECTS + 1):
        folder = f"s{session}/o{obj}"
        names = [n for n in tree.files(folder) if is_image_name(n)]
        if not names:
            missing = "holds no image" if tree.is_dir(folder) else "is missing"
            raise DataError(
                f"{tree.where(folder)} {missing}: CORe50 has objects o1..o{N_OBJECTS} in every session "
                f"s1..s{SESSIONS[-1]}; extract or download {ARCHIVE} again"
            )
        found += [(f"{folder}/{n}", obj - 1) for n in names]
    return found


def core50_table(tree: SourceTree) -> tuple[ImageTable, list[str]]:
    """Object-labelled images of a CORe50 tree (train session-major), and every relative path."""
    train = [(rel, obj, d) for d, s in enumerate(TRAIN_SESSIONS) for rel, obj in _session_images(tree, s)]
    test = [(rel, obj) for s in TEST_SESSIONS for rel, obj in _session_images(tree, s)]
    table = ImageTable(
        [tree.ref(rel) for rel, _, _ in train],
        np.asarray([obj for _, obj, _ in train], dtype=np.int64),
        [tree.ref(rel) for rel, _ in test],
        np.asarray([obj for _, obj in test], dtype=np.int64),
        OBJECT_NAMES,
        train_domains=np.asarray([d for _, _, d in train], dtype=np.int64),
        domain_names=tuple(f"s{s}" for s in TRAIN_SESSIONS),
    )
    return table, [r for r, _, _ in train] + [r for r, _ in test]


def load_core50(
    data_dir: Path | str | None = None, download: bool = True, image_size: int | None = None
) -> ImageDataset:
    """CORe50 by object: about 120000 train (8 sessions) / 45000 test (s3, s7, s10) images,
    3x128x128 (or ``image_size``), 50 classes; decoded once from the folder or the zip."""
    tree = locate(data_dir, download)
    table, rels = core50_table(tree)
    return load_tree(NAME, tree, table, rels, image_size)


def load_core50_category(
    data_dir: Path | str | None = None, download: bool = True, image_size: int | None = None
) -> ImageDataset:
    """CORe50 by category (10 classes of 5 objects each); the same decoded images as by object."""
    data = load_core50(data_dir, download, image_size)
    return replace(
        data,
        name="core50-category",
        train_y=data.train_y // OBJECTS_PER_CATEGORY,
        test_y=data.test_y // OBJECTS_PER_CATEGORY,
        num_classes=len(CATEGORIES),
        class_names=CATEGORIES,
    )
