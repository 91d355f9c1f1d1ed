"""A sequence of fine-tunes, one accuracy matrix: ``forgetless finetune --task a --task b --task c``.

The tasks are trained in turn on one model, as in sequential instruction tuning (TRACE: Wang et
al. 2023, "TRACE: A Comprehensive Benchmark for Continual Learning in Large Language Models"),
and the report is the core's accuracy matrix ``R[i][j]``: the score on column ``j`` after
training task ``i``, where the columns are the tasks in order, then the kept capabilities
(``--keep``). Each task is scored as a kept capability is (:func:`~.finetune.task_rows`: the
perplexity of its held-out rows for text and instruction data, the accuracy of its held-out
labelled rows for classification), on rows held out of its training split. ``R[i][i]`` is
the task's score at the end of its own fine-tune; ``R[i][j < i]`` and the kept columns come
from that fine-tune's :class:`~.callback.ForgettingCallback` (it tracks the kept
capabilities and every earlier task, so ``--stop-if-drop`` guards earlier tasks too);
``R[i][j > i]`` (a task not trained yet) is measured then as well, for forward transfer. The
pretrained model's scores on every column (before task 0) are the baseline row.

ACC, BWT, forgetting and FWT are :mod:`forgetless.metrics`'s functions on the ``N x N`` task
block, as ``forgetless run`` computes them; a lower-is-better metric (perplexity) has its sign
flipped first, as the single fine-tune's tracker does, so that BWT < 0 and forgetting > 0 mean
forgotten for every metric: ACC is the mean of the last row (mean final perplexity for text
tasks), BWT ``1/(N-1) sum_{j<N-1} (R[N-1,j] - R[j,j])`` (Lopez-Paz & Ranzato 2017, eq. 3;
perplexity: minus the mean rise), forgetting ``1/(N-1) sum_j max_l R[l,j] - R[N-1,j]``
(Chaudhry et al. 2018, eq. 2-3; perplexity: the mean rise from each task's best), FWT against
the pretrained model's scores (Lopez-Paz & Ranzato 2017, eq. 4).

Mitigations compose as in a single fine-tune. The ``--strategies`` see each boundary as the
core learner's hooks do: the stream has ``N + 1`` tasks, task 0 the pretrained model
(``after_task`` with the kept capabilities' rows, then ``before_task`` of fine-tune 0), and
after fine-tune ``k`` its ``after_task`` (importance estimates on task ``k``'s training rows)
then ``before_task`` of fine-tune ``k + 1`` (:meth:`~.strategies.FinetuneStrategies.end_task`,
:meth:`~.strategies.FinetuneStrategies.begin_task`). Replay (``replay``) mixes into every batch
an exact share of rows drawn uniformly from the earlier tasks' training rows and the kept
capability that has rows, each row replayed with its own source's loss (:class:`ReplayPool`).
``--peft lora`` trains one adapter through all tasks; ``lora_per_task`` adds a new adapter per
task and freezes the earlier ones (all stay active: the model is the base plus the sum of
every task's update), which the ``o-lora`` strategy keeps in orthogonal subspaces
(:mod:`forgetless.strategies.o_lora`).

Every fine-tune gets a fresh optimizer and learning-rate schedule (``steps`` optimizer steps per
task). A sequence writes no checkpoint (its report is rewritten after every finished task, so
a killed sequence keeps the rows it finished); ``--resume`` of one is refused.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, field_serializer, field_validator, model_validator
from torch import nn

from forgetless.errors import ConfigError
from forgetless.integrations.hf.capabilities import Capability, Perplexity
from forgetless.integrations.hf.data import describe_dataset, is_dataset, is_dataset_dict
from forgetless.integrations.hf.finetune import FinetuneConfig, Listener, StepListener, public
from forgetless.metrics import (
    average_accuracy,
    average_forgetting,
    backward_transfer,
    forgetting_per_task,
    forward_transfer,
)

SCENARIO = "finetune-sequence"
"""``metrics.json``'s ``scenario`` of a sequence of fine-tunes (``--resume`` reads it to refuse)."""

SOURCE_INDEX = "replay_source"
"""Key of a replayed row's source (index into :attr:`ReplayPool.sources`)."""

RESUME_REFUSED = "--resume of a multi-task fine-tune is not supported yet"


