"""Run configuration: one pydantic model, filled from CLI flags or a YAML file (same names)."""

from __future__ import annotations

import math
import re
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from forgetless.errors import ConfigError

MAX_SEED = 2**63 - 1
"""The largest seed: torch generators and numpy take 64-bit seeds, and seeds travel as int64."""

MAX_DEPTH = 32
"""The deepest nesting of a YAML config (a config is fields, ``params`` a mapping per strategy)."""

MAX_CONFIG_BYTES = 1 << 20
"""The largest YAML config read (1 MiB): a config is a short text, not a data file."""

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
    """``mlp``, ``cnn``, ``reduced-resnet18``, ``resnet18``/``34``/``50``, ``hf:NAME_OR_PATH`` (a pretrained
    ``transformers`` vision encoder, :mod:`forgetless.models.hf_vision`), or ``package.module:factory``
    (a function of the input shape returning any feature extractor, :func:`forgetless.models.model.user_backbone`)."""
    freeze_backbone: bool = False
    """Train the head only (``requires_grad=False`` on the backbone): linear probe of a pretrained
    ``hf:`` encoder, the frozen feature extractor of prompt-style protocols."""
    channels_last: bool = False
    """Convolution models (cnn, ResNets, a user's conv backbone): weights and training batches in
    ``torch.channels_last`` memory format (faster convolutions on GPUs and oneDNN CPUs); a no-op
    for models without ``Conv2d`` layers (MLP) and for ``hf:`` transformers."""
    flat_parameters: bool | None = None
    """Trainable parameters (and their gradients) as views of one flat buffer
    (:mod:`forgetless.models.flat`): the penalties read theta and add their gradient in one
    vector op, GEM/A-GEM project the flat gradient in place. Unset: on where a strategy of the
    run reads the flat buffer (``uses_flat_parameters``: EWC, Online EWC, SI, MAS, L2-SP, GEM,
    A-GEM), except task-IL (heads a step does not reach would take optimizer steps with a zero
    gradient) and ``channels_last``."""
    compile: bool = False
    """``torch.compile`` the training forward (:mod:`forgetless.training.compiled`); refused in
    one line where the installed torch cannot compile on the run's device."""
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

    @field_validator("*", mode="before")
    @classmethod
    def _strict_kinds(cls, value: Any, info: ValidationInfo) -> Any:
        """No silent coercion, for every field: text (``seed: '0'``) or a boolean (``epochs: true``)
        is refused where a number is expected, text or a number where a boolean is, an empty path;
        pydantic checks the rest. ``1e-3`` in a YAML file is a number (:func:`load_config_file`)."""
        problem = _wrong_kind(value, cls.model_fields[info.field_name or ""].annotation)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str | None) -> str | None:
        from forgetless.models.resnet import RESNETS

        kinds = ("mlp", "cnn", *RESNETS)
        if value is not None and re.fullmatch(r"hf:\S+", value):
            local = Path(value.removeprefix("hf:")).expanduser()  # a folder: absolute, so a resume
            return f"hf:{local.resolve()}" if local.is_dir() else value  # from another cwd finds it
        if value is None or value in kinds:
            return value
        if not value.startswith("hf:") and re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
            return value
        raise ValueError(
            f"unknown model {value!r}: one of {', '.join(kinds)}, hf:NAME_OR_PATH, or package.module:factory"
        )

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
        for name in names:
            if not name or any(not part.strip() for part in name.split("+")):
                which = f"{name!r} holds an empty method name" if name else f"{','.join(names)!r} holds an empty name"
                raise ValueError(f"{which}: strategy names must be non-empty, e.g. naive,ewc or ewc+er")
        return names


_NUMBERS = {int: "an integer", float: "a number"}


def _wrong_kind(value: Any, annotation: Any) -> str | None:
    """What is wrong with ``value`` for a field typed ``annotation`` (text or a boolean for a number,
    text or a number for a boolean, an empty path), or ``None``; other mismatches are pydantic's."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Union or origin is types.UnionType:
        if value is None:
            return None
        problems = [_wrong_kind(value, kind) for kind in args if kind is not type(None)]
        return None if any(p is None for p in problems) else problems[0]
    if origin is list and args and isinstance(value, list):
        for index, item in enumerate(value):
            problem = _wrong_kind(item, args[0])
            if problem is not None:
                return f"item {index} is {problem}"
        return None
    if annotation in _NUMBERS:
        want = _NUMBERS[annotation]
        if isinstance(value, bool):
            return f"{str(value).lower()} (a boolean) where {want} is expected: give {want}"
        if isinstance(value, str):
            return f"the text {_shown(value)} where {want} is expected: write the number unquoted"
    if annotation is bool and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return f"{_shown(value)} where a boolean is expected: write true or false, unquoted"
    if annotation is Path and isinstance(value, str) and not value.strip():
        return "an empty path: name a folder (. for the current one), or leave it unset"
    return None


def _shown(value: Any, width: int = 40) -> str:
    """``repr(value)``, cut to about ``width`` characters."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


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


