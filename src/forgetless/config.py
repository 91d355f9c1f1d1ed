"""Run configuration: one pydantic model, filled from CLI flags or a YAML file (same names)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from forgetless.errors import ConfigError

MAX_SEED = 2**63 - 1
"""The largest seed: torch generators and numpy take 64-bit seeds, and seeds travel as int64."""

DEFAULT_STRATEGIES = ("naive", "ewc", "er", "joint")
"""What ``forgetless run`` compares by default: the disease (naive fine-tuning), one regularizer
(EWC), one replay method (ER) and the upper bound (joint training)."""


class RunConfig(BaseModel):
    """Everything that defines a run. Unset fields take the benchmark's defaults.

    The YAML keys are the field names (``--buffer-size`` on the command line is
    ``buffer_size`` in YAML). ``params`` holds per-strategy hyperparameters, e.g.
    ``{"ewc": {"ewc_lambda": 100}}`` (``--set ewc.ewc_lambda=100`` on the command line).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    benchmark: str = "split-digits"
    scenario: Literal["task", "domain", "class"] | None = None
    strategies: list[str] = Field(default_factory=lambda: list(DEFAULT_STRATEGIES), min_length=1)
    seeds: int = Field(1, ge=1, le=1000)
    seed: int = Field(0, ge=0)
    tasks: int | None = Field(None, ge=1, le=1000)
    class_order_seed: int | None = Field(None, ge=0)
    epochs: int | None = Field(None, ge=1, le=10_000)
    batch_size: int = Field(128, ge=1, le=1_000_000)
    eval_batch_size: int = Field(4096, ge=1)
    eval_precision: Literal["float32", "bfloat16", "float16"] = "float32"
    """Autocast dtype of evaluation forwards; float32 (default) is exact, bfloat16 is about 4x
    faster on CPUs with AVX512-BF16/AMX and may flip a few near-tied predictions."""
    lr: float = Field(1e-3, gt=0.0, le=100.0)
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    model: str | None = None
    """``mlp``, ``cnn``, ``reduced-resnet18``, ``resnet18``/``34``/``50``, or ``package.module:factory``
    (a function of the input shape returning any feature extractor, :func:`forgetless.models.model.user_backbone`)."""
    hidden: list[int] | None = None
    """MLP widths, CNN channels, or a ResNet's base width (``[20]`` for reduced-resnet18)."""
    init: Literal["pytorch", "xavier"] = "pytorch"
    """Weight initialisation (forgetless.models.init): PyTorch's default or Xavier-uniform with
    zero biases, the peers' (Mammoth's) choice; it matters with plain SGD, not with Adam."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Training precision (forgetless.training.precision): fp32, or bf16/fp16 autocast with
    float32 weights and strategy states (fp16 with dynamic loss scaling)."""
    augment: Literal["none", "crop-flip"] = "none"
    """Training augmentation, batched on the device (forgetless.training.augment)."""
    augment_padding: int | None = Field(None, ge=0, le=64)
    """Zero padding of crop-flip's random crop; unset: ``min(4, side // 8)``, at least 1 (4 for
    32x32 CIFAR images as the papers use, 3 for 28x28, 1 for 8x8 digits)."""
    device: str = "cpu"
    threads: int | None = Field(None, ge=1, le=1024)
    data_dir: Path | None = None
    download: bool = True
    image_size: int | None = Field(None, ge=1, le=4096)
    """Resize the images of data sets read from image files (image folders, Tiny-ImageNet,
    CORe50) to ``image_size x image_size``; unset keeps their own size."""
    validation: float = Field(0.0, ge=0.0, lt=1.0)
    """Fraction of each task's training data held out and evaluated instead of the test set."""
    out: Path | None = None
    # replay family
    buffer_size: int = Field(500, ge=1)
    # per-strategy hyperparameters
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # fine-tuning schedules (compose with every strategy)
    layerwise_lr_decay: float | None = Field(None, gt=0.0, le=1.0)
    warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    unfreeze_every: int | None = Field(None, ge=1)
    stop_if_drop: float | None = Field(None, ge=0.0, le=1.0)
    eval_every: int = Field(50, ge=1)
    # reliability
    checkpoint_every: int | None = Field(None, ge=1)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str | None) -> str | None:
        from forgetless.models.resnet import RESNETS

        kinds = ("mlp", "cnn", *RESNETS)
        if value is None or value in kinds or re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
            return value
        raise ValueError(f"unknown model {value!r}: one of {', '.join(kinds)}, or package.module:factory")

    @field_validator("hidden")
    @classmethod
    def _positive_widths(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or any(w < 1 for w in value)):
            raise ValueError("hidden widths must be a non-empty list of positive integers")
        return value

    @field_validator("seed")
    @classmethod
    def _seeds_fit(cls, value: int, info: ValidationInfo) -> int:
        count = info.data.get("seeds", 1)
        if value + count - 1 > MAX_SEED:
            which = f"seeds {value}..{value + count - 1} go" if count > 1 else f"{value} is"
            raise ValueError(
                f"{which} past the largest seed {MAX_SEED} (2**63-1: torch and numpy seeds are 64-bit): "
                "choose a smaller --seed" + (" or fewer --seeds" if count > 1 else "")
            )
        return value

    @field_validator("class_order_seed")
    @classmethod
    def _class_order_seed_fits(cls, value: int | None) -> int | None:
        if value is not None and value > MAX_SEED:
            raise ValueError(f"{value} is past the largest seed {MAX_SEED} (2**63-1): choose a smaller one")
        return value

    @field_validator("params")
    @classmethod
    def _params_names(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, fields in value.items():
            for field, item in fields.items():
                if not isinstance(field, str):
                    raise ValueError(
                        f"parameter {field!r} of {name!r} is a {type(field).__name__}: parameter names are strings, "
                        f"e.g. params: {{{name}: {{ewc_lambda: 100}}}}"
                    )
                bad = _non_finite(item)
                if bad is not None:
                    raise ValueError(
                        f"{name}.{field} is {bad}: hyperparameters must be finite numbers (a NaN or infinite "
                        "value makes the loss NaN and is not stored in config.yaml); give a finite value"
                    )
        return value

    @field_validator("strategies")
    @classmethod
    def _no_empty_names(cls, value: list[str]) -> list[str]:
        names = [v.strip() for v in value]
        if any(not n or any(not part.strip() for part in n.split("+")) for n in names):
            raise ValueError("strategy names must be non-empty, e.g. naive,ewc or ewc+er")
        return names


def _non_finite(value: Any) -> str | None:
    """``"inf"``/``"nan"`` (as written) where ``value`` is or holds a non-finite float, else ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for item in value:
            bad = _non_finite(item)
            if bad is not None:
                return bad
    return None


def _plain(name: str) -> bool:
    return bool(name) and name.isprintable() and not any(c.isspace() for c in name)


def describe_validation_error(error: ValidationError) -> str:
    """One line naming each bad field and what it must be."""
    parts = []
    for item in error.errors():
        field = ".".join(p if _plain(p) else repr(p) for p in map(str, item["loc"])) or "config"
        message = " ".join(item["msg"].split()).removeprefix("Value error, ")
        parts.append(f"{field}: {message}")
    return "invalid configuration: " + "; ".join(parts)


def make_config(**values: Any) -> RunConfig:
    """Build a :class:`RunConfig`, turning validation failures into one-line ConfigErrors."""
    try:
        return RunConfig(**values)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error)) from None


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML config (``yaml.safe_load``: no Python objects) into a dict of fields."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: fix its syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of field: value, got {type(data).__name__}")
    where = _non_string_key(data)
    if where is not None:
        raise ConfigError(
            f"config file {path}: key {where} is not a name: every key must be a field or parameter name "
            "(quote it if it is meant as text)"
        )
    return data


def _non_string_key(data: Any, prefix: str = "") -> str | None:
    """The dotted path of the first non-string mapping key in ``data`` (YAML ``1:`` or ``true:``)."""
    if isinstance(data, dict):
        for key, value in data.items():
            if not isinstance(key, str):
                return f"{prefix}{key!r}"
            found = _non_string_key(value, f"{prefix}{key}.")
            if found is not None:
                return found
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found = _non_string_key(value, f"{prefix}{index}.")
            if found is not None:
                return found
    return None


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML (paths as strings), loadable by :func:`load_config_file`."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def parse_assignments(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["ewc.ewc_lambda=100", "er.batch=32"]`` -> ``{"ewc": {"ewc_lambda": 100}, ...}``."""
    params: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        strategy, dot, field = key.strip().partition(".")
        if not sep or not dot or not strategy or not field:
            raise ConfigError(f"--set {item!r} must look like STRATEGY.PARAM=VALUE, e.g. ewc.ewc_lambda=100")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        params.setdefault(strategy, {})[field] = parsed
    return params