def _source_key(source: Any) -> str:
    """What makes two task sources the same: a file's resolved path, else the spec as given."""
    if not isinstance(source, str):
        return f"dataset:{id(source)}"
    if source.startswith(("builtin:", "hub:")):
        return source
    return str(Path(source).expanduser().resolve())


def check_tasks(tasks: list[Any]) -> None:
    """One line for a task given twice (the same file, spec or data set), before any loading."""
    seen: dict[str, int] = {}
    for index, source in enumerate(tasks):
        key = _source_key(source)
        if key in seen:
            name = source if isinstance(source, str) else describe_dataset(source)
            raise ConfigError(
                f"--task {name} is given twice (tasks {seen[key]} and {index}): give each task once "
                "(to train a task twice, copy its file)"
            )
        seen[key] = index


class SequenceConfig(FinetuneConfig):
    """A :class:`FinetuneConfig` with ``tasks`` (two or more, trained in turn; ``task`` is the
    first) and ``lora_per_task``. Every other option applies to each fine-tune."""

    tasks: list[Any] = Field(min_length=2)
    lora_per_task: bool = False
    """A new LoRA/DoRA adapter per task, the earlier ones frozen (all active); default: one
    adapter shared by every task."""

    @model_validator(mode="before")
    @classmethod
    def _first_task(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("tasks"):
            values = {**values, "task": values["tasks"][0]}
        return values

    @field_validator("tasks")
    @classmethod
    def _sources(cls, value: list[Any]) -> list[Any]:
        out = []
        for item in value:
            if isinstance(item, Path):
                item = str(item)
            if not (isinstance(item, str) or is_dataset(item) or is_dataset_dict(item)):
                raise ValueError(
                    f"give a path, builtin:NAME, hub:NAME[:SPLIT] or a datasets.Dataset, not a {type(item).__name__}"
                )
            out.append(item)
        check_tasks(out)
        return out

    @field_serializer("tasks")
    def _tasks_named(self, value: list[Any]) -> list[str]:
        return [t if isinstance(t, str) else describe_dataset(t) for t in value]

    def task_names(self) -> list[str]:
        """Each task's source as a string (a data set by its short description)."""
        return [t if isinstance(t, str) else describe_dataset(t) for t in self.tasks]

    def mitigations(self) -> list[str]:
        parts = super().mitigations()
        if self.lora_per_task:
            kind = self.peft_kind()
            parts = [f"{kind}-per-task{p[len(kind) :]}" if p.startswith(f"{kind}(") else p for p in parts]
        return parts


# -- replay of earlier tasks ---------------------------------------------------------------
class ReplayPool(torch.utils.data.Dataset):
    """The rows a sequence replays: each source's :meth:`~Capability.replay_rows` side by side
    (a uniform draw over the pool draws each source in proportion to its rows), each row
    tagged with its source so that :meth:`loss` scores it with that source's
    :meth:`~Capability.replay_loss` (packed text, instruction rows and labelled rows differ in
    their keys and widths)."""

    def __init__(self, sources: list[Capability]) -> None:
        self.sources = [s for s in sources if s.replay_rows() is not None]
        self.rows = [s.replay_rows() or {} for s in self.sources]
        self.sizes = [int(next(iter(r.values())).shape[0]) for r in self.rows]
        self.starts = np.cumsum([0, *self.sizes])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int) -> dict[str, Any]:
        source = int(np.searchsorted(self.starts, index, side="right") - 1)
        local = index - int(self.starts[source])
        return {SOURCE_INDEX: source, **{k: v[local] for k, v in self.rows[source].items()}}

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """``{"replay_source": [n] source indices, "parts": {source: stacked rows}}``."""
        parts: dict[str, dict[str, torch.Tensor]] = {}
        for source in sorted({int(item[SOURCE_INDEX]) for item in items}):
            chosen = [item for item in items if int(item[SOURCE_INDEX]) == source]
            keys = self.rows[source].keys()
            parts[str(source)] = {k: torch.stack([torch.as_tensor(item[k]) for item in chosen]) for k in keys}
        return {SOURCE_INDEX: torch.tensor([int(item[SOURCE_INDEX]) for item in items]), "parts": parts}

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """``sum_s n_s L_s / n``: each source's replay loss weighted by its rows in the batch."""
        total, count = None, 0
        for source, rows in batch["parts"].items():
            n = int(next(iter(rows.values())).shape[0])
            term = n * self.sources[int(source)].replay_loss(model, rows)
            total = term if total is None else total + term
            count += n
        assert total is not None
        return total / count


