"""ContinualAI continual-learning-baselines (Avalanche): the target results its experiments assert.

Targets: ``strategies/target_results.csv`` (commit 024d2658): "average stream accuracy", the
accuracy on the whole test stream after the last experience (forgetless's ACC, tasks of equal
test size). Settings: ``strategies/<method>/experiment.py`` (commits 2fdb46ad, 23e1578f,
2bbce7e6) — each entry's ``notes`` names them. The repository gives no ``±``; its tests accept a
run within 0.02 below the target.
"""

from __future__ import annotations

from forgetless.reproduce.protocol import Measured, Protocol, Published

SOURCE = "ContinualAI continual-learning-baselines (Avalanche), strategies/target_results.csv"
CHECKED = "ContinualAI/continual-learning-baselines strategies/target_results.csv @ 024d2658"

MEASURED: dict[str, Measured] = {
    # forgetless reproduce NAME --stand-in --seeds 2 (Fashion-MNIST, one CPU thread, seeds 0 and 1)
    "clbaselines-lwf-split-mnist": Measured((0.1990, 0.1991), 0.03, 44),
    "clbaselines-si-split-mnist": Measured((0.9903, 0.9919), 0.03, 100),
}
CI: frozenset[str] = frozenset({"clbaselines-lwf-split-mnist"})


def _published(value: float) -> Published:
    return Published(value, "acc", None, "", verified=True, checked_in=CHECKED)


def _entry(name: str, row: str, value: float, config: dict, notes: str, needs: tuple[str, ...] = ()) -> Protocol:
    return Protocol(
        name=name,
        source=SOURCE,
        row=row,
        published=_published(value),
        config=config,
        notes=notes,
        needs=needs,
        measured=MEASURED.get(name),
        ci=name in CI,
    )


