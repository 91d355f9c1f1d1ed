"""An experiment: every strategy combination x every seed on one benchmark, results saved.

Results are written after every finished run, so a failure later in the experiment never loses
what was already computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from forgetless.config import RunConfig
from forgetless.data.benchmarks import build_scenario, get_benchmark
from forgetless.data.scenarios import Scenario, validation_split
from forgetless.metrics import summarize
from forgetless.models import build_model
from forgetless.strategies import make_strategies
from forgetless.training.learner import Learner, Progress, RunResult
from forgetless.training.schedules import schedule_strategies


def resolve(config: RunConfig) -> RunConfig:
    """Fill the fields left unset with the benchmark's defaults."""
    bench = get_benchmark(config.benchmark)
    return config.model_copy(
        update={
            "scenario": config.scenario or bench.scenario,
            "tasks": config.tasks or bench.n_tasks,
            "epochs": config.epochs or bench.epochs,
            "model": config.model or bench.model,
            "hidden": config.hidden or list(bench.hidden),
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
    )
    if config.validation > 0:
        scenario = validation_split(scenario, config.validation, seed)
    return scenario.to(config.device)


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
    model = build_model(
        config.model or "mlp",
        scenario.input_shape,
        scenario.head_sizes,
        multi_head=scenario.uses_task_id,
        hidden=list(config.hidden or [400, 400]),
    )
    return Learner(scenario, model, strategies, config, seed=seed, name=combination)


@dataclass
class ExperimentResult:
    """Every run of an experiment, grouped by strategy combination."""

    config: RunConfig
    runs: dict[str, list[RunResult]] = field(default_factory=dict)

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
                metrics = summarize(run.matrix, run.baseline, self.joint_reference(i))
                metrics["wall_seconds"] = run.wall_seconds
                per_seed.append(metrics)
            keys = per_seed[0].keys()
            out[name] = {
                k: {
                    "mean": float(np.mean([m[k] for m in per_seed])),
                    "std": float(np.std([m[k] for m in per_seed])),
                }
                for k in keys
            }
        return out


RunDone = Callable[[ExperimentResult], None]


def run_experiment(
    config: RunConfig,
    progress: Callable[[str, int], Progress] | None = None,
    on_run_done: RunDone | None = None,
) -> ExperimentResult:
    """Run every combination in ``config.strategies`` for ``config.seeds`` seeds.

    ``progress(combination, seed)`` returns the per-step progress callback of that run;
    ``on_run_done(result)`` is called after every run (the CLI saves results there).
    """
    config = resolve(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    # validate every name before training anything
    for combination in config.strategies:
        make_strategies(combination, config.params, {"buffer_size": config.buffer_size}, config.scenario)
    result = ExperimentResult(config)
    for offset in range(config.seeds):
        seed = config.seed + offset
        scenario = load_scenario(config, seed)
        for combination in config.strategies:
            learner = build_learner(config, scenario, combination, seed)
            callback = progress(combination, seed) if progress is not None else None
            run = learner.run(callback)
            result.runs.setdefault(combination, []).append(run)
            if on_run_done is not None:
                on_run_done(result)
    return result


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
