"""``--model hf:NAME_OR_PATH``: a pretrained vision transformer from ``transformers`` as backbone.

The backbone of the prompt-based methods, e.g. ``hf:google/vit-base-patch16-224-in21k`` (the
ViT-B/16 of L2P, Wang et al. 2022, and CODA-Prompt, Smith et al. 2023), or any local folder
saved with ``save_pretrained``. Loading reuses the Hugging Face integration's name resolution
(:func:`forgetless.integrations.hf.models.resolve_model_source`): a local folder, or a hub name,
offline with ``HF_HUB_OFFLINE=1`` (an unreachable hub is one line).

Inputs ``[B, C, H, W]`` in ``[0, 1]`` (``Scenario.to_float``) are prepared on the device, batched:
resized to the model's ``image_size`` (bilinear ``F.interpolate``), grey repeated to the model's
channels, then normalised ``(x - mean) / std`` with the folder's image-processor statistics
(``preprocessor_config.json``: ``image_mean``/``image_std``, none if ``do_normalize`` is false),
else the config's ``image_mean``/``image_std``, else ImageNet's. The processor's ``rescale_factor``
(1/255) is what ``to_float`` already did.

Features: the [CLS] token of the last hidden state (``last_hidden_state[:, 0]``, after ViT's final
layer norm; what L2P/CODA-Prompt read) for encoders with a class token (``embeddings.cls_token``:
ViT, DeiT, DINOv2, BEiT); else the model's ``pooler_output`` (Swin, ConvNeXt). ViT/DeiT are
loaded without their pooler (a dense+tanh layer never read). Width: the config's ``hidden_size``.
The pretrained weights are kept: ``--init`` initialises the head only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from forgetless.errors import ConfigError, DataError
from forgetless.extras import require

PREFIX = "hf:"
"""``--model hf:NAME``: the prefix that selects this backbone (``hf`` is not a factory module)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_NO_POOLER = ("vit", "deit")
"""Model types whose pooler (unused: the [CLS] token is read) is not built."""


class HFVisionBackbone(nn.Module):
    """``features = encoder(normalise(resize(x))).[CLS]``: a ``transformers`` vision encoder as a
    ``[B, *input_shape] -> [B, hidden_size]`` feature extractor (module docstring)."""

    def __init__(
        self,
        encoder: nn.Module,
        image_size: int,
        channels: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        pooling: str,
    ):
        super().__init__()
        self.encoder = encoder
        self.image_size = image_size
        self.channels = channels
        self.pooling = pooling
        # not persistent: they come from the model's folder, a checkpoint holds weights only
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Resize, repeat grey to ``channels`` and normalise a whole batch on its device."""
        if x.ndim == 3:  # [B, H, W]: one grey channel
            x = x.unsqueeze(1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.encoder(pixel_values=self.prepare(x))
        if self.pooling == "cls":
            return out.last_hidden_state[:, 0]
        return out.pooler_output.flatten(1)


def _statistics(source: str, config: Any, local: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)``: the image processor's, else the config's, else ImageNet's."""
    from transformers.image_processing_utils import ImageProcessingMixin

    try:
        processor, _ = ImageProcessingMixin.get_image_processor_dict(source, local_files_only=local)
    except (OSError, ValueError):  # no preprocessor_config.json (or not cached offline)
        processor = {}
    if processor and processor.get("do_normalize") is False:
        return (0.0,), (1.0,)
    mean = processor.get("image_mean") or getattr(config, "image_mean", None) or IMAGENET_MEAN
    std = processor.get("image_std") or getattr(config, "image_std", None) or IMAGENET_STD
    return _floats(mean), _floats(std)


def _floats(value: Any) -> tuple[float, ...]:
    """A per-channel statistic (a list, or one number for every channel) as floats."""
    return tuple(float(v) for v in (value if isinstance(value, (list, tuple)) else [value]))


def _image_shape(spec: str, input_shape: tuple[int, ...], channels: int) -> None:
    """Refuse inputs that are not images of 1 or ``channels`` channels."""
    if len(input_shape) == 2:
        return
    if len(input_shape) != 3 or input_shape[0] not in (1, channels):
        raise ConfigError(
            f"--model {spec} takes images [channels, height, width] with 1 or {channels} channels, "
            f"this benchmark gives {tuple(input_shape)}: use an image benchmark or --model mlp"
        )


def vision_config(spec: str) -> tuple[str, Any, bool]:
    """``(source, config, offline)`` of ``hf:NAME_OR_PATH``: the resolved folder or hub name and
    its ``transformers`` config, checked to be a vision model; one-line errors for a missing
    package, folder or hub model (cheap: reads ``config.json`` only, so the CLI checks it before
    a run folder is written)."""
    require("transformers", f"--model {spec}")
    from transformers import AutoConfig

    from forgetless.integrations.hf.models import _hub_error, _offline, resolve_model_source

    name = spec.removeprefix(PREFIX)
    if not name:
        raise ConfigError(
            "--model hf: needs a name: hf:FOLDER or hf:HUB_NAME, e.g. hf:google/vit-base-patch16-224-in21k"
        )
    source = resolve_model_source(name)
    local = _offline()  # HF_HUB_OFFLINE read now (huggingface_hub reads it once, at import)
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError) as error:
        if source == name and not Path(source).exists():
            raise _hub_error(name, error) from None
        raise DataError(f"cannot load model {name}: {error}".splitlines()[0]) from None
    if not isinstance(getattr(config, "image_size", None), int):
        raise ConfigError(
            f"--model {spec}: {config.model_type!r} is not a vision model (its config has no image_size); "
            "give a vision transformer such as a ViT"
        )
    return source, config, local


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    """``transformers``' "Loading weights" bar off while the encoder loads, as it was after."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def hf_vision_backbone(spec: str, input_shape: tuple[int, ...]) -> tuple[HFVisionBackbone, int]:
    """``hf:NAME_OR_PATH`` -> ``(backbone, hidden_size)``, pretrained weights loaded in float32.

    Built on the meta device (``with torch.device("meta")``: parameter counts), the encoder is
    made from its config alone, nothing read but ``config.json``.
    """
    from transformers import AutoModel

    source, config, local = vision_config(spec)
    name = spec.removeprefix(PREFIX)
    image_size = int(config.image_size)
    channels = int(getattr(config, "num_channels", 3) or 3)
    _image_shape(spec, input_shape, channels)
    kwargs: dict[str, Any] = {"add_pooling_layer": False} if config.model_type in _NO_POOLER else {}
    try:
        if torch.get_default_device().type == "meta":
            encoder = AutoModel.from_config(config, **kwargs)
        else:
            with _no_progress_bar():  # a run shows its own progress (and none under --quiet)
                encoder = AutoModel.from_pretrained(source, local_files_only=local, **kwargs)
    except (OSError, ValueError) as error:
        raise DataError(f"cannot load the weights of {name}: {error}".splitlines()[0]) from None
    encoder = encoder.float()
    embeddings = getattr(encoder, "embeddings", None)
    pooling = "cls" if getattr(embeddings, "cls_token", None) is not None else "pooler"
    mean, std = _statistics(source, config, local)
    if len(mean) not in (1, channels) or len(std) not in (1, channels):
        raise DataError(f"{name}: image_mean/image_std have {len(mean)}/{len(std)} values for {channels} channels")
    backbone = HFVisionBackbone(encoder, image_size, channels, mean, std, pooling)
    return backbone, int(config.hidden_size)


def is_hf_vision(kind: str) -> bool:
    """Whether ``--model kind`` names a ``transformers`` vision backbone."""
    return kind.startswith(PREFIX)
