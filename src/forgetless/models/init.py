"""Weight initialisation of a built model: PyTorch's default or Xavier-uniform.

* ``pytorch`` (default): what ``nn.Linear`` / ``nn.Conv2d`` do on construction,
  ``kaiming_uniform_(a=sqrt(5))``, i.e. weights and biases ``U(+-1/sqrt(fan_in))``.
* ``xavier``: Glorot & Bengio (2010), eq. 16: weights ``U(+-sqrt(6 / (fan_in + fan_out)))``,
  biases 0; what Mammoth's backbones apply (``backbone.xavier``). With plain SGD and short tasks
  it learns faster than PyTorch's smaller default weights (on Split Fashion-MNIST with SGD 0.01,
  one epoch: ER +6 points, docs/tuning-replay.md section 6); with Adam it makes no measurable
  difference.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Init = Literal["pytorch", "xavier"]


def initialise(model: nn.Module, scheme: Init) -> nn.Module:
    """Re-initialise every linear and convolution layer of ``model`` by ``scheme``, in place."""
    if scheme == "pytorch":
        return model
    if scheme != "xavier":
        raise ValueError(f"unknown init {scheme!r}: pytorch | xavier")
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            with torch.no_grad():
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    module.bias.zero_()
    return model
