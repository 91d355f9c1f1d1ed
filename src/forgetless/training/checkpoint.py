"""Checkpoints: everything a run needs to continue exactly where it stopped, loaded safely.

A checkpoint is one folder, ``<run folder>/checkpoint/``, written atomically (a temporary folder
renamed into place; the previous checkpoint is kept until the new one is complete):

=========================  ===================================================================
file                       content
=========================  ===================================================================
``model.safetensors``      the model's ``state_dict`` (loadable with ``safetensors`` alone)
``learner.*``              loop state (task, epoch, position in the epoch's permutation and the
                           permutation itself, step counters, active outputs, frozen flags),
                           the accuracy rows (and a class-IL run's task-IL rows) and timings
                           so far, and every RNG state
``optimizer.*``            optimizer and learning-rate schedule state (mid-task checkpoints)
``strategies.*``           every strategy's ``state_dict()`` (Fisher, anchors, buffers, masks)
``experiment.*``           which (strategy combination, seed) run this is, the exact results of
                           the runs already finished, and the resolved config
=========================  ===================================================================

Each ``name.*`` is a pair: ``name.safetensors`` holds the tensors of a nested structure under
dotted keys, ``name.json`` the rest with ``{"__tensor__": key}`` where a tensor was. Nothing is
ever unpickled: tensors come from safetensors, everything else from JSON, so a checkpoint
received from elsewhere cannot run code.

``manifest.json``, written last, records the format version and every file's size and
SHA-256; a resume verifies all of them before reading anything, so a checkpoint whose bytes
changed after it was written (a flipped bit in a tensor, an edited value) is refused with one
line instead of resuming into different results.
"""

from __future__ import annotations

import json
import math
import random
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from forgetless.errors import ForgetlessError
from forgetless.io import atomic_folder, readable_folder, write_synced
from forgetless.training.result import RunResult

if TYPE_CHECKING:
    from forgetless.training.learner import Learner

FORMAT = "forgetless-checkpoint"
VERSION = 2
"""2: a manifest with every file's SHA-256 (version 1 had none). Class-IL task-IL rows
(``result.task_il_rows``, ``completed.*.task_il_matrix``) were added later as optional fields of
version 2: a checkpoint written before them resumes, and its runs simply have no task-IL matrix."""
MANIFEST = "manifest.json"
CHECKPOINT = "checkpoint"
"""Name of the checkpoint folder inside a run folder."""


_RESERVED = ("__tensor__", "__ndarray__", "__tuple__", "__dict__")
_PICKLE_PREFIXES = (b"\x80", b"PK\x03\x04")
"""Pickle protocol >= 2, and the zip container of ``torch.save``."""


class CheckpointError(ForgetlessError):
    """A checkpoint that is missing, corrupt, unsafe, or from an incompatible run."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: a checkpoint was saved; ``str()`` says where and how to resume."""


class Interrupted(ForgetlessError):
    """The CLI's form of a Ctrl-C (click would swallow a KeyboardInterrupt): exit code 130."""

    exit_code = 130


# -- nested structures <-> (JSON skeleton, flat tensors) ------------------------------------
def flatten_tree(tree: Any, what: str = "state") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split nested dicts/lists of tensors and JSON values into a JSON skeleton and tensors.

    Tensors (and numpy arrays) are replaced by ``{"__tensor__": "dotted.key"}``; tuples and
    dicts with non-string keys are tagged so that :func:`unflatten_tree` rebuilds them exactly.
    """
    tensors: dict[str, torch.Tensor] = {}

    def key_for(path: str) -> str:
        key, k = path or "root", 1
        while key in tensors:
            k += 1
            key = f"{path}#{k}"
        return key

    def encode(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            key = key_for(path)
            tensors[key] = value.detach().to("cpu", copy=True).contiguous()
            return {"__tensor__": key}
        if isinstance(value, np.ndarray):
            key = key_for(path)
            tensors[key] = torch.from_numpy(np.ascontiguousarray(value).copy())
            return {"__ndarray__": key}
        if isinstance(value, np.generic):
            return value.item()
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, tuple):
            return {"__tuple__": [encode(v, f"{path}.{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [encode(v, f"{path}.{i}") for i, v in enumerate(value)]
        if isinstance(value, dict):
            if all(isinstance(k, str) and k not in _RESERVED for k in value):
                return {k: encode(v, f"{path}.{k}" if path else k) for k, v in value.items()}
            return {"__dict__": [[encode(k, f"{path}.key"), encode(v, f"{path}.{k}")] for k, v in value.items()]}
        raise CheckpointError(
            f"cannot checkpoint {what} at {path or 'top level'}: a {type(value).__name__} is "
            "neither a tensor nor a JSON value (state_dict() must return tensors and plain values)"
        )

    return encode(tree, ""), tensors


def unflatten_tree(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_tree`."""

    def decode(value: Any) -> Any:
        if isinstance(value, list):
            return [decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((tag, inner),) = value.items()
            if tag in ("__tensor__", "__ndarray__"):
                if inner not in tensors:
                    raise CheckpointError(f"checkpoint is corrupt: tensor {inner!r} is missing")
                tensor = tensors[inner]
                return tensor.numpy() if tag == "__ndarray__" else tensor
            if tag == "__tuple__":
                return tuple(decode(v) for v in inner)
            if tag == "__dict__":
                return {_hashable(decode(k)): decode(v) for k, v in inner}
        return {k: decode(v) for k, v in value.items()}

    return decode(skeleton)


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, (list, tuple)) else value


