"""Atomic file writes and run-folder creation: a kill mid-write never leaves a broken file."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from forgetless.errors import ForgetlessError, OutputError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise _output_error(path, error) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; results are for sharing
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise _output_error(path, error) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def fsync_folder(path: Path) -> None:
    """Flush a folder's entries (renames) to disk where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def previous_folder(path: Path) -> Path:
    """Where :func:`atomic_folder` keeps the previous version of ``path`` during a swap."""
    return path.with_name(f".{path.name}.prev")


def readable_folder(path: Path) -> Path | None:
    """The complete version of a folder written by :func:`atomic_folder`, or ``None``.

    ``path`` itself when present; otherwise the previous version left by a crash between the
    two renames of a swap.
    """
    path = Path(path)
    if path.is_dir():
        return path
    previous = previous_folder(path)
    return previous if previous.is_dir() else None


def remove_folder(path: Path) -> None:
    """Delete a folder; where ``path`` is a symbolic link, only the link (its target is kept)."""
    if path.is_symlink():
        with contextlib.suppress(OSError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Write a folder atomically: fill the yielded temporary folder, it then replaces ``path``.

    A folder is complete or absent: the new version is written beside the old one, fsynced,
    and swapped in with renames; the previous version is deleted only once the new one is in
    place (:func:`readable_folder` finds whichever is complete after a crash mid-swap). Where
    ``path`` is a symbolic link (to a folder, or dangling), the link is what is replaced: its
    target is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    previous = previous_folder(path)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    except OSError as error:
        raise _output_error(tmp, error) from None
    try:
        yield tmp
        fsync_folder(tmp)
        if path.is_dir() or path.is_symlink():
            remove_folder(previous)
            os.replace(path, previous)
        os.replace(tmp, path)
        fsync_folder(path.parent)
        remove_folder(previous)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _output_error(path, error) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file and fsync it (for files inside an :func:`atomic_folder`)."""
    try:
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise _output_error(Path(path), error) from None


def _output_error(path: Path, error: OSError) -> OutputError:
    if error.errno == errno.ENOSPC:
        return OutputError(f"disk full while writing {path}: free space or choose another --out")
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"cannot write to {path.parent}: not writable; choose another --out")
    return OutputError(f"cannot write {path}: {error.strerror}; choose another --out")


def _holds_results(path: Path) -> bool:
    """Whether the folder holds anything but the config of a run that stopped before any
    result or checkpoint (bad data, a missing extra): that one is started again freely."""
    return any(entry.name != "config.yaml" for entry in path.iterdir())


def _limit(folder: Path, name: str, default: int) -> int:
    """``os.pathconf`` of the nearest existing folder above ``folder`` (``default`` where unknown)."""
    for candidate in (folder, *folder.parents):
        try:
            if candidate.is_dir():
                return int(os.pathconf(candidate, name))
        except (OSError, ValueError, AttributeError):
            break
    return default


def check_path_length(path: Path, option: str, extra: int = 64, error: type[ForgetlessError] = OutputError) -> None:
    """A one-line error (``OutputError`` unless told) where ``path`` cannot exist on its file system: a component
    longer than ``PC_NAME_MAX`` or a whole path longer than ``PC_PATH_MAX`` (less ``extra``
    characters for the files written inside it, e.g. ``checkpoint/.tmp-…/model.safetensors``)."""
    path = Path(path)
    absolute = Path(os.path.abspath(path))
    name_max = _limit(absolute.parent, "PC_NAME_MAX", 255)
    for part in absolute.parts:
        if len(os.fsencode(part)) > name_max:
            shown = part if len(part) <= 40 else part[:20] + "…" + part[-10:]
            raise error(
                f"{option} {shown!r}: a folder or file name of {len(os.fsencode(part))} bytes, longer than the "
                f"{name_max} this file system allows: choose a shorter name"
            )
    path_max = _limit(absolute.parent, "PC_PATH_MAX", 4096)
    length = len(os.fsencode(str(absolute)))
    if length + extra > path_max:
        raise error(
            f"{option} is a path of {length} bytes; with the files written inside it, it would pass the "
            f"{path_max} this system allows: choose a shorter path"
        )


def prepare_run_dir(path: Path, force: bool = False) -> Path:
    """Create the run folder; refuse a non-empty existing one unless ``force``.

    Checked *before* any training, so no computed result is ever lost to a bad ``--out``.
    """
    path = Path(path)
    check_path_length(path, "--out")
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as error:  # a component that is a file, a loop of links, ...
        raise _output_error(path, error) from None
    if exists and not is_dir:
        raise OutputError(f"--out {path} is a file, not a folder: choose another path")
    if is_dir and not force and _holds_results(path):
        raise OutputError(f"--out {path} already holds a run: choose another folder or pass --force to overwrite")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise _output_error(probe if path.exists() else path, error) from None
    return path
