"""Find data set files on disk, or download them once into the user cache.

Lookup order (the first folder holding every needed file wins; a folder named by the user,
``--data-dir`` or ``$FORGETLESS_DATA``, that holds only some of the files is an error naming
the missing ones, never completed from another location):

1. ``data_dir`` and ``data_dir/<name>`` (``--data-dir`` on the command line);
2. ``$FORGETLESS_DATA`` and ``$FORGETLESS_DATA/<name>``;
3. the user cache, ``${XDG_CACHE_HOME:-~/.cache}/forgetless/<name>``;
4. ``/usr/share/datasets/<name>`` (Debian's ``dataset-*`` packages).

Downloads go to the user cache: each file is written to a temporary file next to its final
place, checked against its published SHA-256 and only then renamed into place, so a file that
exists under its real name there is complete. The SHA-256 sums are those recorded by
TensorFlow Datasets (``tensorflow_datasets/url_checksums/{mnist,fashion_mnist,cifar10,
cifar100}.txt``) for the very files served by the URLs below; they agree with the MD5 sums
torchvision publishes for the same files. Files found locally are not hashed (Debian, for one,
recompresses Fashion-MNIST, so its bytes differ): the parsers check their structure instead.
Tiny-ImageNet and CORe50 publish no SHA-256, only the MD5 sums that every loader of them checks
(``90528d7c...`` for ``tiny-imagenet-200.zip``, ``745f3373...`` for ``core50_128x128.zip``, as
in Avalanche and the torchvision-style loaders): those entries read ``md5:<hex>``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from forgetless.errors import DataError

log = logging.getLogger(__name__)

#: Where Debian's ``dataset-*`` packages install their files; a module constant for tests.
SYSTEM_DATA_DIR = Path("/usr/share/datasets")

#: Debian packages that provide a data set, named in the "not found" message.
DEBIAN_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist"}

_IDX_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
_MNIST = dict(zip(_IDX_NAMES, (
    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
), strict=True))  # fmt: skip
_FASHION = dict(zip(_IDX_NAMES, (
    "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
), strict=True))  # fmt: skip

#: name -> (base URLs tried in order, {file name: SHA-256, or ``md5:<hex>`` where only an MD5 is published}).
REMOTE_FILES: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "mnist": (
        (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",  # the original home, often refuses downloads
        ),
        _MNIST,
    ),
    "fashion-mnist": (
        (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
        ),
        _FASHION,
    ),
    "cifar10": (
        ("https://www.cs.toronto.edu/~kriz/",),
        {
            "cifar-10-binary.tar.gz": ("c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"),
        },
    ),
    "cifar100": (
        ("https://www.cs.toronto.edu/~kriz/",),
        {
            "cifar-100-binary.tar.gz": ("58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec"),
        },
    ),
    "tiny-imagenet": (
        ("http://cs231n.stanford.edu/",),
        {"tiny-imagenet-200.zip": "md5:90528d7ca1a48142e341f4ef8d21d0de"},
    ),
    "core50": (
        ("http://bias.csr.unibo.it/maltoni/download/core50/",),
        {"core50_128x128.zip": "md5:745f3373fed08d69343f1058ee559e13"},
    ),
}


def cache_dir(name: str) -> Path:
    """The user-cache folder of one data set: ``${XDG_CACHE_HOME:-~/.cache}/forgetless/<name>``."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "forgetless" / name


def candidate_folders(name: str, data_dir: Path | str | None = None) -> list[Path]:
    """The folders searched for ``name``'s files, in order, without duplicates."""
    folders: list[Path] = []
    for root in (data_dir, os.environ.get("FORGETLESS_DATA") or None):
        if root is not None:
            folders += [Path(root), Path(root) / name]
    folders += [cache_dir(name), SYSTEM_DATA_DIR / name]
    unique: list[Path] = []
    for folder in folders:
        if folder not in unique:
            unique.append(folder)
    return unique


