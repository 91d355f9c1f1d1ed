"""Mitigation strategies, one file per method; each registers itself by its CLI name.

``make_strategies("ewc+er", params)`` builds the strategies of one run; ``a+b`` composes.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from forgetless.errors import ConfigError, unknown_name
from forgetless.extras import check
from forgetless.strategies.base import Batch, Strategy, TrainingContext, TrainingSet

STRATEGIES: dict[str, type[Strategy]] = {}
_SHARED_OPTIONS = ("buffer_size",)
"""Run-level options passed to every strategy whose Params declares them."""


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a non-empty `name`")
    STRATEGIES[cls.name] = cls
    return cls


def discover() -> dict[str, type[Strategy]]:
    """Import every module of this package once, so each method registers itself."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")
    return STRATEGIES


def names_for(stack: str) -> list[str]:
    """The registered strategies that run in ``stack`` (``run`` or ``finetune``), sorted."""
    return sorted(name for name, cls in discover().items() if stack in cls.stacks)


def _default(info: Any) -> str:
    value = info.get_default(call_default_factory=True)
    return "unset" if value is None else repr(value)


def strategy_table() -> str:
    """Every registered strategy as one Markdown row: name, family, where it runs, the method,
    and each hyperparameter (its ``--set`` name, default, meaning), read from the classes."""
    rows = [
        "| strategy | family | runs in | method | parameters (`--set NAME.PARAM=...`, default) |",
        "|---|---|---|---|---|",
    ]
    for name, cls in sorted(discover().items()):
        params = "; ".join(
            f"`{field}` = {_default(info)}: {info.description or ''}".rstrip(": ")
            for field, info in cls.Params.model_fields.items()
        )
        summary = cls.summary.replace("|", "\\|")
        rows.append(f"| `{name}` | {cls.family} | {', '.join(cls.stacks)} | {summary} | {params or '-'} |")
    return "\n".join(rows) + "\n"


def make_strategies(
    combination: str,
    params: dict[str, dict[str, Any]] | None = None,
    shared: dict[str, Any] | None = None,
    scenario: str | None = None,
    stack: str = "run",
) -> list[Strategy]:
    """Build the strategies of one run from ``"a+b"``, validating names and parameters;
    ``stack`` is where they will run (``run`` or ``finetune``, :attr:`Strategy.stacks`)."""
    discover()
    params = params or {}
    shared = shared or {}
    names = [n.strip() for n in combination.split("+")]
    if not all(names):
        raise ConfigError(
            f"strategy {combination!r} holds an empty method name: name each method once, e.g. ewc or ewc+er"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"strategy {combination!r} names a method twice: list each once")
    out: list[Strategy] = []
    for name in names:
        if name not in STRATEGIES:
            raise unknown_name("strategy", name, list(STRATEGIES))
        cls = STRATEGIES[name]
        if stack not in cls.stacks:
            where = " and ".join(f"forgetless {s}" for s in cls.stacks)
            raise ConfigError(
                f"strategy {name!r} runs in {where} only, not in forgetless {stack}: choose one of "
                f"{', '.join(names_for(stack))}"
            )
        if scenario is not None and scenario not in cls.scenarios:
            raise ConfigError(
                f"strategy {name!r} supports the {', '.join(cls.scenarios)} scenario(s), not "
                f"{scenario!r}: choose --scenario {cls.scenarios[0]}"
            )
        check(cls.requires, f"strategy {name!r}")
        values = {k: v for k, v in shared.items() if k in cls.Params.model_fields}
        values.update(params.get(name, {}))
        out.append(cls(**values))
    unknown = set(params) - set(STRATEGIES)
    if unknown:
        bad = sorted(unknown)[0]
        raise unknown_name("strategy in params", bad, list(STRATEGIES))
    if stack == "run":
        _check_families(out, combination)
    return out


def _check_families(strategies: list[Strategy], combination: str) -> None:
    """In a continual-learning run, a parameter-isolation method (PackNet, Supermask, progressive
    columns, adapters, LoRA) masks, replaces or grows the parameters a per-parameter regularizer
    anchors and weighs, so the two are not combined (several such pairs failed mid-run, in
    either order)."""
    isolation = [s.name for s in strategies if s.family == "isolation"]
    regularizers = [s.name for s in strategies if s.family == "regularization"]
    if isolation and regularizers:
        raise ConfigError(
            f"strategy {combination!r} combines {regularizers[0]} with {isolation[0]}: {isolation[0]} isolates the "
            f"parameters {regularizers[0]} anchors (it already keeps each task's weights); run them as separate "
            f"strategies, e.g. --strategies {regularizers[0]},{isolation[0]}"
        )


__all__ = [
    "STRATEGIES",
    "Batch",
    "Strategy",
    "TrainingContext",
    "TrainingSet",
    "discover",
    "make_strategies",
    "names_for",
    "strategy_table",
    "register",
]