# -- LoRA per task ---------------------------------------------------------------------------
def add_task_adapter(model: Any, cfg: SequenceConfig, objective: str, index: int) -> str:
    """A new adapter ``task<index>`` for the next task: every adapter active (the model is the
    base plus each task's update), only the new one trainable."""
    from forgetless.integrations.hf.finetune import peft_config

    name = f"task{index}"
    model.add_adapter(name, peft_config(cfg.peft_kind(), cfg, objective))
    names = list(model.peft_config)
    model.base_model.set_adapter(names)  # activates all and makes them trainable: freeze the earlier ones
    earlier = tuple(f".{old}." for old in names if old != name)
    for pname, param in model.named_parameters():
        if any(part in pname for part in earlier):
            param.requires_grad_(False)
    return name


def _check_options(cfg: SequenceConfig, objective: str) -> None:
    names, _ = cfg.strategy_plan()
    if cfg.lora_per_task and cfg.peft_kind() not in ("lora", "dora"):
        raise ConfigError(
            f"--lora-per-task adds a LoRA adapter per task: add --peft lora (or dora), not --peft {cfg.peft_kind()}"
        )
    if cfg.lora_per_task and objective != "lm":
        raise ConfigError(
            "--lora-per-task: a classifier head is one peft module per adapter, so only one task's would "
            "act; use a shared --peft lora for a classification sequence"
        )
    from forgetless.strategies import STRATEGIES, discover
    from forgetless.strategies._penalty import PenaltyStrategy

    discover()
    anchored = [n for n in names if n in STRATEGIES and issubclass(STRATEGIES[n], PenaltyStrategy)]
    if cfg.lora_per_task and anchored:
        raise ConfigError(
            f"--lora-per-task with {anchored[0]}: each task trains a new adapter and freezes the earlier ones, so "
            f"{anchored[0]}'s anchors sit on frozen weights and the penalty never acts; use o-lora or replay, "
            "or a shared --peft lora"
        )
    if "o-lora" in names and not cfg.lora_per_task:
        raise ConfigError(
            "o-lora keeps each task's LoRA orthogonal to the earlier tasks' adapters: add --peft lora --lora-per-task"
        )


# -- the driver ----------------------------------------------------------------------------
def _thresholds_for(stop_if_drop: Any, names: list[str]) -> Any:
    """Per-item thresholds restricted to the items (or kinds) one fine-tune tracks: a key for
    an earlier task applies from the fine-tune after it on."""
    from forgetless.training.brake import DEFAULT_KEY, kind_of

    if not isinstance(stop_if_drop, dict):
        return stop_if_drop
    kinds = {kind_of(n) for n in names}
    kept = {k: v for k, v in stop_if_drop.items() if k == DEFAULT_KEY or k in names or k in kinds}
    return kept or None


def column_name(metric: str, index: int, source: str) -> str:
    """A task's column (and capability) name: ``perplexity:task0:a.jsonl``; its kind is the metric,
    so a per-kind ``--stop-if-drop perplexity=…`` guards the earlier tasks too."""
    return f"{metric}:task{index}:{source}"


