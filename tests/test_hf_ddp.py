"""The Hugging Face integration under DDP: 2 CPU processes (gloo) launched by ``torchrun``.

``tests/ddp_worker.py`` runs on each rank and fine-tunes a tiny GPT-2 with ``ForgetlessTrainer``
(L2-SP + EWC toward the start weights) twice: with replay mixed in by the ``MixingBatchSampler``
and, without replay, on the Trainer's own sampler with gradient accumulation. Every rank records
the row ids it trained on, so a plain single-process SGD loop written here can replay the same
global batches and must land on the same weights.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("safetensors")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from gloo import WORLD, gloo_env, load_module, require_process_group, torchrun_command  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed has no gloo backend"
)

WORKER_PATH = Path(__file__).with_name("ddp_worker.py")
TIMEOUT_S = 240


worker = load_module(WORKER_PATH)


@pytest.fixture(scope="module")
def ddp_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs the worker on 2 ranks once for the module; fails with both ranks' output if a rank fails."""
    out = tmp_path_factory.mktemp("ddp")
    env = gloo_env(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    command = torchrun_command()
    require_process_group(out, env)
    try:
        done = subprocess.run(
            [*command, str(WORKER_PATH), str(out)], env=env, capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"torchrun did not finish in {TIMEOUT_S} s:\n{error.stdout}\n{error.stderr}")
    assert done.returncode == 0, (
        f"a rank failed (exit {done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
    )
    return out


def _record(out: Path, mode: str, rank: int) -> dict[str, Any]:
    return json.loads((out / f"{mode}-rank{rank}.json").read_text())


def _weights(out: Path, mode: str, rank: int) -> dict[str, torch.Tensor]:
    return load_file(str(out / f"{mode}-rank{rank}.safetensors"))


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[n] - b[n]).abs().max()) for n in a)


RankLosses = Callable[[torch.nn.Module, int], list[torch.Tensor]]


def _reference(
    rank_losses: RankLosses, n_steps: int, penalty_scale: float = 1.0
) -> tuple[dict[str, torch.Tensor], list[list[float]]]:
    """One process, plain SGD on ``mean over ranks of rank_losses(model, step) + penalty``.

    The penalty is written out by hand: ``alpha/2 ||w - w0||^2 + lambda/2 sum F (w - w0)^2``.
    Returns the final weights and, per step, each rank's ``loss + penalty``.
    """
    model = worker.build_model().train()
    _, general = worker.build_data()
    fisher = worker.build_fisher(model, general)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=worker.LR)
    seen: list[list[float]] = []
    for k in range(n_steps):
        params = dict(model.named_parameters())
        l2sp = sum((p - start[n]).square().sum() for n, p in params.items())
        ewc = sum((f * (params[n] - start[n]).square()).sum() for n, f in fisher.items())
        penalty = worker.ALPHA / 2 * l2sp + worker.LAMBDA / 2 * ewc
        losses = rank_losses(model, k)
        seen.append([float(loss.detach() + penalty.detach()) for loss in losses])
        total = sum(losses) / len(losses) + penalty_scale * penalty
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}, seen


def _lm_loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, labels=ids).loss


