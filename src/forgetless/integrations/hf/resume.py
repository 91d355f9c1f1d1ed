"""Checkpoints of a fine-tune: a killed ``forgetless finetune`` resumes to the same report.

``<run folder>/checkpoint/`` is written atomically (a temporary folder renamed into place, the
previous one removed after) every ``checkpoint_every`` optimizer steps by
:class:`FinetuneCheckpoints`, a ``TrainerCallback``; nothing is pickled:

==================================  ==========================================================
file                                content
==================================  ==========================================================
``model.safetensors``               the trainable weights (parameter name -> tensor)
``optimizer.*``                     the optimizer's and the LR scheduler's ``state_dict``
``trainer.*``                       global step, RNG states (torch, CUDA, numpy, Python, the
                                    strategies' generator), the MixingBatchSampler's state at
                                    that step, fingerprints of the pretrained model and the data
``strategies.*``                    ``FinetuneStrategies.state_dict()``
``forgetless_callback.*``           the ForgettingCallback's state (records, heads, best record)
``forgetless_best.safetensors``     its best weights (``stop_if_drop``)
``config.*``                        the validated :class:`FinetuneConfig`
``manifest.json``                   format version, size and SHA-256 of every file
==================================  ==========================================================

Why not the Trainer's own checkpoints: its ``optimizer.pt``, ``scheduler.pt`` and
``rng_state.pth`` are ``torch.save`` pickles. The Trainer is not asked to resume at all: the
run is rebuilt as at the start (same seed, same data, same strategies' preparation on the
pretrained weights), then this callback puts the saved state back at ``on_train_begin``
(weights, optimizer, scheduler, ``TrainerState.global_step``; the sampler before training) and
the RNG states at the first ``on_step_begin``, after the loader has drawn its batch. The Trainer
then runs its loop from that step: ``DefaultFlowCallback`` stops it when ``global_step`` reaches
``max_steps``, the schedule continues from its saved ``last_epoch``, and the sampler yields the
batch the uninterrupted run trained on next: the resumed run is bit for bit the uninterrupted one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ValidationError
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from forgetless.integrations.hf.callback import STATE_NAME, ForgettingCallback
from forgetless.integrations.hf.mixing import MixingBatchSampler
from forgetless.integrations.hf.strategies import FinetuneStrategies
from forgetless.training.checkpoint import (
    CHECKPOINT,
    CheckpointError,
    Count,
    Tensor,
    _invalid,
    _Part,
    _Rng,
    _schema_error,
    capture_rng,
    check_optimizer_state,
    load_tensors,
    read_tree,
    restore_rng,
    verify_manifest,
    write_manifest,
    write_tree,
)


# -- schemas of the JSON parts ------------------------------------------------------------
class _Sampler(_Part):
    generator: Tensor
    order: dict[str, Tensor]
    position: dict[str, Count]
    drawn: Count


class _Fingerprints(_Part):
    model: str
    data: str
    parameters: list[tuple[str, list[int], str]]


class _TrainerPart(_Part):
    global_step: Count
    max_steps: Count
    rng: _Rng
    sampler: _Sampler
    fingerprints: _Fingerprints


class _OptimizerState(_Part):
    state: dict[Any, Any]
    param_groups: list[dict[str, Any]]


class _OptimizerPart(_Part):
    optimizer: _OptimizerState
    scheduler: dict[str, Any]


class _StrategiesPart(_Part):
    names: list[str]
    state: dict[str, Any]


class _Record(_Part):
    step: Count
    scores: dict[str, float]
    task: float | None
    drops: dict[str, float]


class _Tracker(_Part):
    history: list[_Record]
    prepared: bool
    capabilities: dict[str, Any]


class _CallbackPart(_Part):
    tracker: _Tracker
    stopped_at: Count | None
    best_record: dict[str, Any] | None
    final_record: dict[str, Any] | None
    global_step: Count
    has_best_weights: bool


def _validated(folder: Path, name: str, schema: type[BaseModel]) -> Any:
    """``name.json`` (+ ``.safetensors``) of ``folder``, checked against ``schema``."""
    tree = read_tree(folder, name)
    try:
        schema.model_validate(tree)
    except ValidationError as error:
        raise _schema_error(folder, f"{name}.json", error) from None
    return tree


# -- fingerprints ----------------------------------------------------------------------------
def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters the optimizer trains (``requires_grad`` before training starts)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 over every parameter's name, shape, dtype and 256 evenly spaced values (cheap on a
    large model; tells a different pretrained model or another random init apart)."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, param in model.named_parameters():
            flat = param.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 256)][:256].to("cpu", torch.float64)
            digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}".encode())
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def data_fingerprint(*tables: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the training rows (task, then general)."""
    digest = hashlib.sha256()
    for table in tables:
        for key in sorted(table):
            tensor = table[key].detach().to("cpu").contiguous()
            digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _signature(params: dict[str, nn.Parameter]) -> list[tuple[str, list[int], str]]:
    return [(n, list(p.shape), str(p.dtype).removeprefix("torch.")) for n, p in params.items()]


