"""One rank of the data-parallel check of ``forgetless run`` (run by ``tests/test_run_ddp.py``).

Launched as ``python -m torch.distributed.run --nproc_per_node 2 --standalone tests/ddp_run_worker.py OUT``:
each rank joins the gloo group (:func:`forgetless.training.distributed.setup`) and trains every
case of :data:`CASES` on Split digits (3 tasks, plain SGD, so a gradient off by a factor would
show: Adam would hide it). For each case it writes to ``OUT``:

* ``CASE-rank{r}.safetensors``: the final parameters;
* ``CASE-rank{r}.json``: the accuracy matrix (and the task-IL one).

The test calls :func:`train` in its own process for the single-process reference.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

CASES: dict[str, dict[str, Any]] = {
    "naive": {"strategies": ["naive"]},
    "ewc": {"strategies": ["ewc"], "params": {"ewc": {"ewc_lambda": 50.0}}},
    "er": {"strategies": ["er"]},
    "derpp": {"strategies": ["derpp"]},
    "agem": {"strategies": ["agem"]},
    "er-task": {"strategies": ["er"], "scenario": "task"},  # multi-head: heads a shard does not reach
}
"""Per case, the settings beside :data:`BASE`."""

BASE: dict[str, Any] = {
    "benchmark": "split-digits",
    "tasks": 3,
    "epochs": 3,
    "batch_size": 32,  # tasks of 539, 408, 400 rows: last batches of 27 (shards 14 + 13), 24, 16
    "optimizer": "sgd",
    "lr": 0.05,
    "buffer_size": 60,
    "seed": 0,
    "threads": 1,
}


def train(case: str, **changes: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The final parameters and the matrices of ``case`` trained in this process (its rank)."""
    from forgetless.config import make_config
    from forgetless.training import distributed
    from forgetless.training.experiment import build_learner, load_scenario, validate

    config = validate(make_config(**{**BASE, **CASES[case], **changes}))
    torch.set_num_threads(1)
    distributed.setup(config.device)
    scenario = load_scenario(config, config.seed)
    learner = build_learner(config, scenario, config.strategies[0], config.seed)
    result = learner.run()
    params = {n: p.detach().clone().contiguous() for n, p in learner.model.named_parameters()}
    record = {
        "matrix": result.matrix.tolist(),
        "task_il_matrix": None if result.task_il_matrix is None else result.task_il_matrix.tolist(),
        "world_size": distributed.current().world_size,
    }
    return params, record


def main(out: Path) -> None:
    from safetensors.torch import save_file

    from forgetless.training import distributed

    for case in CASES:
        params, record = train(case)
        rank = distributed.current().rank
        save_file(params, str(out / f"{case}-rank{rank}.safetensors"))
        (out / f"{case}-rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
