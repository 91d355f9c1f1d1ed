"""An experiment: every strategy combination x every seed on one benchmark, results saved.

Results are written after every finished run, so a failure later in the experiment never loses
what was already computed. With a run folder, checkpoints are written after every task and every
``config.checkpoint_every`` steps, and ``resume=True`` continues exactly from the last one.
"""

from __future__ import annotations

import math
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from forgetless.config import RunConfig, load_config_file, make_config
from forgetless.data.benchmarks import build_scenario, get_benchmark
from forgetless.data.scenarios import Scenario, validation_split
from forgetless.errors import ConfigError, NumericalError
from forgetless.io import atomic_write_json
from forgetless.models import build_model
from forgetless.models.resnet import DEFAULT_WIDTH
from forgetless.strategies import make_strategies
from forgetless.training import checkpoint as ckpt
from forgetless.training import distributed
from forgetless.training.learner import Learner, Progress, RunResult
from forgetless.training.schedules import schedule_strategies

CONFIG_FILE = "config.yaml"
"""The resolved config in a run folder (written with ``metrics.json``, read on resume)."""


def _default_widths(model: str, bench) -> list[int] | None:
    """The benchmark's widths for its own model; a ResNet's base width; none for a user's model."""
    if model == bench.model:
        return list(bench.hidden)
    if model in DEFAULT_WIDTH:
        return [DEFAULT_WIDTH[model]]
    return None if ":" in model else list(bench.hidden)


def resolve(config: RunConfig) -> RunConfig:
    """Fill the fields left unset with the benchmark's defaults."""
    bench = get_benchmark(config.benchmark)
    model = config.model or bench.model
    return config.model_copy(
        update={
            "scenario": config.scenario or bench.scenario,
            "tasks": config.tasks or bench.n_tasks,
            "epochs": config.epochs or bench.epochs,
            "model": model,
            "hidden": config.hidden or _default_widths(model, bench),
        }
    )


def load_scenario(config: RunConfig, seed: int) -> Scenario:
    """The scenario of a resolved config for one seed (permutations follow the seed)."""
    scenario = build_scenario(
        config.benchmark,
        config.scenario,
        config.tasks,
        seed=seed,
        class_order_seed=config.class_order_seed,
        data_dir=config.data_dir,
        download=config.download,
        image_size=config.image_size,
    )
    if config.validation > 0:
        scenario = validation_split(scenario, config.validation, seed)
    return scenario.to(config.device)


def run_model(config: RunConfig, scenario: Scenario) -> nn.Module:
    """The network a resolved config builds for ``scenario`` (seed the RNG first)."""
    return build_model(
        config.model or "mlp",
        scenario.input_shape,
        scenario.head_sizes,
        multi_head=scenario.uses_task_id,
        hidden=list(config.hidden or [400, 400]),
        init=config.init,
        freeze_backbone=config.freeze_backbone,
    )


def _model_parameters(config: RunConfig, scenario: Scenario) -> int:
    """Parameter count of the run's network, built on the meta device (shapes only, no memory);
    a user's factory that reads a tensor's value (meta tensors have none) is built on the CPU,
    the global RNG state kept as it was."""
    try:
        with torch.device("meta"):
            model = run_model(config, scenario)
    except ConfigError:
        if not config.model or ":" not in config.model or config.model.startswith("hf:"):
            raise
        with torch.random.fork_rng(devices=[]):
            model = run_model(config, scenario)  # a factory that fails here too raises its own line
    return sum(p.numel() for p in model.parameters())


def _gib(n_bytes: float) -> str:
    gib = n_bytes / 2**30
    return f"{gib:,.0f} GiB" if gib >= 10 else f"{gib:.1f} GiB"


