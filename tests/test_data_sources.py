"""Tests of the data-source layer: parsers on tiny synthetic files, lookup, downloads (mocked)."""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from forgetless.data import files
from forgetless.data.cifar import CIFAR100_CLASSES, load_cifar10, load_cifar100
from forgetless.data.custom import from_tensors, from_torch_dataset
from forgetless.data.digits import load_digits_dataset
from forgetless.data.idx import IDX_FILES, load_fashion_mnist, load_mnist, read_idx
from forgetless.data.sources import DATA_SOURCES, load_dataset
from forgetless.errors import ConfigError, DataError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated(isolated_data: Path) -> Path:
    return isolated_data


# --- helpers ------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes((0, 0, 0x08, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_mnist_like(folder: Path, n_train: int = 20, n_test: int = 10, gz: bool = True) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = [
        rng.integers(0, 256, (n_train, 28, 28)), np.arange(n_train) % 10,
        rng.integers(0, 256, (n_test, 28, 28)), np.arange(n_test) % 10,
    ]  # fmt: skip
    for name, array in zip(IDX_FILES, arrays, strict=True):
        write_idx(folder / (name if gz else name.removesuffix(".gz")), array)


def cifar_records(n: int, label_bytes: int, seed: int) -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(seed)
    records = rng.integers(0, 256, (n, label_bytes + 3072), dtype=np.uint8)
    records[:, 0] = rng.integers(0, 20 if label_bytes == 2 else 10, n)
    if label_bytes == 2:
        records[:, 1] = rng.integers(0, 100, n)
    return records.tobytes(), records


CIFAR10_NAMES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


def write_cifar10(folder: Path, n: int = 4) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, name in enumerate(CIFAR10_NAMES):
        blob, out[name] = cifar_records(n, 1, i)
        (folder / name).write_bytes(blob)
    return out


def make_tarball(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# --- digits -------------------------------------------------------------------------------


def test_digits_shapes_dtypes_and_balance() -> None:
    d = load_digits_dataset()
    assert d.name == "digits" and d.num_classes == 10 and d.max_value == 16.0
    assert d.train_x.shape == (1347, 1, 8, 8) and d.test_x.shape == (450, 1, 8, 8)
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    assert int(d.train_x.max()) == 16 and int(d.test_x.max()) <= 16
    counts = torch.bincount(d.test_y, minlength=10)
    totals = counts + torch.bincount(d.train_y, minlength=10)
    assert torch.all((counts.float() - 0.25 * totals.float()).abs() <= 1)  # stratified
    again = load_digits_dataset()
    assert torch.equal(again.train_y, d.train_y) and torch.equal(again.test_x, d.test_x)


# --- IDX ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_read_idx_round_trip(tmp_path: Path, suffix: str) -> None:
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    path = write_idx(tmp_path / f"x-idx3-ubyte{suffix}", array)
    out = read_idx(path, 3)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4) and np.array_equal(out, array)


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_from_synthetic_files(tmp_path: Path, gz: bool) -> None:
    write_mnist_like(tmp_path / "d", gz=gz)
    d = load_mnist(data_dir=tmp_path / "d", download=False)
    assert d.train_x.shape == (20, 1, 28, 28) and d.test_x.shape == (10, 1, 28, 28)
    assert d.train_x.dtype == torch.uint8 and d.test_y.dtype == torch.int64
    assert d.max_value == 255.0 and d.num_classes == 10 and len(d.class_names) == 10
    assert d.train_y.tolist() == [i % 10 for i in range(20)]


def test_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    write_mnist_like(tmp_path / "d")
    path = tmp_path / "d" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="delete it") as info:
        load_mnist(data_dir=tmp_path / "d", download=False)
    assert str(path) in str(info.value)


def test_truncated_raw_idx_is_rejected(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((5, 28, 28)))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match="truncated or corrupt") as info:
        read_idx(path, 3)
    assert str(path) in str(info.value)


def test_bad_magic_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x0d\x03" + bytes(100)))  # 0x0d: float data
    with pytest.raises(DataError, match="magic number") as info:
        read_idx(path, 3)
    assert str(path) in str(info.value)
    with pytest.raises(DataError, match="magic number"):
        read_idx(write_idx(tmp_path / "labels", np.zeros(3)), 3)  # 1-D where 3-D is expected


