"""Image-file data sets (issue #17): image folders, Tiny-ImageNet and CORe50 on small trees built
here in the real layouts, the decoded store in the user cache, and the memory-mapped path."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from cli_helpers import one_error_line, run_cli
from forgetless.data import files, images
from forgetless.data.benchmarks import build_scenario
from forgetless.data.core50 import CATEGORIES, OBJECT_NAMES, TEST_SESSIONS, TRAIN_SESSIONS, load_core50
from forgetless.data.folder import load_image_folder
from forgetless.data.sources import load_dataset
from forgetless.data.tinyimagenet import load_tiny_imagenet
from forgetless.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def isolated(isolated_data: Path) -> Path:
    return isolated_data


# --- builders of real layouts -------------------------------------------------------------


def write_image(path: Path, value: tuple[int, ...] | int, size: tuple[int, int] = (8, 8), mode: str = "RGB") -> Path:
    """A flat image of one colour (``value``), ``size`` = (width, height); format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def make_folder(root: Path, counts: dict[str, int], size: tuple[int, int] = (8, 8)) -> Path:
    """``root/<class>/<i>.png``; image i of the k-th class (in ``counts`` order) is (k, i, 7)."""
    for k, (name, n) in enumerate(counts.items()):
        for i in range(n):
            write_image(root / name / f"img_{i:03d}.png", (k, i, 7), size)
    return root


def make_tiny(root: Path, wnids: list[str], n_train: int = 3, n_val: int = 2, side: int = 16) -> Path:
    """``tiny-imagenet-200/`` as distributed: wnids.txt, train/<wnid>/images/<wnid>_<i>.JPEG with
    <wnid>_boxes.txt, val/images/val_<i>.JPEG with val_annotations.txt, test/images."""
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    (base / "words.txt").write_text("".join(f"{w}\tthing {w}\n" for w in wnids))
    shade = {w: 40 * (k + 1) for k, w in enumerate(sorted(wnids))}
    for w in wnids:
        boxes = []
        for i in range(n_train):
            write_image(base / "train" / w / "images" / f"{w}_{i}.JPEG", (shade[w],) * 3, (side, side))
            boxes.append(f"{w}_{i}.JPEG\t0\t0\t{side - 1}\t{side - 1}\n")
        (base / "train" / w / f"{w}_boxes.txt").write_text("".join(boxes))
    write_image(base / "train" / wnids[0] / "images" / f"{wnids[0]}_gray.JPEG", shade[wnids[0]], (side, side), "L")
    lines, j = [], 0
    for _ in range(n_val):
        for w in reversed(wnids):
            write_image(base / "val" / "images" / f"val_{j}.JPEG", (shade[w],) * 3, (side, side))
            lines.append(f"val_{j}.JPEG\t{w}\t1\t2\t{side - 2}\t{side - 3}\n")
            j += 1
    (base / "val" / "val_annotations.txt").write_text("".join(lines))
    write_image(base / "test" / "images" / "test_0.JPEG", (0, 0, 0), (side, side))
    return base


def zip_tree(folder: Path, archive: Path) -> Path:
    """``folder`` zipped with its own name as the top-level folder, as the real archives are."""
    with zipfile.ZipFile(archive, "w") as out:
        for path in sorted(folder.rglob("*")):
            out.write(path, path.relative_to(folder.parent).as_posix())
    return archive


def make_core50(root: Path, frames: int = 1, side: int = 8) -> Path:
    """``core50_128x128/s<1..11>/o<1..50>/C_<ss>_<oo>_<fff>.png``; pixel (object, session, frame)."""
    base = root / "core50_128x128"
    for s in range(1, 12):
        for o in range(1, 51):
            for f in range(frames):
                write_image(base / f"s{s}" / f"o{o}" / f"C_{s:02d}_{o:02d}_{f:03d}.png", (o, s, f), (side, side))
    return base


@pytest.fixture(scope="module")
def core50_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_core50(tmp_path_factory.mktemp("core50"))


def stores(cache: Path, name: str) -> list[Path]:
    return sorted((cache / "forgetless" / name).glob("decoded-*"))


# --- image folders ------------------------------------------------------------------------