def run_sequence(
    cfg: SequenceConfig,
    out: Path | None = None,
    listeners: list[Listener] | None = None,
    on_step: StepListener | None = None,
    on_task: Any = None,
    force: bool = False,
) -> dict[str, Any]:
    """Fine-tune on ``cfg.tasks`` in turn; returns the summary (matrix, metrics, each
    fine-tune's forgetting summary) and writes the report to ``out`` after every task
    (:func:`write_sequence_report`). ``on_task(index, name, steps)`` is called as each task
    starts (progress bars)."""
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.utils import logging as hf_logging

    from forgetless.integrations.hf.callback import ForgettingCallback
    from forgetless.integrations.hf.data import load_texts
    from forgetless.integrations.hf.finetune import (
        _apply_peft,
        _StepCallback,
        build_capabilities,
        check_keep_specs,
        check_out,
        nothing_learned,
        plan_strategies,
        task_rows,
        training_arguments,
    )
    from forgetless.integrations.hf.mixing import MixedDataset, MixingBatchSampler, RowsDataset, SplitCollator
    from forgetless.integrations.hf.models import load_model
    from forgetless.integrations.hf.schedules import GradualUnfreezing, layerwise_adamw
    from forgetless.integrations.hf.tracker import CapabilityTracker
    from forgetless.integrations.hf.trainer import ForgetlessTrainer

    if out is not None:
        check_out(Path(out), force=force)
    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    set_seed(cfg.seed)
    check_keep_specs(cfg)
    sources = cfg.task_names()
    datas = [
        load_texts(t, cfg.text_column, cfg.label_column, need_labels=cfg.objective == "classify", format=cfg.format)
        for t in cfg.tasks
    ]  # every task read before the model is loaded: a missing file is one line now
    objective = cfg.objective if cfg.objective != "auto" else ("classify" if datas[0].labelled else "lm")
    for source, data in zip(sources, datas, strict=True):
        if objective == "classify" and not data.labelled:
            raise ConfigError(f"--task {source}: a classification sequence needs labels in every task")
        if cfg.objective == "auto" and objective == "lm" and data.labelled:
            raise ConfigError(
                f"--task {source} is labelled but --task {sources[0]} is not: a sequence trains one objective; "
                "give --objective lm or classify"
            )
        if objective == "classify" and data.label_names != datas[0].label_names:
            raise ConfigError(
                f"--task {source}: labels {data.label_names} differ from --task {sources[0]}'s "
                f"{datas[0].label_names}: a classification sequence shares one head"
            )
    _check_options(cfg, objective)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if cfg.precision == "fp16" and device.type == "cpu":
        raise ConfigError("--precision fp16 needs a GPU (loss scaling is CUDA's): use --precision bf16 on a CPU")
    model, tokenizer, new_params = load_model(
        cfg.model, objective, len(datas[0].label_names) if objective == "classify" else None, cfg.seq_len
    )
    model.to(device)
    task_sets, tasks = [], []
    for index, (source, data) in enumerate(zip(sources, datas, strict=True)):
        rows, metric = task_rows(data, tokenizer, cfg, objective)
        name = column_name(metric.metric, index, source)
        if isinstance(metric, Perplexity):  # its training rows: replayed, and an importance's data
            metric = Perplexity(name, metric.test_rows, rows)
        metric.name = name
        task_sets.append(rows)
        tasks.append(metric)
    kept = build_capabilities(cfg.keep, tokenizer, cfg, objective)
    columns: list[Capability] = [*tasks, *kept]
    for capability in columns:  # fixed heads are fitted on the pretrained model
        capability.prepare(model)

    if cfg.peft_kind() != "none":
        model = _apply_peft(model, cfg, objective)
    baseline = [capability.evaluate(model) for capability in columns]
    new = tuple(new_params)

    def trainable() -> list[str]:
        return [n for n, p in model.named_parameters() if p.requires_grad and not any(n.endswith(m) for m in new)]

    strategies, replay_ratio = plan_strategies(cfg, model, kept, trainable(), tasks=len(tasks))
    strategies.prepare()  # task 0 (the pretrained model) ends, fine-tune 0 begins
    replay_source = next((c for c in kept if c.replay_rows() is not None), None)

    summary: dict[str, Any] = {
        "run": "+".join(cfg.mitigations()),
        "objective": objective,
        "peft": cfg.peft_kind(),
        "model": cfg.model,
        "tasks": sources,
        "columns": [
            {
                "name": c.name,
                "kind": "task" if c in tasks else "kept",
                "metric": c.metric,
                "higher_is_better": c.higher_is_better,
            }
            for c in columns
        ],
        "baseline": baseline,
        "matrix": [],
        "per_task": [],
        "config": cfg.model_dump(mode="json"),
    }
    for index, (rows, task) in enumerate(zip(task_sets, tasks, strict=True)):
        task_started = time.perf_counter()
        if index > 0:
            importance = None if cfg.ewc_modules else trainable()
            strategies.end_task([tasks[index - 1]], importance)  # after_task of fine-tune index-1
            if cfg.lora_per_task:
                add_task_adapter(model, cfg, objective, index)
            strategies.begin_task()  # before_task of fine-tune index
        if on_task is not None:
            on_task(index, sources[index], cfg.steps)
        tracked = [*kept, *tasks[:index]]
        tracker = CapabilityTracker(tracked, task, cfg.eval_every)
        tracker.prepared = True  # every column was prepared on the pretrained model
        pool = ReplayPool([*([replay_source] if replay_source is not None else []), *tasks[:index]])
        ratio = replay_ratio if len(pool) else 0.0  # task 0 without kept rows: nothing to replay yet
        task_set = RowsDataset(rows)
        sampler = MixingBatchSampler(
            len(task_set), len(pool), cfg.batch_size, ratio, num_batches=cfg.steps * cfg.grad_accum, seed=cfg.seed
        )
        optimizer = None
        if cfg.layerwise_lr_decay < 1:
            optimizer = layerwise_adamw(model, cfg.lr, cfg.layerwise_lr_decay, cfg.weight_decay)
        guard = ForgettingCallback(
            tracker, _thresholds_for(cfg.stop_if_drop, [c.name for c in tracked]), listeners=listeners
        )
        callbacks: list[Any] = [guard]
        if cfg.unfreeze_every:
            callbacks.append(GradualUnfreezing(cfg.unfreeze_every))
        if on_step is not None:
            callbacks.append(_StepCallback(on_step))
        with tempfile.TemporaryDirectory(prefix="forgetless-trainer-") as scratch:
            trainer = ForgetlessTrainer(
                model=model,
                args=training_arguments(cfg, scratch, device),
                train_dataset=MixedDataset(task_set, pool),
                data_collator=SplitCollator(replay_collate=pool.collate),
                callbacks=callbacks,
                optimizers=(optimizer, None),
                strategies=strategies,
                replay_loss=pool.loss if ratio else None,
                mixing_sampler=sampler,
            )
            for noisy in (PrinterCallback, ProgressCallback):
                trainer.remove_callback(noisy)
            trainer.train()
        final = guard.final_record or tracker.after
        row = []
        for j, capability in enumerate(columns):
            if j < index or capability in kept:
                row.append(float(final["scores"][capability.name]))
            elif j == index:
                row.append(float(final["task"]))
            else:  # a task not trained yet (forward transfer)
                row.append(float(capability.evaluate(model)))
        summary["matrix"].append(row)
        task_summary = guard.summary()
        task_summary.update(
            {
                "task_index": index,
                "task_source": sources[index],
                "task_format": datas[index].format,
                "steps_trained": int(guard.stopped_at if guard.stopped_at is not None else trainer.state.global_step),
                "replay_rows": len(pool) if ratio else 0,
                "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "wall_seconds": time.perf_counter() - task_started,
            }
        )
        note = nothing_learned(task_summary)
        if note is not None:
            task_summary["note"] = note
        summary["per_task"].append(task_summary)
        summary.update(sequence_metrics(summary))
        summary["kept"] = kept_drops(kept, baseline[len(tasks) :], [r[len(tasks) :] for r in summary["matrix"]])
        summary["wall_seconds"] = time.perf_counter() - started
        if out is not None:  # after every task: a later failure loses none of these rows
            write_sequence_report(summary, Path(out), plots=index == len(tasks) - 1)
    strategies.end_task([tasks[-1]], None if cfg.ewc_modules else trainable())  # as the learner: after the last
    summary["strategies"] = strategies.report()
    summary["total_parameters"] = sum(p.numel() for p in model.parameters())
    summary["wall_seconds"] = time.perf_counter() - started
    if out is not None:
        write_sequence_report(summary, Path(out), plots=False)
    summary["_model"] = model
    summary["_tokenizer"] = tokenizer
    return summary