def find_dataset_files(
    name: str,
    filenames: Sequence[str],
    data_dir: Path | str | None = None,
    download: bool = True,
    *,
    alternatives: Sequence[Sequence[str]] = (),
) -> Path:
    """Return the first folder holding all of ``filenames`` (or all of one ``alternatives`` set).

    ``filenames`` is the set that can be downloaded; ``alternatives`` are other acceptable
    forms (uncompressed or extracted files, relative paths allowed). When no folder has them
    and ``download`` is true, ``filenames`` are downloaded into the user cache.
    Raises :class:`DataError` (one line) when the files can be neither found nor downloaded.
    """
    sets = [list(filenames), *(list(a) for a in alternatives)]
    if data_dir is not None:
        from forgetless.io import check_path_length

        check_path_length(Path(data_dir), "--data-dir", extra=0, error=DataError)
    folders = candidate_folders(name, data_dir)
    chosen: list[Path] = []  # folders named by the user: complete, or an error
    for option, root in (("--data-dir", data_dir), ("FORGETLESS_DATA", os.environ.get("FORGETLESS_DATA") or None)):
        if root is None:
            continue
        group = [Path(root), Path(root) / name]
        for folder in group:
            if _complete(folder, sets):
                return folder
        for folder in group:
            if folder not in chosen:
                _refuse_partial(name, folder, sets, option, bool(alternatives))
        if option == "--data-dir":
            _refuse_missing(name, Path(root), sets)
        chosen += group
    for folder in folders:
        if folder not in chosen and _complete(folder, sets):
            return folder

    if name not in REMOTE_FILES or not set(filenames) <= set(REMOTE_FILES[name][1]):
        reason = ""
    elif not download:
        reason = "; downloading is turned off"
    else:
        try:
            return download_dataset(name, filenames)
        except (DataError, OSError) as error:
            reason = "; download failed: " + " ".join(str(error).split())
    debian = DEBIAN_PACKAGES.get(name)
    hint = f"; on Debian: apt-get install {debian}" if debian else ""
    alt = " (or the files uncompressed/extracted)" if alternatives else ""
    raise DataError(
        f"{name} data set not found: put {', '.join(filenames)}{alt} in one of: "
        f"{', '.join(str(f) for f in folders)}, or pass --data-dir / set FORGETLESS_DATA"
        f"{hint}{reason}"
    )


def _refuse_missing(name: str, root: Path, sets: list[list[str]]) -> None:
    """``--data-dir`` that is not a folder is a typo, not a reason to read another copy
    silently (an existing folder without the files is skipped: the documented lookup order,
    and ``config.yaml`` says where each file came from)."""
    if not root.is_dir():
        raise DataError(
            f"--data-dir {root} is not a folder: give the folder holding the {name} files "
            f"({', '.join(sets[0])}), or drop --data-dir to use the installed or cached copy"
        )


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long, a component that is a file, ...
        return False


def _complete(folder: Path, sets: list[list[str]]) -> bool:
    return any(all(_is_file(folder / f) for f in files) for files in sets)


def _refuse_partial(name: str, folder: Path, sets: list[list[str]], option: str, alternatives: bool) -> None:
    """A DataError where ``folder`` holds some but not all files of every acceptable set.

    A data set is read from one folder only: an incomplete folder the user named is never
    completed from another place (the cache, the system copy), which could mix versions.
    """
    present = [[f for f in files if _is_file(folder / f)] for files in sets]
    best = max(range(len(sets)), key=lambda i: len(present[i]))
    if not present[best]:
        return
    missing = [f for f in sets[best] if f not in present[best]]
    alt = " (or the files uncompressed/extracted)" if alternatives else ""
    raise DataError(
        f"{name} data set: {folder} ({option}) has {', '.join(present[best])} but lacks {', '.join(missing)}: "
        f"put the missing files there{alt}, or point {option} at a folder holding all of them "
        "(every file of a data set is read from one folder, never mixed with another copy)"
    )


def download_url(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Write the body of ``url`` to ``dest`` (raises ``OSError``/``URLError`` on failure)."""
    request = urllib.request.Request(url, headers={"User-Agent": "forgetless"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def sha256_of(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file (SHA-256 unless told otherwise), read in 1 MiB blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_dataset(name: str, filenames: Sequence[str] | None = None) -> Path:
    """Download ``name``'s files (all by default) into its cache folder; return that folder.

    Files already there are kept. Each file is tried from every mirror in turn; a file whose
    SHA-256 differs from the published one is deleted and counts as a failed attempt.
    """
    mirrors, sums = REMOTE_FILES[name]
    folder = cache_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    for filename in filenames if filenames is not None else list(sums):
        target = folder / filename
        if target.is_file():
            continue
        errors: list[str] = []
        for base in mirrors:
            try:
                _fetch_verified(base + filename, target, sums[filename])
                break
            except (OSError, DataError) as error:  # URLError and timeouts are OSErrors
                # a plain URLError's str() wraps its reason in "<urlopen error ...>"
                reason = str(error.reason if type(error) is urllib.error.URLError else error)
                if reason not in errors:
                    errors.append(reason)
        else:
            hosts = ", ".join(urllib.parse.urlsplit(base).netloc for base in mirrors)
            raise DataError(f"could not fetch {filename} from {hosts} ({'; '.join(errors)})")
    return folder


def _fetch_verified(url: str, target: Path, sha256: str) -> None:
    """Download ``url`` to a temporary file beside ``target``, verify it against ``sha256`` (or
    ``md5:<hex>``), rename it atomically."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        log.info("downloading %s to %s", url, target)
        download_url(url, tmp)
        algorithm, expected = sha256.split(":", 1) if ":" in sha256 else ("sha256", sha256)
        actual = sha256_of(tmp, algorithm)
        if actual != expected:
            label = "SHA-256" if algorithm == "sha256" else algorithm.upper()
            raise DataError(f"{label} mismatch (got {actual[:16]}..., expected {expected[:16]}...)")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
