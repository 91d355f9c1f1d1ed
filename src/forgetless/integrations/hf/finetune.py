"""``run_finetune``: fine-tune a Hugging Face model on a task while guarding kept capabilities.

Composes everything in this package: capabilities + tracker + :class:`ForgettingCallback`,
LoRA (peft), the core strategies (L2-SP, EWC, Online EWC, MAS, ...: :mod:`.strategies`), replay
(:mod:`.mixing`), layer-wise LR decay,
warmup and gradual unfreezing (:mod:`.schedules`), on :class:`ForgetlessTrainer`. Used by
``forgetless finetune`` and the demos; the same pieces work in a user's own Trainer script.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

from forgetless.errors import ConfigError
from forgetless.integrations.hf.capabilities import (
    Capability,
    HeadAccuracy,
    KeepOptions,
    Perplexity,
    encode_texts,
    lm_rows,
    parse_keep,
)
from forgetless.integrations.hf.data import TextData, describe_dataset, is_dataset, is_dataset_dict, load_texts

Listener = Callable[[dict[str, Any]], None]
StepListener = Callable[[int, int], None]


class FinetuneConfig(BaseModel):
    """Every option of ``forgetless finetune`` (validated; negative values fail by field name)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    task: Any = Field(description="a path, builtin:NAME, hub:NAME[:SPLIT], or a datasets.Dataset / DatasetDict")
    keep: list[str] = Field(default_factory=list)
    objective: Literal["auto", "lm", "classify"] = "auto"
    format: Literal["auto", "text", "chat", "alpaca", "prompt-completion"] = "auto"
    """The task's rows (``auto``: detected from their keys; see :func:`load_texts`)."""
    text_column: str | None = None
    label_column: str | None = None
    steps: int = Field(100, ge=1)
    batch_size: int = Field(16, ge=1)
    seq_len: int = Field(128, ge=4)
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    layerwise_lr_decay: float = Field(1.0, gt=0, le=1)
    unfreeze_every: int = Field(0, ge=0)
    lora: bool = False
    """Alias: ``lora=True`` = ``peft="lora"``."""
    peft: Literal["none", "lora", "dora", "prefix", "prompt", "ia3"] = "none"
    """Parameter-efficient fine-tuning through peft's own configs (:data:`PEFT_KINDS`): LoRA (Hu
    et al. 2021), DoRA (Liu et al. 2024), prefix tuning (Li & Liang 2021), prompt tuning (Lester
    et al. 2021), (IA)^3 (Liu et al. 2022). The base weights stay frozen."""
    peft_tokens: int = Field(20, ge=1)
    """Virtual tokens of ``prefix`` and ``prompt`` tuning (peft's ``num_virtual_tokens``)."""
    lora_r: int = Field(8, ge=1)
    lora_alpha: float = Field(16.0, gt=0)
    lora_targets: list[str] | None = None
    """Target modules of ``lora``, ``dora`` and ``ia3`` (``None``: peft's default for the model)."""
    grad_accum: int = Field(1, ge=1)
    """Gradient accumulation: each optimizer step sums ``grad_accum`` batches of ``batch_size``
    (the Trainer's ``gradient_accumulation_steps``; the effective batch is their product)."""
    strategies: list[str] = Field(default_factory=list)
    """Core strategies run in the fine-tune (``["l2sp", "ewc"]``; ``replay`` is the mixing of
    general rows), with ``params`` as ``--set`` gives them: :mod:`.strategies`."""
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    l2sp: float = Field(0.0, ge=0)
    """Alias: ``--l2sp A`` = ``--strategies l2sp --set l2sp.alpha=A``."""
    ewc: float = Field(0.0, ge=0)
    """Alias: ``--ewc L`` = ``--strategies ewc --set ewc.ewc_lambda=L`` (and ``fisher_samples``)."""
    ewc_samples: int = Field(64, ge=1)
    """Rows per kept capability for an importance estimate (``ewc``, ``online-ewc``, ``mas``)
    unless ``--set`` gives the strategy's own count."""
    ewc_modules: list[str] | None = None
    """Only these modules get an importance (globs)."""
    replay_ratio: float = Field(0.0, ge=0, lt=1)
    """Alias: ``--replay-ratio R`` = ``--strategies replay --set replay.ratio=R``."""
    stop_if_drop: float | dict[str, float] | None = None
    """Stop and restore the best weights when a kept capability drops by more than this: one
    number for all, or per kind / full name (``"perplexity=0.2,choice=0.05"`` or a dict;
    :func:`~forgetless.training.brake.parse_thresholds`). Perplexity drops are relative,
    accuracy drops absolute."""
    eval_every: int = Field(20, ge=1)
    checkpoint_every: int | None = Field(None, ge=0)
    threads: int | None = Field(None, ge=1)
    """torch CPU threads the fine-tune ran with (``--threads``): a resume reuses them, since
    a CPU's float sums depend on how many threads split them."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Training under autocast (the Trainer's ``bf16``/``fp16``; weights and optimizer stay
    float32). accelerate autocasts the model's every forward, so the capabilities are measured
    at that precision too, before and after alike. ``fp16`` needs a GPU."""
    """Steps between checkpoints of a run with a folder (``None``: every ``eval_every``; 0: none)."""
    eval_size: int = Field(256, ge=4)
    choice_size: int | None = Field(None, ge=4, description="items per choice: capability (default: eval_size)")
    train_size: int | None = Field(None, ge=1)
    seed: int = 0
    device: str | None = None

    @field_validator("stop_if_drop", mode="before")
    @classmethod
    def _thresholds(cls, value: Any) -> Any:
        from forgetless.training.brake import parse_thresholds

        return parse_thresholds(value)

    @model_validator(mode="after")
    def _thresholds_name_kept(self) -> FinetuneConfig:
        """Each key of per-capability thresholds is a kept kind or ``--keep`` spec (a full name
        of a kept kind that is no spec, as a kind may name its capabilities otherwise, is
        checked against the built capabilities by :class:`ForgettingCallback`)."""
        from forgetless.training.brake import StopRule, kind_of

        if self.keep and isinstance(self.stop_if_drop, dict):
            kinds = {kind_of(spec) for spec in self.keep}
            keys = {
                key: value
                for key, value in self.stop_if_drop.items()
                if key in self.keep or ":" not in key or kind_of(key) not in kinds
            }
            StopRule(keys).check_names(self.keep)
        return self

    @field_validator("task")
    @classmethod
    def _a_source(cls, value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, str) or is_dataset(value) or is_dataset_dict(value):
            return value
        raise ValueError(
            f"give a path, builtin:NAME, hub:NAME[:SPLIT] or a datasets.Dataset, not a {type(value).__name__}"
        )

    @field_serializer("task")
    def _task_name(self, value: Any) -> str:
        return value if isinstance(value, str) else describe_dataset(value)

    def task_name(self) -> str:
        """The task source as a string (an in-memory data set by its short description)."""
        return self._task_name(self.task)

    def _given(self) -> tuple[list[str], dict[str, dict[str, Any]]]:
        """Names and parameters as the user gave them, the alias flags folded in."""
        names = [n.strip() for part in self.strategies for n in part.split("+") if n.strip()]
        params = {name: dict(values) for name, values in self.params.items()}
        aliases = {
            "l2sp": (self.l2sp, "l2sp", {"alpha": self.l2sp}),
            "ewc": (self.ewc, "ewc", {"ewc_lambda": self.ewc}),
            "replay": (self.replay_ratio, "replay-ratio", {"ratio": self.replay_ratio}),
        }
        for name, (value, flag, values) in aliases.items():
            if not value:
                continue
            if name in names:
                raise ConfigError(f"--{flag} and --strategies {name} both set {name}: use one (--set {name}.…)")
            names.append(name)
            params[name] = {**values, **params.get(name, {})}
        return names, params

    def strategy_plan(self) -> tuple[list[str], dict[str, dict[str, Any]]]:
        """Strategy names and parameters (each method once; ``ewc_samples`` rows for an
        importance estimate unless ``--set`` gives the strategy's own count)."""
        names, params = self._given()
        counts = {"ewc": "fisher_samples", "online-ewc": "fisher_samples", "mas": "samples"}
        for name, key in counts.items():
            if name in names:
                params.setdefault(name, {}).setdefault(key, self.ewc_samples)
        return names, params

    def peft_kind(self) -> str:
        """The PEFT method run (``"none"``, or one of :data:`PEFT_KINDS`; ``lora=True`` is ``"lora"``)."""
        if self.lora and self.peft not in ("none", "lora"):
            raise ConfigError(f"--lora and --peft {self.peft} both choose a PEFT method: give one (--peft {self.peft})")
        return "lora" if self.lora else self.peft

    def mitigations(self) -> list[str]:
        parts = []
        kind = self.peft_kind()
        if kind in ("lora", "dora"):
            parts.append(f"{kind}(r={self.lora_r})")
        elif kind in ("prefix", "prompt"):
            parts.append(f"{kind}({self.peft_tokens})")
        elif kind == "ia3":
            parts.append("ia3")
        names, given = self._given()
        for name in names:
            first = next(iter(given.get(name, {}).values()), None)
            parts.append(f"{name}({first:g})" if isinstance(first, (int, float)) else name)
        if self.layerwise_lr_decay < 1:
            parts.append(f"llrd({self.layerwise_lr_decay:g})")
        if self.unfreeze_every:
            parts.append(f"unfreeze({self.unfreeze_every})")
        return parts or ["naive"]


