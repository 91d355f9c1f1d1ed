"""Avalanche's naive, ER, DER, DER++, A-GEM, GEM, EWC, SI and LwF on Split Fashion-MNIST (class-IL).

Runs only inside the Avalanche venv, like ``avalanche_split_fmnist.py`` (whose data loading and
settings it reuses): 5 experiences of 2 classes in the order 0..9, ``SimpleMLP`` 784-400-400-10
(PyTorch's default init, no dropout), batch 128, 1 epoch per experience, SGD lr 0.01 momentum 0.9
(``--optimizer adam``: Adam 1e-3), one thread; ``--seed`` seeds ``random``, NumPy and torch.
Hyperparameters are forgetless's defaults where Avalanche has the same knob (``avalanche_accuracy.py``
lists what still differs):

* ``er``: ``Naive`` + ``ReplayPlugin(mem_size=500, batch_size_mem=128)`` (Avalanche 0.6.0's ER:
  its ``Replay`` strategy is the same plugin); default storage ``ExperienceBalancedBuffer``.
* ``der`` / ``derpp``: ``DER(mem_size=500, batch_size_mem=128, alpha=0.3, beta=0)`` /
  ``beta=0.5`` (one class that is DER++ when ``beta > 0``).
* ``agem``: ``AGEM(patterns_per_exp=100, sample_size=256)``: 100 rows kept per experience (500
  after the last), reference batch 256; forgetless keeps a 500-row reservoir throughout.
* ``gem``: ``GEM(patterns_per_exp=100, memory_strength=0.5)`` (same memory note; needs
  ``quadprog`` in the venv).
* ``ewc``: ``EWC(ewc_lambda=10000, mode="separate")`` (Avalanche: empirical Fisher on the whole
  experience; forgetless: sampled Fisher on 1024 inputs).
* ``si``: ``SynapticIntelligence(si_lambda=10, eps=0.1)``; ``lwf``: ``LwF(alpha=1, temperature=2)``.

``--buffer-size`` and ``--replay-batch`` change the replay methods' 500 and 128, ``--ewc-lambda``
EWC's 10000. A line ``non-finite weights after experience N`` says the model diverged (Avalanche
trains on). The last line printed is ``final average accuracy: X`` (the whole test stream after
the last experience, i.e. the ACC of forgetless's ``metrics.json``); the line before the timing
is the last accuracy row.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.models import SimpleMLP
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
from avalanche.training.supervised import AGEM, DER, EWC, GEM, LwF, Naive, SynapticIntelligence

from benchmarks.peers.avalanche_split_fmnist import DATA_DIR, STREAM_ACC, load_split, tensor_dataset

STRATEGIES = {
    "naive": (Naive, {}),
    "er": (Naive, {}),  # + ReplayPlugin, built in strategy_kwargs
    "der": (DER, {"alpha": 0.3, "beta": 0.0}),
    "derpp": (DER, {"alpha": 0.3, "beta": 0.5}),
    "agem": (AGEM, {"patterns_per_exp": 100, "sample_size": 256}),
    "gem": (GEM, {"patterns_per_exp": 100, "memory_strength": 0.5}),
    "ewc": (EWC, {"ewc_lambda": 10000.0, "mode": "separate"}),
    "si": (SynapticIntelligence, {"si_lambda": 10.0, "eps": 0.1}),
    "lwf": (LwF, {"alpha": 1.0, "temperature": 2.0}),
}


def strategy_kwargs(name: str, buffer_size: int, replay_batch: int, ewc_lambda: float) -> dict:
    """The method's own constructor arguments (a fresh ReplayPlugin for ER)."""
    params = dict(STRATEGIES[name][1])
    if name == "ewc":
        params["ewc_lambda"] = ewc_lambda
    if name == "er":
        params["plugins"] = [ReplayPlugin(mem_size=buffer_size, batch_size_mem=replay_batch)]
    elif name in ("der", "derpp"):
        params |= {"mem_size": buffer_size, "batch_size_mem": replay_batch}
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("strategy", choices=sorted(STRATEGIES))
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--buffer-size", type=int, default=500, help="er, der, derpp (default 500)")
    parser.add_argument("--replay-batch", type=int, default=128, help="er, der, derpp (default 128)")
    parser.add_argument("--ewc-lambda", type=float, default=10000.0, help="ewc (default 10000)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    x_train, y_train = load_split(args.data_dir, "train")
    x_test, y_test = load_split(args.data_dir, "t10k")
    benchmark = nc_benchmark(
        train_dataset=tensor_dataset(x_train, y_train),
        test_dataset=tensor_dataset(x_test, y_test),
        n_experiences=5,
        task_labels=False,
        fixed_class_order=list(range(10)),
        seed=args.seed,
    )
    model = SimpleMLP(num_classes=10, input_size=784, hidden_size=400, hidden_layers=2, drop_rate=0)
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    cls = STRATEGIES[args.strategy][0]
    params = strategy_kwargs(args.strategy, args.buffer_size, args.replay_batch, args.ewc_lambda)
    strategy = cls(
        model=model,
        optimizer=optimizer,
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=128,
        train_epochs=1,
        eval_mb_size=128,
        device="cpu",
        evaluator=EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loggers=[]),
        **params,
    )
    acc = float("nan")
    for exp in benchmark.train_stream:
        strategy.train(exp)
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            print(f"non-finite weights after experience {exp.current_experience}", flush=True)
        results = strategy.eval(benchmark.test_stream)
        acc = next(v for k, v in results.items() if k.startswith(STREAM_ACC))
        row = [results[k] for k in sorted(results) if k.startswith("Top1_Acc_Exp/eval_phase/test_stream/")]
        print(f"after experience {exp.current_experience}: " + " ".join(f"{a:.4f}" for a in row), flush=True)
    print(f"in-process seconds (data loading + train + eval): {time.perf_counter() - start:.2f}")
    print(f"final average accuracy: {acc:.4f}")


if __name__ == "__main__":
    main()