def test_folder_classes_sorted_shapes_and_seeded_stratified_split(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "pics", {"zebra": 10, "apple": 5, "mango": 3})
    data = load_image_folder(root)
    assert data.class_names == ("apple", "mango", "zebra") and data.num_classes == 3
    assert data.train_x.dtype == torch.uint8 and data.train_x.shape[1:] == (3, 8, 8) and data.max_value == 255
    # held out per class: round(0.2 n), at least one: apple 1 of 5, mango 1 of 3, zebra 2 of 10
    assert torch.bincount(data.test_y).tolist() == [1, 1, 2]
    assert torch.bincount(data.train_y).tolist() == [4, 2, 8]
    assert data.train_y.tolist() == sorted(data.train_y.tolist())  # stored class by class
    written_class = {"apple": 1, "mango": 2, "zebra": 0}  # the k the builder gave each folder
    for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
        for image, label in zip(x, y):
            assert int(image[0, 0, 0]) == written_class[data.class_names[label]] and int(image[2, 3, 3]) == 7
    # every image exactly once, in train or test
    seen = sorted((int(i[0, 0, 0]), int(i[1, 0, 0])) for i in torch.cat([data.train_x, data.test_x]))
    assert seen == sorted((k, i) for k, n in enumerate([10, 5, 3]) for i in range(n))
    again = load_image_folder(root)
    assert torch.equal(again.test_x, data.test_x)
    other = load_image_folder(root, seed=1)
    assert not torch.equal(other.test_x, data.test_x) and torch.bincount(other.test_y).tolist() == [1, 1, 2]
    assert str(root.resolve()) in data.sources[0] and "18 images" in data.sources[0]


def test_folder_with_train_and_test_grayscale_nested_and_ignored_files(tmp_path: Path) -> None:
    root = tmp_path / "split"
    for split, n in (("train", 3), ("test", 1)):
        for k, name in enumerate(["cat", "dog"]):
            for i in range(n):
                write_image(root / split / name / f"{i}.jpg", 50 * k + i, (5, 4), "L")
    write_image(root / "train" / "dog" / "more" / "deep.JPEG", 120, (5, 4), "L")  # sub-folders are read
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    write_image(root / "train" / ".hidden" / "x.png", 1, (5, 4), "L")
    data = load_image_folder(root)
    assert data.class_names == ("cat", "dog")
    assert data.train_x.shape == (7, 1, 4, 5) and data.test_x.shape == (2, 1, 4, 5)  # all gray: one channel
    assert data.train_y.tolist() == [0, 0, 0, 1, 1, 1, 1] and data.test_y.tolist() == [0, 1]
    assert "test folder" in data.sources[0]
    write_image(root / "test" / "cow" / "0.png", 9, (5, 4), "L")
    with pytest.raises(DataError, match="test class 'cow' has no folder in"):
        load_image_folder(root)


def test_folder_resize_and_mixed_sizes(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "pics", {"a": 2, "b": 2})
    write_image(root / "b" / "big.png", (250, 2, 3), (20, 10))
    with pytest.raises(DataError) as info:
        load_image_folder(root)
    assert str(root / "b" / "big.png") in str(info.value) and "20x10" in str(info.value)
    assert "--image-size" in str(info.value)
    data = load_image_folder(root, image_size=6)
    assert data.train_x.shape[1:] == (3, 6, 6) and data.test_x.shape[1:] == (3, 6, 6)
    flat = torch.cat([data.train_x, data.test_x])
    big = flat[flat[:, 0, 0, 0] == 250]
    assert big.shape[0] == 1 and set(big[0, 2].flatten().tolist()) == {3}  # resized, colour kept
    assert set(flat[:, 2].flatten().tolist()) == {7, 3}


