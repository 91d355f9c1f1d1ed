"""One forgetless run on the peers' settings with Mammoth's head and/or initialisation swapped in.

The experiments of issue #14 (docs/tuning-replay.md, section 6): which of the differences between
forgetless and Mammoth on ``fl-config.yaml``'s settings explain the accuracy gap of the replay
methods. The head has no setting in forgetless (its expanding head is the better one, section 6),
so this script swaps Mammoth's in for one run:

* ``--head full``: Mammoth's class-IL head, all outputs trained from the first task (the
  cross-entropy pushes the logits of classes not seen yet down from the start); evaluation still
  predicts among the classes seen so far, as Mammoth's ``outputs[:, :n_seen_classes]`` does.
  ``expanding`` (default) is forgetless's head (:class:`forgetless.models.heads.IncrementalHead`).
* ``--init xavier``: Mammoth's ``backbone.xavier``, forgetless's ``--init xavier`` run setting
  (:mod:`forgetless.models.init`), instead of PyTorch's default.

Everything else goes through the ordinary builders; ``--set`` takes strategy parameters as
``forgetless run --set``. Prints one JSON line: the final accuracy row and its mean (ACC).

    python -m benchmarks.peers.replay_ablation der --seed 0 --head full --init xavier
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from forgetless.config import load_config_file, make_config, parse_assignments
from forgetless.models import heads
from forgetless.training.experiment import build_learner, load_scenario, resolve

HERE = Path(__file__).resolve().parent


def full_width_forward(self: heads.IncrementalHead, features: torch.Tensor, task_ids=None) -> torch.Tensor:
    """Mammoth's head: every output live in training; unseen classes masked at evaluation only."""
    logits = self.linear(features)
    if not self.training and self._active_cache < self.num_outputs:
        logits = logits.clone()
        logits[:, self._active_cache :] = heads.INACTIVE_LOGIT
    return logits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("strategy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--head", choices=["expanding", "full"], default="expanding")
    p.add_argument("--init", choices=["pytorch", "xavier"], default="pytorch")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd", help="adam: lr 1e-3, its default")
    p.add_argument("--momentum", type=float, default=None, help="SGD momentum (default: the config's 0.9)")
    p.add_argument("--set", action="append", default=[], help="STRATEGY.PARAM=VALUE")
    p.add_argument("--config", type=Path, default=HERE / "fl-config.yaml")
    a = p.parse_args()

    torch.set_num_threads(1)
    values = load_config_file(a.config)
    if a.optimizer == "adam":
        values.update(optimizer="adam", lr=1e-3, momentum=0.0)
    elif a.momentum is not None:
        values["momentum"] = a.momentum
    values.update(strategies=[a.strategy], seed=a.seed, init=a.init, params=parse_assignments(a.set))
    config = resolve(make_config(**values))
    if a.head == "full":
        heads.IncrementalHead.forward = full_width_forward
    learner = build_learner(config, load_scenario(config, a.seed), a.strategy, a.seed)
    start = time.perf_counter()
    final = learner.run().matrix[-1]
    record = {k: v for k, v in vars(a).items() if k != "config"}
    record.update(acc=round(float(final.mean()), 4), final=[round(float(x), 3) for x in final])
    record["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