# -- metrics -------------------------------------------------------------------------------
def sequence_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """ACC, BWT, forgetting and FWT of the task block of ``summary["matrix"]`` (the tasks
    trained so far) with :mod:`forgetless.metrics`, a lower-is-better metric's sign flipped
    (the module docstring), and each kept capability's drop from the pretrained model."""
    matrix = np.asarray(summary["matrix"], dtype=np.float64)
    baseline = np.asarray(summary["baseline"], dtype=np.float64)
    columns = summary["columns"]
    done = matrix.shape[0]
    sign = np.array([1.0 if c["higher_is_better"] else -1.0 for c in columns])
    block = matrix[:, :done]
    oriented = block * sign[:done]
    metrics = {
        "acc": average_accuracy(block),
        "bwt": backward_transfer(oriented),
        "forgetting": average_forgetting(oriented),
        "fwt": forward_transfer(oriented, baseline[:done] * sign[:done]),
    }
    return {
        "metrics": metrics,
        "forgetting_per_task": forgetting_per_task(oriented).tolist(),
        "complete": done == len(summary["tasks"]),
    }


def kept_drops(kept: list[Capability], baseline: list[float], matrix: list[list[float]]) -> dict[str, Any]:
    """Each kept capability over the sequence: before (the pretrained model), after the last
    task, its drop as a single fine-tune reports it (:meth:`~Capability.drop`, both forms), its
    forgetting from the best row and its curve (the pretrained row first)."""
    out: dict[str, Any] = {}
    for j, capability in enumerate(kept):
        curve = [float(baseline[j]), *[float(row[j]) for row in matrix]]
        before, after = curve[0], curve[-1]
        best = max(curve) if capability.higher_is_better else min(curve)
        drop_abs, drop_rel = capability.drops(before, after)
        out[capability.name] = {
            "metric": capability.metric,
            "before": before,
            "after": after,
            "drop": capability.drop(before, after),
            "drop_abs": drop_abs,
            "drop_rel": drop_rel,
            "forgetting": capability.drop(best, after),
            "curve": curve,
        }
    return out