def memory_here(device: str) -> int:
    """Bytes of memory of ``device`` (total, not free: a bound, never a guess about other users)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # not POSIX: no bound
        return 2**62


def check_memory(config: RunConfig, scenario: Scenario, available: int | None = None) -> None:
    """Refuse, before anything is allocated, a model or replay buffer that cannot fit in memory.

    The estimate follows the shapes: 4 bytes per parameter for the weights, their gradients and
    two optimizer moments, the activations of one batch, and ``buffer_size`` stored rows for a
    replay method (the buffer allocates its whole budget at once). It is a lower bound; the
    run is refused only when it exceeds the device's total memory.
    """
    available = memory_here(config.device) if available is None else available
    hidden = list(config.hidden or [400, 400])
    outputs = sum(scenario.head_sizes)
    parameters = _model_parameters(config, scenario)
    model_bytes = 4 * 4 * parameters + 2 * 4 * config.batch_size * (sum(hidden) + outputs)
    first = scenario.tasks[0].train_x
    row = first[:1].element_size() * math.prod(scenario.input_shape) + 16  # inputs, label, task
    row += 4 * outputs + 8  # the logits DER stores (a bound for every replay method)
    largest = 0  # the largest replay budget of any combination
    for combination in config.strategies:
        for strategy in make_strategies(
            combination, config.params, {"buffer_size": config.buffer_size}, config.scenario
        ):
            size = getattr(strategy.params, "buffer_size", None)
            if isinstance(size, int):
                largest = max(largest, size)
    buffer_bytes = largest * row
    if model_bytes + buffer_bytes <= available:
        return
    parts = []
    if model_bytes * 10 >= available or buffer_bytes * 10 < available:
        widths = ",".join(str(w) for w in hidden)
        parts.append(
            f"--hidden {widths}: {_gib(model_bytes)} for a {config.model or 'mlp'} network "
            f"of {parameters:,} parameters "
            "with gradients and optimizer state"
        )
    if buffer_bytes * 10 >= available:
        parts.append(
            f"--buffer-size {largest}: {_gib(buffer_bytes)} for a replay buffer of {largest:,} rows of {row} bytes"
        )
    raise ConfigError(
        f"this run would need at least {_gib(model_bytes + buffer_bytes)} ({'; '.join(parts)}), more than the "
        f"{_gib(available)} of memory of {config.device} here: lower "
        + " and ".join(part.split(":", 1)[0].split()[0] for part in parts)
    )


def build_learner(config: RunConfig, scenario: Scenario, combination: str, seed: int) -> Learner:
    """Seeded model + strategies of ``combination`` for a resolved config."""
    strategies = make_strategies(
        combination,
        config.params,
        shared={"buffer_size": config.buffer_size},
        scenario=scenario.kind,
    )
    strategies += schedule_strategies(config)
    torch.manual_seed(seed)
    model = run_model(config, scenario)
    return Learner(scenario, model, strategies, config, seed=seed, name=combination)


@dataclass
class ExperimentResult:
    """Every run of an experiment, grouped by strategy combination."""

    config: RunConfig
    runs: dict[str, list[RunResult]] = field(default_factory=dict)
    data_sources: list[str] = field(default_factory=list)
    """Every file (or package) the runs' data were read from, in the order first read."""

    def joint_reference(self, seed_index: int) -> np.ndarray | None:
        joint = self.runs.get("joint")
        if joint and seed_index < len(joint):
            return joint[seed_index].matrix[-1]
        return None

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per combination, each metric's mean and std over seeds."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for name, runs in self.runs.items():
            per_seed = []
            for i, run in enumerate(runs):
                metrics = run.metrics(self.joint_reference(i))
                metrics["wall_seconds"] = run.wall_seconds
                per_seed.append(metrics)
            # a metric counts only where every seed has it (intransigence needs joint's seed)
            keys = [k for k in per_seed[0] if all(k in m for m in per_seed)]
            out[name] = {
                k: {
                    "mean": float(np.mean([m[k] for m in per_seed])),
                    "std": float(np.std([m[k] for m in per_seed])),
                }
                for k in keys
            }
        return out


RunDone = Callable[[ExperimentResult], None]