def test_label_count_and_range_are_checked(tmp_path: Path) -> None:
    write_mnist_like(tmp_path / "d")
    write_idx(tmp_path / "d" / "t10k-labels-idx1-ubyte.gz", np.zeros(9))
    with pytest.raises(DataError, match="9 labels"):
        load_mnist(data_dir=tmp_path / "d", download=False)
    write_idx(tmp_path / "d" / "t10k-labels-idx1-ubyte.gz", np.full(10, 10))
    with pytest.raises(DataError, match="label 10"):
        load_mnist(data_dir=tmp_path / "d", download=False)


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Fashion-MNIST is not installed")
def test_real_fashion_mnist() -> None:
    d = load_fashion_mnist(data_dir=FASHION_DIR, download=False)
    assert d.train_x.shape == (60000, 1, 28, 28) and d.test_x.shape == (10000, 1, 28, 28)
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    assert torch.bincount(d.train_y).tolist() == [6000] * 10
    assert torch.bincount(d.test_y).tolist() == [1000] * 10
    assert d.class_names[0] == "T-shirt/top" and d.class_names[9] == "Ankle boot"


# --- CIFAR --------------------------------------------------------------------------------


def test_cifar10_extracted_folder(tmp_path: Path) -> None:
    records = write_cifar10(tmp_path / "c" / "cifar-10-batches-bin")
    d = load_cifar10(data_dir=tmp_path / "c", download=False)
    assert d.train_x.shape == (20, 3, 32, 32) and d.test_x.shape == (4, 3, 32, 32)
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    assert d.num_classes == 10 and d.class_names[0] == "airplane"
    rec = records["data_batch_2.bin"][1]  # train record 5: second record of batch 2
    assert int(d.train_y[5]) == rec[0]
    c, h, w = 2, 7, 30
    assert int(d.train_x[5, c, h, w]) == rec[1 + c * 1024 + h * 32 + w]


def test_cifar10_tarball_is_read_without_extracting(tmp_path: Path) -> None:
    src = write_cifar10(tmp_path / "src")
    members = {f"cifar-10-batches-bin/{n}": (tmp_path / "src" / n).read_bytes() for n in CIFAR10_NAMES}
    members["../evil.bin"] = b"x"  # a path-traversal member must be ignored, never written
    make_tarball(tmp_path / "c" / "cifar-10-binary.tar.gz", members)
    d = load_cifar10(data_dir=tmp_path / "c", download=False)
    assert d.test_x.shape == (4, 3, 32, 32)
    assert d.test_y.tolist() == src["test_batch.bin"][:, 0].tolist()
    assert not (tmp_path / "evil.bin").exists()
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["cifar-10-binary.tar.gz"]


def test_cifar10_bad_sizes_and_truncated_tarball(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "c")
    (tmp_path / "c" / "test_batch.bin").write_bytes(bytes(3073 * 2 + 5))
    with pytest.raises(DataError, match="3073-byte records") as info:
        load_cifar10(data_dir=tmp_path / "c", download=False)
    assert "test_batch.bin" in str(info.value)

    blob = bytes(3073)
    members = {f"cifar-10-batches-bin/{n}": blob for n in CIFAR10_NAMES}
    tarball = make_tarball(tmp_path / "t" / "cifar-10-binary.tar.gz", members)
    tarball.write_bytes(tarball.read_bytes()[:60])
    with pytest.raises(DataError, match="delete it") as info:
        load_cifar10(data_dir=tmp_path / "t", download=False)
    assert str(tarball) in str(info.value)


@pytest.mark.parametrize("as_tarball", [False, True])
def test_cifar100_uses_fine_labels(tmp_path: Path, as_tarball: bool) -> None:
    (train, train_rec), (test, _) = cifar_records(6, 2, 1), cifar_records(3, 2, 2)
    folder = tmp_path / "c"
    folder.mkdir()
    if as_tarball:
        make_tarball(
            folder / "cifar-100-binary.tar.gz",
            {"cifar-100-binary/train.bin": train, "cifar-100-binary/test.bin": test},
        )
    else:
        (folder / "train.bin").write_bytes(train)
        (folder / "test.bin").write_bytes(test)
    d = load_cifar100(data_dir=folder, download=False)
    assert d.num_classes == 100 and len(d.class_names) == 100 and d.class_names == CIFAR100_CLASSES
    assert d.train_x.shape == (6, 3, 32, 32) and d.test_x.shape == (3, 3, 32, 32)
    assert d.train_y.tolist() == train_rec[:, 1].tolist()  # fine, not coarse
    assert torch.equal(d.train_x[0].flatten(), torch.from_numpy(train_rec[0, 2:].copy()))


# --- lookup and download ------------------------------------------------------------------


