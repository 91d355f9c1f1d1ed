"""Feature extractors: an MLP (van de Ven et al. 2019 use 2x400) and a small CNN."""

from __future__ import annotations

import math

from torch import nn


def mlp(input_shape: tuple[int, ...], hidden: list[int]) -> tuple[nn.Module, int]:
    """Flatten, then ``Linear -> ReLU`` per hidden width. Returns (module, feature size)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    return nn.Sequential(*layers), width


def small_cnn(input_shape: tuple[int, ...], channels: list[int]) -> tuple[nn.Module, int]:
    """``Conv3x3 -> ReLU -> MaxPool2`` per entry of ``channels``, then a 256-wide linear layer."""
    c, h, w = input_shape
    layers: list[nn.Module] = []
    for out in channels:
        layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        c, h, w = out, h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(c * h * w, 256), nn.ReLU()]
    return nn.Sequential(*layers), 256
