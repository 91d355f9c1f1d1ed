"""``--keep lmeval:TASK[,TASK][?OPTIONS]``: lm-evaluation-harness tasks as a kept capability.

The tasks run in memory on the live training model: the harness's ``HFLM`` wrapper is built
around the already-loaded model and tokenizer (no reload, no disk round trip) and
``lm_eval.evaluator.evaluate`` scores a ``limit`` of items of each task exactly as the harness
does (Gao et al., "A framework for few-shot language model evaluation", EleutherAI
lm-evaluation-harness). Options after ``?`` (comma-separated ``KEY=VALUE``):

* ``limit=N`` items per task (default: ``--choice-size``, else ``--eval-size``); ``limit=all``;
* ``metric=NAME`` the task metric scored (default ``acc_norm`` where the task has it, else
  ``acc``); its direction is the harness's ``higher_is_better``;
* ``fewshot=K`` few-shot examples (default: the task's ``num_fewshot``, else 0);
* ``include=DIR`` a folder of task YAML files (``TaskManager(include_path=DIR)``);
* ``batch_size=B`` the harness's batch size (default 16).

The capability's score is the metric, the mean over the tasks when several; the per-task values,
item counts and standard errors (the harness's ``mean_stderr`` for mean-aggregated metrics) are
in :meth:`figures`. Needs ``pip install "forgetless[lmeval]"``.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from forgetless.errors import ConfigError, DataError, closest_names
from forgetless.extras import require
from forgetless.integrations.hf.capabilities._io import EvalMode, device_of
from forgetless.integrations.hf.capabilities._options import (
    non_negative_int,
    positive_int,
    preserved_rng,
    split_options,
)
from forgetless.integrations.hf.capabilities.base import Capability, KeepOptions, register_capability

FEATURE = "--keep lmeval:TASK"
FEWSHOT_SEED = 1234
"""The few-shot sampler's seed, ``simple_evaluate``'s default (``fewshot_random_seed``)."""


def _limit(value: str) -> int | None:
    return None if value.lower() == "all" else positive_int(value)


OPTIONS = {"limit": _limit, "metric": str, "fewshot": non_negative_int, "include": str, "batch_size": positive_int}


def task_manager(names: list[str], include: str | None) -> Any:
    """A ``TaskManager`` that knows ``names``: of ``include`` alone when it holds them all (no
    scan of the harness's ~15k built-in tasks), else of the built-in tasks and ``include``."""
    tasks = require("lm_eval.tasks", FEATURE)
    if include is not None:
        local = tasks.TaskManager(include_path=include, include_defaults=False)
        if all(name in local.all_tasks for name in names):
            return local
    return tasks.TaskManager(include_path=include)


def _metric_of(task: Any, wanted: str | None, name: str) -> tuple[str, bool]:
    """``(metric, higher_is_better)`` scored of ``task``: ``wanted``, else acc_norm, else acc."""
    directions: dict[str, bool] = dict(task.higher_is_better())
    if wanted is not None:
        if wanted not in directions:
            raise ConfigError(
                f"--keep lmeval:{name}: task {task.task_name!r} has no metric {wanted!r} "
                f"(its metrics: {', '.join(directions)}); give metric=NAME"
            )
        return wanted, bool(directions[wanted])
    for metric in ("acc_norm", "acc"):
        if metric in directions:
            return metric, bool(directions[metric])
    raise ConfigError(
        f"--keep lmeval:{name}: task {task.task_name!r} has neither acc_norm nor acc: "
        f"add ?metric=NAME (one of {', '.join(directions)})"
    )


def _score(block: dict[str, Any], metric: str) -> float | None:
    """The value of ``metric`` in one harness result block (``"acc,none"``; else any filter)."""
    for key in (f"{metric},none", *sorted(k for k in block if k.startswith(f"{metric},"))):
        value = block.get(key)
        if isinstance(value, (int, float)):
            return float(value)
    return None


@register_capability
class LmEvalTasks(Capability):
    """lm-evaluation-harness tasks scored on the model being fine-tuned (see the module doc).

    ``tasks`` are task, group or tag names of the harness (or YAML paths), ``limit`` the items
    per task (``None``: all). The score is the mean over ``tasks`` of each one's ``metric``.
    """

    kind = "lmeval"
    needs_lm = True

    def __init__(
        self,
        name: str,
        tokenizer: Any,
        tasks: list[str],
        limit: int | None = 256,
        metric: str | None = None,
        num_fewshot: int | None = None,
        include: str | None = None,
        batch_size: int = 16,
    ) -> None:
        super().__init__(name, batch_size)
        require("lm_eval", FEATURE)
        if not tasks or any(not t for t in tasks):
            raise ConfigError(f"--keep {name!r}: give lmeval:TASK[,TASK] (e.g. lmeval:arc_easy,piqa?limit=100)")
        self.tokenizer, self.tasks, self.limit = tokenizer, list(tasks), limit
        self.manager = task_manager(self.tasks, include)
        self.leaves: dict[str, list[str]] = {}  # requested name -> its leaf tasks
        self.loaded: dict[str, Any] = {"tasks": {}, "groups": {}, "group_map": {}}
        for task in self.tasks:
            part = self._load(task, include)
            self.leaves[task] = list(part["tasks"])
            for key in self.loaded:
                self.loaded[key].update(part.get(key) or {})
        chosen = {leaf: _metric_of(t, metric, ",".join(self.tasks)) for leaf, t in self.loaded["tasks"].items()}
        metrics = {m for m, _ in chosen.values()}
        directions = {d for _, d in chosen.values()}
        if len(metrics) > 1 or len(directions) > 1:
            listing = ", ".join(f"{leaf}: {m}" for leaf, (m, _) in chosen.items())
            raise ConfigError(f"--keep {name!r}: the tasks score different metrics ({listing}); give metric=NAME")
        self.metric, self.higher_is_better = metrics.pop(), directions.pop()
        for task in self.loaded["tasks"].values():
            if num_fewshot is not None:
                task.set_config(key="num_fewshot", value=num_fewshot)
            elif task.get_config("num_fewshot") is None:
                task.set_config(key="num_fewshot", value=0)
            task.set_fewshot_seed(seed=FEWSHOT_SEED)
        self._lm: Any = None
        self._lm_model: nn.Module | None = None
        self.last: dict[str, float] = {}

    def _load(self, task: str, include: str | None) -> dict[str, Any]:
        try:
            return self.manager.load([task])
        except KeyError:
            known = self.manager.all_tasks
            where = f" or in {include}" if include else " (a folder of task YAMLs: ?include=DIR)"
            raise ConfigError(f"lm-eval task {task!r} is not installed{where}: {closest_names(task, known)}") from None
        except (OSError, ValueError, ConnectionError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DataError(f"lm-eval task {task!r}: its data did not load ({first})") from None

    @classmethod
    def from_source(cls, source: str, tokenizer: Any, options: KeepOptions) -> LmEvalTasks:
        """``TASK[,TASK][?limit=N,metric=NAME,fewshot=K,include=DIR,batch_size=B]``."""
        spec = f"{cls.kind}:{source}"
        names, opts = split_options(spec, source, OPTIONS)
        return cls(
            spec,
            tokenizer,
            [n.strip() for n in names.split(",")],
            limit=opts.get("limit", options.choice_size),
            metric=opts.get("metric"),
            num_fewshot=opts.get("fewshot"),
            include=opts.get("include"),
            batch_size=opts.get("batch_size", 16),
        )

    def harness_model(self, model: nn.Module) -> Any:
        """The harness's ``HFLM`` around ``model`` itself (built once per model object)."""
        if self._lm is None or self._lm_model is not model:
            huggingface = require("lm_eval.models.huggingface", FEATURE)
            self._lm = huggingface.HFLM(pretrained=model, tokenizer=self.tokenizer, batch_size=self.batch_size)
            self._lm_model = model
        return self._lm

    def run(self, model: nn.Module) -> dict[str, Any]:
        """The harness's ``evaluate`` output on ``model`` (results, samples, n-samples)."""
        evaluator = require("lm_eval.evaluator", FEATURE)
        with preserved_rng(device_of(model)), EvalMode(model):
            lm = self.harness_model(model)
            return evaluator.evaluate(
                lm=lm, task_dict=self.loaded, limit=self.limit, bootstrap_iters=0, log_samples=True, verbosity="ERROR"
            )

    def evaluate(self, model: nn.Module) -> float:
        out = self.run(model)
        results, counts, samples = out["results"], out.get("n-samples", {}), out.get("samples", {})
        details: dict[str, float] = {}
        values = []
        for task, leaves in self.leaves.items():
            value = _score(results.get(task) or out.get("groups", {}).get(task, {}), self.metric)
            if value is None:  # a tag or a group without an aggregate: the mean of its tasks
                parts = [_score(results.get(leaf, {}), self.metric) for leaf in leaves]
                value = sum(p for p in parts if p is not None) / max(1, sum(p is not None for p in parts))
            values.append(value)
            details[f"{task}/{self.metric}"] = value
            details[f"{task}/n"] = float(sum(counts.get(leaf, {}).get("effective", 0) for leaf in leaves))
            if leaves == [task] and task in samples:
                stderr = self._stderr(task, samples[task])
                if stderr is not None:
                    details[f"{task}/{self.metric}_stderr"] = stderr
        errors = [details.get(f"{task}/{self.metric}_stderr") for task in self.leaves]
        if all(e is not None for e in errors):
            details[f"{self.metric}_stderr"] = math.sqrt(sum(e * e for e in errors)) / len(errors)
        self.last = details
        return sum(values) / len(values)

    def _stderr(self, task: str, rows: list[dict[str, Any]]) -> float | None:
        """The harness's ``mean_stderr`` (sample std / sqrt(n)) of a mean-aggregated metric."""
        aggregation = self.loaded["tasks"][task].aggregation().get(self.metric)
        if getattr(aggregation, "__name__", "") != "mean":
            return None
        xs = [float(r[self.metric]) for r in rows if r.get("filter", "none") == "none" and self.metric in r]
        if len(xs) < 2:
            return None
        mu = sum(xs) / len(xs)
        return math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1)) / math.sqrt(len(xs))

    def figures(self) -> dict[str, float | None]:
        """Per task: ``TASK/METRIC``, ``TASK/n`` (items scored), ``TASK/METRIC_stderr``; and
        ``METRIC_stderr`` of the score: ``sqrt(sum se_i^2) / k`` over the ``k`` tasks (independent
        item sets), when every task has one."""
        return dict(self.last)

    def facts(self) -> dict[str, Any]:
        """``items``: the items scored over all tasks (after the ``limit``)."""
        return {"items": int(sum(v for k, v in self.last.items() if k.endswith("/n")))} if self.last else {}