# -- loading ----------------------------------------------------------------------------------
@dataclass
class SavedFinetune:
    """A verified, validated checkpoint of a fine-tune."""

    folder: Path
    config: dict[str, Any]
    trainer: dict[str, Any]
    optimizer: dict[str, Any]
    strategies: dict[str, Any]
    weights: dict[str, torch.Tensor]

    @property
    def step(self) -> int:
        return int(self.trainer["global_step"])


def checkpoint_folder(run_dir: Path) -> Path | None:
    """The complete checkpoint of ``run_dir`` (``None``: none was written)."""
    from forgetless.io import readable_folder

    return readable_folder(Path(run_dir) / CHECKPOINT)


def read_config(run_dir: Path) -> dict[str, Any]:
    """The fine-tune config saved in ``run_dir``'s checkpoint (manifest verified): the options
    of ``forgetless finetune --resume``. One line saying what to do when there is none."""
    folder = checkpoint_folder(run_dir)
    if folder is None:
        done = (Path(run_dir) / "forgetting.json").is_file()
        why = (
            "the fine-tune finished (its report is there) and removed its checkpoint"
            if done
            else "the fine-tune stopped before its first checkpoint (--checkpoint-every N steps, default "
            "every --eval-every) or was started without --out there"
        )
        raise CheckpointError(
            f"--resume {run_dir}: no checkpoint in {Path(run_dir) / CHECKPOINT}: {why}; "
            "run the fine-tune again without --resume (--force to reuse the folder)"
        )
    verify_manifest(folder)
    config = read_tree(folder, "config")
    if not isinstance(config, dict):
        raise _invalid(folder, "config.json", "top level: expected the fine-tune's options")
    return config


def load_saved(run_dir: Path) -> SavedFinetune:
    """Verify the manifest, validate every JSON part (one line naming file and field) and load."""
    config = read_config(run_dir)
    folder = checkpoint_folder(run_dir)
    assert folder is not None
    trainer = _validated(folder, "trainer", _TrainerPart)
    optimizer = _validated(folder, "optimizer", _OptimizerPart)
    strategies = _validated(folder, "strategies", _StrategiesPart)
    callback = _validated(folder, STATE_NAME, _CallbackPart)
    step = trainer["global_step"]
    if not 0 < step < trainer["max_steps"]:
        raise _invalid(folder, "trainer.json", f"global_step: {step} is not inside the run's {trainer['max_steps']}")
    if trainer["max_steps"] != config.get("steps"):
        raise _invalid(
            folder, "trainer.json", f"max_steps: {trainer['max_steps']}, the config's {config.get('steps')!r}"
        )
    if callback["global_step"] != step:
        raise _invalid(folder, f"{STATE_NAME}.json", f"global_step: {callback['global_step']}, the trainer's {step}")
    batches = step * int(config.get("grad_accum", 1))  # each optimizer step draws grad_accum batches
    if trainer["sampler"]["drawn"] != batches:
        raise _invalid(folder, "trainer.json", f"sampler.drawn: {trainer['sampler']['drawn']} batches at step {step}")
    weights = load_tensors(folder / "model.safetensors")
    return SavedFinetune(folder, config, trainer, optimizer, strategies, weights)


def check_matches(
    saved: SavedFinetune, fingerprints: dict[str, Any], strategy_names: list[str], sampler: MixingBatchSampler
) -> None:
    """Refuse a checkpoint of another model, other data or other strategies (before training)."""
    folder, recorded = saved.folder, saved.trainer["fingerprints"]
    if [list(p) for p in recorded["parameters"]] != [list(p) for p in fingerprints["parameters"]]:
        raise CheckpointError(
            f"{folder} was written for a model with other trainable parameters (names, shapes or dtypes "
            "differ): resume with the same --model and options, or start a new run"
        )
    for what, hint in (("model", "the --model weights"), ("data", "the --task/--keep data")):
        if recorded[what] != fingerprints[what]:
            raise CheckpointError(
                f"{folder} does not match this run: {hint} changed since the checkpoint was written; "
                "resume with the same ones, or start a new run"
            )
    if saved.strategies["names"] != strategy_names:
        raise CheckpointError(
            f"{folder} holds strategies {saved.strategies['names']}, this run has {strategy_names}: "
            "resume with the same --strategies"
        )
    if set(saved.weights) != {p[0] for p in fingerprints["parameters"]}:
        raise _invalid(folder, "model.safetensors", "its tensors are not the run's trainable parameters")
    order = saved.trainer["sampler"]["order"]
    if order["task"].numel() != sampler.n_task or order["general"].numel() != max(sampler.n_general, 1):
        raise _invalid(folder, "trainer.json", "sampler.order: not a permutation of this run's rows")


