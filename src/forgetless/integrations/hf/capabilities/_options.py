"""Options of a ``--keep KIND:DATA?KEY=VALUE,KEY=VALUE`` spec, and an RNG guard for evaluations.

The part after the first ``?`` of ``DATA`` is a comma-separated list of ``KEY=VALUE`` options
of the kind (``lmeval:arc_easy,piqa?limit=100,metric=acc``); quote the spec in a shell.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from forgetless.errors import ConfigError, closest_names


def split_options(spec: str, source: str, allowed: dict[str, Callable[[str], Any]]) -> tuple[str, dict[str, Any]]:
    """``"DATA?k=v,k=v"`` -> ``("DATA", {k: parse(v)})`` with ``parse = allowed[k]``.

    ``spec`` is the whole ``KIND:DATA`` for the error messages. An unknown key, a part without
    ``=`` or a value its parser refuses is a one-line :class:`ConfigError`.
    """
    data, sep, tail = source.partition("?")
    options: dict[str, Any] = {}
    if not sep:
        return data, options
    names = ", ".join(allowed)
    for part in tail.split(","):
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key or not value:
            raise ConfigError(f"--keep {spec!r}: option {part!r} must be KEY=VALUE (options: {names})")
        if key not in allowed:
            raise ConfigError(f"--keep {spec!r}: unknown option {key!r}: {closest_names(key, list(allowed))}")
        try:
            options[key] = allowed[key](value)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"--keep {spec!r}: {key}={value!r} is not valid ({error})") from None
    return data, options


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be >= 1")
    return number


def non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be >= 0")
    return number


@contextlib.contextmanager
def preserved_rng(device: torch.device | None = None) -> Iterator[None]:
    """Inside: the Python, numpy, torch (and ``device``'s CUDA) RNGs may be reseeded; on exit
    they are as before, so an evaluation never changes the training run's random stream."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = [device] if device is not None and device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
