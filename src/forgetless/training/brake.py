"""The stop-and-restore rule, one for both stacks.

Evaluation-driven stopping (early stopping, Prechelt 1998, applied to what the model must keep
instead of a validation loss). At every check the monitored items, the earlier tasks of a
continual run (:class:`forgetless.training.schedules.SafetyBrake`) or the kept capabilities of a
fine-tune (:class:`forgetless.integrations.hf.callback.ForgettingCallback`), each have a drop
from their reference (the value before the task started; higher is worse). Then:

* a check is **acceptable** when its *worst* drop is within the threshold: every earlier task,
  every kept capability, not their mean (a mean would let one task collapse while the others
  hold);
* training stops at the first check that is not acceptable, and goes back to the **best**
  acceptable check: the one with the best score on the new task (the task being trained; on
  ties, or when there is no such score, the latest). Before the first check the best is the
  starting point.

The threshold is one number for every monitored item, or one per item (**per-capability
thresholds**, :func:`parse_thresholds`: ``"perplexity=0.2,choice=0.05"``): a key is an item's
full name (``choice:builtin:kjv-word-order``) or its *kind*, the part of the name before the
first ``:``; a full name wins over its kind, the kind over a bare default number
(``"0.1,choice=0.05"``, stored under :data:`DEFAULT_KEY`); an item with no threshold of its own
and no default is reported but never stops the run. Each item's drop is compared with its own
threshold, in the item's own units (the fine-tune's: relative for perplexity, absolute for
accuracies; :mod:`forgetless.integrations.hf.capabilities.base`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from forgetless.errors import ConfigError

Thresholds = float | Mapping[str, float] | None
"""One threshold for every item, one per item name / kind (:data:`DEFAULT_KEY`: the rest), or none."""
DEFAULT_KEY = "*"
"""The key of the bare default of per-item thresholds (``"0.1,choice=0.05"`` -> ``{"*": 0.1, ...}``)."""


def _number(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ConfigError(
            f"--stop-if-drop {spec!r}: {text.strip()!r} is not a drop >= 0; give D or KIND=D,NAME=D "
            "(e.g. 0.05 or perplexity=0.2,choice=0.05)"
        )
    return value


def parse_thresholds(spec: str | float | Mapping[str, float] | None) -> float | dict[str, float] | None:
    """The thresholds of ``--stop-if-drop``, parsed in this one place: a number (``0.05``: every
    item) or comma-separated ``KEY=D`` (a kind or a full name; a bare ``D`` among them is the
    default of the others); a mapping is checked the same way. ``None`` stays ``None``. A
    negative, non-finite or malformed entry is one ConfigError line."""
    if spec is None:
        return None
    if isinstance(spec, Mapping):
        if not spec:
            raise ConfigError("--stop-if-drop: no threshold given; give D or KIND=D,NAME=D")
        return {str(key): _number(str(value), f"{key}={value}") for key, value in spec.items()}
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return _number(repr(float(spec)), str(spec))
    if not isinstance(spec, str):
        raise ConfigError(f"--stop-if-drop {spec!r}: give a number or KIND=D,NAME=D")
    text = spec.strip()
    if text and "=" not in text:
        return _number(text, spec)
    out: dict[str, float] = {}
    pending = ""  # a name may hold commas ("choice:a.jsonl?metric=acc,mmlu=letters=0.1")
    for piece in text.split(","):
        entry = f"{pending},{piece}" if pending else piece
        key, eq, value = entry.rpartition("=")
        if not eq and entry.strip():
            key, value = DEFAULT_KEY, entry
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is None and eq:  # "=acc" of a name's own option: the entry goes on
            pending = entry
            continue
        pending = ""
        key = key.strip() or DEFAULT_KEY
        if key in out:
            raise ConfigError(f"--stop-if-drop {spec!r}: {key!r} is given twice; give each name or kind once")
        out[key] = _number(value, spec)
    if pending or not out:
        raise ConfigError(
            f"--stop-if-drop {spec!r}: give D or KIND=D,NAME=D with D a number (e.g. perplexity=0.2,choice=0.05)"
        )
    return out


def kind_of(name: str) -> str:
    """The kind of a monitored item: its name up to the first ``:`` (``choice:builtin:x`` -> ``choice``)."""
    return name.partition(":")[0]


@dataclass(frozen=True)
class StopRule:
    """``threshold`` on the drops (``None``: never stop); one number, or one per name / kind
    (:func:`parse_thresholds`); see the module docstring."""

    threshold: Thresholds

    def limit(self, name: str) -> float | None:
        """The threshold of item ``name``: its own, its kind's, the default, else ``None``."""
        if self.threshold is None or not isinstance(self.threshold, Mapping):
            return self.threshold
        for key in (name, kind_of(name), DEFAULT_KEY):
            if key in self.threshold:
                return float(self.threshold[key])
        return None

    def check_names(self, names: Iterable[str], what: str = "kept capabilities") -> None:
        """Every key of per-item thresholds names an item or a kind of ``names``; else one
        ConfigError line listing them."""
        if not isinstance(self.threshold, Mapping):
            return
        names = list(names)
        kinds = {kind_of(n) for n in names}
        unknown = [k for k in self.threshold if k != DEFAULT_KEY and k not in names and k not in kinds]
        if unknown:
            raise ConfigError(
                f"--stop-if-drop: {', '.join(map(repr, unknown))} is no kind or name of the {what} "
                f"({', '.join(names) or 'none'}; kinds {', '.join(sorted(kinds)) or 'none'}): use one of those"
            )

    def crossed(self, drops: Mapping[str, float]) -> list[tuple[str, float, float]]:
        """``(name, drop, threshold)`` of every item whose drop exceeds its threshold, worst first
        (by how far past its own threshold)."""
        out = []
        for name, drop in drops.items():
            limit = self.limit(name)
            if limit is not None and float(drop) > limit:
                out.append((name, float(drop), limit))
        return sorted(out, key=lambda item: item[2] - item[1])

    @staticmethod
    def worst(drops: Mapping[str, float]) -> tuple[str, float]:
        """The monitored item with the largest drop, and that drop (``("", 0.0)`` for none)."""
        if not drops:
            return "", 0.0
        name = max(drops, key=lambda key: drops[key])
        return name, float(drops[name])

    def acceptable(self, drops: Mapping[str, float]) -> bool:
        """Every item within its threshold (one number: the worst drop within it)."""
        if self.threshold is None:
            return True
        if not isinstance(self.threshold, Mapping):
            return self.worst(drops)[1] <= self.threshold
        return not self.crossed(drops)

    @staticmethod
    def better(score: float | None, best: float | None, higher_is_better: bool = True) -> bool:
        """Whether an acceptable check with new-task ``score`` replaces the best one so far."""
        if score is None or best is None:
            return True
        return score >= best if higher_is_better else score <= best