def _summed_lm_loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy summed over the tokens (written out: no Hugging Face loss code)."""
    logits = model(input_ids=ids).logits[:, :-1]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
    )


# -- with replay: the mixing sampler ---------------------------------------------------------------
def test_ranks_stay_in_sync_train_and_apply_the_penalty(ddp_out: Path) -> None:
    records = [_record(ddp_out, "mix", r) for r in range(WORLD)]
    assert [r["rank"] for r in records] == [0, 1] and all(r["world_size"] == WORLD for r in records)
    assert all(r["wrapped"] == "DistributedDataParallel" for r in records)
    final = [_weights(ddp_out, "mix", r) for r in range(WORLD)]
    assert _max_diff(final[0], final[1]) == 0.0  # DDP keeps the replicas bit-identical
    start = {n: p.detach() for n, p in worker.build_model().named_parameters()}
    assert _max_diff(final[0], start) > 1e-3  # trained
    for record in records:
        penalties = [s["penalty"] for s in record["steps"]]
        assert len(penalties) == worker.STEPS
        assert penalties[0] == 0.0  # at the anchor
        assert all(0.0 < p < float("inf") for p in penalties[1:])
    # every rank computes the penalty on the same weights (equal up to summation order)
    for a, b in zip(*[[s["penalty"] for s in r["steps"]] for r in records]):
        assert a == pytest.approx(b, rel=1e-5)


def test_each_rank_gets_its_own_batches_with_the_replay_share(ddp_out: Path) -> None:
    records = [_record(ddp_out, "mix", r) for r in range(WORLD)]
    n_replay = round(worker.RATIO * worker.BATCH)
    assert n_replay == 1
    batches = []
    for record in records:
        for step in record["steps"]:
            task, replay = step["rows"]["task"], step["rows"].get("replay", [])
            assert len(task) == worker.BATCH - n_replay and len(replay) == n_replay
            assert all(i < worker.N_TASK for i in task) and all(i >= worker.N_TASK for i in replay)
            batches.append(sorted(task + replay))
    for a, b in zip(*[[s["rows"] for s in r["steps"]] for r in records]):
        assert not set(a["task"]) & set(b["task"])  # sharded: the ranks never train on the same rows
    # together the ranks consumed exactly the sampler's first STEPS * WORLD batches
    assert sorted(batches) == sorted(sorted(b) for b in worker.make_sampler(worker.STEPS * WORLD))


def test_two_ranks_equal_one_process_on_the_global_batches(ddp_out: Path) -> None:
    records = [_record(ddp_out, "mix", r) for r in range(WORLD)]
    task, general = worker.build_data()

    def rank_losses(model: torch.nn.Module, k: int) -> list[torch.Tensor]:
        out = []
        for record in records:
            rows = record["steps"][k]["rows"]
            t = task["input_ids"][rows["task"]]
            g = general["input_ids"][[i - worker.N_TASK for i in rows["replay"]]]
            out.append((len(t) * _lm_loss(model, t) + len(g) * _lm_loss(model, g)) / (len(t) + len(g)))
        return out

    final, seen = _reference(rank_losses, worker.STEPS)
    ddp = _weights(ddp_out, "mix", 0)
    tolerance = 1e-5
    assert _max_diff(ddp, final) < tolerance
    for k, losses in enumerate(seen):
        for record, loss in zip(records, losses):
            assert record["steps"][k]["loss"] == pytest.approx(loss, rel=1e-4)
    # the comparison is sensitive: a penalty counted on one rank only (half the gradient after the
    # DDP average), or each rank training on its own batches only, ends far away
    half, _ = _reference(rank_losses, worker.STEPS, penalty_scale=0.5)
    assert _max_diff(ddp, half) > 100 * tolerance
    alone, _ = _reference(lambda model, k: rank_losses(model, k)[:1], worker.STEPS)
    assert _max_diff(ddp, alone) > 100 * tolerance


# -- without replay: the Trainer's sampler, gradient accumulation, num_items_in_batch ------------------
def test_accumulated_steps_equal_one_process_on_the_global_batches(ddp_out: Path) -> None:
    records = [_record(ddp_out, "plain", r) for r in range(WORLD)]
    final = [_weights(ddp_out, "plain", r) for r in range(WORLD)]
    assert _max_diff(final[0], final[1]) == 0.0
    # rows[k][r]: the rows rank r trained on during optimizer step k (both micro-batches)
    rows = [
        [[i for s in r["steps"] if s["step"] == k for i in s["rows"]["task"]] for r in records]
        for k in range(worker.PLAIN_STEPS)
    ]
    assert all(len(rank) == 4 for step in rows for rank in step)  # 2 micro-batches of 2 rows per rank
    every = [i for step in rows for rank in step for i in rank]
    assert len(set(every)) == len(every)  # sharded, one pass: no row twice
    assert all(s["penalty"] > 0 for r in records for s in r["steps"] if s["step"] > 0)
    # the Trainer divides the summed token loss by the token count of the whole optimizer step,
    # gathered over the ranks: 8 rows (it counts SEQ or SEQ - 1 labels a row, depending on whether
    # transformers recognises the model's loss as a causal-LM one: not for GPT2LMHeadModel)
    counts = {s["num_items_in_batch"] for r in records for s in r["steps"]}
    assert len(counts) == 1
    count = counts.pop()
    assert count in (2 * WORLD * 2 * worker.SEQ, 2 * WORLD * 2 * (worker.SEQ - 1))
    task, _ = worker.build_data()

    def rank_losses(model: torch.nn.Module, k: int) -> list[torch.Tensor]:
        # rank r's part of the step's loss, times WORLD: DDP averages the ranks' gradients
        return [WORLD * _summed_lm_loss(model, task["input_ids"][rank]) / count for rank in rows[k]]

    reference, _ = _reference(rank_losses, worker.PLAIN_STEPS)
    tolerance = 1e-5
    assert _max_diff(final[0], reference) < tolerance
    # sensitive: a penalty added once per micro-batch (not divided by the accumulation steps) ends far away
    doubled, _ = _reference(rank_losses, worker.PLAIN_STEPS, penalty_scale=2.0)
    assert _max_diff(final[0], doubled) > 100 * tolerance