# -- files ----------------------------------------------------------------------------------
def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    write_synced(path, save(tensors))


def _refuse_unsafe(path: Path) -> None:
    """A clear refusal for pickles (a safetensors file starts with its header size, then '{')."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    looks_safe = head[8:9] == b"{" if path.suffix == ".safetensors" else head[:1] != b"\x80"
    if not looks_safe and head.startswith(_PICKLE_PREFIXES):
        raise CheckpointError(
            f"{path} is a pickle/torch.save file, not safetensors: refusing to load it "
            "(unpickling can run arbitrary code); checkpoints are written by forgetless only"
        )


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file (never unpickled); a clear error for anything else."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing: the checkpoint is incomplete")
    try:
        _refuse_unsafe(path)
        return load_file(str(path), device="cpu")
    except CheckpointError:
        raise
    except Exception as error:  # SafetensorError, OSError: corrupt or truncated file
        raise CheckpointError(
            f"checkpoint file {path} is not a valid safetensors file ({error}): it is corrupt; "
            "delete the checkpoint folder to restart this run from scratch"
        ) from None


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing: the checkpoint is incomplete")
    try:
        _refuse_unsafe(path)
        return json.loads(path.read_text(encoding="utf-8"))
    except CheckpointError:
        raise
    except (OSError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint file {path} is not valid JSON ({error}): it is corrupt; "
            "delete the checkpoint folder to restart this run from scratch"
        ) from None


def write_tree(folder: Path, name: str, tree: Any) -> None:
    """``name.json`` (skeleton) + ``name.safetensors`` (tensors) of a nested structure."""
    _write_flat(folder, name, *flatten_tree(tree, name))


def _write_flat(folder: Path, name: str, skeleton: Any, tensors: dict[str, torch.Tensor]) -> None:
    """:func:`write_tree` of a structure already split by :func:`flatten_tree`."""
    _save_tensors(folder / f"{name}.safetensors", tensors)
    text = json.dumps({"format": FORMAT, "version": VERSION, "data": skeleton})
    write_synced(folder / f"{name}.json", text.encode("utf-8"))


def read_tree(folder: Path, name: str) -> Any:
    document = _load_json(folder / f"{name}.json")
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CheckpointError(f"{folder / (name + '.json')} is not a forgetless checkpoint file")
    if document.get("version") != VERSION:
        raise CheckpointError(
            f"{folder} is a version {document.get('version')} checkpoint; this forgetless "
            f"reads version {VERSION}: resume it with the forgetless that wrote it"
        )
    tensors = load_tensors(folder / f"{name}.safetensors")
    try:
        return unflatten_tree(document["data"], tensors)
    except CheckpointError:
        raise
    except Exception as error:
        raise CheckpointError(f"checkpoint file {folder / name}.json is malformed: {error}") from None


# -- RNG states -----------------------------------------------------------------------------
def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    """The learner's generator and the global torch, CUDA, numpy and Python RNG states."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
            "kind": kind,
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    """Inverse of :func:`capture_rng`."""
    try:
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch"])
        numpy = state["numpy"]
        np.random.set_state(
            (
                numpy["kind"],
                numpy["keys"].numpy().astype(np.uint32),
                numpy["pos"],
                numpy["has_gauss"],
                numpy["cached"],
            )
        )
        python = state["python"]
        random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
        if "cuda" in state and torch.cuda.is_available():
            if len(state["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(state["cuda"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as error:
        raise CheckpointError(f"checkpoint RNG state is malformed: {error}") from None


# -- tensors and optimizer state against what they replace ---------------------------------------
def _describe(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype).removeprefix('torch.')} {list(tensor.shape)}"


def check_tensors_fit(saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], where: str) -> None:
    """Every saved tensor has the dtype and shape of the one it replaces (``load_state_dict``
    would cast integer weights silently): one line naming the file and the tensor."""
    for name, value in saved.items():
        target = expected.get(name)
        if target is None or not isinstance(value, torch.Tensor):
            continue
        if value.dtype != target.dtype or value.shape != target.shape:
            raise CheckpointError(
                f"checkpoint {where}: {name} is {_describe(value)}, the model's is {_describe(target)}: "
                "the checkpoint was edited or belongs to another model; start the run again"
            )


STATEFUL_OPTIMIZERS = ("Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad")
"""Optimizers that hold a state for every parameter they have updated (SGD only with momentum)."""


