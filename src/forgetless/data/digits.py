"""The 8x8 handwritten digits bundled with scikit-learn (UCI "Optical Recognition of
Handwritten Digits", test part): 1797 images, pixel values 0..16. No download needed."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from forgetless.data.cache import cached_dataset
from forgetless.data.dataset import ImageDataset
from forgetless.errors import DataError

TEST_FRACTION = 0.25
SPLIT_SEED = 0


def load_digits_dataset() -> ImageDataset:
    """``uint8 [N, 1, 8, 8]`` digits, ``max_value`` 16, split 75/25 stratified with seed 0
    (decoded once per scikit-learn version, then read from the user cache)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        sklearn_version = version("scikit-learn")
    except PackageNotFoundError:
        return _decode()  # names the missing package
    dataset = cached_dataset("digits", [f"scikit-learn {sklearn_version}", f"{TEST_FRACTION}:{SPLIT_SEED}"], _decode)
    return replace(dataset, sources=(f"scikit-learn {sklearn_version}: sklearn.datasets.load_digits()",))


def _decode() -> ImageDataset:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        message = "the digits data set needs scikit-learn: pip install scikit-learn"
        raise DataError(message) from error
    bunch = load_digits()
    images = np.asarray(bunch.images)
    labels = np.asarray(bunch.target, dtype=np.int64)
    if images.min() < 0 or images.max() > 16 or not np.array_equal(images, np.round(images)):
        raise DataError("scikit-learn's digits are not integers in 0..16: is scikit-learn broken?")
    x = torch.from_numpy(images.astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(labels)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=labels
    )
    train_idx, test_idx = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(test_idx))
    return ImageDataset(
        "digits",
        x[train_idx],
        y[train_idx],
        x[test_idx],
        y[test_idx],
        num_classes=10,
        max_value=16.0,
        class_names=tuple(str(d) for d in range(10)),
    )