# -- the callback --------------------------------------------------------------------------------
class FinetuneCheckpoints(TrainerCallback):
    """Write ``run_dir/checkpoint`` every ``every`` steps; with ``saved``, resume from it.

    List it right after the :class:`ForgettingCallback` (it saves that callback's record of the
    step) and before ``GradualUnfreezing`` (which reads the resumed step at ``on_train_begin``).
    """

    def __init__(
        self,
        run_dir: Path,
        every: int,
        config: dict[str, Any],
        guard: ForgettingCallback,
        strategies: FinetuneStrategies,
        sampler: MixingBatchSampler,
        fingerprints: dict[str, Any],
        saved: SavedFinetune | None = None,
    ) -> None:
        self.run_dir, self.every, self.config = Path(run_dir), every, config
        self.guard, self.strategies, self.sampler = guard, strategies, sampler
        self.fingerprints = fingerprints
        self.saved = saved
        self._rng: dict[str, Any] | None = None
        self._names: list[str] = []

    def restore_before_training(self) -> None:
        """The strategies' and the sampler's state (the Trainer has not started yet)."""
        if self.saved is None:
            return
        try:
            self.strategies.load_state_dict(self.saved.strategies["state"])
            self.sampler.load_state_dict(self.saved.trainer["sampler"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise _invalid(self.saved.folder, "strategies.json", f"state: {error}") from None

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        optimizer: Any = None,
        lr_scheduler: Any = None,
        **kwargs: Any,
    ) -> None:
        assert model is not None
        self._names = list(trainable(model))
        if self.saved is None:
            return
        saved = self.saved
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in saved.weights.items():
                if tuple(value.shape) != tuple(params[name].shape):
                    raise _invalid(saved.folder, "model.safetensors", f"{name}: shape {tuple(value.shape)}")
                if value.is_floating_point() != params[name].is_floating_point():
                    raise _invalid(saved.folder, "model.safetensors", f"{name}: dtype {value.dtype}")
                params[name].copy_(value.to(params[name].device, params[name].dtype))
        check_optimizer_state(optimizer, saved.optimizer.get("optimizer"), saved.step, "optimizer.json")
        try:
            optimizer.load_state_dict(saved.optimizer["optimizer"])
            lr_scheduler.load_state_dict(saved.optimizer["scheduler"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise _invalid(saved.folder, "optimizer.json", f"optimizer: {' '.join(str(error).split())}") from None
        state.global_step = saved.step
        self._rng = saved.trainer["rng"]

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._rng is not None:  # the loader has drawn this step's batch: dropout & co. go on from here
            restore_rng(self._rng, self.strategies.ctx.generator)
            self._rng = None

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        optimizer: Any = None,
        lr_scheduler: Any = None,
        **kwargs: Any,
    ) -> None:
        step = state.global_step
        if self.every and step % self.every == 0 and step < state.max_steps and not control.should_training_stop:
            assert model is not None
            self.save(model, optimizer, lr_scheduler, step, state.max_steps, args.gradient_accumulation_steps)

    def save(
        self, model: nn.Module, optimizer: Any, scheduler: Any, step: int, max_steps: int, accumulation: int
    ) -> Path:
        """Write the checkpoint of ``step`` atomically; returns its folder."""
        from safetensors.torch import save

        from forgetless.io import atomic_folder, write_synced

        params = dict(model.named_parameters())
        trainer = {
            "global_step": int(step),
            "max_steps": int(max_steps),
            "rng": capture_rng(self.strategies.ctx.generator),
            "sampler": self.sampler.state_at(step * accumulation),
            "fingerprints": self.fingerprints,
        }
        with atomic_folder(self.run_dir / CHECKPOINT) as tmp:
            weights = {n: params[n].detach().to("cpu", copy=True).contiguous() for n in self._names}
            write_synced(tmp / "model.safetensors", save(weights))
            write_tree(tmp, "optimizer", {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})
            write_tree(tmp, "trainer", trainer)
            names = [s.name for s in self.strategies.strategies]
            write_tree(tmp, "strategies", {"names": names, "state": self.strategies.state_dict()})
            self.guard.save(tmp, step)
            write_tree(tmp, "config", self.config)
            write_manifest(tmp)
        return self.run_dir / CHECKPOINT


def fingerprints(model: nn.Module, *tables: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What a resume must find unchanged: trainable parameters, pretrained weights, data."""
    return {
        "model": model_fingerprint(model),
        "data": data_fingerprint(*tables),
        "parameters": _signature(trainable(model)),
    }


def remove(run_dir: Path) -> None:
    """Delete ``run_dir``'s checkpoint (a finished fine-tune needs it no more)."""
    from forgetless.training.checkpoint import remove_checkpoint

    remove_checkpoint(Path(run_dir))
