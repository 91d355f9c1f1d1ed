"""User-facing errors: each carries one line that names the problem and the fix.

The CLI prints ``str(error)`` on one line and exits with a non-zero code; no traceback.
"""

from __future__ import annotations


class ForgetlessError(Exception):
    """Base class of every error that is the user's to fix (bad input, missing data, ...)."""

    exit_code = 2


class ConfigError(ForgetlessError):
    """An invalid configuration value or an unknown name."""


class DataError(ForgetlessError):
    """A data set that is missing, corrupt, truncated or of the wrong shape."""


class OutputError(ForgetlessError):
    """An output folder that exists already, is not writable, or a full disk."""


class MissingExtraError(ForgetlessError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


class NumericalError(ForgetlessError):
    """A NaN or infinite loss: training stopped, completed results were kept."""


def closest_names(name: str, valid: list[str] | tuple[str, ...], n: int = 3) -> str:
    """Return a ``did you mean`` phrase listing the closest valid names (or all of them)."""
    import difflib

    close = difflib.get_close_matches(name, list(valid), n=n, cutoff=0.4)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    return "valid names: " + ", ".join(sorted(valid))


def unknown_name(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> ConfigError:
    """One-line error for an unknown benchmark/scenario/strategy name, with suggestions."""
    return ConfigError(f"unknown {kind} {name!r}: {closest_names(name, valid)} (see `forgetless list`)")
