"""Buzzega et al. 2020, "Dark Experience for General Continual Learning: a Strong, Simple
Baseline" (NeurIPS 2020, arXiv:2004.07211): Table 2, Seq-MNIST and Seq-CIFAR-10 rows of ER, DER
and DER++ at buffer 200, 500 and 5120, Class-IL and Task-IL (mean ± std over 10 runs).

Task-IL numbers come from the Class-IL run with each prediction masked to its task's classes
(forgetless's ``task_il_acc``). Hyperparameters (lr, batch size, replay batch ``minibatch_size``,
alpha, beta, epochs) were checked in aimagelab/mammoth ``utils/best_args.py`` (commit 0d727a72):
Seq-MNIST: MLP 2x100, SGD, batch 10, 1 epoch; Seq-CIFAR-10: reduced ResNet-18, SGD, batch 32, 50
epochs, random crop + horizontal flip. The table values could not be checked against the paper's
text from this machine: they are marked unverified.
"""

from __future__ import annotations

from typing import Any

from forgetless.reproduce.protocol import Measured, Protocol, Published

SOURCE = "Buzzega et al. 2020, Dark Experience for General Continual Learning (NeurIPS, arXiv:2004.07211)"
STD = "std over 10 runs"

BEST: dict[str, dict[tuple[str, int], dict[str, Any]]] = {
    # mammoth best_args: (model, buffer) -> lr, minibatch_size, alpha, beta
    "seq-mnist": {
        ("er", 200): {"lr": 0.01, "mb": 10},
        ("er", 500): {"lr": 0.1, "mb": 10},
        ("er", 5120): {"lr": 0.1, "mb": 10},
        ("der", 200): {"lr": 0.03, "mb": 10, "alpha": 0.2},
        ("der", 500): {"lr": 0.03, "mb": 128, "alpha": 1.0},
        ("der", 5120): {"lr": 0.1, "mb": 128, "alpha": 0.5},
        ("derpp", 200): {"lr": 0.03, "mb": 128, "alpha": 0.2, "beta": 1.0},
        ("derpp", 500): {"lr": 0.03, "mb": 10, "alpha": 1.0, "beta": 0.5},
        ("derpp", 5120): {"lr": 0.1, "mb": 64, "alpha": 0.2, "beta": 0.5},
    },
    "seq-cifar10": {
        ("er", 200): {"lr": 0.1, "mb": 32},
        ("er", 500): {"lr": 0.1, "mb": 32},
        ("er", 5120): {"lr": 0.1, "mb": 32},
        ("der", 200): {"lr": 0.03, "mb": 32, "alpha": 0.3},
        ("der", 500): {"lr": 0.03, "mb": 32, "alpha": 0.3},
        ("der", 5120): {"lr": 0.03, "mb": 32, "alpha": 0.3},
        ("derpp", 200): {"lr": 0.03, "mb": 32, "alpha": 0.1, "beta": 0.5},
        ("derpp", 500): {"lr": 0.03, "mb": 32, "alpha": 0.2, "beta": 0.5},
        ("derpp", 5120): {"lr": 0.03, "mb": 32, "alpha": 0.1, "beta": 1.0},
    },
}

TABLE: dict[str, dict[tuple[str, int], tuple[tuple[float, float], tuple[float, float]]]] = {
    # (model, buffer) -> (Class-IL, Task-IL), each (mean %, std %)
    "seq-mnist": {
        ("er", 200): ((80.43, 1.89), (97.86, 0.35)),
        ("er", 500): ((86.12, 1.89), (99.04, 0.18)),
        ("er", 5120): ((93.40, 1.29), (99.33, 0.22)),
        ("der", 200): ((84.55, 1.64), (98.80, 0.15)),
        ("der", 500): ((90.54, 1.18), (98.84, 0.13)),
        ("der", 5120): ((94.90, 0.57), (99.29, 0.11)),
        ("derpp", 200): ((85.61, 1.40), (98.76, 0.28)),
        ("derpp", 500): ((91.00, 1.49), (98.94, 0.27)),
        ("derpp", 5120): ((95.30, 1.20), (99.47, 0.07)),
    },
    "seq-cifar10": {
        ("er", 200): ((44.79, 1.86), (91.19, 0.94)),
        ("er", 500): ((57.74, 0.27), (93.61, 0.27)),
        ("er", 5120): ((82.47, 0.52), (96.98, 0.17)),
        ("der", 200): ((61.93, 1.79), (91.40, 0.92)),
        ("der", 500): ((70.51, 1.67), (93.40, 0.39)),
        ("der", 5120): ((83.81, 0.33), (95.43, 0.33)),
        ("derpp", 200): ((64.88, 1.17), (91.92, 0.60)),
        ("derpp", 500): ((72.70, 1.36), (93.88, 0.50)),
        ("derpp", 5120): ((85.24, 0.49), (96.12, 0.21)),
    },
}

