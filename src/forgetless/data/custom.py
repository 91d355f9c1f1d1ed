"""Bring your own data: wrap tensors, arrays or a ``torch.utils.data.Dataset`` as an ImageDataset.

Images are ``[N, C, H, W]`` (``[N, H, W]`` gets one channel), either ``uint8`` (other integer
types are accepted when their values fit in 0..255) or floating point (kept as ``float32``).
Labels are integer class indices ``0..num_classes-1``. The scenario layer splits the result
into tasks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from forgetless.data.dataset import ImageDataset
from forgetless.errors import DataError


def _images(x: Any, what: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(x).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as error:
        raise DataError(f"{what} is not an array of images: {error}") from error
    if t.dim() == 3:
        t = t.unsqueeze(1)
    if t.dim() != 4:
        raise DataError(f"{what} has shape {list(t.shape)}: expected [N, C, H, W] (or [N, H, W] for one channel)")
    if len(t) == 0:
        raise DataError(f"{what} is empty")
    if t.is_floating_point():
        t = t.to(torch.float32)
        if not bool(torch.isfinite(t).all()):
            raise DataError(f"{what} holds NaN or infinite values")
    elif t.dtype == torch.bool or t.is_complex():
        raise DataError(f"{what} has dtype {t.dtype}: expected uint8 or floating point images")
    elif t.dtype != torch.uint8:
        low, high = int(t.min()), int(t.max())
        if low < 0 or high > 255:
            raise DataError(
                f"{what} has dtype {t.dtype} with values {low}..{high}: integer "
                "images must fit in 0..255 (or pass floats)"
            )
        t = t.to(torch.uint8)
    return t.contiguous()


def _labels(y: Any, what: str, n: int, images: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(y).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as error:
        raise DataError(f"{what} is not an array of labels: {error}") from error
    if t.dim() != 1:
        raise DataError(f"{what} has shape {list(t.shape)}: expected one label per image, [N]")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise DataError(f"{what} has dtype {t.dtype}: labels must be integer class indices (convert them with .long())")
    if len(t) != n:
        raise DataError(f"{what} holds {len(t)} labels but {images} holds {n} images")
    low = int(t.numpy().min()) if n else 0  # numpy: torch has no min for uint32/uint64
    if low < 0:
        raise DataError(f"{what} holds label {low}: labels must be 0 or more")
    if n and int(t.numpy().max()) >= 2**62:
        raise DataError(f"{what} holds label {int(t.numpy().max())}: labels are class indices 0, 1, 2, ...")
    return t.to(torch.int64).contiguous()


def from_tensors(
    name: str,
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    max_value: float | None = None,
    class_names: Sequence[str] = (),
) -> ImageDataset:
    """Validate and wrap in-memory images and labels (tensors or numpy arrays).

    ``max_value`` (what the trainer divides pixels by) defaults to 255 for ``uint8`` images and
    1.0 for floats. ``num_classes`` is ``len(class_names)`` if given, else the largest label + 1.
    """
    if not isinstance(name, str) or not name:
        raise DataError(f"a data set needs a non-empty name, got {name!r}")
    tr_x, te_x = _images(train_x, "train_x"), _images(test_x, "test_x")
    if tr_x.dtype != te_x.dtype:
        raise DataError(f"train_x is {tr_x.dtype} but test_x is {te_x.dtype}: use one dtype")
    if tr_x.shape[1:] != te_x.shape[1:]:
        raise DataError(
            f"train_x images are {list(tr_x.shape[1:])} but test_x images are {list(te_x.shape[1:])}: they must match"
        )
    tr_y = _labels(train_y, "train_y", len(tr_x), "train_x")
    te_y = _labels(test_y, "test_y", len(te_x), "test_x")

    if max_value is None:
        max_value = 255.0 if tr_x.dtype == torch.uint8 else 1.0
    max_value = float(max_value)
    if not math.isfinite(max_value) or max_value <= 0:
        raise DataError(f"max_value must be a positive number, got {max_value}")
    if tr_x.dtype == torch.uint8:
        for what, x in (("train_x", tr_x), ("test_x", te_x)):
            if int(x.max()) > max_value:
                raise DataError(f"{what} holds value {int(x.max())} above max_value {max_value:g}")

    names = tuple(str(c) for c in class_names)
    top = max(int(tr_y.max()), int(te_y.max()))
    if names and top >= len(names):
        raise DataError(f"labels go up to {top} but only {len(names)} class names were given")
    if not names and int(te_y.max()) > int(tr_y.max()):
        raise DataError(
            f"test_y holds label {int(te_y.max())} but train_y labels go up to {int(tr_y.max())}: every test "
            "class needs training examples (check the labels, or pass class_names to declare the classes)"
        )
    num_classes = len(names) if names else top + 1
    return ImageDataset(
        name,
        tr_x,
        tr_y,
        te_x,
        te_y,
        num_classes=num_classes,
        max_value=max_value,
        class_names=names,
    )


def _image_of(x: Any) -> torch.Tensor:
    """One image as a tensor; PIL images (``[H, W, C]`` arrays) become ``[C, H, W]``."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    is_pil = hasattr(x, "getbands")
    t = torch.from_numpy(np.array(x)) if is_pil else torch.as_tensor(x)
    return t.permute(2, 0, 1) if is_pil and t.dim() == 3 else t


def _materialise(ds: Dataset | Iterable, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Read every ``(image, label)`` pair of a data set once into two tensors."""
    if isinstance(ds, IterableDataset):
        items: Iterable[Any] = ds
    else:
        try:
            items = (ds[i] for i in range(len(ds)))  # type: ignore[arg-type,index]
        except TypeError as error:
            raise DataError(f"{what} has no length: pass a map-style Dataset") from error
    xs: list[torch.Tensor] = []
    ys: list[int] = []
    for i, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            kind = type(item).__name__
            raise DataError(f"{what}[{i}] is a {kind}, expected an (image, label) pair")
        x = _image_of(item[0])
        label = torch.as_tensor(item[1])
        if label.numel() != 1 or label.is_floating_point() or label.dtype == torch.bool:
            raise DataError(f"{what}[{i}] has label {item[1]!r}: expected an integer class index")
        if xs and x.shape != xs[0].shape:
            raise DataError(
                f"{what}[{i}] is an image of shape {list(x.shape)} but {what}[0] "
                f"is {list(xs[0].shape)}: all images must have one shape"
            )
        xs.append(x)
        ys.append(int(label))
    if not xs:
        raise DataError(f"{what} is empty")
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


def from_torch_dataset(
    name: str,
    train_ds: Dataset | Iterable,
    test_ds: Dataset | Iterable,
    max_value: float | None = None,
    class_names: Sequence[str] = (),
) -> ImageDataset:
    """Materialise two datasets of ``(image, label)`` pairs into an ImageDataset, once.

    Images may be tensors, numpy arrays or PIL images; apply no random augmentation here.
    """
    train_x, train_y = _materialise(train_ds, "train_ds")
    test_x, test_y = _materialise(test_ds, "test_ds")
    return from_tensors(name, train_x, train_y, test_x, test_y, max_value, class_names)