def test_lookup_order(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp = isolated
    places = {
        "data_dir": tmp / "explicit",
        "data_dir/name": tmp / "explicit" / "mnist",
        "env": tmp / "env" / "mnist",
        "cache": tmp / "cache" / "forgetless" / "mnist",
        "system": tmp / "system" / "mnist",
    }
    monkeypatch.setenv("FORGETLESS_DATA", str(tmp / "env"))
    for folder in places.values():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "f.bin").write_bytes(b"")
    for key in places:
        found = files.find_dataset_files("mnist", ["f.bin"], tmp / "explicit", download=False)
        assert found == places[key], key
        (places[key] / "f.bin").unlink()
    with pytest.raises(DataError, match="not found"):
        files.find_dataset_files("mnist", ["f.bin"], tmp / "explicit", download=False)
    (places["system"] / "f.bin").write_bytes(b"")
    with pytest.raises(DataError, match="--data-dir .*typo|is not a folder"):  # a typo never falls back
        files.find_dataset_files("mnist", ["f.bin"], tmp / "explicit-typo", download=False)


def test_a_folder_needs_every_file(isolated: Path) -> None:
    """An incomplete --data-dir is an error naming the missing files, never completed from (or
    silently replaced by) another location's copy; a folder without any of them is skipped."""
    write_mnist_like(isolated / "system" / "mnist")
    (isolated / "partial").mkdir()
    write_idx(isolated / "partial" / IDX_FILES[0], np.zeros((1, 28, 28)))
    with pytest.raises(DataError) as info:
        files.find_dataset_files("mnist", list(IDX_FILES), isolated / "partial", False)
    message = str(info.value)
    assert "\n" not in message and str(isolated / "partial") in message and "--data-dir" in message
    assert all(name in message.split("lacks", 1)[1] for name in IDX_FILES[1:])
    (isolated / "empty").mkdir()
    found = files.find_dataset_files("mnist", list(IDX_FILES), isolated / "empty", False)
    assert found == isolated / "system" / "mnist"


def test_offline_gives_one_line_error_listing_folders(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def offline(url: str, dest: Path, timeout: float = 60.0) -> None:
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(files, "download_url", offline)
    monkeypatch.setenv("FORGETLESS_DATA", str(isolated / "env"))
    (isolated / "mine").mkdir()  # an empty --data-dir: looked in, then the download is tried
    with pytest.raises(DataError) as info:
        load_fashion_mnist(data_dir=isolated / "mine", download=True)
    message = str(info.value)
    assert "\n" not in message and calls
    for folder in files.candidate_folders("fashion-mnist", isolated / "mine"):
        assert str(folder) in message
    for needle in (
        "train-images-idx3-ubyte.gz",
        "--data-dir",
        "FORGETLESS_DATA",
        "apt-get install dataset-fashion-mnist",
        "download failed",
        "name resolution",
    ):
        assert needle in message
    cache = isolated / "cache" / "forgetless" / "fashion-mnist"
    assert list(cache.iterdir()) == []  # no half-downloaded leftovers


def test_download_off_never_downloads() -> None:
    # The autouse fixture turns any download into an AssertionError, which is not caught.
    with pytest.raises(DataError, match="downloading is turned off"):
        load_mnist(download=False)


def test_checksum_mismatch_removes_the_bad_file(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def corrupt(url: str, dest: Path, timeout: float = 60.0) -> None:
        dest.write_bytes(b"not the real tarball")

    monkeypatch.setattr(files, "download_url", corrupt)
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        load_cifar10(download=True)
    assert list((isolated / "cache" / "forgetless" / "cifar10").iterdir()) == []


def test_download_tries_mirrors_and_renames_verified_file(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = b"hello"
    remote = {"toy": (("http://down/", "http://up/"), {"x.bin": hashlib.sha256(payload).hexdigest()})}
    monkeypatch.setattr(files, "REMOTE_FILES", remote)

    def flaky(url: str, dest: Path, timeout: float = 60.0) -> None:
        if url.startswith("http://down/"):
            raise urllib.error.URLError("refused")
        dest.write_bytes(payload)

    monkeypatch.setattr(files, "download_url", flaky)
    folder = files.find_dataset_files("toy", ["x.bin"], None, download=True)
    assert folder == isolated / "cache" / "forgetless" / "toy"
    assert [p.name for p in folder.iterdir()] == ["x.bin"]
    assert (folder / "x.bin").read_bytes() == payload


# --- bring your own data ------------------------------------------------------------------


def test_from_tensors_uint8_and_float() -> None:
    x = torch.randint(0, 256, (6, 2, 4, 4), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    d = from_tensors("mine", x, y, x[:3], y[:3], class_names=("a", "b", "c"))
    assert d.max_value == 255.0 and d.num_classes == 3 and d.input_shape == (2, 4, 4)
    f = from_tensors("f", np.random.rand(4, 5, 5), np.array([0, 1, 0, 3]), np.zeros((2, 5, 5)), [1, 0])
    assert f.train_x.dtype == torch.float32 and f.train_x.shape == (4, 1, 5, 5)
    assert f.max_value == 1.0 and f.num_classes == 4 and f.train_y.dtype == torch.int64


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"train_x": torch.zeros(6, 16)}, r"expected \[N, C, H, W\]"),
        ({"train_y": torch.zeros(5, dtype=torch.int64)}, "5 labels but train_x holds 6"),
        ({"train_y": torch.zeros(6)}, "integer class indices"),
        ({"test_y": torch.tensor([0, -1, 0])}, "label -1"),
        ({"test_x": torch.zeros(3, 1, 5, 5, dtype=torch.uint8)}, "must match"),
        ({"test_x": torch.zeros(3, 1, 4, 4)}, "use one dtype"),
        ({"train_x": torch.full((6, 1, 4, 4), 300, dtype=torch.int32)}, "0..255"),
        (
            {"train_x": torch.full((6, 1, 4, 4), 20, dtype=torch.uint8), "max_value": 16},
            "above max_value",
        ),
        ({"class_names": ("a",)}, "only 1 class names"),
        ({"train_x": torch.full((6, 1, 4, 4), float("nan"))}, "NaN"),
        ({"name": ""}, "non-empty name"),
    ],
)
def test_from_tensors_validation(change: dict, match: str) -> None:
    args = {
        "name": "mine",
        "train_x": torch.zeros(6, 1, 4, 4, dtype=torch.uint8),
        "train_y": torch.tensor([0, 1, 2, 0, 1, 2]),
        "test_x": torch.zeros(3, 1, 4, 4, dtype=torch.uint8),
        "test_y": torch.tensor([0, 1, 2]),
    }
    args.update(change)
    if args["train_x"].dtype.is_floating_point and "test_x" not in change:
        args["test_x"] = args["test_x"].float()
    with pytest.raises(DataError, match=match):
        from_tensors(**args)