BASE: dict[str, dict[str, Any]] = {
    "seq-mnist": {
        "benchmark": "split-mnist",
        "scenario": "class",
        "tasks": 5,
        "epochs": 1,
        "batch_size": 10,
        "optimizer": "sgd",
        "model": "mlp",
        "hidden": [100, 100],
    },
    "seq-cifar10": {
        "benchmark": "split-cifar10",
        "scenario": "class",
        "tasks": 5,
        "epochs": 50,
        "batch_size": 32,
        "optimizer": "sgd",
        "model": "reduced-resnet18",
        "augment": "crop-flip",
    },
}

LABEL = {"er": "ER", "der": "DER", "derpp": "DER++"}
MEASURED: dict[str, Measured] = {
    # forgetless reproduce NAME --stand-in --seeds 2 (split-fmnist, one CPU thread, seeds 0 and 1);
    # the Class-IL and Task-IL rows of one buffer are the same runs
    "der2020-seq-mnist-er-200-class": Measured((0.7193, 0.7280), 0.03, 54),
    "der2020-seq-mnist-er-200-task": Measured((0.9832, 0.9848), 0.03, 54),
    "der2020-seq-mnist-der-200-class": Measured((0.7356, 0.7420), 0.03, 46),
    "der2020-seq-mnist-der-200-task": Measured((0.9746, 0.9804), 0.03, 46),
    "der2020-seq-mnist-derpp-500-class": Measured((0.8114, 0.7954), 0.04, 25),
    "der2020-seq-mnist-derpp-500-task": Measured((0.9836, 0.9788), 0.03, 25),
}
CI = frozenset(
    {"der2020-seq-mnist-er-200-class", "der2020-seq-mnist-der-200-class", "der2020-seq-mnist-derpp-500-class"}
)


def _entry(dataset: str, model: str, buffer: int, il: int) -> Protocol:
    best = BEST[dataset][(model, buffer)]
    mean, std = TABLE[dataset][(model, buffer)][il]
    params: dict[str, Any] = {"replay_batch_size": best["mb"]}
    params.update({k: best[k] for k in ("alpha", "beta") if k in best})
    scenario = "class" if il == 0 else "task"
    name = f"der2020-{dataset}-{model}-{buffer}-{scenario}"
    metric = "acc" if il == 0 else "task_il_acc"
    config = {
        **BASE[dataset],
        "lr": best["lr"],
        "buffer_size": buffer,
        "strategies": [model],
        "params": {model: params},
    }
    return Protocol(
        name=name,
        source=SOURCE,
        row=f"Table 2, {LABEL[model]}, buffer {buffer}, {dataset}, {'Class-IL' if il == 0 else 'Task-IL'}",
        published=Published(mean / 100, metric, std / 100, STD),
        config=config,
        notes="Task-IL: the Class-IL run's accuracy with predictions masked to each task's classes"
        if il
        else "Class-IL: one head over all classes seen",
        stand_in=dataset == "seq-mnist",
        measured=MEASURED.get(name),
        ci=name in CI,
    )


PROTOCOLS: list[Protocol] = [
    _entry(dataset, model, buffer, il) for dataset in TABLE for (model, buffer) in TABLE[dataset] for il in (0, 1)
]