@pytest.mark.parametrize("problem", ["corrupt", "truncated", "empty class", "one image", "no folder"])
def test_bad_folders_are_one_line_naming_the_path(tmp_path: Path, problem: str) -> None:
    root = make_folder(tmp_path / "pics", {"a": 3, "b": 3})
    if problem == "corrupt":
        bad = root / "b" / "broken.png"
        bad.write_bytes(b"this is not a png at all")
    elif problem == "truncated":
        bad = root / "a" / "img_001.png"
        bad.write_bytes(bad.read_bytes()[:40])
    elif problem == "empty class":
        bad = root / "c"
        bad.mkdir()
        (bad / "readme.txt").write_text("no images")
    elif problem == "one image":
        bad = root / "c"
        write_image(bad / "only.png", (1, 1, 1))
    else:
        bad = tmp_path / "missing"
        root = bad
    with pytest.raises(DataError) as info:
        load_image_folder(root)
    message = str(info.value)
    assert "\n" not in message and str(bad) in message, message
    expected = {
        "corrupt": "not a readable image",
        "truncated": "not a readable image",
        "empty class": "holds no .png/.jpg/.jpeg image",
        "one image": "at least 2",
        "no folder": "does not exist",
    }[problem]
    assert expected in message
    with pytest.raises(DataError, match="pass --data-dir ROOT"):
        load_image_folder(None)


def test_the_cache_is_hit_then_invalidated_when_a_file_changes(
    tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_folder(tmp_path / "pics", {"a": 3, "b": 3})
    first = load_image_folder(root)
    assert len(stores(isolated / "cache", "image-folder")) == 1
    real = images.decode_image
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(images, "decode_image", counting)
    second = load_image_folder(root)
    assert calls == [] and torch.equal(first.train_x, second.train_x) and second.sources == first.sources
    changed = root / "a" / "img_000.png"
    write_image(changed, (200, 0, 7))
    os.utime(changed, ns=(10**9, 10**9))
    third = load_image_folder(root)
    assert len(calls) == 6  # decoded afresh
    assert 200 in torch.cat([third.train_x, third.test_x])[:, 0, 0, 0].tolist()
    assert len(stores(isolated / "cache", "image-folder")) == 1  # the older store was deleted
    calls.clear()
    (root / "b" / "img_002.png").unlink()  # a removed file is a new key too
    load_image_folder(root)
    assert len(calls) == 5


def test_a_corrupt_store_is_decoded_again(tmp_path: Path, isolated: Path) -> None:
    root = make_folder(tmp_path / "pics", {"a": 3, "b": 3})
    first = load_image_folder(root)
    (store,) = stores(isolated / "cache", "image-folder")
    (store / "train_x.npy").write_bytes(b"garbage")
    again = load_image_folder(root)
    assert torch.equal(again.train_x, first.train_x)


# --- Tiny-ImageNet ------------------------------------------------------------------------

WNIDS = ["n09999999", "n01443537", "n04067472"]  # wnids.txt is not sorted; labels follow the sorted ids


def test_tiny_imagenet_extracted_and_zipped(tmp_path: Path) -> None:
    base = make_tiny(tmp_path / "data", WNIDS)
    data = load_tiny_imagenet(tmp_path / "data", download=False)
    assert data.class_names == tuple(sorted(WNIDS)) and data.num_classes == 3
    assert data.train_x.shape == (10, 3, 16, 16) and data.test_x.shape == (6, 3, 16, 16)  # gray JPEG -> RGB
    assert data.train_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]  # the gray extra is n09999999's
    assert data.test_y.tolist() == [1, 0, 2, 1, 0, 2]  # annotation order: wnids.txt reversed, twice
    shades = torch.tensor([40, 80, 120])
    for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
        assert torch.allclose(x.float().mean((1, 2, 3)), shades[y].float(), atol=3)  # JPEG: near the shade
    assert data.sources[0].startswith(str(base.resolve()))
    again = load_tiny_imagenet(base, download=False)  # --data-dir may name tiny-imagenet-200 itself
    assert torch.equal(again.train_x, data.train_x)

    (tmp_path / "zipped").mkdir()
    archive = zip_tree(base, tmp_path / "zipped" / "tiny-imagenet-200.zip")
    zipped = load_tiny_imagenet(tmp_path / "zipped", download=False, image_size=8)
    assert zipped.sources == (str(archive.resolve()),)
    assert zipped.train_x.shape == (10, 3, 8, 8) and torch.equal(zipped.train_y, data.train_y)
    assert torch.equal(load_tiny_imagenet(tmp_path / "zipped", download=False).train_x, data.train_x)


