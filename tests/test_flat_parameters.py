"""Parameters as views of one flat buffer (forgetless.models.flat): the same values, gradients,
state dicts and runs as without it.

Tolerances: a penalty's value and gradient are compared bitwise (``torch.equal``) where the flat
path does the same float operations in the same order (one term, or terms summed per parameter
set), and to 1e-6 relative where the summation order of several autograd contributions may differ.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from forgetless.config import make_config
from forgetless.data.benchmarks import build_scenario
from forgetless.errors import ConfigError
from forgetless.models import build_model
from forgetless.models.flat import flat_of, flatten_parameters, wants_flat_parameters
from forgetless.strategies import make_strategies
from forgetless.strategies._penalty import AnchoredPenalty, snapshot
from forgetless.training.learner import Learner


def _mlp(seed: int = 0, batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(12, 16)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(16))
    layers += [nn.ReLU(), nn.Linear(16, 4)]
    return nn.Sequential(*layers)


def _terms(model: nn.Module, seed: int = 1) -> AnchoredPenalty:
    """Two importance terms (EWC-like), one anchor-only term (L2-SP-like), one decay term."""
    generator = torch.Generator().manual_seed(seed)
    params = snapshot(model)
    penalty = AnchoredPenalty()
    for weight in (1.0, 0.5):
        importance = {n: torch.rand(v.shape, generator=generator) for n, v in params.items()}
        anchor = {n: v + 0.1 * torch.randn(v.shape, generator=generator) for n, v in params.items()}
        penalty.add_term(importance, anchor, weight=weight)
    penalty.add_term(None, {n: v + 0.05 for n, v in params.items()}, weight=0.3)
    penalty.add_term(None, None, weight=0.2, names=list(params)[-1:])
    return penalty


def _loss_and_grads(model: nn.Module, penalty: AnchoredPenalty, flat=None) -> tuple[float, list[torch.Tensor]]:
    x = torch.randn(8, 12, generator=torch.Generator().manual_seed(3))
    y = torch.arange(8) % 4
    if flat is None:
        model.zero_grad(set_to_none=True)
    else:
        flat.zero_grad()
    loss = F.cross_entropy(model(x), y) + 7.0 * penalty.penalty(model)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("merge", [False, True])
def test_penalty_value_and_gradient_match_without_flattening(merge):
    plain, flat_model = _mlp(), _mlp()
    penalty = _terms(plain)
    penalty.merge = merge
    twin = copy.deepcopy(penalty)
    flat = flatten_parameters(flat_model)
    value, grads = _loss_and_grads(plain, penalty)
    flat_value, flat_grads = _loss_and_grads(flat_model, twin, flat)
    assert flat.grads_attached()  # autograd accumulated into the views, in place
    assert flat_value == pytest.approx(value, rel=1e-6)
    for a, b in zip(grads, flat_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    # the flat path was taken (theta read as a view, the gradient added into the flat buffer)
    assert type(twin.penalty(flat_model).grad_fn).__name__ == "_FlatQuadraticBackward"
    assert type(penalty.penalty(plain).grad_fn).__name__ == "_QuadraticBackward"


def test_one_term_is_bitwise_identical():
    plain, flat_model = _mlp(), _mlp()
    params = snapshot(plain)
    penalty = AnchoredPenalty()
    penalty.add_term({n: torch.rand_like(v) for n, v in params.items()}, {n: v + 0.1 for n, v in params.items()})
    twin = copy.deepcopy(penalty)
    flat = flatten_parameters(flat_model)
    value, grads = _loss_and_grads(plain, penalty)
    flat_value, flat_grads = _loss_and_grads(flat_model, twin, flat)
    assert flat_value == value
    assert all(torch.equal(a, b) for a, b in zip(grads, flat_grads, strict=True))
    assert set(penalty.last_half_gradient) == set(twin.last_half_gradient)
    for name, half in penalty.last_half_gradient.items():
        assert torch.equal(half, twin.last_half_gradient[name])  # what SI subtracts


def test_autograd_grad_gets_the_gradient_and_leaves_grad_alone():
    """``torch.autograd.grad`` through the flat path returns the gradient (not written into .grad)."""
    model = _mlp()
    penalty = _terms(model)
    reference = penalty.gradient(model)
    flat = flatten_parameters(model)
    flat.zero_grad()
    names = [n for n, _ in model.named_parameters()]
    grads = torch.autograd.grad(3.0 * penalty.penalty(model), list(model.parameters()))
    for name, grad in zip(names, grads, strict=True):
        torch.testing.assert_close(grad, 3.0 * reference[name], rtol=1e-6, atol=1e-7)
    assert int(torch.count_nonzero(flat.grad)) == 0


def test_a_detached_grad_falls_back_to_autograd():
    """``zero_grad(set_to_none=True)`` after flattening: gradients come the ordinary way."""
    plain, flat_model = _mlp(), _mlp()
    penalty = _terms(plain)
    twin = copy.deepcopy(penalty)
    flatten_parameters(flat_model)
    value, grads = _loss_and_grads(plain, penalty)
    flat_value, flat_grads = _loss_and_grads(flat_model, twin)  # model.zero_grad(set_to_none=True)
    assert flat_value == pytest.approx(value, rel=1e-6)
    for a, b in zip(grads, flat_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def test_state_dict_keys_values_and_safetensors_unchanged(tmp_path):
    from safetensors.torch import load_file, save_file

    model = _mlp(batchnorm=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flat = flatten_parameters(model)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert flat.numel == sum(p.numel() for p in model.parameters())  # BatchNorm buffers stay out
    save_file(after, str(tmp_path / "model.safetensors"))
    loaded = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.equal(loaded[k], before[k]) for k in before)
    # loading copies into the views: still flat, new values
    other = _mlp(seed=5, batchnorm=True)
    model.load_state_dict(other.state_dict())
    assert flat_of(model) is flat
    assert torch.equal(model[0].weight, other[0].weight)


def test_frozen_parameter_is_not_flattened_and_penalty_skips_its_gradient():
    plain, flat_model = _mlp(), _mlp()
    for model in (plain, flat_model):
        model[0].bias.requires_grad_(False)
    penalty = _terms(plain)
    twin = copy.deepcopy(penalty)
    flat = flatten_parameters(flat_model)
    assert not flat.holds(flat_model[0].bias)
    assert flat.numel == sum(p.numel() for p in flat_model.parameters() if p.requires_grad)
    value, grads = _loss_and_grads(plain, penalty)
    flat_value, flat_grads = _loss_and_grads(flat_model, twin, flat)
    assert flat_model[0].bias.grad is None
    assert flat_value == pytest.approx(value, rel=1e-6)
    for a, b in zip(grads, flat_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def test_unfrozen_after_flattening_takes_the_ordinary_path():
    model = _mlp()
    model[0].bias.requires_grad_(False)
    plain = copy.deepcopy(model)
    penalty = _terms(plain)
    twin = copy.deepcopy(penalty)
    flat = flatten_parameters(model)
    for m in (plain, model):
        m[0].bias.requires_grad_(True)
    assert not flat.covers(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    flat.zero_grad(optimizer)
    value, grads = _loss_and_grads(plain, penalty)
    loss = F.cross_entropy(model(torch.randn(8, 12, generator=torch.Generator().manual_seed(3))), torch.arange(8) % 4)
    (loss + 7.0 * twin.penalty(model)).backward()
    for a, b in zip(grads, [p.grad for p in model.parameters()], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def test_tied_weights_take_one_slot():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 6)
            self.out = nn.Linear(6, 10, bias=False)
            self.out.weight = self.embed.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.embed(x))

    torch.manual_seed(0)
    plain = Tied()
    flat_model = copy.deepcopy(plain)
    flat = flatten_parameters(flat_model)
    assert flat.numel == 60
    assert flat.spans["embed.weight"] == flat.spans["out.weight"] == (0, 60)
    assert flat_model.out.weight is flat_model.embed.weight
    penalty = AnchoredPenalty()
    penalty.add_term({"embed.weight": torch.rand(10, 6)}, {"embed.weight": torch.zeros(10, 6)})
    twin = copy.deepcopy(penalty)
    x = torch.arange(10)
    plain.zero_grad()
    (plain(x).square().mean() + penalty.penalty(plain)).backward()
    flat.zero_grad()
    (flat_model(x).square().mean() + twin.penalty(flat_model)).backward()
    torch.testing.assert_close(flat_model.embed.weight.grad, plain.embed.weight.grad, rtol=1e-6, atol=1e-7)


def test_bf16_autocast_matches_without_flattening():
    plain, flat_model = _mlp(), _mlp()
    penalty = _terms(plain)
    twin = copy.deepcopy(penalty)
    flat = flatten_parameters(flat_model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value, grads = _loss_and_grads(plain, penalty)
        flat_value, flat_grads = _loss_and_grads(flat_model, twin, flat)
    assert flat_value == pytest.approx(value, rel=1e-6)
    for a, b in zip(grads, flat_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def test_refusals():
    with pytest.raises(ConfigError, match="one dtype"):
        flatten_parameters(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).double()))
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable"):
        flatten_parameters(frozen)
    conv = nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    with pytest.raises(ConfigError, match="not contiguous"):
        flatten_parameters(conv)
    with pytest.raises(ConfigError, match="exclude each other"):
        wants_flat_parameters(True, [], task_il=False, channels_last=True)
    # replacing .data breaks the views: the model no longer counts as flat
    model = _mlp()
    flatten_parameters(model)
    model[0].weight.data = model[0].weight.data.clone()
    assert flat_of(model) is None


def test_default_is_on_for_penalty_strategies_off_for_naive_and_task_il():
    ewc, naive = make_strategies("ewc"), make_strategies("naive")
    assert wants_flat_parameters(None, ewc, task_il=False, channels_last=False)
    assert not wants_flat_parameters(None, naive, task_il=False, channels_last=False)
    assert not wants_flat_parameters(None, ewc, task_il=True, channels_last=False)
    assert not wants_flat_parameters(False, ewc, task_il=False, channels_last=False)
    assert wants_flat_parameters(True, naive, task_il=True, channels_last=False)


def _two_task_run(names: str, flat: bool):
    config = make_config(
        benchmark="split-digits", scenario="class", tasks=2, epochs=1, hidden=[16], batch_size=32, flat_parameters=flat
    )
    scenario = build_scenario("split-digits", "class", 2, seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", scenario.input_shape, scenario.head_sizes, False, [16])
    learner = Learner(scenario, model, make_strategies(names), config, seed=0)
    assert (learner.flat is not None) == flat
    return learner.run(), learner


@pytest.mark.parametrize("names", ["ewc", "si", "l2sp", "agem", "mas+online-ewc", "gem+ewc"])
def test_two_task_run_is_identical_with_and_without(names):
    plain, plain_learner = _two_task_run(names, flat=False)
    flat, learner = _two_task_run(names, flat=True)
    np.testing.assert_array_equal(flat.matrix, plain.matrix)
    assert learner.flat.intact() and learner.flat.grads_attached()
    plain_state = plain_learner.model.state_dict()
    flat_state = learner.model.state_dict()
    assert list(flat_state) == list(plain_state)
    for key, value in plain_state.items():  # the trained weights agree to float rounding
        torch.testing.assert_close(flat_state[key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("names", ["ewc", "l2sp", "agem"])
def test_gradual_unfreezing_run_is_identical_with_and_without(names):
    """--unfreeze-every freezes trained parameters after they were flattened (before each task):
    a frozen parameter takes no optimizer step and no penalty gradient, as without flattening
    (found by the session probe: the default-on flat run crashed, weight decay moved frozen weights)."""
    from forgetless.training.schedules import schedule_strategies

    runs = {}
    for flat in (False, True):
        config = make_config(
            benchmark="split-digits", scenario="class", tasks=2, epochs=1, hidden=[16], batch_size=32,
            flat_parameters=flat, unfreeze_every=7, weight_decay=0.01,
        )  # fmt: skip
        scenario = build_scenario("split-digits", "class", 2, seed=0)
        torch.manual_seed(0)
        model = build_model("mlp", scenario.input_shape, scenario.head_sizes, False, [16])
        learner = Learner(scenario, model, make_strategies(names) + schedule_strategies(config), config, seed=0)
        assert (learner.flat is not None) == flat
        runs[flat] = (learner.run().matrix, learner.model.state_dict())
    np.testing.assert_array_equal(runs[True][0], runs[False][0])
    for key, value in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][key], value, rtol=1e-5, atol=1e-6)


def test_a_parameter_frozen_after_flattening_gets_no_gradient():
    model = _mlp()
    flat = flatten_parameters(model)
    model[0].bias.requires_grad_(False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.5)
    before = model[0].bias.detach().clone()
    for _ in range(2):
        flat.zero_grad(optimizer)
        loss = F.cross_entropy(model(torch.randn(8, 12)), torch.arange(8) % 4)
        (loss + _terms(model).penalty(model)).backward()
        optimizer.step()
    assert model[0].bias.grad is None
    assert torch.equal(model[0].bias, before)
    assert not flat.serves_gradient(model)


def test_explicit_flat_parameters_in_task_il_with_a_projection_is_refused_in_one_line() -> None:
    """Found by the session's probe: A-GEM over the flat gradient also moved the other tasks' heads."""
    from forgetless.training.experiment import build_learner, load_scenario, resolve

    config = resolve(
        make_config(benchmark="split-digits", scenario="task", tasks=2, strategies=["agem"], flat_parameters=True)
    )
    with pytest.raises(ConfigError, match="--flat-parameters in task-IL with agem"):
        build_learner(config, load_scenario(config, 0), "agem", 0)
    plain = resolve(
        make_config(benchmark="split-digits", scenario="task", tasks=2, strategies=["ewc"], flat_parameters=True)
    )
    assert build_learner(plain, load_scenario(plain, 0), "ewc", 0).flat is not None  # a penalty is fine