def build_capabilities(specs: list[str], tokenizer: Any, cfg: FinetuneConfig, objective: str) -> list[Capability]:
    """The capabilities of ``--keep KIND:DATA`` specs, each built by its registered kind."""
    if not specs:
        raise ConfigError(
            "no capability to keep: give at least one --keep KIND:DATA (e.g. --keep perplexity:builtin:kjv)"
        )
    options = KeepOptions(
        seq_len=cfg.seq_len,
        eval_size=cfg.eval_size,
        train_size=max(cfg.eval_size, 4 * cfg.batch_size),
        choice_size=cfg.choice_size or cfg.eval_size,
        seed=cfg.seed,
    )
    capabilities = []
    for spec in specs:
        kind, source = parse_keep(spec)
        if kind.needs_lm and objective != "lm":
            raise ConfigError(
                f"--keep {spec}: {kind.kind} needs a causal LM (the task is classification); "
                "use accuracy: or knn: instead"
            )
        capabilities.append(kind.from_source(source, tokenizer, options))
    return capabilities


def task_rows(
    data: TextData, tokenizer: Any, cfg: FinetuneConfig, objective: str
) -> tuple[dict[str, torch.Tensor], Capability]:
    """Training rows of the new task and its held-out metric (perplexity or accuracy).

    Causal LM: packed blocks of plain text, or one instruction example per row with the prompt
    labelled ``-100`` (:func:`lm_rows`); the task's perplexity then scores the responses only.
    """
    train, test = data.split(0.2, cfg.seed)
    test = test.head(cfg.eval_size, cfg.seed)
    if objective == "lm":
        rows = lm_rows(tokenizer, train, cfg.seq_len, cfg.train_size)
        metric: Capability = Perplexity("task", lm_rows(tokenizer, test, cfg.seq_len, cfg.eval_size))
        return rows, metric
    train = train.head(cfg.train_size, cfg.seed)
    rows = {**encode_texts(tokenizer, train.texts, cfg.seq_len), "labels": torch.tensor(train.labels)}
    test_rows = encode_texts(tokenizer, test.texts, cfg.seq_len)
    metric = HeadAccuracy("task", rows, rows["labels"], test_rows, torch.tensor(test.labels), head="model")
    return rows, metric