class _Loader(yaml.SafeLoader):
    """``yaml.safe_load`` (no Python objects) that reads ``1e-3`` as the number it is, as YAML 1.2
    does (PyYAML's YAML 1.1 wants a dot and a signed exponent, ``1.0e-3``, and makes ``1e-3`` text)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def safe_yaml(text: str) -> Any:
    """One YAML document read by :class:`_Loader` (a ``yaml.SafeLoader``: no tags run code)."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


FLOW_DEPTH_LIMIT = 8 * MAX_DEPTH
"""Raw ``[``/``{`` nesting refused before parsing (brackets in strings counted too, hence the margin)."""


def _bracket_depth(text: str, limit: int = FLOW_DEPTH_LIMIT) -> int:
    """The deepest nesting of ``[``/``{`` brackets in ``text`` (raw characters), up to ``limit + 1``."""
    depth = deepest = 0
    for match in re.finditer(r"[\[\]{}]", text):
        depth = depth + 1 if match.group() in "[{" else max(depth - 1, 0)
        deepest = max(deepest, depth)
        if deepest > limit:
            break
    return deepest


def _too_deep(data: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether mappings/lists in ``data`` nest more than ``limit`` levels (or loop: ``&a [*a]``);
    level by level, each shared node once (an anchor bomb costs its distinct nodes, not its paths)."""
    level = [data]
    for _ in range(limit):
        children: dict[int, Any] = {}
        for item in level:
            values = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
            children.update((id(v), v) for v in values if isinstance(v, (dict, list)))
        if not children:
            return False
        level = list(children.values())
    return True


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML config (UTF-8 text, safe loading: no Python objects) into a dict of fields.

    Numbers are written unquoted (``seed: 0``; ``seed: '0'`` is text and refused for a number
    field); ``1e-3`` reads as a number (YAML 1.2), like ``1.0e-3`` and ``0.001``.
    """
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than 1 MiB: a config must be a short UTF-8 YAML text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start}): "
            "a config must be UTF-8 YAML text; save it as UTF-8"
        ) from None
    if _bracket_depth(text) > FLOW_DEPTH_LIMIT:  # PyYAML's scanner takes quadratic time on these
        raise _too_deep_error(path)
    try:
        data = safe_yaml(text)
    except RecursionError:  # too deep for the parser itself
        raise _too_deep_error(path) from None
    except yaml.reader.ReaderError as error:
        raise ConfigError(
            f"config file {path} holds the control character U+{error.character:04X} (offset {error.position}): "
            "a config must be UTF-8 YAML text"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: fix its syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of field: value, got {type(data).__name__}")
    if _too_deep(data):
        raise _too_deep_error(path)
    where = _non_string_key(data)
    if where is not None:
        raise ConfigError(
            f"config file {path}: key {where} is not a name: every key must be a field or parameter name "
            "(quote it if it is meant as text)"
        )
    return data


def _too_deep_error(path: Path) -> ConfigError:
    return ConfigError(
        f"config file {path} is nested too deeply (more than {MAX_DEPTH} levels): a config holds field: value "
        "lines, params one mapping of parameters per strategy; flatten it"
    )


def _non_string_key(data: Any, prefix: str = "", seen: set[int] | None = None) -> str | None:
    """The dotted path of the first non-string mapping key in ``data`` (YAML ``1:`` or ``true:``);
    a node shared through YAML anchors is looked at once."""
    seen = set() if seen is None else seen
    if isinstance(data, (dict, list)):
        if id(data) in seen:
            return None
        seen.add(id(data))
    if isinstance(data, dict):
        for key, value in data.items():
            if not isinstance(key, str):
                return f"{prefix}{key!r}"
            found = _non_string_key(value, f"{prefix}{key}.", seen)
            if found is not None:
                return found
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found = _non_string_key(value, f"{prefix}{index}.", seen)
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
            parsed = safe_yaml(value)  # 1e-3 a number
        except (yaml.YAMLError, RecursionError):
            parsed = value
        params.setdefault(strategy, {})[field] = parsed
    return params