# -- report --------------------------------------------------------------------------------
def metrics_record(summary: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json`` in the keys of ``forgetless run``'s (:mod:`forgetless.reports.results`):
    ``summary`` (each metric's mean and std over the one seed), ``runs`` (per run a list of
    seed records with ``metrics``, ``forgetting_per_task`` and ``accuracy_matrix``), plus
    ``columns`` (what each matrix column is) and the pretrained model's row as the FWT reference."""
    cfg = summary["config"]
    run = summary["run"]
    metrics = summary["metrics"]
    record = {
        "seed": cfg["seed"],
        "metrics": metrics,
        "forgetting_per_task": np.round(summary["forgetting_per_task"], 6).tolist(),
        "accuracy_matrix": np.round(np.asarray(summary["matrix"]), 6).tolist(),
        "pretrained_scores": np.round(np.asarray(summary["baseline"]), 6).tolist(),
        "steps_per_task": [t["steps_trained"] for t in summary["per_task"]],
        "train_seconds_per_task": [round(t["wall_seconds"], 4) for t in summary["per_task"]],
        "wall_seconds": round(summary["wall_seconds"], 4),
        "stopped_early": {
            str(t["task_index"]): t["stopped_at"] for t in summary["per_task"] if t.get("stopped_at") is not None
        },
        "kept": summary["kept"],
        "report": summary.get("strategies", {}),
    }
    return {
        "benchmark": cfg["model"],
        "scenario": SCENARIO,
        "tasks": len(summary["tasks"]),
        "task_sources": summary["tasks"],
        "columns": summary["columns"],
        "complete": summary["complete"],
        "seeds": [cfg["seed"]],
        "summary": {run: {k: {"mean": float(v), "std": 0.0} for k, v in metrics.items()}},
        "data_sources": [*summary["tasks"], *cfg["keep"]],
        "fwt_reference": "the pretrained model's score on each task (before task 0), sign flipped for perplexity",
        "runs": {run: [record]},
        "config": cfg,
    }


def _shades(summary: dict[str, Any]) -> np.ndarray:
    """Cell colours in [0, 1]: an accuracy itself; a perplexity as the column's best (lowest,
    the pretrained row included) over the cell's, so 1 is the best the column reached."""
    matrix = np.asarray(summary["matrix"], dtype=np.float64)
    out = np.empty_like(matrix)
    for j, column in enumerate(summary["columns"]):
        values = matrix[:, j]
        if column["higher_is_better"]:
            out[:, j] = np.clip(values, 0.0, 1.0)
        else:
            best = min(float(values.min()), float(summary["baseline"][j]))
            out[:, j] = best / values
    return out


def markdown_sequence(summary: dict[str, Any]) -> str:
    """``report.md`` of a sequence: the matrix (the pretrained row first), the metrics, the
    kept capabilities' drops and each fine-tune's stop."""
    names = [c["name"] for c in summary["columns"]]
    metrics = summary["metrics"]
    lines = [f"# Forgetting report: a sequence of {len(summary['tasks'])} fine-tunes", "", f"## {summary['run']}", ""]
    lines += ["R[i][j]: the score on column j after training task i (the tasks, then the kept capabilities).", ""]
    lines.append("| after | " + " | ".join(n.replace("|", "\\|") for n in names) + " |")
    lines.append("|---" * (len(names) + 1) + "|")

    def cells(values: list[float]) -> str:
        return " | ".join(
            f"{v:.2f}" if c["metric"] == "perplexity" else f"{v:.3f}"
            for v, c in zip(values, summary["columns"], strict=True)
        )

    lines.append(f"| pretrained | {cells(summary['baseline'])} |")
    for i, row in enumerate(summary["matrix"]):
        lines.append(f"| task {i} | {cells(row)} |")
    lines += [
        "",
        f"ACC {metrics['acc']:.4g} · BWT {metrics['bwt']:+.4g} · forgetting {metrics['forgetting']:.4g} · "
        f"FWT {metrics['fwt']:+.4g}",
        "",
        "ACC: mean of the last row over the tasks; BWT < 0 and forgetting > 0 mean forgotten (a perplexity's "
        "sign is flipped: its BWT is minus the mean rise); FWT against the pretrained model.",
        "",
    ]
    for name, entry in summary["kept"].items():
        drop = f"{entry['drop']:+.1%}" if entry["metric"] == "perplexity" else f"{entry['drop']:+.3f}"
        lines.append(f"- kept {name}: {entry['before']:.4g} → {entry['after']:.4g} (drop {drop})")
    for task in summary["per_task"]:
        if task.get("stopped_at") is not None:
            restored = task["restored_step"]
            lines.append(f"- task {task['task_index']} stopped at step {task['stopped_at']}; restored step {restored}")
        if task.get("note"):
            lines.append(f"- task {task['task_index']}: {task['note']}")
        lines += [f"- **warning** (task {task['task_index']}): {w}" for w in task.get("warnings", [])]
    lines.append("")
    return "\n".join(lines)


def write_sequence_report(summary: dict[str, Any], out: Path, plots: bool = True) -> None:
    """``metrics.json`` (:func:`metrics_record`), ``accuracy_matrix.csv`` (``forgetless run``'s
    columns: strategy, seed, after_task, then one per column), ``forgetting.json`` (the whole
    summary with each fine-tune's forgetting summary), ``report.md`` and, with ``plots``,
    ``accuracy_matrix.png`` through ``forgetless run``'s heatmap."""
    import csv
    import io

    from forgetless.io import atomic_write_json, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "metrics.json", metrics_record(summary))
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    n_tasks = len(summary["tasks"])
    headers = [f"task_{j}" if j < n_tasks else c["name"] for j, c in enumerate(summary["columns"])]
    writer.writerow(["strategy", "seed", "after_task", *headers])
    for i, row in enumerate(summary["matrix"]):
        writer.writerow([summary["run"], summary["config"]["seed"], i, *[f"{v:.6f}" for v in row]])
    atomic_write_text(out / "accuracy_matrix.csv", table.getvalue())
    atomic_write_json(out / "forgetting.json", {summary["run"]: public(summary)})
    atomic_write_text(out / "report.md", markdown_sequence(summary))
    if plots:
        from forgetless.reports.plots import accuracy_heatmaps

        run = summary["run"]
        accuracy_heatmaps(
            {run: np.asarray(summary["matrix"])},
            out / "accuracy_matrix.png",
            columns=[f"task {j}" if j < n_tasks else c["name"] for j, c in enumerate(summary["columns"])],
            shades={run: _shades(summary)},
            scale_label="accuracy; perplexity: best / value",
        )


def refuse_resume(folder: Path) -> None:
    """``--resume`` of a folder a sequence of fine-tunes wrote: one line (not supported yet)."""
    try:
        scenario = json.loads((Path(folder) / "metrics.json").read_text(encoding="utf-8")).get("scenario")
    except (OSError, ValueError, AttributeError):
        return
    if scenario == SCENARIO:
        raise ConfigError(
            f"{RESUME_REFUSED}: {folder} holds a sequence's report of the tasks it finished; "
            "start the sequence again (--force to overwrite)"
        )