def check_device(name: str) -> None:
    """A one-line ConfigError for a device that is malformed or not present on this machine."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {name!r} is not a device: use cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
        return
    if device.type == "mps" and torch.backends.mps.is_available():
        return
    raise ConfigError(f"--device {name!r} is not available here: use cpu or cuda")


def validate(config: RunConfig) -> RunConfig:
    """The resolved ``config``, after checking its device and every strategy name, parameter
    and optional package, before anything is trained or written."""
    config = resolve(config)
    check_device(config.device)
    distributed.check_config(config)  # under torchrun: a batch the world size divides, ...
    for combination in config.strategies:
        make_strategies(combination, config.params, {"buffer_size": config.buffer_size}, config.scenario)
    return config


def run_experiment(
    config: RunConfig,
    progress: Callable[[str, int], Progress] | None = None,
    on_run_done: RunDone | None = None,
    run_dir: Path | None = None,
    resume: bool = False,
) -> ExperimentResult:
    """Run every combination in ``config.strategies`` for ``config.seeds`` seeds.

    ``progress(combination, seed)`` returns the per-step progress callback of that run;
    ``on_run_done(result)`` is called after every run (the CLI saves results there).
    With ``run_dir``, a checkpoint (``run_dir/checkpoint``) is written after every task and
    every ``config.checkpoint_every`` steps, and Ctrl-C saves one before stopping; ``resume``
    continues from it exactly, without rerunning finished (combination, seed) runs.
    """
    config = validate(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    distributed.setup(config.device)  # under torchrun: join its process group (training.distributed)
    saved, finished = _resume_point(config, run_dir) if (run_dir and resume) else (None, {})
    result = ExperimentResult(config)
    if finished:  # where the finished runs' data came from, kept even if this resume fails
        recorded = ckpt.metrics_settings(run_dir).get("data_sources") if run_dir else None
        result.data_sources += [s for s in recorded or [] if isinstance(s, str)]
    records: list[dict] = []
    """Exact records of the runs finished so far (every checkpoint carries them)."""
    writer = ckpt.CheckpointWriter()
    """Checkpoints are written while the run trains on; all are on disk when this returns."""
    try:
        _run_all(config, result, saved, finished, records, writer, progress, on_run_done, run_dir)
    except BaseException:
        writer.wait(raise_error=False)  # the write in flight completes; the error on its way out says more
        raise
    writer.wait()
    return result


def _run_all(
    config: RunConfig,
    result: ExperimentResult,
    saved: ckpt.Checkpoint | None,
    finished: dict[tuple[str, int], RunResult],
    records: list[dict],
    writer: ckpt.CheckpointWriter,
    progress: Callable[[str, int], Progress] | None,
    on_run_done: RunDone | None,
    run_dir: Path | None,
) -> None:
    """:func:`run_experiment`'s loop over seeds and combinations (``result`` fills up)."""
    for offset in range(config.seeds):
        seed = config.seed + offset
        scenario: Scenario | None = None
        for combination in config.strategies:
            key = (combination, seed)
            if key in finished and not (saved is not None and saved.run == key):
                run = finished[key]
            else:
                if scenario is None:
                    scenario = load_scenario(config, seed)
                    check_memory(config, scenario)
                    result.data_sources += [s for s in scenario.sources if s not in result.data_sources]
                learner = build_learner(config, scenario, combination, seed)
                if saved is not None and saved.run == key:
                    learner.load_checkpoint(saved.learner)
                if run_dir is not None:
                    learner.on_checkpoint = _checkpoint_writer(run_dir, config, key, records, writer)
                callback = progress(combination, seed) if progress is not None else None
                run = _train(learner, callback, run_dir, writer)
            records.append(run.state_dict())
            result.runs.setdefault(combination, []).append(run)
            if on_run_done is not None:
                on_run_done(result)


def _resume_point(config: RunConfig, run_dir: Path) -> tuple[ckpt.Checkpoint | None, dict[tuple[str, int], RunResult]]:
    """The checkpoint of ``run_dir`` (checked against ``config``) and the runs already finished.

    Without a checkpoint the finished runs come from ``metrics.json`` alone; they are reused
    only if the run folder's ``config.yaml`` (written with them) matches ``config``.
    """
    saved = ckpt.load_checkpoint(run_dir)
    if saved is not None:
        ckpt.validate_checkpoint(saved)
    finished = {(r.strategy, r.seed): r for r in ckpt.runs_from_metrics(run_dir)}
    if finished:
        _check_metrics_settings(config, run_dir)
    if saved is None:
        if finished:
            _check_folder_config(config, run_dir)
        return None, finished
    differences = ckpt.config_differences(saved.config, config.model_dump(mode="json"))
    if differences:
        raise ckpt.CheckpointError(
            f"cannot resume {run_dir}: its checkpoint was made with another config ("
            + "; ".join(differences)
            + "): resume without changing these, or start a new run with another --out"
        )
    for record in saved.completed:  # exact values (metrics.json rounds them)
        run = RunResult.from_state(record)
        finished[(run.strategy, run.seed)] = run
    return saved, finished


def _check_metrics_settings(config: RunConfig, run_dir: Path) -> None:
    """Refuse runs of ``metrics.json`` made on another benchmark, scenario or task count (a
    ``--force`` run that stopped before its first result leaves the old ones there)."""
    recorded = ckpt.metrics_settings(run_dir)
    current = {"benchmark": config.benchmark, "scenario": config.scenario, "tasks": config.tasks}
    for key, value in current.items():
        if key in recorded and recorded[key] != value:
            raise ckpt.CheckpointError(
                f"cannot resume {run_dir}: its metrics.json holds runs with {key} {recorded[key]!r}, the run "
                f"now has {value!r}: start again with --force (it replaces them) or use another --out"
            )