PEFT_KINDS = ("lora", "dora", "prefix", "prompt", "ia3")
"""``--peft`` methods, each built through peft's own config class (:func:`peft_config`)."""

MERGEABLE = ("lora", "dora", "ia3")
"""Methods whose adapters fold into the base weights (peft ``merge_and_unload``, ``--merge-lora``);
prefix and prompt tuning add virtual tokens, which no weight can hold."""


def peft_config(kind: str, cfg: FinetuneConfig, objective: str) -> Any:
    """peft's config of ``kind`` (``LoraConfig``, ``LoraConfig(use_dora=True)``,
    ``PrefixTuningConfig``, ``PromptTuningConfig``, ``IA3Config``) for the objective's task type."""
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType

    task_type = TaskType.CAUSAL_LM if objective == "lm" else TaskType.SEQ_CLS
    if kind in ("lora", "dora"):
        return LoraConfig(
            task_type=task_type,
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=0.0,
            target_modules=cfg.lora_targets,
            use_dora=kind == "dora",
        )
    if kind == "ia3":  # given targets: all scale their output (none is a feed-forward input)
        return IA3Config(
            task_type=task_type, target_modules=cfg.lora_targets, feedforward_modules=[] if cfg.lora_targets else None
        )
    if kind == "prefix":
        return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=cfg.peft_tokens)
    if kind == "prompt":
        return PromptTuningConfig(task_type=task_type, num_virtual_tokens=cfg.peft_tokens)
    raise ConfigError(f"--peft {kind}: choose one of {', '.join(PEFT_KINDS)}")