@pytest.mark.parametrize("problem", ["val file", "train folder", "annotation", "corrupt in zip"])
def test_tiny_imagenet_bad_trees_are_one_line_naming_the_path(tmp_path: Path, problem: str) -> None:
    base = make_tiny(tmp_path / "data", WNIDS)
    where = tmp_path / "data"
    if problem == "val file":
        (base / "val" / "images" / "val_4.JPEG").unlink()
        needle = str(base / "val" / "images" / "val_4.JPEG")
    elif problem == "train folder":
        for path in (base / "train" / WNIDS[1] / "images").iterdir():
            path.unlink()
        needle = str(base / "train" / WNIDS[1] / "images")
    elif problem == "annotation":
        with open(base / "val" / "val_annotations.txt", "a") as f:
            f.write("val_0.JPEG\tn00000000\t0\t0\t1\t1\n")
        needle = "line 7"
    else:
        (base / "train" / WNIDS[2] / "images" / f"{WNIDS[2]}_1.JPEG").write_bytes(b"\xff\xd8\xff broken")
        (tmp_path / "zipped").mkdir()
        archive = zip_tree(base, tmp_path / "zipped" / "tiny-imagenet-200.zip")
        where = tmp_path / "zipped"
        needle = f"tiny-imagenet-200/train/{WNIDS[2]}/images/{WNIDS[2]}_1.JPEG in {archive.resolve()}"
    with pytest.raises(DataError) as info:
        load_tiny_imagenet(where, download=False)
    message = str(info.value)
    assert "\n" not in message and needle in message, message


