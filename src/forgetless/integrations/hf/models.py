"""Load a Hugging Face model and tokenizer by hub name or local folder, with one-line errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from forgetless.errors import ConfigError, DataError

OBJECTIVES = ("lm", "classify")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or os.environ.get(
        "TRANSFORMERS_OFFLINE", "0"
    ).lower() in ("1", "true", "yes")


def resolve_model_source(name_or_path: str) -> str:
    """A local folder (must exist) as an absolute path, or a hub name; a path-like name that is
    missing is an error. Absolute, because the model keeps it as ``name_or_path`` and a saved
    PEFT adapter names its base by it (``base_model_name_or_path``): it loads from any folder."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise DataError(
                f"model folder {path} has no config.json: save it with model.save_pretrained(folder) or give a hub name"
            )
        return str(path.resolve())
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise DataError(
            f"model path {name_or_path} does not exist: give an existing folder "
            "(with config.json) or a Hugging Face hub name"
        )
    return name_or_path


def _hub_error(name: str, error: Exception) -> ConfigError:
    why = "HF_HUB_OFFLINE is set" if _offline() else "the hub is unreachable or the name is unknown"
    return ConfigError(
        f"model {name!r} is not a local folder and could not be loaded from the "
        f"Hugging Face hub ({why}: {type(error).__name__}); pass a local folder saved "
        "with save_pretrained, or connect and unset HF_HUB_OFFLINE"
    )


def max_sequence_length(config: Any) -> int | None:
    """The longest sequence the model's position embeddings allow (``None``: unbounded)."""
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_sequence_length(config: Any, seq_len: int) -> None:
    limit = max_sequence_length(config)
    if limit is not None and seq_len > limit:
        raise ConfigError(
            f"sequence length {seq_len} is beyond the model's maximum {limit}: use --seq-len {limit} or less"
        )


def load_model(
    name_or_path: str, objective: str, num_labels: int | None = None, seq_len: int | None = None
) -> tuple[Any, Any, list[str]]:
    """``(model, tokenizer, new_parameter_names)`` for ``objective`` ``lm`` or ``classify``.

    ``new_parameter_names`` are the weights not found in the checkpoint (e.g. a fresh
    classification head): L2-SP and EWC do not anchor them.
    """
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    if objective not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    source = resolve_model_source(name_or_path)
    try:
        config = AutoConfig.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        if source == name_or_path and not Path(source).exists():
            raise _hub_error(name_or_path, error) from None
        raise DataError(f"cannot load model {name_or_path}: {error}".splitlines()[0]) from None
    if seq_len is not None:
        check_sequence_length(config, seq_len)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = {"output_loading_info": True}
    if objective == "classify":
        kwargs.update(num_labels=num_labels, pad_token_id=tokenizer.pad_token_id)
        model_class = AutoModelForSequenceClassification
    else:
        model_class = AutoModelForCausalLM
    try:
        model, info = model_class.from_pretrained(source, **kwargs)
    except ValueError as error:
        raise ConfigError(
            f"{name_or_path} cannot be loaded for objective {objective!r} ({str(error).splitlines()[0][:160]})"
        ) from None
    return model, tokenizer, list(info.get("missing_keys", []))