def _drop_virtual_positions(tokens: int) -> Callable[..., Any]:
    """Forward hook of a prompt-tuned model: peft prepends ``tokens`` virtual positions to the
    logits and hidden states; dropping them aligns every output with ``input_ids`` again (the
    loss, computed inside with the virtual labels ``-100``, is unchanged)."""

    def hook(module: Any, args: Any, output: Any) -> Any:
        logits = getattr(output, "logits", None)
        if logits is not None and logits.dim() == 3:
            output.logits = logits[:, tokens:]
        hidden = getattr(output, "hidden_states", None)
        if hidden is not None:
            output.hidden_states = tuple(h[:, tokens:] for h in hidden)
        return output

    return hook


def _apply_peft(model: Any, cfg: FinetuneConfig, objective: str) -> Any:
    """``get_peft_model`` with the config of ``cfg.peft_kind()``; one line for a bad fit."""
    from peft import get_peft_model

    from forgetless.integrations.hf.models import max_sequence_length

    kind = cfg.peft_kind()
    if kind in ("prefix", "prompt"):
        limit = max_sequence_length(model.config)
        if limit is not None and cfg.seq_len + cfg.peft_tokens > limit:
            raise ConfigError(
                f"--peft {kind} adds {cfg.peft_tokens} virtual tokens to rows of --seq-len {cfg.seq_len}, beyond the "
                f"model's {limit} positions: lower --seq-len or --peft-tokens"
            )
    try:
        peft_model = get_peft_model(model, peft_config(kind, cfg, objective))
    except ValueError as error:
        raise ConfigError(
            f"--peft {kind} cannot pick target modules for this model ({str(error)[:120]}): "
            "pass --lora-targets, e.g. query,value"
        ) from None
    if kind == "prompt":
        peft_model.register_forward_hook(_drop_virtual_positions(cfg.peft_tokens))
    if kind in ("prefix", "prompt"):  # peft rewires the forward: a model it cannot serve fails here, not mid-run
        _probe(peft_model, kind, objective)
    return peft_model


def _probe(model: Any, kind: str, objective: str) -> None:
    """One forward of two tokens in eval mode (no randomness drawn); peft's refusal as one line."""
    from forgetless.integrations.hf.capabilities._io import EvalMode

    device = next(model.parameters()).device
    try:
        with EvalMode(model):
            model(input_ids=torch.zeros(1, 2, dtype=torch.long, device=device))
    except (ValueError, TypeError, RuntimeError) as error:
        why = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise ConfigError(
            f"--peft {kind} cannot run on this model for objective {objective} ({why}): use --peft lora, dora or ia3"
        ) from None


def merged_model(model: Any, kind: str) -> Any:
    """The plain transformers model with the adapters folded in (peft ``merge_and_unload``)."""
    if kind not in MERGEABLE:
        raise ConfigError(
            f"--merge-lora folds adapters into the weights: --peft {kind} has none to fold "
            f"(use {', '.join(MERGEABLE)}, or save without --merge-lora)"
        )
    return model.merge_and_unload()


def save_finetuned(summary: dict[str, Any], folder: Path, merge: bool = False) -> None:
    """The fine-tuned model and tokenizer in ``folder`` (``save_pretrained``): a PEFT run saves
    its adapter (``adapter_config.json`` names the base by absolute path when it is a local
    folder); ``merge`` saves the merged plain model instead, which loads without peft."""
    model = summary["_model"]
    if merge:
        model = merged_model(model, summary["peft"])
    model.save_pretrained(folder)
    summary["_tokenizer"].save_pretrained(folder)