def _check_folder_config(config: RunConfig, run_dir: Path) -> None:
    """Refuse to reuse the finished runs of ``run_dir`` unless its ``config.yaml`` is ``config``."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ckpt.CheckpointError(
            f"cannot resume {run_dir}: it has finished runs in metrics.json but no {CONFIG_FILE} "
            "to tell which config made them: start a new run with another --out"
        )
    saved = resolve(make_config(**load_config_file(path)))
    differences = ckpt.config_differences(saved.model_dump(mode="json"), config.model_dump(mode="json"))
    if differences:
        raise ckpt.CheckpointError(
            f"cannot resume {run_dir}: its finished runs were made with another config ("
            + "; ".join(differences)
            + "): resume without changing these, or start a new run with another --out"
        )


def _checkpoint_writer(
    run_dir: Path, config: RunConfig, key: tuple[str, int], records: list[dict], writer: ckpt.CheckpointWriter
) -> Callable[[dict], None]:
    """The learner's ``on_checkpoint``: the state is copied at once, then written by ``writer``.

    A checkpoint between tasks is written while the next task trains (a SIGKILL in that task's
    first moments finds the checkpoint before it: the resume is as exact, one task earlier); one
    inside a task (``checkpoint_every``, Ctrl-C) is on disk before the next step is taken.
    """
    config_values = config.model_dump(mode="json")

    def write(state: dict) -> None:
        if not distributed.current().is_main:  # data-parallel: rank 0 writes, the state is replicated
            return
        experiment = {
            "run": {"strategy": key[0], "seed": key[1]},
            "completed": list(records),
            "config": config_values,
        }
        in_task = bool(state.get("loop", {}).get("in_task"))
        writer.submit(ckpt.snapshot_checkpoint(run_dir, state.pop("model"), state, experiment))
        if in_task:
            writer.wait()

    return write


def _train(
    learner: Learner, callback: Progress | None, run_dir: Path | None, writer: ckpt.CheckpointWriter
) -> RunResult:
    """``learner.run`` with Ctrl-C turned into a checkpoint and NaN losses into kept results."""
    try:
        with _checkpoint_on_interrupt(learner, enabled=run_dir is not None):
            return learner.run(callback)
    except ckpt.RunInterrupted as error:
        writer.wait()  # the Ctrl-C checkpoint is on disk before the message says so
        raise ckpt.RunInterrupted(
            f"{error} (seed {learner.seed}): checkpoint saved in {run_dir}; "
            f"continue with `forgetless run --resume {run_dir}`"
        ) from None
    except NumericalError as error:
        if run_dir is None or not distributed.current().is_main:
            raise
        writer.wait(raise_error=False)  # a failed write leaves the previous checkpoint, reported below
        kept = []
        if (Path(run_dir) / "metrics.json").is_file():
            kept.append(f"finished runs are in {Path(run_dir) / 'metrics.json'}")
        if learner.rows:
            partial = Path(run_dir) / "partial_run.json"
            atomic_write_json(
                partial,
                {
                    "strategy": learner.name,
                    "seed": learner.seed,
                    "error": str(error),
                    "accuracy_matrix": [row.round(6).tolist() for row in learner.rows],
                    "random_init_accuracy": learner.result.baseline.round(6).tolist(),
                    "task_il_matrix": None
                    if learner.task_il_rows is None
                    else [row.round(6).tolist() for row in learner.task_il_rows],
                },
            )
            kept.append(f"this run's finished tasks in {partial}")
        if ckpt.load_checkpoint(run_dir) is not None:
            kept.append(f"the last good checkpoint in {Path(run_dir) / ckpt.CHECKPOINT}")
        raise NumericalError("; ".join([str(error), *kept])) from None


@contextmanager
def _checkpoint_on_interrupt(learner: Learner, enabled: bool) -> Iterator[None]:
    """While training, the first Ctrl-C asks for a checkpoint; a second one stops at once."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:  # ignored or handled by the caller
        yield
        return

    def on_interrupt(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        learner.request_interrupt()

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def default_out_dir(config: RunConfig, root: Path = Path("runs")) -> Path:
    """``runs/<benchmark>-<scenario>-<timestamp>``, never an existing folder."""
    import datetime

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = root / f"{config.benchmark}-{config.scenario or 'default'}-{stamp}"
    candidate, k = base, 1
    while candidate.exists():
        k += 1
        candidate = base.with_name(f"{base.name}-{k}")
    return candidate