PROTOCOLS: list[Protocol] = [
    _entry(
        "clbaselines-ewc-permuted-mnist",
        "ewc, pmnist",
        0.83,
        {
            "benchmark": "permuted-mnist",
            "scenario": "domain",
            "tasks": 10,
            "epochs": 30,
            "batch_size": 256,
            "optimizer": "sgd",
            "lr": 0.001,
            "model": "mlp",
            "hidden": [1000, 1000],
            "strategies": ["ewc"],
            "params": {"ewc": {"ewc_lambda": 1.0}},
        },
        "strategies/ewc/experiment.py: PermutedMNIST(10), MLP 2x1000, SGD lr 0.001, batch 256, 30 epochs, "
        "ewc_lambda 1, mode separate",
    ),
    _entry(
        "clbaselines-si-split-mnist",
        "si, smnist",
        0.97,
        {
            "benchmark": "split-mnist",
            "scenario": "task",
            "tasks": 5,
            "epochs": 10,
            "batch_size": 64,
            "optimizer": "adam",
            "lr": 0.001,
            "model": "mlp",
            "hidden": [256, 256],
            "strategies": ["si"],
            "params": {"si": {"c": 1.0, "xi": 0.001}},
        },
        "strategies/synaptic_intelligence/experiment.py: SplitMNIST(5, return_task_id=True), MultiHeadMLP "
        "2x256, Adam lr 0.001, batch 64, 10 epochs, si_lambda 1, eps 0.001",
    ),
    _entry(
        "clbaselines-si-permuted-mnist",
        "si, pmnist",
        0.94,
        {
            "benchmark": "permuted-mnist",
            "scenario": "task",
            "tasks": 10,
            "epochs": 20,
            "batch_size": 256,
            "optimizer": "adam",
            "lr": 0.001,
            "model": "mlp",
            "hidden": [2000, 2000],
            "strategies": ["si"],
            "params": {"si": {"c": 0.1, "xi": 0.1}},
        },
        "strategies/synaptic_intelligence/experiment.py: PermutedMNIST(10), MultiHeadMLP 2x2000, Adam lr "
        "0.001, batch 256, 20 epochs, si_lambda 0.1, eps 0.1 (the later tests/target_results.csv says 0.83)",
    ),
    _entry(
        "clbaselines-gem-permuted-mnist",
        "gem, pmnist",
        0.83,
        {
            "benchmark": "permuted-mnist",
            "scenario": "domain",
            "tasks": 20,
            "epochs": 1,
            "batch_size": 10,
            "optimizer": "sgd",
            "lr": 0.1,
            "model": "mlp",
            "hidden": [100, 100],
            "buffer_size": 20000,
            "strategies": ["gem"],
            "params": {"gem": {"memory_strength": 0.5}},
        },
        "strategies/gem/experiment.py: PermutedMNIST(20), MLP 2x100, SGD lr 0.1, batch 10, 1 epoch, "
        "1000 patterns per experience (buffer 20 x 1000), memory_strength 0.5; it trains on the first "
        "1000 rows of each experience only",
        needs=("training on the first 1000 rows of each task (GEM's protocol)",),
    ),
    _entry(
        "clbaselines-agem-permuted-mnist",
        "agem, pmnist",
        0.81,
        {
            "benchmark": "permuted-mnist",
            "scenario": "domain",
            "tasks": 17,
            "epochs": 1,
            "batch_size": 10,
            "optimizer": "sgd",
            "lr": 0.1,
            "model": "mlp",
            "hidden": [256, 256],
            "buffer_size": 4250,
            "strategies": ["agem"],
            "params": {"agem": {"replay_batch_size": 256}},
        },
        "strategies/agem/experiment.py: PermutedMNIST(17), MLP 2x256, SGD lr 0.1, batch 10, 1 epoch, "
        "250 patterns per experience (buffer 17 x 250, filled by reservoir here), sample_size 256",
    ),
    _entry(
        "clbaselines-gss-split-mnist",
        "gss, smnist",
        0.78,
        {
            "benchmark": "split-mnist",
            "scenario": "class",
            "tasks": 5,
            "epochs": 3,
            "batch_size": 10,
            "optimizer": "sgd",
            "lr": 0.05,
            "model": "mlp",
            "hidden": [100, 100],
            "buffer_size": 300,
            "strategies": ["gss"],
        },
        "strategies/gss/experiment.py: SplitMNIST(5, seed=1), 1000 rows per experience, MLP 2x100, SGD lr "
        "0.05, batch 10, 3 epochs, mem_size 300, mem_strength 10",
        needs=("a gss (gradient-based sample selection) strategy",),
    ),
    _entry(
        "clbaselines-lwf-split-mnist",
        "lwf, smnist",
        0.31,
        {
            "benchmark": "split-mnist",
            "scenario": "class",
            "tasks": 5,
            "epochs": 10,
            "batch_size": 128,
            "optimizer": "sgd",
            "lr": 0.001,
            "model": "mlp",
            "hidden": [256],
            "strategies": ["lwf"],
            "params": {"lwf": {"alpha": 1.0, "temperature": 1.0}},
        },
        "strategies/lwf/experiment.py: SplitMNIST(5, return_task_id=False), MLP 1x256, SGD lr 0.001, batch "
        "128, 10 epochs, alpha 1, temperature 1 (the later tests/target_results.csv says 0.23)",
    ),
    _entry(
        "clbaselines-lwf-permuted-mnist",
        "lwf, pmnist",
        0.51,
        {
            "benchmark": "permuted-mnist",
            "scenario": "domain",
            "tasks": 10,
            "epochs": 5,
            "batch_size": 256,
            "optimizer": "adam",
            "lr": 0.001,
            "model": "mlp",
            "hidden": [1000, 1000],
            "strategies": ["lwf"],
            "params": {"lwf": {"alpha": 1.0, "temperature": 1.0}},
        },
        "strategies/lwf/experiment.py: PermutedMNIST(10), MLP 2x1000, Adam lr 0.001, batch 256, 5 epochs, "
        "alpha 1, temperature 1",
    ),
]
