"""One rank of the 2-process DDP check of ``ForgetlessTrainer`` (run by ``tests/test_hf_ddp.py``).

Launched as ``python -m torch.distributed.run --nproc_per_node 2 --standalone tests/ddp_worker.py OUT``:
the ``Trainer`` reads ``LOCAL_RANK``/``WORLD_SIZE`` from ``torchrun`` and wraps the model in DDP
(gloo, CPU). Each rank fine-tunes the same tiny GPT-2 with L2-SP + EWC toward the start weights
twice, in the same process group: ``mix`` (replay mixed in by a :class:`MixingBatchSampler`,
split batches) and ``plain`` (task rows only, the Trainer's own sampler, gradient accumulation 2).
For each run ``MODE`` it writes to ``OUT``:

* ``MODE-rank{r}.safetensors``: its final parameters;
* ``MODE-rank{r}.json``: per ``compute_loss`` call, the optimizer step, the loss returned, the
  penalty, the Trainer's ``num_items_in_batch`` and the row ids of the task and replay
  (sub-)batches (each row carries its dataset index in a ``row`` column, stripped before the model).

The helpers above ``training_args`` are also imported by the test to build the single-process reference.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

STEPS = 6  # optimizer steps per rank (mixing run)
PLAIN_STEPS = 3  # optimizer steps of the plain run (2 micro-batches of 2 rows each)
BATCH = 4  # rows per rank and step
RATIO = 0.25  # replay share: 1 row of 4
SEQ = 16
N_TASK, N_GENERAL = 40, 12
LR, ALPHA, LAMBDA = 0.2, 1.0, 0.05  # lr * (alpha + lambda * max F) < 1: stable SGD
SEED = 0
FISHER_MODULES = ["transformer.h.1"]

CODE = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n    y: int = 1\n"
PROSE = "In the beginning the model could read plain English prose quite well, line after line.\n"


def blocks(text: str, n: int, shift: int) -> torch.Tensor:
    """``n`` byte blocks of ``SEQ`` tokens cut from ``text`` repeated, block ``i`` starting at ``i * shift``."""
    ids = torch.tensor(list((text * 40).encode("utf-8")))
    return torch.stack([ids[i * shift : i * shift + SEQ] for i in range(n)])


def build_data() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Task rows (code, with labels) and general rows (prose); ``row`` is the mixed-dataset index."""
    task = blocks(CODE, N_TASK, 3)
    general = blocks(PROSE, N_GENERAL, 5)
    return (
        {"input_ids": task, "labels": task.clone(), "row": torch.arange(N_TASK)},
        {"input_ids": general, "row": N_TASK + torch.arange(N_GENERAL)},
    )


def build_model() -> nn.Module:
    """A 2-layer, 32-wide byte-level GPT-2 from ``tiny.py`` (no dropout), same weights on every call."""
    from forgetless.integrations.hf.tiny import tiny_gpt2

    return tiny_gpt2(n_layer=2, n_embd=32, n_head=2, n_positions=SEQ, seed=SEED)


def build_fisher(model: nn.Module, general: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EWC's diagonal Fisher of the start weights on 4 general rows (deterministic)."""
    from forgetless.integrations.hf import Perplexity, estimate_fisher

    capability = Perplexity("prose", general["input_ids"][:2], general["input_ids"])
    return estimate_fisher(model, capability, 4, torch.Generator().manual_seed(SEED), FISHER_MODULES)


def replay_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Causal-LM loss of the replay rows."""
    ids = batch["input_ids"]
    return model(input_ids=ids, labels=ids).loss


def make_sampler(num_batches: int) -> Any:
    """The mixing sampler every rank builds (same seed, so the same global batch sequence)."""
    from forgetless.integrations.hf import MixingBatchSampler

    return MixingBatchSampler(N_TASK, N_GENERAL, BATCH, RATIO, num_batches=num_batches, seed=SEED)


def training_args(out: Path, **changes: Any) -> Any:
    """Plain SGD at a constant rate, no clipping, no logging or checkpoints, gloo on CPU."""
    from transformers import TrainingArguments

    values: dict[str, Any] = dict(
        output_dir=str(out / "trainer"),
        max_steps=STEPS,
        per_device_train_batch_size=BATCH,
        learning_rate=LR,
        optim="sgd",
        weight_decay=0.0,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        seed=SEED,
        data_seed=SEED,
        use_cpu=True,
        ddp_backend="gloo",
        dataloader_num_workers=0,
    )
    return TrainingArguments(**{**values, **changes})


def train(out: Path, mode: str) -> None:
    """``mix``: replay via the mixing sampler (split batches); ``plain``: the Trainer's own sampler
    over task rows only, gradient accumulation 2 (the ``num_items_in_batch`` path)."""
    from safetensors.torch import save_file

    from forgetless.integrations.hf import (
        ForgetlessTrainer,
        MixedDataset,
        RowsDataset,
        SplitCollator,
        ewc_penalty,
        l2sp_penalty,
    )

    world = int(os.environ.get("WORLD_SIZE", "1"))
    task, general = build_data()
    model = build_model()
    penalties = [l2sp_penalty(model, ALPHA), ewc_penalty(model, build_fisher(model, general), LAMBDA)]
    steps: list[dict[str, Any]] = []

    class Recording(ForgetlessTrainer):
        """Strips and records the ``row`` ids of each (sub-)batch, then records loss and penalty."""

        def compute_loss(
            self,
            model: nn.Module,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: torch.Tensor | int | None = None,
        ) -> Any:
            if "task" in inputs:
                rows = {part: inputs[part].pop("row").tolist() for part in ("task", "replay") if part in inputs}
            else:
                rows = {"task": inputs.pop("row").tolist()}
            assert not return_outputs
            loss = super().compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
            items = None if num_items_in_batch is None else int(num_items_in_batch)
            steps.append(
                {
                    "step": self.state.global_step,
                    "rows": rows,
                    "loss": float(loss.detach()),
                    "penalty": self.last_penalty,
                    "num_items_in_batch": items,
                }
            )
            return loss

    if mode == "mix":
        trainer = Recording(
            model=model,
            args=training_args(out),
            train_dataset=MixedDataset(RowsDataset(task), RowsDataset(general)),
            data_collator=SplitCollator(),
            penalties=penalties,
            replay_loss=replay_loss,
            mixing_sampler=make_sampler(STEPS * world),
        )
    else:
        args = training_args(out, max_steps=PLAIN_STEPS, per_device_train_batch_size=2, gradient_accumulation_steps=2)
        trainer = Recording(model=model, args=args, train_dataset=RowsDataset(task), penalties=penalties)
    trainer.train()

    rank = trainer.args.process_index
    info = {"rank": rank, "world_size": trainer.args.world_size, "wrapped": type(trainer.model_wrapped).__name__}
    (out / f"{mode}-rank{rank}.json").write_text(json.dumps({**info, "steps": steps}))
    params = {n: p.detach().clone().contiguous() for n, p in trainer.model.named_parameters()}
    save_file(params, str(out / f"{mode}-rank{rank}.safetensors"))


def main(out: Path) -> None:
    """Both runs, one thread per rank."""
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    for mode in ("mix", "plain"):
        train(out, mode)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
