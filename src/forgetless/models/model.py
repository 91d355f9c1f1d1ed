"""The continual model: a backbone and a scenario-dependent head."""

from __future__ import annotations

import importlib

import torch
from torch import nn

from forgetless.errors import ConfigError
from forgetless.models.backbones import mlp, small_cnn
from forgetless.models.heads import IncrementalHead, MultiHead
from forgetless.models.hf_vision import hf_vision_backbone, is_hf_vision
from forgetless.models.init import Init, initialise
from forgetless.models.resnet import RESNETS, resnet


class ContinualModel(nn.Module):
    """``logits = head(backbone(x), task_ids)``.

    ``task_ids`` is an ``int`` (every input from one task, the fast path), a tensor of per-input
    task ids (mixed batches, e.g. replay), or ``None`` where the scenario gives no task id.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor, task_ids: torch.Tensor | int | None = None) -> torch.Tensor:
        return self.head(self.backbone(x), task_ids)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def forward_with_features(
    model: nn.Module, x: torch.Tensor, task_ids: torch.Tensor | int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logits, features)`` of one forward: a :class:`ContinualModel` (forward not
    overridden) hands out the backbone's features the head read; any other model ``None``."""
    if isinstance(model, ContinualModel) and type(model).forward is ContinualModel.forward:
        features = model.backbone(x)
        return model.head(features, task_ids), features
    return model(x, task_ids), None


def feature_width(backbone: nn.Module, input_shape: tuple[int, ...]) -> int:
    """The feature size of ``backbone`` on ``input_shape`` inputs, from one forward of two zero
    inputs (eval mode, no gradient; on the meta device when built there)."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            out = backbone(torch.zeros(2, *input_shape))
    except Exception as error:
        raise ConfigError(
            f"the backbone failed on inputs of shape {tuple(input_shape)} ({type(error).__name__}: {error}): "
            "it must take [batch, *input_shape] tensors"
        ) from None
    finally:
        backbone.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"the backbone returned {shape}: a backbone must return features [batch, width]")
    return int(out.shape[1])


def user_backbone(spec: str, input_shape: tuple[int, ...]) -> tuple[nn.Module, int]:
    """``package.module:factory``: ``factory(input_shape)`` returns an ``nn.Module`` that maps
    ``[batch, *input_shape]`` inputs to ``[batch, width]`` features (any architecture)."""
    module_name, _, attribute = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(
            f"--model {spec}: cannot load {attribute!r} from {module_name!r} ({error}); give package.module:factory, "
            "importable from here"
        ) from None
    shape = tuple(input_shape)
    must = f"a factory is a function of the input shape (a tuple such as {shape}) that returns a torch nn.Module"
    if not callable(factory):
        raise ConfigError(f"--model {spec}: {attribute!r} is a {type(factory).__name__}, not a function: {must}")
    try:
        backbone = factory(shape)
    except Exception as error:  # not a factory of backbones (os:system), or the user's factory failed
        detail = " ".join(str(error).split())[:200]
        raise ConfigError(
            f"--model {spec}: calling {attribute}({shape}) raised {type(error).__name__} ({detail}): {must}"
        ) from None
    if not isinstance(backbone, nn.Module):
        raise ConfigError(f"--model {spec}: the factory returned a {type(backbone).__name__}, not a torch nn.Module")
    return backbone, feature_width(backbone, input_shape)


def model_for(
    backbone: nn.Module, head_sizes: list[int], multi_head: bool, input_shape: tuple[int, ...]
) -> ContinualModel:
    """A continual model around a user's feature extractor: the head the scenario needs on top."""
    width = feature_width(backbone, input_shape)
    head = MultiHead(width, head_sizes) if multi_head else IncrementalHead(width, head_sizes[0])
    return ContinualModel(backbone, head)


def build_model(
    kind: str,
    input_shape: tuple[int, ...],
    head_sizes: list[int],
    multi_head: bool,
    hidden: list[int],
    init: Init = "pytorch",
    freeze_backbone: bool = False,
) -> ContinualModel:
    """Build the backbone of ``kind`` and the head the scenario needs, initialised by ``init``.

    ``kind``: ``mlp``, ``cnn``, a ResNet (:mod:`forgetless.models.resnet`; ``hidden[0]`` is its base
    width), ``hf:NAME_OR_PATH`` (a pretrained ``transformers`` vision encoder,
    :mod:`forgetless.models.hf_vision`; ``init`` then initialises the head only) or
    ``package.module:factory`` (:func:`user_backbone`). ``head_sizes`` holds one output count per
    task for a multi-head model, else one entry. ``freeze_backbone``: the backbone's parameters
    get ``requires_grad=False`` (linear probe, prompt-style protocols): only the head trains.
    """
    if kind == "mlp":
        backbone, width = mlp(input_shape, hidden)
    elif kind == "cnn":
        backbone, width = small_cnn(input_shape, hidden)
    elif kind in RESNETS:
        backbone, width = resnet(kind, input_shape, hidden[0] if hidden else None)
    elif is_hf_vision(kind):
        backbone, width = hf_vision_backbone(kind, input_shape)
    elif ":" in kind:
        backbone, width = user_backbone(kind, input_shape)
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    head = MultiHead(width, head_sizes) if multi_head else IncrementalHead(width, head_sizes[0])
    model = ContinualModel(backbone, head)
    initialise(head if is_hf_vision(kind) else model, init)  # pretrained weights are kept
    if freeze_backbone:
        backbone.requires_grad_(False)
    return model