def test_tiny_imagenet_download_is_md5_checked(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real code path: the published URL and MD5, the archive kept in the cache and read in place."""
    mirrors, sums = files.REMOTE_FILES["tiny-imagenet"]
    assert mirrors == ("http://cs231n.stanford.edu/",)
    assert sums == {"tiny-imagenet-200.zip": "md5:90528d7ca1a48142e341f4ef8d21d0de"}
    assert files.REMOTE_FILES["core50"][1] == {"core50_128x128.zip": "md5:745f3373fed08d69343f1058ee559e13"}
    archive = zip_tree(make_tiny(isolated / "src", WNIDS), isolated / "tiny.zip")
    payload = archive.read_bytes()
    urls = []

    def serve(body: bytes):
        def download(url: str, dest: Path, timeout: float = 60.0) -> None:
            urls.append(url)
            dest.write_bytes(body)

        return download

    cache = isolated / "cache" / "forgetless" / "tiny-imagenet"
    monkeypatch.setattr(files, "download_url", serve(b"not the archive"))
    with pytest.raises(DataError, match="MD5 mismatch"):
        load_tiny_imagenet(download=True)
    assert urls == ["http://cs231n.stanford.edu/tiny-imagenet-200.zip"] and list(cache.iterdir()) == []
    monkeypatch.setitem(
        files.REMOTE_FILES,
        "tiny-imagenet",
        (mirrors, {"tiny-imagenet-200.zip": "md5:" + hashlib.md5(payload).hexdigest()}),
    )
    monkeypatch.setattr(files, "download_url", serve(payload))
    data = load_tiny_imagenet(download=True)
    assert data.train_x.shape == (10, 3, 16, 16) and data.sources == (str((cache / "tiny-imagenet-200.zip").resolve()),)


# --- CORe50 -------------------------------------------------------------------------------


def test_core50_objects_categories_sessions(core50_root: Path) -> None:
    data = load_core50(core50_root, download=False)
    assert data.num_classes == 50 and data.class_names == OBJECT_NAMES and OBJECT_NAMES[5] == "mobile phone 1"
    assert data.train_x.shape == (8 * 50, 3, 8, 8) and data.test_x.shape == (3 * 50, 3, 8, 8)
    assert (
        data.domain_names == tuple(f"s{s}" for s in TRAIN_SESSIONS) == ("s1", "s2", "s4", "s5", "s6", "s8", "s9", "s11")
    )
    # the pixels say which file each row is: (object, session, frame)
    assert torch.equal(data.train_x[:, 0, 0, 0].long() - 1, data.train_y)
    sessions = torch.tensor(TRAIN_SESSIONS)[data.train_domains]
    assert torch.equal(data.train_x[:, 1, 0, 0].long(), sessions)
    assert data.train_domains.tolist() == sorted(data.train_domains.tolist())  # session-major
    assert set(data.test_x[:, 1, 0, 0].tolist()) == set(TEST_SESSIONS)
    category = load_dataset("core50-category", data_dir=core50_root, download=False)
    assert category.num_classes == 10 and category.class_names == CATEGORIES
    assert torch.equal(category.train_y, data.train_y // 5) and torch.equal(category.train_x, data.train_x)


def test_core50_new_instances_and_new_classes_scenarios(core50_root: Path) -> None:
    ni = build_scenario("core50-ni", data_dir=core50_root, download=False)
    assert ni.kind == "domain" and ni.num_tasks == 8 and ni.head_sizes == [50]
    base = ni.tasks[0].train_x.untyped_storage().data_ptr()
    for task in ni.tasks:
        assert task.train_x.shape[0] == 50 and sorted(task.train_y.tolist()) == list(range(50))
        assert task.test_x is ni.tasks[0].test_x and task.test_x.shape[0] == 150  # one shared test set
        assert task.train_x.untyped_storage().data_ptr() == base  # sessions are views, not copies
    assert [t.description for t in ni.tasks][:3] == ["domain s1", "domain s2", "domain s4"]
    assert set(ni.tasks[2].train_x[:, 1, 0, 0].tolist()) == {4}
    task_il = build_scenario("core50-ni", kind="task", n_tasks=3, data_dir=core50_root, download=False)
    assert task_il.head_sizes == [50, 50, 50] and task_il.uses_task_id
    class_il = build_scenario("core50-ni", kind="class", n_tasks=2, data_dir=core50_root, download=False)
    assert class_il.head_sizes == [100] and class_il.tasks[1].train_y.min() == 50
    with pytest.raises(ConfigError, match="choose --tasks between 1 and 8"):
        build_scenario("core50-ni", n_tasks=9, data_dir=core50_root, download=False)

    nc = build_scenario("core50-nc", data_dir=core50_root, download=False)  # 10 objects, then 8 x 5
    assert nc.kind == "class" and nc.num_tasks == 9 and nc.head_sizes == [50]
    assert [len(t.classes) for t in nc.tasks] == [10] + [5] * 8 and nc.active_outputs == list(range(10, 51, 5))
    assert nc.tasks[0].classes == tuple(range(10)) and nc.tasks[0].train_x.shape[0] == 10 * 8
    assert nc.tasks[1].classes == (10, 11, 12, 13, 14) and nc.tasks[1].train_x.shape[0] == 5 * 8
    assert nc.tasks[1].test_x.shape[0] == 5 * 3
    five = build_scenario("core50-nc", n_tasks=5, data_dir=core50_root, download=False)
    assert [len(t.classes) for t in five.tasks] == [10, 10, 10, 10, 10]
    with pytest.raises(ConfigError, match="choose --tasks between 2 and 41"):
        build_scenario("core50-nc", n_tasks=42, data_dir=core50_root, download=False)
    by_category = build_scenario("core50-nc-category", data_dir=core50_root, download=False)
    assert by_category.num_tasks == 5 and by_category.tasks[0].classes == (0, 1)
    assert by_category.tasks[0].train_x.shape[0] == 10 * 8
    ni_category = build_scenario("core50-ni-category", data_dir=core50_root, download=False)
    assert ni_category.head_sizes == [10] and sorted(set(ni_category.tasks[0].train_y.tolist())) == list(range(10))


def test_core50_from_the_zip_and_a_missing_object(tmp_path: Path, core50_root: Path) -> None:
    (tmp_path / "zipped").mkdir()
    archive = zip_tree(core50_root, tmp_path / "zipped" / "core50_128x128.zip")
    zipped = load_core50(tmp_path / "zipped", download=False)
    assert zipped.sources == (str(archive.resolve()),)
    assert torch.equal(zipped.train_x, load_core50(core50_root, download=False).train_x)
    broken = make_core50(tmp_path / "partial")
    for path in (broken / "s7" / "o42").iterdir():
        path.unlink()
    (broken / "s7" / "o42").rmdir()
    with pytest.raises(DataError) as info:
        load_core50(tmp_path / "partial", download=False)
    assert "\n" not in str(info.value) and str(broken.resolve() / "s7" / "o42") in str(info.value)
    assert "is missing" in str(info.value)
    (tmp_path / "nothing-here").mkdir()
    with pytest.raises(DataError, match="core50 data set not found.*core50_128x128.zip.*downloading is turned off"):
        load_core50(tmp_path / "nothing-here", download=False)
    with pytest.raises(DataError, match="--data-dir .*nothing-there is not a folder"):
        load_core50(tmp_path / "nothing-there", download=False)


# --- larger than memory -------------------------------------------------------------------


def test_a_data_set_above_the_memory_limit_is_memory_mapped(
    tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_folder(tmp_path / "pics", {"a": 4, "b": 4, "c": 4, "d": 4})
    monkeypatch.setattr(images, "memory_limit", lambda: 1000)  # 16 images of 192 bytes do not fit
    data = load_image_folder(root)
    (store,) = stores(isolated / "cache", "image-folder")
    meta = json.loads((store / "meta.json").read_text())
    assert meta["shapes"]["train_x"] == [12, 3, 8, 8] and data.train_x.shape == (12, 3, 8, 8)
    assert images.is_memory_mapped(data)
    if Path("/proc/self/maps").exists():
        assert str(store / "train_x.npy") in Path("/proc/self/maps").read_text()  # mapped, not read
    from forgetless.data.custom import from_tensors

    in_memory = from_tensors("mine", data.train_x.clone(), data.train_y, data.test_x.clone(), data.test_y)
    images.check_copy_fits(in_memory, "a shuffled class order")  # held in memory already: no refusal
    scenario = build_scenario("split-image-folder", n_tasks=2, data_dir=root)
    assert scenario.tasks[1].train_x.shape == (6, 3, 8, 8) and scenario.tasks[1].classes == (2, 3)
    with pytest.raises(DataError) as info:
        build_scenario("split-image-folder", n_tasks=2, data_dir=root, class_order_seed=1)
    message = str(info.value)
    assert "\n" not in message and "3 KiB" in message and "16 images of 3x8x8" in message
    assert "a shuffled class order copies every image" in message and "--image-size 4 or less" in message


def test_the_memory_mapped_split_is_a_view_of_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_folder(tmp_path / "pics", {"a": 5, "b": 5})
    monkeypatch.setattr(images, "memory_limit", lambda: 10)
    from forgetless.data import scenarios

    data = load_image_folder(root)
    split = scenarios.split(data, 2, "class")
    assert split.tasks[1].train_x.untyped_storage().data_ptr() == data.train_x.untyped_storage().data_ptr()
    assert torch.equal(split.tasks[1].train_x, data.train_x[data.train_y == 1])


def test_an_unusable_cache_decodes_in_memory_or_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_folder(tmp_path / "pics", {"a": 3, "b": 3})
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    data = load_image_folder(root)  # small: decoded in memory, not cached
    assert data.train_x.shape == (4, 3, 8, 8)
    monkeypatch.setattr(images, "memory_limit", lambda: 100)
    with pytest.raises(DataError) as info:
        load_image_folder(root)
    assert "\n" not in str(info.value) and "set XDG_CACHE_HOME to a writable folder" in str(info.value)


# --- the command line ---------------------------------------------------------------------


def test_forgetless_run_on_an_image_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_folder(tmp_path / "pics", {"ant": 6, "bee": 6, "cow": 6, "dog": 6}, size=(10, 9))
    out = tmp_path / "run"
    argv = ["run", "--benchmark", "split-image-folder", "--data-dir", str(root), "--image-size", "6"]
    argv += ["--tasks", "2", "--epochs", "1", "--strategies", "naive", "--hidden", "4,4", "--batch-size", "8"]
    argv += ["--threads", "1", "--quiet", "--out", str(out)]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert str(root.resolve()) in metrics["data_sources"][0]
    assert "image_size: 6" in (out / "config.yaml").read_text()

    code, _, err = run_cli(
        ["run", "--benchmark", "split-image-folder", "--quiet", "--out", str(tmp_path / "r2")], capsys
    )
    assert code == 2 and "pass --data-dir ROOT" in one_error_line(err)
    (root / "ant" / "img_000.png").write_bytes(b"broken")
    code, _, err = run_cli([*argv[:-1], str(tmp_path / "r3")], capsys)
    assert code == 2 and str(root / "ant" / "img_000.png") in one_error_line(err)
    code, _, err = run_cli(["run", "--image-size", "8", "--quiet", "--out", str(tmp_path / "r4")], capsys)
    assert code == 2 and "--image-size applies to data sets read from image files" in one_error_line(err)
