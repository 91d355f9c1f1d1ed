"""Image files (PNG, JPEG) decoded once with Pillow into a memory-mappable store in the user cache.

Shared by the image-folder, Tiny-ImageNet and CORe50 sources. A source lists its images (files
on disk, or members of a zip archive read in place) with their labels in an :class:`ImageTable`;
:func:`load_table` decodes them once, in parallel threads, to ``uint8 [N, C, H, W]`` and keeps
the result as raw ``.npy`` files in
``${XDG_CACHE_HOME:-~/.cache}/forgetless/<name>/decoded-<key>/`` (``key`` names every source
file with its size and modification time, and the decoding options), so an edited, added or
removed image is decoded afresh and an older store of the same source is deleted.

Data sets larger than :func:`memory_limit` are never held in memory: the images are decoded
straight into the ``.npy`` files and opened with numpy's copy-on-write memory map, so the
learner's slicing reads only the rows it touches. A scenario builder that would copy every image
(a shuffled class order, permuted or rotated streams) refuses such a data set with one line
(:func:`check_copy_fits`). Smaller data sets are read into memory in one sequential read.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import weakref
import zipfile
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from forgetless.data.dataset import ImageDataset
from forgetless.data.files import cache_dir
from forgetless.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
"""File name endings read as images (any case); other files are ignored."""
STORE_FORMAT = 1
"""Bumped when the layout of a decoded store changes, so older stores are not read."""
MEMORY_FRACTION = 0.5
"""Share of this machine's memory a decoded data set may take before it is memory-mapped."""
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_CHUNK = 256  # images per unit of work of a decoding thread
_FORMATS = ("PNG", "JPEG")  # what Pillow tries (it would otherwise sniff every format it knows)


@dataclass(frozen=True)
class ImageRef:
    """One image to decode: a file, or the member ``member`` of the zip archive ``path``."""

    path: Path
    member: str | None = None

    def __str__(self) -> str:
        return str(self.path) if self.member is None else f"{self.member} in {self.path}"


@dataclass
class ImageTable:
    """What a source decodes: the images of each split in storage order, and their labels.

    ``train_domains`` optionally gives each training image's acquisition domain (CORe50's
    session), an index into ``domain_names``.
    """

    train: list[ImageRef]
    train_y: np.ndarray
    test: list[ImageRef]
    test_y: np.ndarray
    class_names: tuple[str, ...]
    train_domains: np.ndarray | None = None
    domain_names: tuple[str, ...] = ()


def is_image_name(name: str) -> bool:
    """Whether a file name ends in one of :data:`IMAGE_SUFFIXES` (any case) and is not hidden."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def file_stamp(path: Path, shown: str) -> str:
    """``shown`` with the file's size and modification time: one part of a store's key."""
    try:
        stat = path.stat()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from None
    return f"{shown}\0{stat.st_size}\0{stat.st_mtime_ns}"


def fingerprint(parts: Sequence[str]) -> str:
    """A short SHA-256 of a list of strings (a file list with sizes and times)."""
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def memory_limit() -> int:
    """Bytes of decoded images a data set may take in memory: :data:`MEMORY_FRACTION` of this
    machine's memory. A larger data set is memory-mapped from the user cache instead."""
    try:
        total = int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # not POSIX: no bound
        return 2**62
    return int(total * MEMORY_FRACTION)


def gib(n_bytes: float) -> str:
    """``n_bytes`` for a message: ``1.4 GiB``, ``312 MiB``."""
    if n_bytes >= 2**30:
        return f"{n_bytes / 2**30:.1f} GiB"
    return f"{n_bytes / 2**20:.0f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.0f} KiB"


def image_bytes(data: ImageDataset) -> int:
    """Bytes of the train and test images of a data set."""
    return sum(x.numel() * x.element_size() for x in (data.train_x, data.test_x))


_MAPPED: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()
"""The image tensors opened memory-mapped, by id (alive ones only)."""


def is_memory_mapped(data: ImageDataset) -> bool:
    """Whether ``data``'s images are memory-mapped from a store (larger than :func:`memory_limit`)."""
    return _MAPPED.get(id(data.train_x)) is data.train_x


