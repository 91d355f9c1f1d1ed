"""Avalanche's Naive on Split Fashion-MNIST (class-IL), the same work as ``forgetless run``.

Runs only inside the Avalanche venv (see README.md here); forgetless never imports it and pytest
never collects it (``testpaths = ["tests"]``, and the name does not start with ``test_``).

5 experiences of 2 classes in the order 0..9, ``SimpleMLP`` 784-400-400-10 (no dropout), batch
128, 1 epoch per experience, evaluation on the whole test stream after each experience, one
thread. Fashion-MNIST is read from local IDX files (no download). The last line printed is
``final average accuracy: X``.
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.models import SimpleMLP
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive

try:  # the public name of older releases
    from avalanche.benchmarks.utils import make_tensor_classification_dataset as tensor_dataset
except ImportError:  # 0.5+: only the task-aware builder remains
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as tensor_dataset

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
STREAM_ACC = "Top1_Acc_Stream/eval_phase/test_stream"


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a uint8 array of its declared shape."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(data_dir: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float32 (N, 784) in [0, 1] and labels as int64, for 'train' or 't10k'."""
    x = read_idx(data_dir / f"{prefix}-images-idx3-ubyte.gz")
    y = read_idx(data_dir / f"{prefix}-labels-idx1-ubyte.gz")
    return torch.from_numpy(x.reshape(len(x), -1).astype(np.float32) / 255.0), torch.from_numpy(y.astype(np.int64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    parser.add_argument("--lr", type=float, default=None, help="default: 0.01 (sgd), 0.001 (adam)")
    parser.add_argument("--momentum", type=float, default=0.9, help="sgd only")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(1)
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
    )

    model = SimpleMLP(num_classes=10, input_size=784, hidden_size=400, hidden_layers=2, drop_rate=0)
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr or 0.01, momentum=args.momentum)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr or 0.001)
    strategy = Naive(
        model=model,
        optimizer=optimizer,
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=args.batch_size,
        train_epochs=args.epochs,
        eval_mb_size=args.eval_batch_size,
        device="cpu",
        evaluator=EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loggers=[]),
    )

    acc = float("nan")
    for exp in benchmark.train_stream:
        strategy.train(exp)
        results = strategy.eval(benchmark.test_stream)
        acc = next(v for k, v in results.items() if k.startswith(STREAM_ACC))
        row = [results[k] for k in sorted(results) if k.startswith("Top1_Acc_Exp/eval_phase/test_stream/")]
        print(f"after experience {exp.current_experience}: " + " ".join(f"{a:.4f}" for a in row), flush=True)
    print(f"in-process seconds (data loading + train + eval): {time.perf_counter() - start:.2f}")
    print(f"final average accuracy: {acc:.4f}")


if __name__ == "__main__":
    main()
