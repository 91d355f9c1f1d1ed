"""Decoded data sets kept in the user cache: decode once, load in milliseconds after.

Reading Fashion-MNIST means gunzipping 30 MB and checking every header; the digits mean
importing scikit-learn (about a second). Both are done once: the checked tensors are stored
as ``${XDG_CACHE_HOME:-~/.cache}/forgetless/<name>/decoded-<key>.safetensors`` (no pickle),
``key`` naming the source files (path, size, modification time) or the package version they
came from, so an edited or replaced source is decoded afresh. A cache that cannot be read or
written (corrupt, read-only, full disk) is skipped: the data are decoded as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from forgetless.data.dataset import ImageDataset
from forgetless.data.files import cache_dir

CACHE_FORMAT = 1
"""Bumped when the decoded layout changes, so older cache files are not read."""
_TENSORS = ("train_x", "train_y", "test_x", "test_y")


def file_key(path: Path) -> str:
    """What identifies a source file's content cheaply: its real path, size and mtime."""
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def cache_path(name: str, key_parts: list[str]) -> Path:
    """Where the decoded ``name`` for these sources lives."""
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, name, *key_parts]).encode()).hexdigest()[:20]
    return cache_dir(name) / f"decoded-{digest}.safetensors"


def _read(path: Path, name: str) -> ImageDataset | None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            meta = file.metadata() or {}
            tensors = {key: file.get_tensor(key) for key in _TENSORS}
        return ImageDataset(
            name,
            *(tensors[key] for key in _TENSORS),
            num_classes=int(meta["num_classes"]),
            max_value=float(meta["max_value"]),
            class_names=tuple(json.loads(meta["class_names"])),
        )
    except (OSError, SafetensorError, KeyError, ValueError, TypeError):
        return None


def _write(path: Path, dataset: ImageDataset) -> None:
    from safetensors.torch import save_file

    meta = {
        "num_classes": str(dataset.num_classes),
        "max_value": repr(dataset.max_value),
        "class_names": json.dumps(list(dataset.class_names)),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({key: getattr(dataset, key).contiguous() for key in _TENSORS}, str(tmp), metadata=meta)
        tmp.replace(path)
    except OSError:  # read-only or full cache, or no folder can be made there: decode next time
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def cached_dataset(name: str, key_parts: list[str], decode: Callable[[], ImageDataset]) -> ImageDataset:
    """``decode()``'s data set, from the cache when these sources were decoded before."""
    path = cache_path(name, key_parts)
    if path.is_file():
        dataset = _read(path, name)
        if dataset is not None:
            return dataset
    dataset = decode()
    _write(path, dataset)
    return dataset