def check_copy_fits(data: ImageDataset, what: str, alternative: str = "") -> None:
    """Refuse, with one line, to copy every image of a memory-mapped data set into memory.

    ``what`` names the copy (``"a shuffled class order"``), ``alternative`` an option that avoids
    it. Data sets held in memory (every other source) pass.
    """
    size, limit = image_bytes(data), memory_limit()
    if size <= limit or not is_memory_mapped(data):
        return
    n = data.train_x.shape[0] + data.test_x.shape[0]
    c, h, w = data.input_shape
    side = math.isqrt(max(1, limit // max(1, n * c)))
    fix = f"pass --image-size {side} or less ({gib(n * c * side * side)})"
    fix += f", or {alternative}" if alternative else ""
    raise DataError(
        f"{data.name}: its decoded images take {gib(size)} ({n:,} images of {c}x{h}x{w}), more than the "
        f"{gib(limit)} kept in memory here; they are memory-mapped from the user cache, but {what} copies every "
        f"image into memory: {fix}"
    )


class _Reader:
    """Opens images for Pillow: files by path, zip members from one shared open archive each."""

    def __init__(self) -> None:
        self._archives: dict[Path, tuple[zipfile.ZipFile, threading.Lock]] = {}
        self._lock = threading.Lock()

    def open(self, ref: ImageRef) -> str | BinaryIO:
        if ref.member is None:
            return str(ref.path)
        with self._lock:
            if ref.path not in self._archives:
                try:
                    self._archives[ref.path] = (zipfile.ZipFile(ref.path), threading.Lock())
                except (OSError, zipfile.BadZipFile) as error:
                    raise DataError(
                        f"{ref.path} is truncated or corrupt ({error}): delete it and download it again"
                    ) from None
            archive, lock = self._archives[ref.path]
        try:
            with lock:
                return io.BytesIO(archive.read(ref.member))
        except KeyError:
            raise DataError(f"{ref} is missing: the archive changed while it was read; load it again") from None
        except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as error:
            raise DataError(
                f"{ref} cannot be read ({error}): the archive is corrupt; delete it and download it again"
            ) from None

    def close(self) -> None:
        for archive, _ in self._archives.values():
            archive.close()
        self._archives.clear()


def _unreadable(ref: ImageRef, error: BaseException) -> DataError:
    if isinstance(error, FileNotFoundError):
        return DataError(f"{ref} is missing (it was listed a moment ago): put it back, or load the data set again")
    if isinstance(error, PermissionError):
        return DataError(f"cannot read {ref}: permission denied; make it readable")
    detail = " ".join(str(error).split()) or type(error).__name__
    return DataError(f"{ref} is not a readable image ({detail}): replace it or delete it")


def probe(ref: ImageRef, reader: _Reader) -> tuple[str, tuple[int, int]]:
    """An image's Pillow mode and ``(width, height)``, from its header only."""
    from PIL import Image

    try:
        with Image.open(reader.open(ref), formats=_FORMATS) as image:
            return image.mode, image.size
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError) as error:
        raise _unreadable(ref, error) from None


def decode_image(ref: ImageRef, reader: _Reader, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """One image as ``uint8 [C, H, W]`` in ``mode`` (``RGB`` or ``L``), resized to ``size`` (w, h)
    with Pillow's antialiased bilinear filter when given and different."""
    from PIL import Image

    try:
        with Image.open(reader.open(ref), formats=_FORMATS) as image:
            converted = image.convert(mode)
        if size is not None and converted.size != size:
            converted = converted.resize(size, Image.Resampling.BILINEAR)
        array = np.asarray(converted, dtype=np.uint8)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError) as error:
        raise _unreadable(ref, error) from None
    return array.transpose(2, 0, 1) if array.ndim == 3 else array[None]


def _workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def decode_into(
    refs: Sequence[ImageRef],
    out: np.ndarray,
    reader: _Reader,
    mode: str,
    size: tuple[int, int] | None,
    first: ImageRef | None = None,
) -> None:
    """Decode ``refs`` into the rows of ``out`` (``[N, C, H, W]``), in parallel threads (Pillow
    decodes and resizes without the GIL). Images must all be ``out``'s size (that of ``first``,
    named in the message) unless ``size`` is given; the first unreadable or odd-sized image (in
    order) raises its DataError."""
    hw = tuple(out.shape[2:])
    first = first or (refs[0] if refs else None)

    def work(start: int) -> None:
        for i in range(start, min(start + _CHUNK, len(refs))):
            array = decode_image(refs[i], reader, mode, size)
            if array.shape[1:] != hw:
                raise DataError(
                    f"{refs[i]} is {array.shape[2]}x{array.shape[1]} pixels but {first} is {hw[1]}x{hw[0]}: "
                    "pass --image-size N to resize every image to NxN"
                )
            out[i] = array

    starts = range(0, len(refs), _CHUNK)
    if _workers() == 1 or len(starts) <= 1:
        for start in starts:
            work(start)
        return
    with ThreadPoolExecutor(_workers(), thread_name_prefix="forgetless-decode") as pool:
        futures: list[Future] = [pool.submit(work, start) for start in starts]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


# --- the decoded store ----------------------------------------------------------------------

_ARRAYS = ("train_x", "train_y", "test_x", "test_y")


def store_key(name: str, key_parts: Sequence[str], options: dict[str, Any]) -> str:
    """The key of a decoded store: its format, data set, decoding options and source files."""
    text = json.dumps([STORE_FORMAT, name, options]) + "\n" + "\n".join(key_parts)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:20]