def _same_kind(value: Any, fresh: Any) -> bool:
    """Whether a saved optimizer setting has the type of the freshly built optimizer's."""
    if isinstance(fresh, bool) or fresh is None:
        return value is None or isinstance(value, bool)
    if isinstance(fresh, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if isinstance(fresh, (list, tuple)):
        return isinstance(value, (list, tuple)) and len(value) == len(fresh) and all(map(_same_kind, value, fresh))
    return isinstance(value, type(fresh))


def check_optimizer_state(optimizer: torch.optim.Optimizer, saved: Any, steps_taken: int, where: str) -> None:
    """The saved state of ``optimizer`` (``optimizer.state_dict()`` form) fits the one just built:
    the same parameter groups with settings of the same types, a state tensor of each parameter's
    shape, and a state at all after ``steps_taken`` steps of an optimizer that keeps one."""

    def refuse(problem: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {where}: {problem}: the checkpoint was edited; start the run again")

    fresh = optimizer.state_dict()
    if not isinstance(saved, dict) or not isinstance(saved.get("param_groups"), list):
        raise refuse("the optimizer state has no param_groups")
    groups = saved["param_groups"]
    if len(groups) != len(fresh["param_groups"]):
        raise refuse(f"{len(groups)} parameter groups, this run has {len(fresh['param_groups'])}")
    params: dict[int, torch.Tensor] = {}
    for number, (group, built, live) in enumerate(zip(groups, fresh["param_groups"], optimizer.param_groups)):
        if not isinstance(group, dict) or set(group) != set(built) or list(group["params"]) != built["params"]:
            raise refuse(f"parameter group {number} does not match this run's")
        for key, value in group.items():
            if key != "params" and not _same_kind(value, built[key]):
                raise refuse(f"param_groups[{number}].{key} is {value!r}, not like {built[key]!r}")
        params.update(zip(built["params"], live["params"]))
    state = saved.get("state")
    if not isinstance(state, dict):
        raise refuse("the optimizer state has no per-parameter state")
    for key, entry in state.items():
        param = params.get(int(key)) if str(key).isdigit() else None
        if param is None or not isinstance(entry, dict):
            raise refuse(f"state of parameter {key!r}, which this run's optimizer does not have")
        for name, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                if value.shape != param.shape or not value.is_floating_point():
                    raise refuse(f"state[{key}].{name} is {_describe(value)}, its parameter {list(param.shape)}")
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the optimizer
    stateful = type(inner).__name__ in STATEFUL_OPTIMIZERS or any(g.get("momentum") for g in groups)
    if steps_taken > 0 and stateful and not state and any(p.requires_grad for p in params.values()):
        raise refuse(f"the optimizer state is empty after {steps_taken} steps")


# -- the learner's state ----------------------------------------------------------------------
Scheduler = torch.optim.lr_scheduler.LRScheduler | None
OnCheckpoint = Callable[[dict[str, Any]], None]
"""``on_checkpoint(state)``: persist :func:`capture_learner`'s state (the experiment does)."""


class CheckpointEvents:
    """When the learner's loop must look up from its steps: every ``every`` steps for a mid-task
    checkpoint (when a writer is set), or at once after a Ctrl-C (:meth:`interrupt`).

    The loop compares one integer per step with :attr:`next_step` and calls :meth:`fire` when it
    is reached; no checkpoint is ever taken of weights a non-finite step touched.
    """

    def __init__(self, every: int | None) -> None:
        self.every = every or 0
        self.interrupted = False
        self.next_step = sys.maxsize

    def schedule(self, clock: Any, writing: bool) -> None:
        """The global step at which the loop must next look up (``writing``: a writer is set)."""
        self.next_step = sys.maxsize
        if self.every and writing:
            self.next_step = clock.global_step + self.every - clock.step % self.every
        if self.interrupted:
            self.next_step = 0

    def interrupt(self) -> None:
        """Ctrl-C: checkpoint after the current step, then raise :class:`RunInterrupted`."""
        self.interrupted = True
        self.next_step = 0

    def fire(
        self,
        learner: Learner,
        loop: dict[str, Any],
        order: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        scheduler: Scheduler,
        stop: bool,
    ) -> None:
        """A mid-task checkpoint (every ``every`` steps, or on Ctrl-C); ``loop``: epoch, next
        position and elapsed seconds. A step that stopped the task is followed at once by the
        end-of-task checkpoint, so it takes none here."""
        clock, writer = learner.ctx.clock, learner.on_checkpoint
        learner.nonfinite.check()
        due = self.interrupted or bool(self.every and clock.step % self.every == 0)
        if due and not stop and writer is not None:
            writer(capture_learner(learner, loop, order, optimizer, scheduler))
            if self.interrupted:
                raise RunInterrupted(f"Ctrl-C at task {clock.task_index}, step {clock.step} of {learner.name}")
        self.schedule(clock, writer is not None)

    def after_task(self, name: str, task_index: int) -> None:
        """After the end-of-task checkpoint: raise :class:`RunInterrupted` if Ctrl-C was pressed."""
        if self.interrupted:
            raise RunInterrupted(f"Ctrl-C after task {task_index} of {name}")


@dataclass
class ResumePoint:
    """Where a mid-task checkpoint stopped: the rest of the task is replayed from here."""

    task_index: int
    epoch: int
    position: int
    """Index of the next batch in the epoch's permutation."""
    order: torch.Tensor
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    rng: dict[str, Any]
    elapsed: float

    def check_position(self, step: int, steps_per_epoch: int) -> None:
        """The step count, the epoch and the position in it must tell the same moment."""
        if step != self.epoch * steps_per_epoch + self.position or self.position > steps_per_epoch:
            raise CheckpointError(
                f"checkpoint learner.json: loop.step {step} is not epoch {self.epoch} x {steps_per_epoch} "
                f"batches + position {self.position}: the checkpoint was edited; start the run again"
            )

    def restore(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: Scheduler,
        generator: torch.Generator,
        name: str,
        steps_taken: int = 0,
    ) -> None:
        """Put a rebuilt task's optimizer, schedule and RNGs back where the checkpoint was."""
        check_optimizer_state(optimizer, self.optimizer, steps_taken, "optimizer.json")
        try:
            optimizer.load_state_dict(self.optimizer)
            if scheduler is not None and self.scheduler is not None:
                scheduler.load_state_dict(self.scheduler)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"checkpoint optimizer state does not fit {name}: {error}") from None
        restore_rng(self.rng, generator)


def _rows(rows: list[np.ndarray] | None) -> list[torch.Tensor] | None:
    return None if rows is None else [torch.from_numpy(np.asarray(r, dtype=np.float64)) for r in rows]


def capture_learner(
    learner: Learner,
    in_task: dict[str, Any] | None = None,
    order: torch.Tensor | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Scheduler = None,
) -> dict[str, Any]:
    """Everything needed to continue ``learner``'s run exactly (tensors and JSON values).

    Between tasks (``in_task`` None) the next task starts afresh; inside a task the epoch, the
    epoch's permutation ``order``, the next batch's position and the optimizer and schedule
    states are kept too.
    """
    clock, result = learner.ctx.clock, learner.result
    loop: dict[str, Any] = {
        "task_index": clock.task_index if in_task else len(learner.rows),
        "in_task": in_task is not None,
        "step": clock.step,
        "global_step": clock.global_step,
        "active": learner.active,
        "trainable": [p.requires_grad for p in learner.model.parameters()],
        **(in_task or {}),
    }
    return {
        "model": learner.model.state_dict(),
        "strategy_names": [s.name for s in learner.strategies],
        "strategies": [s.state_dict() for s in learner.strategies],
        "optimizer": None
        if optimizer is None
        else {"optimizer": optimizer.state_dict(), "scheduler": None if scheduler is None else scheduler.state_dict()},
        "loop": loop,
        "order": order,
        "rng": capture_rng(learner.generator),
        "precision": learner.precision.state_dict(),
        "result": {
            "baseline": torch.from_numpy(np.asarray(result.baseline, dtype=np.float64)),
            "rows": _rows(learner.rows),
            "task_il_rows": _rows(learner.task_il_rows),
            "task_il": learner.task_il_rows is not None,
            "train_seconds": list(result.train_seconds),
            "eval_seconds": result.eval_seconds,
            "steps": list(result.steps),
            "stopped_early": [[k, v] for k, v in result.stopped_early.items()],
        },
    }


def _check_active(learner: Learner, active: Any, task_index: int) -> None:
    """A checkpoint's active-output count must lie between what the task has and the head."""
    outputs = learner.scenario.active_outputs
    if not isinstance(active, int) or not outputs:
        return
    low = outputs[min(task_index, len(outputs)) - 1] if task_index > 0 else 0  # at least the tasks done
    high = max(outputs)
    if not low <= active <= high:
        raise CheckpointError(
            f"checkpoint learner.json: loop.active is {active}, but at task {task_index} a class-IL "
            f"head has {low} to {high} active outputs: the checkpoint was edited; start the run again"
        )


def _restore_weights(learner: Learner, state: dict[str, Any]) -> None:
    """Strategies first (an architecture method may rebuild its model from its state, with the
    clock already at the checkpoint), then the model weights and trainable flags."""
    loop = state["loop"]
    learner.ctx.advance(
        task_index=loop["task_index"], step=loop["step"], global_step=loop["global_step"], epoch=loop.get("epoch", 0)
    )
    for strategy, strategy_state in zip(learner.strategies, state["strategies"], strict=True):
        try:
            strategy.load_state_dict(strategy_state, learner.ctx)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise CheckpointError(
                f"checkpoint strategies.json: the state of {strategy.name} does not fit: {error}"
            ) from None
    check_tensors_fit(state["model"], learner.model.state_dict(), "model.safetensors")
    missing, unexpected = learner.model.load_state_dict(state["model"], strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint weights do not fit the model of {learner.name} (missing "
            f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    for param, trainable in zip(learner.model.parameters(), loop["trainable"], strict=True):
        param.requires_grad_(trainable)


def restore_learner(learner: Learner, state: dict[str, Any]) -> ResumePoint | None:
    """Restore :func:`capture_learner`'s ``state`` into a freshly built ``learner``.

    Returns where a mid-task checkpoint stopped (the RNG states are restored when the loop
    resumes there), or ``None`` between tasks (the RNG states are restored now).
    """
    names = [s.name for s in learner.strategies]
    if state.get("strategy_names") != names:
        raise CheckpointError(f"checkpoint holds strategies {state.get('strategy_names')}, this run has {names}")
    try:
        _restore_weights(learner, state)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"checkpoint state does not fit {learner.name}: {type(error).__name__}: {error}"
        ) from None
    loop, result = state["loop"], state["result"]
    learner.precision.load_state_dict(state.get("precision") or {})
    if loop["active"] is not None:
        _check_active(learner, loop["active"], loop["task_index"])
        learner.set_active(loop["active"])
    learner.result.baseline = result["baseline"].numpy()
    learner.rows = [row.numpy() for row in result["rows"]]
    task_il_rows = result.get("task_il_rows")
    if result.get("task_il") and task_il_rows is None:
        raise CheckpointError(
            "checkpoint learner.json: result.task_il_rows is missing, but the run keeps task-IL rows: "
            "the checkpoint was edited; start the run again"
        )
    if learner.task_labels is None or (task_il_rows is None and learner.rows):
        learner.task_il_rows = None  # not class-IL, or a checkpoint from before task-IL rows
    else:
        learner.task_il_rows = [row.numpy() for row in task_il_rows or []]
    learner.result.train_seconds = list(result["train_seconds"])
    learner.result.eval_seconds = float(result["eval_seconds"])
    learner.result.steps = list(result["steps"])
    learner.result.stopped_early = {int(k): int(v) for k, v in result["stopped_early"]}
    if not loop["in_task"]:
        restore_rng(state["rng"], learner.generator)
        return None
    optimizer = state["optimizer"] or {}
    return ResumePoint(
        task_index=loop["task_index"],
        epoch=loop["epoch"],
        position=loop["position"],
        order=state["order"],
        optimizer=optimizer.get("optimizer"),
        scheduler=optimizer.get("scheduler"),
        rng=state["rng"],
        elapsed=float(loop["elapsed"]),
    )


# -- checkpoint folder ----------------------------------------------------------------------
@dataclass
class Checkpoint:
    """A loaded checkpoint: the run it belongs to and the state to restore."""

    folder: Path
    experiment: dict[str, Any]
    learner: dict[str, Any] = field(default_factory=dict)

    @property
    def run(self) -> tuple[str, int]:
        run = self.experiment["run"]
        return run["strategy"], int(run["seed"])

    @property
    def config(self) -> dict[str, Any]:
        return self.experiment["config"]

    @property
    def completed(self) -> list[dict[str, Any]]:
        return self.experiment.get("completed", [])

    def where(self) -> str:
        """``task 2, step 17 of ewc (seed 0)``: a human description of the resume point."""
        loop = self.learner.get("loop", {})
        strategy, seed = self.run
        if loop.get("in_task"):
            return f"task {loop['task_index']}, step {loop['step']} of {strategy} (seed {seed})"
        return f"the start of task {loop.get('task_index', 0)} of {strategy} (seed {seed})"


@dataclass(frozen=True)
class CheckpointSnapshot:
    """A checkpoint's content copied off the live run (:func:`snapshot_checkpoint`): CPU copies
    of every tensor and array, fresh JSON skeletons. Writing it (:func:`write_snapshot`) reads
    nothing the run goes on changing, so it may happen while the run trains on."""

    target: Path
    weights: dict[str, torch.Tensor]
    trees: dict[str, tuple[Any, dict[str, torch.Tensor]]]
    """``name -> (skeleton, tensors)`` of ``strategies``, ``optimizer``, ``learner``, ``experiment``."""


def snapshot_checkpoint(
    run_dir: Path,
    model_state: dict[str, torch.Tensor],
    learner: dict[str, Any],
    experiment: dict[str, Any],
) -> CheckpointSnapshot:
    """The content of :func:`save_checkpoint`, copied now (every error of the state is raised here)."""
    parts = dict(learner)
    strategies = parts.pop("strategies", [])
    optimizer = parts.pop("optimizer", None)
    weights = {k: v for k, v in model_state.items() if isinstance(v, torch.Tensor)}
    if len(weights) != len(model_state):
        raise CheckpointError("cannot checkpoint the model: its state_dict holds non-tensors")
    trees = {
        name: flatten_tree(tree, name)
        for name, tree in (("strategies", strategies), ("optimizer", optimizer), ("learner", parts))
    }
    trees["experiment"] = flatten_tree(experiment, "experiment")
    return CheckpointSnapshot(
        Path(run_dir) / CHECKPOINT,
        {k: v.detach().to("cpu", copy=True).contiguous() for k, v in weights.items()},
        trees,
    )


def write_snapshot(snapshot: CheckpointSnapshot) -> Path:
    """Write ``snapshot`` as ``run_dir/checkpoint``, atomically (complete or absent; the previous
    checkpoint is kept until then)."""
    with atomic_folder(snapshot.target) as tmp:
        _save_tensors(tmp / "model.safetensors", snapshot.weights)
        for name, (skeleton, tensors) in snapshot.trees.items():
            _write_flat(tmp, name, skeleton, tensors)
        write_manifest(tmp)
    return snapshot.target


def save_checkpoint(
    run_dir: Path,
    model_state: dict[str, torch.Tensor],
    learner: dict[str, Any],
    experiment: dict[str, Any],
) -> Path:
    """Write ``run_dir/checkpoint`` atomically (complete or absent; previous kept until then)."""
    return write_snapshot(snapshot_checkpoint(run_dir, model_state, learner, experiment))


class CheckpointWriter:
    """Writes checkpoints on a background thread, one at a time and in order.

    Most of a checkpoint's cost is waiting for the disk (every file is fsynced, then the folder
    renamed into place); the run trains on meanwhile. :meth:`submit` first waits for the write
    before (a checkpoint never overtakes the previous one); :meth:`wait` returns once the last
    one is on disk and raises the error of a write that failed (an ``OutputError``: disk full,
    folder not writable). The experiment waits before it returns, before it reports a
    checkpoint after Ctrl-C or a NaN loss, and before the next checkpoint.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, snapshot: CheckpointSnapshot) -> None:
        self.wait()
        self._thread = threading.Thread(target=self._write, args=(snapshot,), name="forgetless-checkpoint")
        self._thread.start()

    def _write(self, snapshot: CheckpointSnapshot) -> None:
        try:
            write_snapshot(snapshot)
        except BaseException as error:  # raised in the run's thread by wait()
            self._error = error

    def wait(self, raise_error: bool = True) -> None:
        """Block until the last submitted checkpoint is written; raise its error (unless
        ``raise_error`` is false: another error is already on its way out)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        error, self._error = self._error, None
        if error is not None and raise_error:
            raise error


def _digest(path: Path) -> str:
    import hashlib

    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_manifest(folder: Path) -> None:
    """``manifest.json``: the format version and the size and SHA-256 of every file in ``folder``."""
    files = {
        path.name: {"bytes": path.stat().st_size, "sha256": _digest(path)}
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != MANIFEST
    }
    document = {"format": FORMAT, "version": VERSION, "files": files}
    write_synced(folder / MANIFEST, json.dumps(document, indent=1).encode("utf-8"))


def verify_manifest(folder: Path) -> None:
    """Refuse, with one line, a checkpoint whose files differ from what its manifest recorded."""
    path = folder / MANIFEST
    restart = "delete the checkpoint folder to restart this run from scratch"
    if not path.is_file():
        raise CheckpointError(
            f"{folder} has no {MANIFEST}: it is incomplete or was written by a forgetless older than "
            f"checkpoint version {VERSION}; resume it with the forgetless that wrote it, or {restart}"
        )
    document = _load_json(path)
    files = document.get("files") if isinstance(document, dict) else None
    if not isinstance(files, dict) or document.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a forgetless checkpoint manifest: {restart}")
    if document.get("version") != VERSION:
        raise CheckpointError(
            f"{folder} is a version {document.get('version')} checkpoint; this forgetless reads version "
            f"{VERSION}: resume it with the forgetless that wrote it"
        )
    for name, recorded in files.items():
        target = folder / str(name)
        if not isinstance(recorded, dict) or not target.is_file():
            raise CheckpointError(f"checkpoint file {target} is missing: the checkpoint is incomplete; {restart}")
        if target.stat().st_size != recorded.get("bytes") or _digest(target) != recorded.get("sha256"):
            raise CheckpointError(
                f"checkpoint file {target} does not match the SHA-256 recorded when it was written "
                f"(changed or corrupted since): refusing to resume from it; {restart}"
            )


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The checkpoint of ``run_dir`` (``None`` when the run never reached one)."""
    folder = readable_folder(Path(run_dir) / CHECKPOINT)
    if folder is None:
        return None
    verify_manifest(folder)
    experiment = read_tree(folder, "experiment")
    learner = read_tree(folder, "learner")
    if not isinstance(experiment, dict) or not isinstance(learner, dict) or "run" not in experiment:
        raise CheckpointError(f"{folder} is not a forgetless checkpoint (experiment state missing)")
    learner["strategies"] = read_tree(folder, "strategies")
    learner["optimizer"] = read_tree(folder, "optimizer")
    learner["model"] = load_tensors(folder / "model.safetensors")
    return Checkpoint(folder, experiment, learner)


def remove_checkpoint(run_dir: Path) -> None:
    """Delete the checkpoint of ``run_dir`` (a fresh run with ``--force`` over an old one)."""
    from forgetless.io import previous_folder, remove_folder

    target = Path(run_dir) / CHECKPOINT
    leftovers = list(Path(run_dir).glob(f".{CHECKPOINT}.tmp-*"))
    for folder in (target, previous_folder(target), *leftovers):
        remove_folder(folder)


# -- config compatibility -------------------------------------------------------------------
RESUME_MAY_CHANGE = ("out", "threads", "data_dir", "download")
"""Config fields that may differ when resuming: where things are, not what is computed."""


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``["lr: 0.001 in the run, 0.1 now", ...]`` over the fields that change results."""
    out = []
    for key in sorted(set(saved) | set(current)):
        if key in RESUME_MAY_CHANGE:
            continue
        if saved.get(key) != current.get(key):
            out.append(f"{key!s:.40}: {saved.get(key)!r:.80} in the run, {current.get(key)!r:.80} now")
    return out


# -- finished runs --------------------------------------------------------------------------
def runs_from_metrics(run_dir: Path) -> list[RunResult]:
    """Finished runs recorded in ``metrics.json`` (values rounded to 6 decimals there)."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        out = []
        for name, records in data.get("runs", {}).items():
            for record in records:
                run = RunResult.from_record(name, record)
                if run.matrix.ndim == 2 and run.matrix.shape[0] == run.matrix.shape[1]:
                    out.append(run)
        return out
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path} is corrupt ({error}): cannot tell which runs finished") from None


def metrics_settings(run_dir: Path) -> dict[str, Any]:
    """``benchmark``, ``scenario``, ``tasks`` and ``data_sources`` as ``metrics.json`` recorded
    them (``{}`` without one; a corrupt one is refused by :func:`runs_from_metrics`)."""
    try:
        data = json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    keys = ("benchmark", "scenario", "tasks", "data_sources")
    return {k: data[k] for k in keys if isinstance(data, dict) and k in data}


# -- schema of the JSON parts ---------------------------------------------------------------
def _is_tensor(value: Any) -> Any:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"expected a tensor, got {type(value).__name__}")
    return value


Tensor = Annotated[Any, AfterValidator(_is_tensor)]
Count = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


class _Part(BaseModel):
    """Types are checked strictly (no "3" for 3); keys beyond the schema are kept."""

    model_config = ConfigDict(strict=True, extra="allow")


class _RunKey(_Part):
    strategy: str = Field(min_length=1)
    seed: Count


class _RunRecord(_RunKey):
    matrix: Tensor
    baseline: Tensor
    train_seconds: list[Seconds]
    eval_seconds: Seconds
    steps: list[Count]
    report: dict[str, Any]
    stopped_early: list[Annotated[list[Count], Field(min_length=2, max_length=2)]]
    task_il_matrix: Tensor | None = None


class _ExperimentPart(_Part):
    run: _RunKey
    completed: list[_RunRecord] = Field(default_factory=list)
    config: dict[str, Any]


class _Loop(_Part):
    task_index: Count
    in_task: bool
    step: Count
    global_step: Count
    active: Count | list[Count] | None
    trainable: list[bool]
    epoch: Count | None = None
    position: Count | None = None
    elapsed: Seconds | None = None


class _Result(_Part):
    baseline: Tensor
    rows: list[Tensor]
    task_il_rows: list[Tensor] | None = None
    task_il: bool | None = None
    """Whether the run keeps task-IL rows (absent in checkpoints from before they existed)."""
    train_seconds: list[Seconds]
    eval_seconds: Seconds
    steps: list[Count]
    stopped_early: list[Annotated[list[Count], Field(min_length=2, max_length=2)]]


class _NumpyRng(_Part):
    keys: Tensor
    pos: Count
    has_gauss: int
    cached: float
    kind: str


class _PythonRng(_Part):
    version: int
    internal: list[int]
    gauss: float | None


class _Rng(_Part):
    generator: Tensor
    torch: Tensor
    numpy: _NumpyRng
    python: _PythonRng


class _LearnerPart(_Part):
    strategy_names: list[str]
    loop: _Loop
    order: Tensor | None
    rng: _Rng
    precision: dict[str, Any] | None = None
    extras: dict[str, Any] = Field(default_factory=dict)
    result: _Result


def _schema_error(folder: Path, name: str, error: ValidationError) -> CheckpointError:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "top level"
        parts.append(f"{where}: {' '.join(item['msg'].split())}")
    return _invalid(folder, name, "; ".join(parts))


def _invalid(folder: Path, name: str, problem: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint file {folder / name} is invalid ({problem}): "
        "delete the checkpoint folder to restart this run from scratch"
    )


def validate_checkpoint(saved: Checkpoint) -> Checkpoint:
    """Check every JSON part of a loaded checkpoint before it is used: types, required keys,
    the loop position within its task, the strategies against the config. One line naming the
    file and the field for each violation (:class:`CheckpointError`).

    The manifest (:func:`verify_manifest`) already proves the files are those written; this
    proves what they say is a state the learner can continue from.
    """
    folder = saved.folder
    try:
        experiment = _ExperimentPart.model_validate(saved.experiment)
    except ValidationError as error:
        raise _schema_error(folder, "experiment.json", error) from None
    config = experiment.config
    strategies, tasks, epochs = config.get("strategies"), config.get("tasks"), config.get("epochs")
    batch_size = config.get("batch_size")
    if not (isinstance(strategies, list) and all(isinstance(s, str) for s in strategies)):
        raise _invalid(folder, "experiment.json", "config.strategies: expected a list of names")
    for field_name, value in (("tasks", tasks), ("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _invalid(
                folder, "experiment.json", f"config.{field_name}: expected a positive integer, got {value!r}"
            )
    if experiment.run.strategy not in strategies:
        raise _invalid(
            folder,
            "experiment.json",
            f"run.strategy: {experiment.run.strategy!r} is not one of config.strategies {strategies}",
        )
    for index, record in enumerate(experiment.completed):
        where = f"completed.{index}"
        if record.strategy not in strategies:
            raise _invalid(
                folder, "experiment.json", f"{where}.strategy: {record.strategy!r} is not in config.strategies"
            )
        if tuple(record.matrix.shape) != (tasks, tasks) or tuple(record.baseline.shape) != (tasks,):
            raise _invalid(
                folder,
                "experiment.json",
                f"{where}.matrix: shape {tuple(record.matrix.shape)} and baseline {tuple(record.baseline.shape)} "
                f"for {tasks} tasks",
            )
        task_il = record.task_il_matrix
        if task_il is not None and (tuple(task_il.shape) != (tasks, tasks) or not task_il.is_floating_point()):
            raise _invalid(
                folder,
                "experiment.json",
                f"{where}.task_il_matrix: a {task_il.dtype} tensor of shape {tuple(task_il.shape)} for {tasks} tasks",
            )
        if task_il is not None and config.get("scenario") != "class":
            raise _invalid(folder, "experiment.json", f"{where}.task_il_matrix: only class-incremental runs have one")

    learner_state = {k: v for k, v in saved.learner.items() if k not in ("model", "strategies", "optimizer")}
    try:
        learner = _LearnerPart.model_validate(learner_state)
    except ValidationError as error:
        raise _schema_error(folder, "learner.json", error) from None
    loop = learner.loop
    combination = experiment.run.strategy.split("+")
    if learner.strategy_names[: len(combination)] != combination:
        raise _invalid(
            folder, "learner.json", f"strategy_names: {learner.strategy_names} do not begin with run {combination}"
        )
    states = saved.learner.get("strategies")
    if not isinstance(states, list) or len(states) != len(learner.strategy_names):
        count = len(states) if isinstance(states, list) else type(states).__name__
        raise _invalid(folder, "strategies.json", f"{count} states for strategies {learner.strategy_names}")
    if loop.task_index > tasks or (loop.in_task and loop.task_index >= tasks):
        raise _invalid(folder, "learner.json", f"loop.task_index: {loop.task_index} is past the run's {tasks} tasks")
    rows = learner.result.rows
    if len(rows) != loop.task_index or any(tuple(r.shape) != (tasks,) for r in rows):
        raise _invalid(
            folder, "learner.json", f"result.rows: {len(rows)} rows of accuracies at task {loop.task_index} of {tasks}"
        )
    task_il_rows = learner.result.task_il_rows
    if task_il_rows is not None and config.get("scenario") != "class":
        raise _invalid(folder, "learner.json", "result.task_il_rows: only class-incremental runs have them")
    if task_il_rows is not None and (
        len(task_il_rows) != len(rows)
        or any(tuple(r.shape) != (tasks,) or not r.is_floating_point() for r in task_il_rows)
    ):
        raise _invalid(
            folder,
            "learner.json",
            f"result.task_il_rows: {len(task_il_rows)} rows of task-IL accuracies beside {len(rows)} accuracy rows "
            f"of {tasks} tasks",
        )
    if tuple(learner.result.baseline.shape) != (tasks,):
        raise _invalid(folder, "learner.json", f"result.baseline: shape {tuple(learner.result.baseline.shape)}")
    if loop.in_task:
        missing = [k for k in ("epoch", "position", "elapsed") if getattr(loop, k) is None]
        if missing:
            raise _invalid(folder, "learner.json", f"loop: a checkpoint inside a task needs {', '.join(missing)}")
        order = learner.order
        if order is None or order.ndim != 1 or order.is_floating_point() or order.dtype == torch.bool:
            raise _invalid(folder, "learner.json", "order: a checkpoint inside a task needs the epoch's permutation")
        batches = -(-int(order.shape[0]) // batch_size)
        if loop.epoch >= epochs:
            raise _invalid(folder, "learner.json", f"loop.epoch: {loop.epoch} is past the run's {epochs} epochs")
        if loop.position > batches:
            raise _invalid(
                folder, "learner.json", f"loop.position: batch {loop.position} of an epoch of {batches} batches"
            )
        if loop.step > epochs * batches:
            raise _invalid(folder, "learner.json", f"loop.step: {loop.step} past the task's {epochs * batches} steps")
        optimizer = saved.learner.get("optimizer")
        if not isinstance(optimizer, dict) or not isinstance(optimizer.get("optimizer"), dict):
            raise _invalid(folder, "optimizer.json", "a checkpoint inside a task needs the optimizer state")
    return saved
