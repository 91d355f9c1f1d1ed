"""Decoded data sets in the user cache: decoded once, read back exactly, refreshed when the source changes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from forgetless.data.cache import cache_path, cached_dataset, file_key
from forgetless.data.dataset import ImageDataset


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def dataset() -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (12, 1, 4, 4), dtype=torch.uint8, generator=g)
    y = torch.arange(12) % 3
    return ImageDataset("tiny", x[:8], y[:8], x[8:], y[8:], 3, max_value=255.0, class_names=("a", "b", "c"))


class Decoder:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> ImageDataset:
        self.calls += 1
        return dataset()


def same(a: ImageDataset, b: ImageDataset) -> bool:
    tensors = ("train_x", "train_y", "test_x", "test_y")
    return all(
        torch.equal(getattr(a, t), getattr(b, t)) and getattr(a, t).dtype == getattr(b, t).dtype for t in tensors
    ) and (
        a.num_classes,
        a.max_value,
        a.class_names,
    ) == (b.num_classes, b.max_value, b.class_names)


def test_decoded_once_then_read_back_exactly(tmp_path: Path):
    decode = Decoder()
    first = cached_dataset("tiny", ["source v1"], decode)
    second = cached_dataset("tiny", ["source v1"], decode)
    assert decode.calls == 1 and same(first, dataset()) and same(second, dataset())


def test_a_changed_source_is_decoded_again(tmp_path: Path):
    source = tmp_path / "images.gz"
    source.write_bytes(b"one")
    decode = Decoder()
    cached_dataset("tiny", [file_key(source)], decode)
    source.write_bytes(b"other content")  # new size and modification time: a new key
    os.utime(source, ns=(1, 1))
    cached_dataset("tiny", [file_key(source)], decode)
    assert decode.calls == 2


def test_a_corrupt_cache_file_is_decoded_again_and_replaced():
    decode = Decoder()
    cached_dataset("tiny", ["k"], decode)
    path = cache_path("tiny", ["k"])
    path.write_bytes(path.read_bytes()[:50])  # truncated
    again = cached_dataset("tiny", ["k"], decode)
    assert decode.calls == 2 and same(again, dataset())
    assert same(cached_dataset("tiny", ["k"], decode), dataset()) and decode.calls == 2


def test_an_unwritable_cache_only_costs_the_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    decode = Decoder()
    assert same(cached_dataset("tiny", ["k"], decode), dataset())
    assert same(cached_dataset("tiny", ["k"], decode), dataset()) and decode.calls == 2