def store_path(name: str, key: str) -> Path:
    """Where the decoded store ``key`` of data set ``name`` lives."""
    return cache_dir(name) / f"decoded-{key}"


def _open_store(folder: Path, name: str, sources: tuple[str, ...]) -> ImageDataset | None:
    """The data set of a complete store (memory-mapped when large), or None if it is unusable."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != STORE_FORMAT:
            return None
        n_bytes = sum(int(np.prod(meta["shapes"][key])) for key in ("train_x", "test_x"))
        mapped = n_bytes > memory_limit()
        arrays = {}
        for key in (*_ARRAYS, *(["train_domains"] if meta.get("domain_names") else [])):
            is_x = key.endswith("_x")
            array = np.load(folder / f"{key}.npy", mmap_mode="c" if (mapped and is_x) else None, allow_pickle=False)
            if list(array.shape) != meta["shapes"][key] or array.dtype != (np.uint8 if is_x else np.int64):
                return None
            arrays[key] = array
        num_classes = int(meta["num_classes"])
        for key in ("train_y", "test_y"):
            labels = arrays[key]
            if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if mapped:
        log.info("%s: %s of decoded images, memory-mapped from %s", name, gib(n_bytes), folder)
    domains = arrays.get("train_domains")
    tensors = [torch.from_numpy(arrays[key]) for key in _ARRAYS]
    if mapped:
        for tensor in (tensors[0], tensors[2]):
            _MAPPED[id(tensor)] = tensor
    return ImageDataset(
        name,
        *tensors,
        num_classes=num_classes,
        max_value=255.0,
        class_names=tuple(meta["class_names"]),
        sources=sources,
        train_domains=None if domains is None else torch.from_numpy(domains),
        domain_names=tuple(meta.get("domain_names") or ()),
    )


def _remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _plan(table: ImageTable, reader: _Reader, image_size: int | None, channels: int | None) -> tuple[str, int, int]:
    """Pillow mode, height and width of the decoded images.

    ``channels`` None: 1 when every image is grayscale, else 3 (reads the images' headers up
    to the first colour one).
    """
    refs = table.train + table.test
    size = probe(refs[0], reader)[1]
    if channels is None:  # headers until the first colour image (decoding checks every size)
        mode = "L"
        for ref in refs:
            if probe(ref, reader)[0] not in _GRAY_MODES:
                mode = "RGB"
                break
    else:
        mode = "L" if channels == 1 else "RGB"
    width, height = (image_size, image_size) if image_size is not None else size
    return mode, height, width


def load_table(
    name: str,
    table: ImageTable,
    *,
    key_parts: Sequence[str],
    origin: str,
    sources: tuple[str, ...],
    image_size: int | None = None,
    channels: int | None = None,
) -> ImageDataset:
    """Decode ``table`` once into the store of data set ``name`` and return it as an ImageDataset.

    ``key_parts`` identify the source files (see :func:`file_stamp`); ``origin`` identifies the
    source itself (its folder or archive and the options), so a newer store replaces older ones
    of the same origin. ``channels``: 3 (RGB), 1 (grayscale) or None (1 if every image is gray).
    """
    if not table.train or not table.test:
        raise DataError(f"{name}: no {'training' if not table.train else 'test'} images found in {origin}")
    options = {"image_size": image_size, "channels": channels, "origin": origin}
    folder = store_path(name, store_key(name, key_parts, options))
    if (folder / "meta.json").is_file():
        found = _open_store(folder, name, sources)
        if found is not None:
            return found
        _remove(folder)  # corrupt or of an older format: decode again
    reader = _Reader()
    try:
        mode, height, width = _plan(table, reader, image_size, channels)
        size = (width, height) if image_size is not None else None
        c = 1 if mode == "L" else 3
        shapes = {
            "train_x": [len(table.train), c, height, width],
            "test_x": [len(table.test), c, height, width],
            "train_y": [len(table.train)],
            "test_y": [len(table.test)],
        }
        if table.train_domains is not None:
            shapes["train_domains"] = [len(table.train)]
        meta = {
            "format": STORE_FORMAT,
            "name": name,
            "options": options,
            "num_classes": len(table.class_names),
            "class_names": list(table.class_names),
            "domain_names": list(table.domain_names),
            "shapes": shapes,
        }
        n_bytes = (len(table.train) + len(table.test)) * c * height * width
        written = _write_store(name, folder, table, meta, n_bytes, reader, mode, size, sources)
        if written is not None:
            return written
        return _decode_in_memory(name, table, meta, n_bytes, reader, mode, size, sources)
    finally:
        reader.close()


def load_tree(
    name: str, tree: SourceTree, table: ImageTable, rels: Sequence[str], image_size: int | None, channels: int = 3
) -> ImageDataset:
    """:func:`load_table` for a table read from ``tree`` (a folder or a zip archive): the store
    is keyed by the stamps of the files ``rels`` and records where they came from."""
    stamps = tree.stamps(rels)
    return load_table(
        name,
        table,
        key_parts=stamps,
        origin=tree.where(),
        sources=tree.sources(stamps, len(rels)),
        image_size=image_size,
        channels=channels,
    )


def _write_store(
    name: str,
    folder: Path,
    table: ImageTable,
    meta: dict[str, Any],
    n_bytes: int,
    reader: _Reader,
    mode: str,
    size: tuple[int, int] | None,
    sources: tuple[str, ...],
) -> ImageDataset | None:
    """Decode into a new store at ``folder``; None when the cache cannot hold it (read-only, full)."""
    parent = folder.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=parent))
    except OSError as error:
        _cache_unusable(name, parent, n_bytes, f"it cannot be written ({error.strerror or error})")
        return None
    try:
        free = shutil.disk_usage(tmp).free
        if free < n_bytes + (64 << 20):
            _remove(tmp)
            _cache_unusable(name, parent, n_bytes, f"only {gib(free)} is free there")
            return None
        for split in ("train", "test"):
            out = np.lib.format.open_memmap(tmp / f"{split}_x.npy", "w+", np.uint8, tuple(meta["shapes"][f"{split}_x"]))
            decode_into(getattr(table, split), out, reader, mode, size, table.train[0])
            out.flush()
            del out
            np.save(tmp / f"{split}_y.npy", np.asarray(getattr(table, f"{split}_y"), dtype=np.int64))
        if table.train_domains is not None:
            np.save(tmp / "train_domains.npy", np.asarray(table.train_domains, dtype=np.int64))
        (tmp / "meta.json").write_text(json.dumps(meta))
        _prune(parent, meta["options"], keep=folder)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process stored the same data meanwhile: use theirs
            _remove(tmp)
    except OSError as error:  # the disk filled up while decoding, ...
        _remove(tmp)
        _cache_unusable(name, parent, n_bytes, f"writing failed ({error.strerror or error})")
        return None
    except BaseException:
        _remove(tmp)
        raise
    opened = _open_store(folder, name, sources)
    if opened is None:
        raise DataError(f"{name}: the decoded store {folder} cannot be read back: delete it and load the data again")
    return opened


def _cache_unusable(name: str, where: Path, n_bytes: int, why: str) -> None:
    """Decoding in memory is the fallback; a data set too large for memory cannot fall back."""
    if n_bytes <= memory_limit():
        log.warning("%s: not cached (%s: %s); decoding in memory", name, where, why)
        return
    raise DataError(
        f"{name}: its decoded images take {gib(n_bytes)}, more than the {gib(memory_limit())} kept in memory here, "
        f"so they are memory-mapped from the user cache, but {where}: {why}: set XDG_CACHE_HOME to a writable "
        f"folder with {gib(n_bytes)} free, or pass --image-size N for smaller images"
    )


def _decode_in_memory(
    name: str,
    table: ImageTable,
    meta: dict[str, Any],
    n_bytes: int,
    reader: _Reader,
    mode: str,
    size: tuple[int, int] | None,
    sources: tuple[str, ...],
) -> ImageDataset:
    xs = {}
    for split in ("train", "test"):
        xs[split] = np.empty(tuple(meta["shapes"][f"{split}_x"]), dtype=np.uint8)
        decode_into(getattr(table, split), xs[split], reader, mode, size, table.train[0])
    domains = table.train_domains
    return ImageDataset(
        name,
        torch.from_numpy(xs["train"]),
        torch.from_numpy(np.asarray(table.train_y, dtype=np.int64)),
        torch.from_numpy(xs["test"]),
        torch.from_numpy(np.asarray(table.test_y, dtype=np.int64)),
        num_classes=len(table.class_names),
        max_value=255.0,
        class_names=table.class_names,
        sources=sources,
        train_domains=None if domains is None else torch.from_numpy(np.asarray(domains, dtype=np.int64)),
        domain_names=table.domain_names,
    )


def _prune(parent: Path, options: dict[str, Any], keep: Path) -> None:
    """Delete the older stores of the same source and options (decoded images can take gigabytes)."""
    for meta_file in parent.glob("decoded-*/meta.json"):
        folder = meta_file.parent
        if folder == keep:
            continue
        with contextlib.suppress(OSError, ValueError):
            if json.loads(meta_file.read_text()).get("options") == options:
                _remove(folder)


class SourceTree:
    """The files of a data set's folder, or of a zip archive read in place (below ``prefix``),
    by relative POSIX path: what the Tiny-ImageNet and CORe50 readers list and open."""

    def __init__(self, root: Path, archive: bool = False, prefix: str = "", names: Sequence[str] = ()) -> None:
        self.root, self.is_archive, self.prefix = root, archive, prefix
        self._children: dict[str, list[str]] = {}
        for name in names:
            if name.startswith(prefix) and not name.endswith("/"):
                parent, _, leaf = name[len(prefix) :].rpartition("/")
                self._children.setdefault(parent, []).append(leaf)
        for leaves in self._children.values():
            leaves.sort()

    @classmethod
    def folder(cls, root: Path) -> SourceTree:
        return cls(root)

    @classmethod
    def zip(cls, path: Path, prefix_of: Callable[[list[str]], str | None], what: str) -> SourceTree:
        """The archive at ``path``; ``prefix_of(names)`` finds the data set's folder in it."""
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (OSError, zipfile.BadZipFile) as error:
            raise DataError(f"{path} is truncated or corrupt ({error}): delete it and download it again") from None
        prefix = prefix_of(names)
        if prefix is None:
            raise DataError(f"{path} holds no {what}: is it the right archive? delete it and download it again")
        return cls(path, archive=True, prefix=prefix, names=names)

    def where(self, rel: str = "") -> str:
        """A path for messages: ``root/rel``, or ``prefix+rel in archive``."""
        if self.is_archive:
            return f"{self.prefix}{rel} in {self.root}" if rel or self.prefix else str(self.root)
        return str(self.root / rel) if rel else str(self.root)

    def is_dir(self, rel: str) -> bool:
        if self.is_archive:
            return rel in self._children or any(k.startswith(rel + "/") for k in self._children)
        return (self.root / rel).is_dir()

    def files(self, rel: str) -> list[str]:
        """Names of the visible files directly in folder ``rel``, sorted (empty if it is absent)."""
        if self.is_archive:
            return [n for n in self._children.get(rel, []) if not n.startswith(".")]
        try:
            entries = list(os.scandir(self.root / rel))
        except FileNotFoundError:
            return []
        except OSError as error:
            raise DataError(f"cannot read {self.root / rel}: {error.strerror or error}") from None
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_file())

    def read_text(self, rel: str) -> str:
        try:
            if self.is_archive:
                with zipfile.ZipFile(self.root) as archive:
                    raw = archive.read(self.prefix + rel)
            else:
                raw = (self.root / rel).read_bytes()
            return raw.decode("utf-8")
        except (KeyError, FileNotFoundError):
            raise DataError(
                f"{self.where(rel)} is missing: the data set is incomplete; extract or download it again"
            ) from None
        except UnicodeDecodeError as error:
            raise DataError(f"{self.where(rel)} is not UTF-8 text ({error.reason}): is it the right file?") from None
        except (OSError, zipfile.BadZipFile, zlib.error) as error:
            raise DataError(
                f"cannot read {self.where(rel)} ({error}): extract or download the data set again"
            ) from None

    def ref(self, rel: str) -> ImageRef:
        return ImageRef(self.root, self.prefix + rel) if self.is_archive else ImageRef(self.root / rel)

    def stamps(self, rels: Sequence[str]) -> list[str]:
        """The key parts of these files: the archive's size and time, or each file's."""
        if self.is_archive:
            return [file_stamp(self.root, str(self.root))]
        return [file_stamp(self.root / rel, rel) for rel in rels]

    def sources(self, stamps: Sequence[str], count: int) -> tuple[str, ...]:
        """Provenance: the archive, or the folder with a fingerprint of its files."""
        if self.is_archive:
            return (str(self.root),)
        return (f"{self.root} ({count:,} images; files+sizes+times sha256 {fingerprint(stamps)})",)
