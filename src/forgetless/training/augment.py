"""Batched data augmentation on the device: random crop with zero padding, and horizontal flip.

The CIFAR augmentation of the continual-learning literature (Mammoth's and DER's
``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``), applied to a whole float batch
``[N, C, H, W]`` at once: every image is zero-padded by ``padding`` pixels on each side, a window
of the original size is taken at an offset drawn uniformly in ``[0, 2 * padding]`` per axis, and
with probability 1/2 it is mirrored left-right. The crop and the flip are one gather (no Python
loop over images); the offsets and flips are drawn from the run's seeded generator, so a
checkpoint (which holds that generator) resumes to the same augmented batches.

Applied to every training batch (current rows and the replay rows they are mixed with) and to
every buffer sample a replay method trains on (ER, DER/DER++, A-GEM, GEM), as Mammoth does;
never to evaluation or importance estimation.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F

Augmentation = Literal["none", "crop-flip"]


def default_padding(input_shape: tuple[int, ...]) -> int:
    """4 pixels for CIFAR's 32x32 (the papers'), less for smaller images: ``min(4, side // 8)``, >= 1."""
    return max(1, min(4, min(input_shape[-2:]) // 8))


def crop_flip(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """``x`` [N, C, H, W] randomly cropped (zero padding ``padding``) and flipped, per image."""
    if x.ndim != 4:
        raise ValueError(f"crop-flip augments image batches [N, C, H, W], not shape {tuple(x.shape)}")
    n, _, height, width = x.shape
    span = 2 * padding + 1
    offsets = torch.randint(0, span, (2, n), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    rows = offsets[0, :, None] + torch.arange(height, device=x.device)[None, :]
    across = torch.arange(width, device=x.device)[None, :]
    cols = offsets[1, :, None] + torch.where(flip[:, None], width - 1 - across, across)
    images = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[images, rows[:, :, None], cols[:, None, :]]  # [N, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def training_augmentation(
    kind: Augmentation, padding: int | None, input_shape: tuple[int, ...], generator: torch.Generator
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``--augment``'s batch transform (``None`` for ``none``); ``padding`` ``None``: :func:`default_padding`."""
    if kind != "crop-flip":
        return None
    return partial(crop_flip, padding=default_padding(input_shape) if padding is None else padding, generator=generator)
