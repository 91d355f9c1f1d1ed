"""van de Ven & Tolias 2019, "Three scenarios for continual learning" (arXiv:1904.07734).

Rows of Table 2 (split MNIST) and Table 3 (permuted MNIST): average test accuracy over all
tasks after the last one, mean ± SEM over 20 runs, per scenario (Task-IL, Domain-IL, Class-IL).

Protocol settings (checked in GMvandeVen/continual-learning ``param_values.py`` and ``main.py`` at
commit d281967, the code of the preprints): split MNIST 5 tasks, 2000 iterations per task, batch
128, Adam lr 1e-3, MLP 2x400; permuted MNIST 10 tasks, 5000 iterations, lr 1e-4, MLP 2x1000;
per-scenario lambda (EWC, Online EWC), gamma (Online EWC) and c (SI) from ``set_default_values``.
forgetless counts epochs, not iterations: 2000 x 128 / 12,000 rows per split task = 21.3 epochs
(21 here) and 5000 x 128 / 60,000 = 10.7 epochs (11 here).

The table values below could not be checked against the paper's text from this machine (the
tables are not in the code repository): they are marked unverified.
"""

from __future__ import annotations

from typing import Any

from forgetless.reproduce.protocol import Measured, Protocol, Published

SOURCE = "van de Ven & Tolias 2019, Three scenarios for continual learning (arXiv:1904.07734)"
SEM = "SEM over 20 runs"

BASE: dict[str, dict[str, Any]] = {
    "split-mnist": {
        "benchmark": "split-mnist",
        "tasks": 5,
        "epochs": 21,
        "batch_size": 128,
        "optimizer": "adam",
        "lr": 1e-3,
        "model": "mlp",
        "hidden": [400, 400],
    },
    "permuted-mnist": {
        "benchmark": "permuted-mnist",
        "tasks": 10,
        "epochs": 11,
        "batch_size": 128,
        "optimizer": "adam",
        "lr": 1e-4,
        "model": "mlp",
        "hidden": [1000, 1000],
    },
}

METHODS = {"none": "naive", "offline": "joint", "ewc": "ewc", "online-ewc": "online-ewc", "si": "si", "lwf": "lwf"}
METHODS["dgr"] = "generative-replay"

PARAMS: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    # param_values.py set_default_values: (experiment, scenario) -> hyperparameters
    ("split-mnist", "task"): {
        "ewc": {"ewc_lambda": 1e7},
        "online-ewc": {"ewc_lambda": 1e8, "gamma": 0.8},
        "si": {"c": 50.0},
    },
    ("split-mnist", "domain"): {
        "ewc": {"ewc_lambda": 1e6},
        "online-ewc": {"ewc_lambda": 1e8, "gamma": 0.7},
        "si": {"c": 500.0},
    },
    ("split-mnist", "class"): {
        "ewc": {"ewc_lambda": 1e8},
        "online-ewc": {"ewc_lambda": 1e9, "gamma": 0.8},
        "si": {"c": 0.5},
    },
    ("permuted-mnist", "task"): {
        "ewc": {"ewc_lambda": 500.0},
        "online-ewc": {"ewc_lambda": 500.0, "gamma": 0.8},
        "si": {"c": 5.0},
    },
    ("permuted-mnist", "domain"): {
        "ewc": {"ewc_lambda": 500.0},
        "online-ewc": {"ewc_lambda": 1000.0, "gamma": 0.9},
        "si": {"c": 5.0},
    },
    ("permuted-mnist", "class"): {
        "ewc": {"ewc_lambda": 1.0},
        "online-ewc": {"ewc_lambda": 5.0, "gamma": 1.0},
        "si": {"c": 0.1},
    },
}
"""SI's damping xi is the code's default epsilon 0.1 (forgetless's default too); LwF's temperature
is the code's default 2."""

