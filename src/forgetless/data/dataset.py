"""The in-memory form every data source returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image data set held in memory as compact tensors.

    Images stay in their compact dtype (``uint8`` for MNIST-like data and CIFAR) with shape
    ``[N, C, H, W]``; the training loop scales them to floats batch by batch, dividing by
    ``max_value``. Labels are ``int64`` class indices in ``[0, num_classes)``.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    max_value: float = 255.0
    class_names: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    """Where the data were read from: the files (absolute paths) or the package that ships them."""
    train_domains: torch.Tensor | None = None
    """The acquisition domain of each training image (``int64 [N]``, an index into
    ``domain_names``; CORe50's session), for streams with one task per domain."""
    domain_names: tuple[str, ...] = ()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])
