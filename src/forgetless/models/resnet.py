"""ResNets (He et al. 2016, CVPR): the reduced ResNet-18 of continual-learning papers and the
standard ResNet-18/34/50, in plain PyTorch (no torchvision).

* ``reduced-resnet18``: GEM's (Lopez-Paz & Ranzato 2017) and DER's (Buzzega et al. 2020) network
  for CIFAR: base width ``nf = 20`` (``--hidden 20``), a 3x3 stride-1 stem without max-pooling,
  four stages of two basic blocks (widths nf, 2nf, 4nf, 8nf; strides 1, 2, 2, 2), global average
  pooling: 8 * nf = 160 features, about 1.1M parameters.
* ``resnet18`` / ``resnet34`` / ``resnet50``: the standard depths (blocks 2-2-2-2, 3-4-6-3 basic,
  3-4-6-3 bottleneck), base width 64 (512 or 2048 features). Inputs of at most 64 pixels a side
  get the CIFAR stem of He et al. section 4.2 (3x3, stride 1, no max-pool, as Mammoth's
  ``resnet18`` for seq-cifar10); larger inputs the ImageNet stem (7x7 stride 2, 3x3 max-pool).

Batch norm follows the papers: batch statistics while training (replay rows and current rows are
normalised together, as one batch, in ER/DER), running statistics at evaluation; its buffers are
part of ``state_dict`` and so of every checkpoint. Importance estimates (EWC, MAS) are taken in
``eval()`` mode (:mod:`forgetless.strategies._fisher`).
"""

from __future__ import annotations

from torch import nn

STANDARD = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
RESNETS = ("reduced-resnet18", *STANDARD)
DEFAULT_WIDTH = {"reduced-resnet18": 20, "resnet18": 64, "resnet34": 64, "resnet50": 64}
"""Base width ``nf`` of each kind (``--hidden NF`` changes it)."""


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    expansion = 1

    def __init__(self, inputs: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.shortcut = _shortcut(inputs, width * self.expansion, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), with batch norm and a shortcut (ResNet-50's block)."""

    expansion = 4

    def __init__(self, inputs: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU()
        self.shortcut = _shortcut(inputs, width * 4, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def _shortcut(inputs: int, outputs: int, stride: int) -> nn.Module:
    if stride == 1 and inputs == outputs:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))


def resnet(kind: str, input_shape: tuple[int, ...], width: int | None = None) -> tuple[nn.Module, int]:
    """The ``kind`` ResNet for ``[C, H, W]`` inputs. Returns (module, feature size)."""
    if kind not in RESNETS:
        raise ValueError(f"unknown ResNet {kind!r}: one of {', '.join(RESNETS)}")
    if len(input_shape) != 3:
        raise ValueError(f"a ResNet needs image inputs [C, H, W], not shape {tuple(input_shape)}")
    block_kind, depths = STANDARD.get(kind, ("basic", (2, 2, 2, 2)))
    block = BasicBlock if block_kind == "basic" else Bottleneck
    nf = width or DEFAULT_WIDTH[kind]
    channels, height, _ = input_shape
    if kind == "reduced-resnet18" or height <= 64:
        stem = [nn.Conv2d(channels, nf, 3, 1, 1, bias=False), nn.BatchNorm2d(nf), nn.ReLU()]
    else:
        stem = [nn.Conv2d(channels, nf, 7, 2, 3, bias=False), nn.BatchNorm2d(nf), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    layers: list[nn.Module] = stem
    inputs = nf
    for stage, count in enumerate(depths):
        for index in range(count):
            stride = 2 if stage > 0 and index == 0 else 1
            layers.append(block(inputs, nf * 2**stage, stride))
            inputs = nf * 2**stage * block.expansion
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), inputs
