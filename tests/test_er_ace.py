"""ER-ACE (Caccia et al. 2022): the asymmetric cross-entropy, through the ``criterion`` hook."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import requires_fmnist
from forgetless.strategies import make_strategies
from forgetless.strategies.base import Batch, ModelOutput, TrainingContext
from forgetless.strategies.er_ace import asymmetric_cross_entropy


def test_current_rows_are_scored_among_their_own_classes_only() -> None:
    """Eq. 5 by hand: the current rows' log-softmax over the classes they contain, plus the
    replay rows' plain cross-entropy over every class; the two means summed."""
    torch.manual_seed(0)
    logits = torch.randn(6, 5)
    labels = torch.tensor([3, 4, 3, 0, 1, 2])  # rows 0-2 current (classes 3, 4), 3-5 replay
    loss = asymmetric_cross_entropy(logits, labels, current=3, mask=True)
    own = logits[:3, [3, 4]]
    by_hand_new = -(own.log_softmax(1)[torch.arange(3), torch.tensor([0, 1, 0])]).mean()
    by_hand_replay = -(logits[3:].log_softmax(1)[torch.arange(3), labels[3:]]).mean()
    assert float(loss) == pytest.approx(float(by_hand_new + by_hand_replay), rel=1e-6)
    assert float(loss) != pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-3)  # not ER's


def test_new_rows_do_not_push_absent_classes() -> None:
    """The logits of classes absent from the current rows get no gradient from those rows."""
    logits = torch.randn(4, 6, requires_grad=True)
    labels = torch.tensor([4, 5, 4, 5])
    asymmetric_cross_entropy(logits, labels, current=4, mask=True).backward()
    assert torch.all(logits.grad[:, :4] == 0) and torch.any(logits.grad[:, 4:] != 0)


def test_first_task_is_plain_cross_entropy() -> None:
    logits, labels = torch.randn(8, 4), torch.randint(0, 4, (8,))
    unmasked = asymmetric_cross_entropy(logits, labels, current=8, mask=False)
    assert torch.equal(unmasked, F.cross_entropy(logits, labels))


def test_the_learner_uses_the_criterion_in_place_of_cross_entropy() -> None:
    """Through the learner: ER-ACE's criterion replaces the base loss (task 1: the replay rows
    are in the batch and the current rows are masked), and the step's loss equals eq. 5."""
    from forgetless.config import make_config
    from forgetless.training.experiment import build_learner, load_scenario, resolve

    config = resolve(make_config(benchmark="split-digits", scenario="class", tasks=2, epochs=1, buffer_size=50))
    learner = build_learner(config, load_scenario(config, 0), "er-ace", 0)
    seen: list[tuple[float, float]] = []
    strategy = learner.strategies[0]
    original = strategy.criterion

    def spy(ctx: TrainingContext, batch: Batch, output: ModelOutput) -> torch.Tensor:
        loss = original(ctx, batch, output)
        expected = asymmetric_cross_entropy(output.logits, batch.y, ctx.current_size, ctx.task_index > 0)
        seen.append((float(loss.detach()), float(expected.detach())))
        if ctx.task_index == 1:
            assert len(batch) > ctx.current_size  # replay rows follow the current ones
        return loss

    strategy.criterion = spy  # type: ignore[method-assign]
    learner.run()
    assert seen and all(a == b for a, b in seen)


def test_er_ace_is_built_by_name() -> None:
    (strategy,) = make_strategies("er-ace", {"er-ace": {"buffer_size": 10}})
    assert strategy.name == "er-ace" and type(strategy).overrides("criterion")


@pytest.mark.slow
@requires_fmnist
def test_er_ace_forgets_less_than_naive_and_er_on_the_peers_setting() -> None:
    """Split Fashion-MNIST class-IL, the peers' SGD setting (full data, 1 epoch, buffer 500).
    Measured seeds 0-2: ER-ACE 0.737 / 0.739 / 0.730, ER 0.707 / 0.684 / 0.690, naive 0.199
    (with 6000 rows per task and the default Adam: ER-ACE 0.750 / 0.747, ER 0.741 / 0.733)."""
    from test_replay_behaviour import PEER_SGD, final_accuracy

    er_ace = final_accuracy("split-fmnist", "class", "er-ace", per_task=None, **PEER_SGD)
    er = final_accuracy("split-fmnist", "class", "er", per_task=None, **PEER_SGD)
    naive = final_accuracy("split-fmnist", "class", "naive", per_task=None, **PEER_SGD)
    assert er_ace > naive + 0.4, (er_ace, naive)
    assert er_ace > er + 0.01, (er_ace, er)
