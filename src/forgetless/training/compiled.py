"""Device speed in the hot loop: ``--channels-last`` and ``--compile`` (issue #17, item 4).

* ``channels_last``: convolution weights and 4-D training batches in ``torch.channels_last``
  memory format (NHWC), the layout cuDNN's and oneDNN's fastest convolution kernels use. Only
  for models with ``nn.Conv2d`` layers outside a ``transformers`` encoder: an MLP has none, and
  an ``hf:`` ViT's one convolution (its patch embedding) runs on an input it resizes itself, so
  both are left as they are (a no-op). Evaluation batches stay NCHW (PyTorch converts).
* ``compile``: ``torch.compile`` (TorchInductor) of the training forward. The backbone of a
  :class:`~forgetless.models.model.ContinualModel` is compiled (where the compute is; the head,
  indexed by task id, stays eager so task ids never cause recompiles); any other model is
  compiled whole. The compiled wrapper is held by the learner, not put into the model: state
  dicts, checkpoints and the copies strategies take (LwF's teacher) are those of the eager
  module. Evaluation and strategies' own forwards (Fisher, teachers) run eagerly.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from forgetless.errors import ConfigError
from forgetless.models.hf_vision import HFVisionBackbone
from forgetless.models.model import ContinualModel, forward_with_features


def uses_convolutions(model: nn.Module) -> bool:
    """Whether ``model`` has ``Conv2d`` layers that channels_last applies to (not inside an
    ``hf:`` transformer encoder)."""
    skipped = {id(m) for outer in model.modules() if isinstance(outer, HFVisionBackbone) for m in outer.modules()}
    return any(isinstance(m, nn.Conv2d) and id(m) not in skipped for m in model.modules())


def channels_last_batch(x: torch.Tensor) -> torch.Tensor:
    """A 4-D batch in channels_last memory format (other tensors unchanged)."""
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


@functools.cache
def _compile_problem(device: str) -> str | None:
    """Why ``torch.compile`` fails on ``device`` here (no C++ compiler, no Triton, an
    unsupported Python), from one tiny compiled function; ``None`` when it works."""
    try:
        probe = torch.compile(lambda x: torch.sin(x) * 2.0 + 1.0, fullgraph=True)
        probe(torch.ones(8, device=device))
    except Exception as error:  # any backend failure means: cannot compile here
        return f"{type(error).__name__}: {str(error).strip().splitlines()[0][:120] if str(error).strip() else ''}"
    return None


def check_compile(device: str) -> None:
    """Refuse ``--compile`` in one line where the installed torch cannot compile on ``device``."""
    problem = _compile_problem(str(torch.device(device)))
    if problem is not None:
        raise ConfigError(
            f"--compile: torch {torch.__version__} cannot compile on {device} here ({problem}); "
            "drop --compile (or install a C++ compiler / Triton)"
        )


class CompiledForward:
    """``forward_with_features`` with the model's compute compiled (module docstring); the
    compiled wrapper is rebuilt if the learner's model is replaced."""

    def __init__(self) -> None:
        self._model: nn.Module | None = None
        self._call: Any = None

    def __call__(
        self, model: nn.Module, x: torch.Tensor, task_ids: torch.Tensor | int | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if model is not self._model:
            self._model, self._call = model, self._compile(model)
        return self._call(x, task_ids)

    @staticmethod
    def _compile(model: nn.Module) -> Any:
        if isinstance(model, ContinualModel) and type(model).forward is ContinualModel.forward:
            backbone = torch.compile(model.backbone)

            def split(x: torch.Tensor, task_ids: torch.Tensor | int | None) -> tuple[torch.Tensor, torch.Tensor]:
                features = backbone(x)
                return model.head(features, task_ids), features

            return split
        whole = torch.compile(model)
        return lambda x, task_ids: (whole(x, task_ids), None)


def training_forward(compile_: bool, device: str) -> Any:
    """The learner's training forward: :class:`CompiledForward` (after :func:`check_compile`,
    cached per device) or the eager :func:`~forgetless.models.model.forward_with_features`."""
    if not compile_:
        return forward_with_features
    check_compile(device)
    return CompiledForward()


def prepare_training(model: nn.Module, channels_last: bool, compile_: bool, device: str) -> tuple[nn.Module, Any]:
    """The model in its training memory format and the learner's training forward.

    ``--channels-last`` (where the model has convolutions): the weights and every training
    batch (current and replay rows) in NHWC; ``--compile``: :func:`training_forward`.
    """
    forward = training_forward(compile_, device)
    if not (channels_last and uses_convolutions(model)):
        return model, forward

    def nhwc_forward(
        module: nn.Module, x: torch.Tensor, task_ids: torch.Tensor | int | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return forward(module, channels_last_batch(x), task_ids)

    return model.to(memory_format=torch.channels_last), nhwc_forward