def test_from_torch_dataset() -> None:
    x = torch.randint(0, 256, (5, 1, 3, 3), dtype=torch.uint8)
    train = torch.utils.data.TensorDataset(x, torch.tensor([0, 1, 0, 1, 2]))
    test = [(np.ones((1, 3, 3), dtype=np.uint8), 1), (np.zeros((1, 3, 3), dtype=np.uint8), 0)]
    d = from_torch_dataset("ds", train, test)
    assert torch.equal(d.train_x, x) and d.train_y.tolist() == [0, 1, 0, 1, 2]
    assert d.test_x.shape == (2, 1, 3, 3) and d.num_classes == 3
    with pytest.raises(DataError, match="image, label"):
        from_torch_dataset("ds", train, [x[0]])
    with pytest.raises(DataError, match="one shape"):
        from_torch_dataset("ds", train, [(x[0], 0), (torch.zeros(1, 2, 2), 1)])


# --- registry -----------------------------------------------------------------------------


def test_registry_and_unknown_name() -> None:
    assert set(DATA_SOURCES) == {
        "digits", "mnist", "fashion-mnist", "cifar10", "cifar100",
        "image-folder", "tiny-imagenet", "core50", "core50-category",
    }  # fmt: skip
    assert load_dataset("digits").train_x.shape[1:] == (1, 8, 8)
    with pytest.raises(ConfigError, match="did you mean 'fashion-mnist'"):
        load_dataset("fashion_mnist")


def test_the_run_folder_says_which_files_its_data_came_from(isolated: Path) -> None:
    """issue #15: config.yaml (as comments, so it still loads) and metrics.json name every file
    read, absolute and resolved; a folder name with a line break cannot break the YAML."""
    import json

    from forgetless.config import load_config_file, make_config
    from forgetless.reports.results import save_experiment
    from forgetless.training.experiment import resolve, run_experiment

    folder = isolated / "odd\nname: 1"
    write_mnist_like(folder, n_train=40, n_test=20)
    values = dict(benchmark="split-mnist", tasks=2, epochs=1, hidden=[8], strategies=["naive"])
    config = resolve(make_config(**values, data_dir=folder, download=False))
    result = run_experiment(config)
    expected = [str((folder / name).resolve()) for name in IDX_FILES]
    assert result.data_sources == expected
    (isolated / "run").mkdir()
    save_experiment(result, isolated / "run", plots_too=False)
    text = (isolated / "run" / "config.yaml").read_text()
    assert text.startswith("# data read from:\n#   ") and json.dumps(expected[0]) in text
    assert resolve(make_config(**load_config_file(isolated / "run" / "config.yaml"))) == config
    assert json.loads((isolated / "run" / "metrics.json").read_text())["data_sources"] == expected
    assert load_digits_dataset().sources[0].startswith("scikit-learn ")