TABLE: dict[str, dict[str, tuple[tuple[float, float], ...]]] = {
    # method -> (Task-IL, Domain-IL, Class-IL), each (mean %, SEM %)
    "split-mnist": {
        "none": ((87.19, 0.94), (59.21, 2.04), (19.90, 0.02)),
        "offline": ((99.66, 0.02), (98.42, 0.06), (97.94, 0.03)),
        "ewc": ((98.64, 0.22), (63.95, 1.90), (20.01, 0.06)),
        "online-ewc": ((99.12, 0.11), (64.32, 1.90), (19.96, 0.07)),
        "si": ((99.09, 0.15), (65.36, 1.57), (19.99, 0.06)),
        "lwf": ((99.57, 0.02), (71.50, 1.63), (23.85, 0.44)),
        "dgr": ((99.50, 0.03), (95.72, 0.25), (90.79, 0.41)),
    },
    "permuted-mnist": {
        "none": ((81.79, 0.48), (78.51, 0.24), (17.26, 0.19)),
        "offline": ((97.68, 0.01), (97.59, 0.01), (97.59, 0.02)),
        "ewc": ((94.74, 0.05), (94.31, 0.11), (25.04, 0.50)),
        "online-ewc": ((95.96, 0.06), (94.42, 0.13), (33.88, 0.49)),
        "si": ((94.75, 0.14), (95.33, 0.11), (29.31, 0.62)),
        "lwf": ((69.84, 0.46), (72.64, 0.52), (22.64, 0.23)),
        "dgr": ((92.52, 0.08), (95.09, 0.04), (92.19, 0.09)),
    },
}

SCENARIOS = ("task", "domain", "class")
LABEL = {"task": "Task-IL", "domain": "Domain-IL", "class": "Class-IL"}
TABLE_NUMBER = {"split-mnist": "Table 2 (split MNIST)", "permuted-mnist": "Table 3 (permuted MNIST)"}

MEASURED: dict[str, Measured] = {
    # forgetless reproduce NAME --stand-in --seeds 2 (Fashion-MNIST, one CPU thread, seeds 0 and 1)
    "vandeven2019-split-mnist-class-none": Measured((0.1996, 0.1997), 0.03, 167),
    "vandeven2019-split-mnist-task-si": Measured((0.9918, 0.9865), 0.03, 192),
    "vandeven2019-split-mnist-class-ewc": Measured((0.1995, 0.1996), 0.03, 203),
    "vandeven2019-split-mnist-domain-lwf": Measured((0.7935, 0.7903), 0.03, 127),
    "vandeven2019-split-mnist-task-none": Measured((0.8600, 0.8487), 0.032, 115),
    "vandeven2019-split-mnist-domain-none": Measured((0.7814, 0.7832), 0.03, 60),
}
"""Stand-in numbers measured here (filled by hand from ``forgetless reproduce NAME --stand-in --seeds 2``)."""

CI = frozenset()
"""The rows whose stand-in ``tests/test_reproduce.py`` checks."""

NOTES = (
    "epochs converted from iterations (see module docstring); the EWC Fisher is forgetless's "
    "sampled Fisher on 1024 training rows (the paper: the predicted label on all training rows)"
)


def _entry(benchmark: str, method: str, index: int) -> Protocol:
    scenario = SCENARIOS[index]
    mean, sem = TABLE[benchmark][method][index]
    strategy = METHODS[method]
    params = {k: v for k, v in PARAMS[(benchmark, scenario)].items() if k == strategy}
    if strategy == "lwf":
        params = {"lwf": {"temperature": 2.0}}
    name = f"vandeven2019-{benchmark}-{scenario}-{method}"
    config: dict[str, Any] = {**BASE[benchmark], "scenario": scenario, "strategies": [strategy]}
    if params:
        config["params"] = params
    notes = NOTES
    if method == "dgr":
        notes += "; DGR's VAE uses forgetless's generative-replay defaults, not the paper's 2x400 VAE"
    return Protocol(
        name=name,
        source=SOURCE,
        row=f"{TABLE_NUMBER[benchmark]}, {method}, {LABEL[scenario]}",
        published=Published(mean / 100, "acc", sem / 100, SEM),
        config=config,
        notes=notes,
        measured=MEASURED.get(name),
        ci=name in CI,
    )


PROTOCOLS: list[Protocol] = [
    _entry(benchmark, method, index)
    for benchmark in TABLE
    for method in TABLE[benchmark]
    for index in range(len(SCENARIOS))
]