class _StepCallback:
    """Forward each optimizer step to ``on_step(step, max_steps)`` (progress bars)."""

    def __new__(cls, on_step: StepListener) -> Any:
        from transformers import TrainerCallback

        class StepCallback(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                on_step(state.global_step, state.max_steps)

        return StepCallback()


RESUME_MAY_CHANGE = ("checkpoint_every", "threads")
"""Config fields a resumed fine-tune may change: they do not change the results."""


ADDED_FIELDS = ("peft", "peft_tokens", "grad_accum")
"""Config fields newer than the first checkpoints: an older checkpoint lacks them, and its run
had their defaults."""


def with_added_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the defaults of :data:`ADDED_FIELDS` it lacks (an older checkpoint)."""
    return {**{name: FinetuneConfig.model_fields[name].default for name in ADDED_FIELDS}, **values}


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``["lr: 0.001 in the run, 0.1 now", ...]`` over the fields that change results."""
    saved = with_added_defaults(saved)
    out = []
    for key in sorted(set(saved) | set(current)):
        if key not in RESUME_MAY_CHANGE and saved.get(key) != current.get(key):
            out.append(f"{key!s:.40}: {saved.get(key)!r:.80} in the run, {current.get(key)!r:.80} now")
    return out


def check_out(out: Path, save_model: bool = False, force: bool = False) -> None:
    """Check the report folder before any training: a file there, an unwritable folder, a
    path too long, or (without ``force``) a folder that already holds a report is a one-line
    OutputError now, not after the fine-tune is done (and lost), as for ``forgetless run``."""
    from forgetless.io import prepare_run_dir

    prepare_run_dir(out, force=force)
    if save_model and (out / "model").exists() and not (out / "model").is_dir():
        from forgetless.errors import OutputError

        raise OutputError(f"--save-model writes {out / 'model'}, which is a file: move it or choose another --out")


def check_keep_specs(cfg: FinetuneConfig) -> None:
    """One line, before any loading, for no ``--keep``, a malformed spec, or ``--lora`` with another ``--peft``."""
    if not cfg.keep:
        raise ConfigError(
            "no capability to keep: give at least one --keep KIND:DATA (e.g. --keep perplexity:builtin:kjv)"
        )
    for spec in cfg.keep:
        parse_keep(spec)
    cfg.peft_kind()


def plan_strategies(
    cfg: FinetuneConfig, model: Any, capabilities: list[Capability], anchored: list[str], tasks: int = 1
) -> tuple[Any, float]:
    """``(FinetuneStrategies, replay ratio)`` of ``cfg``'s strategies (``replay`` is the mixing's
    ratio, the others core strategies) on ``model``; ``anchored``: the pretrained parameters;
    ``tasks``: the fine-tunes of the stream (a sequence's tasks)."""
    from forgetless.integrations.hf.penalties import select_parameters
    from forgetless.integrations.hf.strategies import REPLAY, FinetuneStrategies, split_replay

    names, params = cfg.strategy_plan()
    core_names, replay_ratio = split_replay(names, params)
    strategies = FinetuneStrategies.build(
        core_names,
        {n: v for n, v in params.items() if n != REPLAY},
        model,
        capabilities,
        pretrained=anchored,
        seed=cfg.seed,
        importance_names=select_parameters(model, cfg.ewc_modules) if cfg.ewc_modules else anchored,
        tasks=tasks,
    )
    return strategies, replay_ratio


def training_arguments(cfg: FinetuneConfig, output_dir: str, device: torch.device) -> Any:
    """The Trainer's ``TrainingArguments`` of a fine-tune (no logging, saving or progress bar of
    its own; ``output_dir`` is a scratch folder the Trainer needs)."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=output_dir,
        max_steps=cfg.steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps,
        lr_scheduler_type="constant_with_warmup",
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=device.type == "cpu",
        dataloader_num_workers=0,
        bf16=cfg.precision == "bf16",
        fp16=cfg.precision == "fp16",
    )


def run_finetune(
    cfg: FinetuneConfig,
    out: Path | None = None,
    listeners: list[Listener] | None = None,
    on_step: StepListener | None = None,
    force: bool = False,
    checkpoints: Path | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Fine-tune per ``cfg``; returns the forgetting summary (and writes the report to ``out``,
    which must not hold a report already unless ``force``).

    ``checkpoints`` (default: ``out``) receives ``checkpoint/`` every ``cfg.checkpoint_every``
    steps (:mod:`.resume`); ``resume=True`` continues from it (its config must be ``cfg``) to
    the report of an uninterrupted run. A report written to ``out`` removes the checkpoint there.
    """
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.utils import logging as hf_logging

    from forgetless.integrations.hf import resume as resuming
    from forgetless.integrations.hf.callback import ForgettingCallback
    from forgetless.integrations.hf.mixing import (
        MixedDataset,
        MixingBatchSampler,
        RowsDataset,
        SplitCollator,
    )
    from forgetless.integrations.hf.models import load_model
    from forgetless.integrations.hf.schedules import GradualUnfreezing, layerwise_adamw
    from forgetless.integrations.hf.tracker import CapabilityTracker
    from forgetless.integrations.hf.trainer import ForgetlessTrainer

    checkpoints = Path(checkpoints) if checkpoints is not None else (Path(out) if out is not None else None)
    saved = None
    if resume:
        if checkpoints is None:
            raise ConfigError("resume=True needs the run folder: give out= or checkpoints=")
        saved = resuming.load_saved(checkpoints)
        differences = _differences(saved.config, cfg.model_dump(mode="json"))
        if differences:
            raise ConfigError(
                f"cannot resume {checkpoints} with other settings ({'; '.join(differences)}): "
                "resume with the saved config (forgetless finetune --resume reads it), or start a new run"
            )
    if out is not None:
        if resume:
            from forgetless.io import prepare_run_dir

            prepare_run_dir(out, force=True)  # holds the checkpoint: check it is still writable
        else:
            check_out(out, force=force)
    if checkpoints is not None and not resume:
        resuming.remove(checkpoints)  # a new run never resumes from an older run's checkpoint
    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    set_seed(cfg.seed)
    check_keep_specs(cfg)
    data = load_texts(
        cfg.task, cfg.text_column, cfg.label_column, need_labels=cfg.objective == "classify", format=cfg.format
    )
    objective = cfg.objective if cfg.objective != "auto" else ("classify" if data.labelled else "lm")
    if objective == "classify" and not data.labelled:
        raise ConfigError(f"{cfg.task_name()}: classification needs labels")
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if cfg.precision == "fp16" and device.type == "cpu":
        raise ConfigError("--precision fp16 needs a GPU (loss scaling is CUDA's): use --precision bf16 on a CPU")
    model, tokenizer, new_params = load_model(
        cfg.model, objective, len(data.label_names) if objective == "classify" else None, cfg.seq_len
    )
    model.to(device)
    rows, task_metric = task_rows(data, tokenizer, cfg, objective)
    row_width = int(rows["input_ids"].shape[1])  # seq_len, or the longest instruction row
    capabilities = build_capabilities(cfg.keep, tokenizer, cfg, objective)
    tracker = CapabilityTracker(capabilities, task_metric, cfg.eval_every)
    tracker.prepare(model)  # fixed heads are fitted on the model before anything changes it

    if cfg.peft_kind() != "none":
        model = _apply_peft(model, cfg, objective)
    new = tuple(new_params)
    anchored = [n for n, p in model.named_parameters() if p.requires_grad and not any(n.endswith(m) for m in new)]
    strategies, replay_ratio = plan_strategies(cfg, model, capabilities, anchored)
    strategies.prepare()

    replay_source = next((c for c in capabilities if c.replay_rows() is not None), None)
    general = replay_source.replay_rows() if (replay_ratio and replay_source) else None
    if replay_ratio and general is None:
        raise ConfigError("replay needs general data: keep a perplexity: or accuracy: capability")
    task_set = RowsDataset(rows)
    general_set = RowsDataset(general) if general is not None else RowsDataset({"x": torch.zeros(0)})
    sampler = MixingBatchSampler(
        len(task_set),
        len(general_set),
        cfg.batch_size,
        replay_ratio,
        num_batches=cfg.steps * cfg.grad_accum,
        seed=cfg.seed,
    )

    every = cfg.eval_every if cfg.checkpoint_every is None else cfg.checkpoint_every
    keeping = checkpoints is not None and (every > 0 or saved is not None)
    if keeping:  # the pretrained weights and the rows, before any training
        prints = resuming.fingerprints(model, rows, general if general is not None else {})
        if saved is not None:
            resuming.check_matches(saved, prints, [s.name for s in strategies.strategies], sampler)

    optimizer = None
    if cfg.layerwise_lr_decay < 1:
        optimizer = layerwise_adamw(model, cfg.lr, cfg.layerwise_lr_decay, cfg.weight_decay)
    # the Trainer needs an output folder (it saves nothing there): removed even when training raises
    with tempfile.TemporaryDirectory(prefix="forgetless-trainer-") as scratch:
        args = training_arguments(cfg, scratch, device)
        guard = ForgettingCallback(tracker, cfg.stop_if_drop, listeners=listeners)
        callbacks: list[Any] = [guard]
        if keeping:  # after the guard (it saves the guard's record of the step), before unfreezing
            assert checkpoints is not None
            config = cfg.model_dump(mode="json")
            keeper = resuming.FinetuneCheckpoints(checkpoints, every, config, guard, strategies, sampler, prints, saved)
            callbacks.append(keeper)
            if saved is not None:
                guard.load(saved.folder)
                keeper.restore_before_training()
        if cfg.unfreeze_every:
            callbacks.append(GradualUnfreezing(cfg.unfreeze_every))
        if on_step is not None:
            callbacks.append(_StepCallback(on_step))
        trainer = ForgetlessTrainer(
            model=model,
            args=args,
            train_dataset=MixedDataset(task_set, general_set),
            data_collator=SplitCollator(),
            callbacks=callbacks,
            optimizers=(optimizer, None),
            strategies=strategies,
            replay_loss=replay_source.replay_loss if general is not None else None,
            mixing_sampler=sampler,
        )
        for noisy in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(noisy)
        train_started = time.perf_counter()
        trainer.train()
        train_wall = time.perf_counter() - train_started

    summary = guard.summary()
    reports = strategies.report()
    eval_seconds = sum(r["eval_seconds"] for r in tracker.history)
    wall = time.perf_counter() - started
    steps_done = guard.stopped_at if guard.stopped_at is not None else trainer.state.global_step
    train_seconds = max(1e-6, train_wall - eval_seconds)
    summary.update(
        {
            "run": "+".join(cfg.mitigations()),
            "objective": objective,
            "peft": cfg.peft_kind(),
            "model": cfg.model,
            "task_source": cfg.task_name(),
            "task_format": data.format,
            "steps_trained": int(steps_done),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total_parameters": sum(p.numel() for p in model.parameters()),
            "tokens_per_second": trainer.state.global_step
            * cfg.grad_accum
            * cfg.batch_size
            * row_width
            / train_seconds,
            "strategies": reports,
            "wall_seconds": wall,
            "config": cfg.model_dump(mode="json"),
        }
    )
    note = nothing_learned(summary)
    if note is not None:
        summary["note"] = note
    if out is not None:
        write_report({summary["run"]: summary}, Path(out))
        if checkpoints is not None and checkpoints.resolve() == Path(out).resolve():
            resuming.remove(checkpoints)
    summary["_model"] = model
    summary["_tokenizer"] = tokenizer
    return summary


def nothing_learned(summary: dict[str, Any]) -> str | None:
    """The one-line note of a stop at the very first evaluation: the brake restored step 0, so
    the fine-tuned model is the pretrained one (``None`` for any other run)."""
    if summary.get("stopped_at") is None or summary.get("restored_step") != 0:
        return None
    return (
        f"nothing was learned: the first evaluation (step {summary['stopped_at']}) already dropped a kept "
        "capability past --stop-if-drop, so step 0 (the pretrained model) was restored; raise the threshold, "
        "lower --lr, or evaluate later (--eval-every)"
    )


# -- report ----------------------------------------------------------------------------------
def public(summary: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able part of a summary (drops the model and tokenizer)."""
    return {k: v for k, v in summary.items() if not k.startswith("_")}


def before_after_rows(summary: dict[str, Any]) -> list[tuple[str, str, float, float, float]]:
    """``(name, metric, before, after, drop)`` for each capability, then the task."""
    rows = [(name, c["metric"], c["before"], c["after"], c["drop"]) for name, c in summary["capabilities"].items()]
    if "task" in summary:
        task = summary["task"]
        rows.append(("new task", task["metric"], task["before"], task["after"], float("nan")))
    return rows


REPORT_COLUMNS = (
    "run",
    "capability",
    "metric",
    "before",
    "after",
    "drop",
    "drop_abs",
    "drop_rel",
    "items",
    "stderr_before",
    "stderr_after",
    "chance",
)
"""The columns of ``before_after.csv`` (:func:`report_rows`; empty where a figure does not apply)."""


def report_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per capability, then the new task, with the :data:`REPORT_COLUMNS` but ``run``:
    the drop (relative for perplexity, absolute for accuracies) and both of its forms, and for
    ``choice`` the item count, the standard errors of the accuracy and the chance level."""
    rows = []
    for name, c in summary["capabilities"].items():
        rows.append(
            {
                "capability": name,
                **{key: c.get(key) for key in REPORT_COLUMNS[2:]},
            }
        )
    if "task" in summary:
        task = summary["task"]
        rows.append(
            {"capability": "new task", "metric": task["metric"], "before": task["before"], "after": task["after"]}
        )
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _drop_text(metric: str, drop: float | None) -> str:
    if drop is None:
        return ""
    return f"{drop:+.1%}" if metric == "perplexity" else f"{drop:+.3f}"


def markdown_report(runs: dict[str, dict[str, Any]]) -> str:
    """``report.md``: per run a table of every capability (before and after, ``± stderr`` where
    there is one; the drop as the stop reads it and in both forms; items and chance level), the
    stop, the notes and the warnings (e.g. a baseline at chance)."""
    lines = ["# Forgetting report", ""]
    for run, summary in runs.items():
        lines += [
            f"## {run}",
            "",
            "| capability | metric | before | after | drop | drop (abs) | drop (rel) | items | chance |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in report_rows(summary):
            metric = row["metric"]
            digits = 2 if metric == "perplexity" else 3

            def value(key: str, row: dict[str, Any] = row, digits: int = digits) -> str:
                stderr = row.get(f"stderr_{key}")
                text = f"{row[key]:.{digits}f}"
                return f"{text} ± {stderr:.{digits}f}" if stderr is not None else text

            rel = row.get("drop_rel")
            cells = [
                row["capability"],
                metric,
                value("before"),
                value("after"),
                _drop_text(metric, row.get("drop")),
                f"{row['drop_abs']:+.{digits}f}" if row.get("drop_abs") is not None else "",
                f"{rel:+.1%}" if rel is not None else "",
                _cell(row.get("items")),
                f"{row['chance']:.3f}" if row.get("chance") is not None else "",
            ]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
        lines.append(
            "drop: relative for perplexity (now / before - 1), absolute for accuracies (before - now); "
            "positive = forgotten."
        )
        if summary.get("stopped_at") is not None:
            crossed = "; ".join(
                f"{c['capability']} dropped {c['drop']:.4g} > {c['threshold']:.4g}"
                for c in summary.get("stopped_by", [])
            )
            restored = summary.get("restored_step")
            lines.append(
                f"Stopped at step {summary['stopped_at']}"
                + (f" ({crossed})" if crossed else "")
                + (f"; restored step {restored}." if restored is not None else ".")
            )
        if summary.get("note"):
            lines.append(f"- {summary['note']}")
        lines += [f"- **warning**: {warning}" for warning in summary.get("warnings", [])]
        lines.append("")
    return "\n".join(lines)


def write_report(runs: dict[str, dict[str, Any]], out: Path) -> None:
    """``forgetting.json``, ``before_after.csv`` (:data:`REPORT_COLUMNS`), ``report.md``
    (:func:`markdown_report`) and ``capability_curves.png`` in ``out``."""
    from forgetless.io import atomic_write_json, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "forgetting.json", {name: public(s) for name, s in runs.items()})
    import csv
    import io

    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")  # quotes a name holding a comma
    writer.writerow(REPORT_COLUMNS)
    for name, summary in runs.items():
        for row in report_rows(summary):
            row = {"run": name, "drop": float("nan"), **{k: v for k, v in row.items() if v is not None}}
            writer.writerow([_cell(row.get(key)) for key in REPORT_COLUMNS])
    atomic_write_text(out / "before_after.csv", table.getvalue())
    atomic_write_text(out / "report.md", markdown_report(runs))
    plot_curves(runs, out / "capability_curves.png")


def plot_curves(runs: dict[str, dict[str, Any]], path: Path) -> None:
    """One panel per capability (and the new task): metric over steps, one line per run; a
    ``choice`` panel also shows ``± 1`` standard error as a band, the item count in its title
    and its chance level as a dashed line."""
    from matplotlib.figure import Figure

    first = next(iter(runs.values()))
    panels = [(name, c["metric"]) for name, c in first["capabilities"].items()]
    if "task" in first:
        panels.append(("new task", first["task"]["metric"]))
    fig = Figure(figsize=(4.2 * len(panels), 3.4))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (panel, metric) in zip(axes[0], panels):
        facts = first["capabilities"].get(panel, {}) if panel != "new task" else {}
        for run, summary in runs.items():
            steps = summary["steps"]
            if panel == "new task":
                curve, errors = summary["task"]["curve"], None
            else:
                entry = summary["capabilities"][panel]
                curve, errors = entry["curve"], entry.get("stderr_curve")
            (line,) = ax.plot(steps, curve, marker="o", ms=3, label=run)
            if errors and all(e is not None for e in errors):
                low = [c - e for c, e in zip(curve, errors, strict=True)]
                high = [c + e for c, e in zip(curve, errors, strict=True)]
                ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.15, lw=0)
        if facts.get("chance") is not None:
            ax.axhline(facts["chance"], ls="--", lw=1, color="grey", label=f"chance ({facts['chance']:.2f})")
            ax.legend(fontsize=7)
        title = f"{panel} (n={facts['items']})" if facts.get("items") is not None else panel
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
