"""Correctness of EWC, Online EWC, SI, MAS, L2-SP, LwF and their shared machinery.

Each test compares against a slow, obviously-correct reference or an analytic answer, so a
wrong formula fails it.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from forgetless.config import make_config
from forgetless.data.benchmarks import build_scenario
from forgetless.errors import ConfigError
from forgetless.models import INACTIVE_LOGIT, build_model
from forgetless.models.model import forward_with_features
from forgetless.strategies import make_strategies
from forgetless.strategies import online_ewc as online_ewc_module
from forgetless.strategies._fisher import fisher_diagonal, fisher_objectives, mas_importance
from forgetless.strategies._penalty import AnchoredPenalty, snapshot
from forgetless.strategies.base import Batch, ModelOutput, StepClock, TrainingContext
from forgetless.strategies.lwf import LwF
from forgetless.strategies.si import SI
from forgetless.training.learner import Learner


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[n] - b[n]).abs().max()) for n in a)


def small_model(multi_head: bool, active: int | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("mlp", (1, 6, 6), [3, 4] if multi_head else [8], multi_head, [12, 10])
    if active is not None:
        model.head.set_active_outputs(active)
    return model


def inputs(n: int = 24) -> torch.Tensor:
    return torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(1))


def reference_penalty(terms, model, weights=None) -> torch.Tensor:
    """``sum_t w_t sum Omega (theta - anchor)^2`` written out with autograd."""
    params = dict(model.named_parameters())
    total = torch.zeros(())
    for t, (importance, anchor) in enumerate(terms):
        w = 1.0 if weights is None else weights[t]
        for n, omega in importance.items():
            total = total + w * (omega * (params[n] - anchor[n]).square()).sum()
    return total


def fake_ctx(model: nn.Module, kind: str = "class", task_index: int = 0) -> TrainingContext:
    scenario = build_scenario("split-digits", kind, 5, seed=0)
    config = make_config(benchmark="split-digits", scenario=kind)
    return TrainingContext(
        model=model,
        scenario=scenario,
        config=config,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        clock=StepClock(task_index=task_index),
    )


# -- per-sample gradients -------------------------------------------------------------------
@pytest.mark.parametrize("multi_head", [False, True])
@pytest.mark.parametrize("kind", ["sampled", "empirical", "exact"])
@pytest.mark.parametrize("method", ["identity", "vmap"])
def test_batched_fisher_equals_per_sample_loop(multi_head, kind, method):
    model = small_model(multi_head, active=None if multi_head else 5)
    x = inputs()
    task_id = 1 if multi_head else None
    y = torch.randint(0, 3, (x.shape[0],), generator=torch.Generator().manual_seed(2))
    fast = fisher_diagonal(model, x, task_id, y, kind, torch.Generator().manual_seed(3), method)
    slow = fisher_diagonal(model, x, task_id, y, kind, torch.Generator().manual_seed(3), "loop")
    assert max_diff(fast, slow) < 1e-6
    assert max(float(v.abs().max()) for v in slow.values()) > 1e-3  # not trivially zero


def test_identity_routes_conv_and_mixed_task_ids_to_exact_answers():
    torch.manual_seed(0)
    cnn = build_model("cnn", (1, 8, 8), [2, 3], True, [4])
    x = torch.rand(10, 1, 8, 8)
    task_ids = torch.tensor([0, 1] * 5)
    fast = fisher_diagonal(cnn, x, task_ids, kind="exact", method="identity")
    slow = fisher_diagonal(cnn, x, task_ids, kind="exact", method="loop")
    assert max_diff(fast, slow) < 1e-6
    assert float(fast["backbone.0.weight"].abs().max()) > 0  # conv went through vmap


def test_linear_called_twice_is_not_treated_with_the_identity():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(4, 4)

        def forward(self, x, task_ids=None):
            return self.layer(torch.tanh(self.layer(x)))

    torch.manual_seed(0)
    model, x = Twice(), torch.rand(6, 4)
    fast = fisher_diagonal(model, x, kind="exact", method="identity")
    slow = fisher_diagonal(model, x, kind="exact", method="loop")
    assert max_diff(fast, slow) < 1e-6


class TiedLinears(nn.Module):
    """Two Linears sharing one weight, each called once (``second.weight = first.weight``)."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(4, 4)
        self.second = nn.Linear(4, 4)
        self.second.weight = self.first.weight

    def forward(self, x, task_ids=None):
        return self.second(torch.tanh(self.first(x)))


class TiedOutput(nn.Module):
    """An output layer reusing the input projection's weight (as tied embeddings do)."""

    def __init__(self):
        super().__init__()
        self.project = nn.Linear(4, 6)

    def forward(self, x, task_ids=None):
        return torch.tanh(self.project(x)) @ self.project.weight


@pytest.mark.parametrize("model_class", [TiedLinears, TiedOutput])
@pytest.mark.parametrize("kind", ["exact", "sampled"])
def test_a_tied_weight_is_not_treated_with_the_identity(model_class, kind):
    """A Linear called once whose weight is also used elsewhere has a per-sample gradient that
    sums both uses: the identity must detect the tie and leave that weight to the exact path."""
    torch.manual_seed(0)
    model, x = model_class(), torch.rand(6, 4)
    fast = fisher_diagonal(model, x, kind=kind, generator=torch.Generator().manual_seed(3), method="identity")
    slow = fisher_diagonal(model, x, kind=kind, generator=torch.Generator().manual_seed(3), method="loop")
    assert max_diff(fast, slow) < 1e-6
    assert max(float(v.abs().max()) for v in slow.values()) > 1e-3
    mas_fast = mas_importance(model, x, method="identity")
    assert max_diff(mas_fast, mas_importance(model, x, method="loop")) < 1e-6


def test_untied_linears_stay_on_the_identity_path(monkeypatch):
    """The tie check must not send ordinary Linears (used once) to the slower vmap path."""
    from forgetless.strategies import _fisher

    def no_vmap(*args, **kwargs):
        raise AssertionError("an untied Linear fell back to vmap")

    monkeypatch.setattr(_fisher, "_vmap_pass", no_vmap)
    fisher = fisher_diagonal(small_model(False), inputs(), kind="exact", method="identity")
    assert float(fisher["backbone.1.weight"].abs().max()) > 0


def test_fisher_kinds_differ_off_optimum_and_sampled_is_unbiased_for_exact():
    model = small_model(False)
    x = inputs(16)
    y = torch.zeros(16, dtype=torch.int64)
    exact = fisher_diagonal(model, x, y=y, kind="exact")
    empirical = fisher_diagonal(model, x, y=y, kind="empirical")
    generator = torch.Generator().manual_seed(0)
    draws = [fisher_diagonal(model, x, kind="sampled", generator=generator) for _ in range(300)]
    one_draw = draws[0]
    mean = {n: torch.stack([d[n] for d in draws]).mean(0) for n in exact}
    norm = lambda d: torch.cat([v.flatten() for v in d.values()])  # noqa: E731
    e, s, m, emp = norm(exact), norm(one_draw), norm(mean), norm(empirical)
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    assert rel(emp, e) > 0.2 and rel(s, e) > 0.05 and rel(emp, s) > 0.2
    assert rel(m, e) < 0.05  # E over sampled labels = exact


def test_sampling_only_draws_active_outputs():
    logits = torch.full((1000, 10), INACTIVE_LOGIT)
    logits[:, :3] = torch.randn(1000, 3)
    make = fisher_objectives("sampled", None, torch.Generator().manual_seed(0))
    ((_, drawn),) = make(logits, torch.arange(1000))
    assert int(drawn.max()) <= 2 and len(drawn.unique()) == 3
    assert torch.softmax(logits, 1)[:, 3:].max() == 0  # softmax gives masked outputs exactly 0
    model = small_model(False, active=3)
    fisher = fisher_diagonal(model, inputs(), kind="sampled", generator=torch.Generator())
    assert float(fisher["head.linear.weight"][3:].abs().max()) == 0.0


def test_mas_matches_loop_and_reads_no_labels():
    model = small_model(True)
    x = inputs()
    fast = mas_importance(model, x, 0)
    slow = mas_importance(model, x, 0, method="loop")
    assert max_diff(fast, slow) < 1e-6
    # by hand for the bias of the head: |d ||z||^2 / d b| = |2 z| summed over samples
    with torch.no_grad():
        z = model(x, 0)[:, :3]
    assert torch.allclose(fast["head.heads.0.bias"], (2 * z).abs().mean(0), atol=1e-6)
    # through the strategy, on a task whose labels are all -1 (unusable as targets)
    ctx = fake_ctx(model, "task")
    ctx.scenario.tasks[0].train_y = torch.full_like(ctx.scenario.tasks[0].train_y, -1)
    ctx.model = build_model("mlp", ctx.scenario.input_shape, ctx.scenario.head_sizes, True, [8])
    (mas,) = make_strategies("mas", {"mas": {"samples": 50}})
    mas.after_task(ctx)
    assert mas.penalty.terms and mas.penalty.nbytes > 0


# -- the penalty --------------------------------------------------------------------------------
def test_penalty_gradient_is_lambda_fisher_times_displacement():
    model = small_model(False)
    ctx = fake_ctx(model)
    (ewc,) = make_strategies("ewc", {"ewc": {"ewc_lambda": 7.0}})
    generator = torch.Generator().manual_seed(5)
    fishers, anchors = [], []
    for _ in range(2):
        fisher = {n: torch.rand(p.shape, generator=generator) for n, p in model.named_parameters()}
        anchor = {n: p.detach() + torch.randn(p.shape, generator=generator) for n, p in model.named_parameters()}
        ewc.penalty.add_term(fisher, anchor)
        fishers.append(fisher)
        anchors.append(anchor)
    loss = ewc.loss(ctx, None, None)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    for (n, p), g in zip(model.named_parameters(), grads, strict=True):
        expected = sum(7.0 * f[n] * (p.detach() - a[n]) for f, a in zip(fishers, anchors))
        assert torch.allclose(g, expected, atol=1e-5, rtol=1e-5)
    reference = 3.5 * reference_penalty(list(zip(fishers, anchors)), model)
    assert torch.allclose(loss, reference, rtol=1e-5)
    # the gradient SI relies on is the same
    own = ewc.penalty.last_gradient
    for (n, _), g in zip(model.named_parameters(), grads, strict=True):
        assert torch.allclose(3.5 * own[n], g, atol=1e-5)


def test_penalty_skips_absent_or_reshaped_parameters_explicitly():
    model = small_model(False)
    anchor = snapshot(model)
    anchor["ghost"] = torch.zeros(3)
    anchor["head.linear.bias"] = torch.zeros(99)
    importance = {n: torch.ones_like(v) for n, v in anchor.items()}
    penalty = AnchoredPenalty()
    penalty.add_term(importance, anchor)
    with pytest.warns(UserWarning, match="penalty skips parameter"):
        value = penalty.penalty(model)
    assert penalty.skipped == {"ghost", "head.linear.bias"}
    assert float(value.detach()) == 0.0  # every remaining parameter sits at its anchor
    strict = AnchoredPenalty(on_mismatch="error")
    strict.add_term(importance, anchor)
    with pytest.raises(ConfigError, match="penalty parameter"):
        strict.penalty(model)
    only_head = AnchoredPenalty(name_filter=lambda n: n.startswith("head."))
    only_head.add_term(None, {n: torch.zeros_like(p) for n, p in model.named_parameters()})
    expected = sum(p.detach().square().sum() for n, p in model.named_parameters() if "head" in n)
    assert torch.allclose(only_head.penalty(model), expected)


def test_online_ewc_fisher_is_the_decayed_sum(monkeypatch):
    model = small_model(False)
    ctx = fake_ctx(model)
    gamma, k = 0.7, 4
    generator = torch.Generator().manual_seed(0)
    per_task = [{n: torch.rand(p.shape, generator=generator) for n, p in model.named_parameters()} for _ in range(k)]
    calls = iter(per_task)
    monkeypatch.setattr(online_ewc_module, "estimate_fisher", lambda ctx, params: next(calls))
    (strategy,) = make_strategies("online-ewc", {"online-ewc": {"gamma": gamma, "ewc_lambda": 3}})
    for _ in range(k):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1)
        strategy.after_task(ctx)
    by_hand = {n: sum(gamma ** (k - 1 - j) * per_task[j][n] for j in range(k)) for n in per_task[0]}
    assert max_diff(strategy.fisher, by_hand) < 1e-6
    assert len(strategy.penalty.terms) == 1  # constant size
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3)
    value = strategy.loss(ctx, None, None)
    reference = 1.5 * gamma * reference_penalty([(by_hand, snapshot(model))], model)
    expected = 1.5 * gamma * sum(0.09 * f.sum() for f in by_hand.values())
    assert torch.allclose(value, torch.tensor(float(expected)), rtol=1e-4)
    assert float(reference.detach()) == 0.0  # sanity of the helper: anchor == theta gives 0


# -- SI -----------------------------------------------------------------------------------------
class Quadratic(nn.Module):
    def __init__(self, start: torch.Tensor):
        super().__init__()
        self.theta = nn.Parameter(start.clone())


def test_si_importance_on_a_quadratic_matches_the_analytic_path_integral():
    """L = 1/2 sum h (theta - t)^2 by gradient descent, lr eta, T steps: e_s = r^s e_0, r = 1 -
    eta h; omega = sum_s eta h^2 e_s^2 = eta h^2 e_0^2 (1 - r^(2T)) / (1 - r^2), Delta = e_0 (r^T
    - 1), Omega = omega / (Delta^2 + xi). A second task adds the penalty, which SI excludes."""
    h = torch.tensor([0.5, 1.0, 2.0, 4.0])
    target = torch.tensor([1.0, -2.0, 0.5, 3.0])
    start = torch.zeros(4)
    eta, steps, xi = 0.05, 30, 0.1
    model = Quadratic(start)
    ctx = TrainingContext(model, None, None, torch.device("cpu"), torch.Generator())  # type: ignore[arg-type]
    si = SI(c=0.5, xi=xi)
    optimizer = torch.optim.SGD(model.parameters(), lr=eta)

    def train(task_target: torch.Tensor) -> None:
        si.before_task(ctx)
        for _ in range(steps):
            loss = 0.5 * (h * (model.theta - task_target).square()).sum()
            extra = si.loss(ctx, None, None)
            if extra is not None:
                loss = loss + extra
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            si.after_step(ctx, None, None)
        si.after_task(ctx)

    def analytic(e0: torch.Tensor, curvature: torch.Tensor) -> torch.Tensor:
        r = 1 - eta * curvature
        omega = eta * curvature**2 * e0**2 * (1 - r ** (2 * steps)) / (1 - r**2)
        delta = e0 * (r**steps - 1)
        return omega / (delta**2 + xi)

    train(target)
    first = analytic(start - target, h)
    assert torch.allclose(si.importance["theta"], first, rtol=1e-4)
    # task 2: the task loss pulls toward target2; the SI penalty is excluded from the integral
    anchor = model.theta.detach().clone()
    target2 = torch.tensor([-1.0, 1.0, 2.0, 0.0])
    train(target2)
    # total loss = 1/2 h (x - t2)^2 + c Omega (x - a)^2: a quadratic with curvature k and
    # minimum m; the task-loss-only path integral is int -h (x - t2) dx along the path.
    k = h + 2 * 0.5 * first
    m = (h * target2 + 2 * 0.5 * first * anchor) / k
    r = 1 - eta * k
    e = torch.stack([(anchor - m) * r**s for s in range(steps + 1)])  # x_s - m
    x_path = m + e
    omega = (-(h * (x_path[:-1] - target2)) * (x_path[1:] - x_path[:-1])).sum(0)
    delta = x_path[-1] - x_path[0]
    second = (omega / (delta**2 + xi)).clamp_min(0)
    assert torch.allclose(si.importance["theta"], first + second, rtol=1e-4)


# -- L2-SP ---------------------------------------------------------------------------------
def test_l2sp_anchors_trained_parameters_and_decays_new_heads():
    model = small_model(True)
    ctx = fake_ctx(model, "task")
    (l2sp,) = make_strategies("l2sp", {"l2sp": {"alpha": 2.0, "beta": 0.5}})
    l2sp.before_task(ctx)
    assert l2sp.loss(ctx, None, None) is None  # nothing to keep on the first task
    with torch.no_grad():  # "train" task 0: the backbone and head 0 move, head 1 does not
        for n, p in model.named_parameters():
            if "heads.1" not in n:
                p.add_(0.2)
    l2sp.after_task(ctx)
    ctx.advance(task_index=1)
    l2sp.before_task(ctx)
    start = snapshot(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    expected = sum(
        (0.5 * 0.5 * p.detach().square().sum())
        if "heads.1" in n
        else 0.5 * 2.0 * (p.detach() - start[n]).square().sum()
        for n, p in model.named_parameters()
    )
    assert torch.allclose(l2sp.loss(ctx, None, None), expected, rtol=1e-5)


# -- LwF --------------------------------------------------------------------------------------
def lwf_batch(ctx: TrainingContext, task_index: int) -> Batch:
    task = ctx.scenario.tasks[task_index]
    return Batch(ctx.prepare(task.train_x[:32]), task.train_y[:32], ctx.task_id(task_index))


@pytest.mark.parametrize("kind", ["class", "task"])
def test_lwf_is_zero_for_the_old_model_and_watches_only_old_outputs(kind):
    scenario = build_scenario("split-digits", kind, 5, seed=0)
    model = build_model("mlp", scenario.input_shape, scenario.head_sizes, kind == "task", [16])
    if kind == "class":
        model.head.set_active_outputs(2)
    ctx = fake_ctx(model, kind)
    lwf = LwF(alpha=1.0, temperature=2.0)
    lwf.before_task(ctx)
    first = lwf_batch(ctx, 0)
    assert lwf.loss(ctx, first, ModelOutput(model(first.x, first.task_ids))) is None  # first task: no-op
    lwf.after_task(ctx)
    ctx.advance(task_index=1)
    lwf.before_task(ctx)
    if kind == "class":
        model.head.set_active_outputs(4)
    batch = lwf_batch(ctx, 1)
    ctx.advance(current_size=len(batch))

    def loss() -> float:
        return float(lwf.loss(ctx, batch, ModelOutput(*forward_with_features(model, batch.x, batch.task_ids))).detach())

    assert loss() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():  # change only what belongs to the new task: still zero
        if kind == "class":
            model.head.linear.weight[2:4].add_(1.0)
        else:
            model.head.heads[1].weight.add_(1.0)
    assert loss() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():  # change an old output: positive, equal to the written-out KL
        if kind == "class":
            model.head.linear.weight[0].add_(1.0)
        else:
            model.head.heads[0].weight[0].add_(1.0)
    old_model = lwf.old_model
    with torch.no_grad():
        old = old_model(batch.x, 0 if kind == "task" else None)[:, :2] / 2
        new = model(batch.x, 0 if kind == "task" else None)[:, :2] / 2
        p = old.softmax(1)
        kl = (p * (p.log() - new.log_softmax(1))).sum(1).mean() * 4
    assert loss() == pytest.approx(float(kl), rel=1e-4) and float(kl) > 1e-3


def test_lwf_distils_only_the_current_rows_when_replay_rows_follow():
    scenario = build_scenario("split-digits", "class", 5, seed=0)
    model = build_model("mlp", scenario.input_shape, scenario.head_sizes, False, [16])
    ctx = fake_ctx(model)
    lwf = LwF()
    ctx.advance(task_index=1)
    lwf.before_task(ctx)
    batch = lwf_batch(ctx, 1)
    ctx.advance(current_size=20)
    logits = model(batch.x, None)
    with torch.no_grad():
        logits_mod = logits.clone()
        logits_mod[20:] += torch.randn_like(logits_mod[20:])  # replay rows differ: ignored
    assert float(lwf.loss(ctx, batch, ModelOutput(logits_mod))) == pytest.approx(0.0, abs=1e-6)


# -- configuration and checkpoints -------------------------------------------------------------
@pytest.mark.parametrize(
    "name, params, field",
    [
        ("ewc", {"ewc_lambda": -1}, "ewc_lambda"),
        ("ewc", {"fisher_samples": 0}, "fisher_samples"),
        ("ewc", {"fisher": "fancy"}, "fisher"),
        ("online-ewc", {"gamma": -0.1}, "gamma"),
        ("online-ewc", {"gamma": 1.5}, "gamma"),
        ("si", {"c": -1}, "c"),
        ("si", {"xi": 0}, "xi"),
        ("mas", {"mas_lambda": -2}, "mas_lambda"),
        ("mas", {"samples": 0}, "samples"),
        ("l2sp", {"alpha": -1}, "alpha"),
        ("lwf", {"temperature": 0}, "temperature"),
        ("lwf", {"temperature": -1}, "temperature"),
        ("lwf", {"alpha": -1}, "alpha"),
    ],
)
def test_bad_hyperparameters_raise_config_errors(name, params, field):
    with pytest.raises(ConfigError, match=f"{name}.{field}"):
        make_strategies(name, {name: params})


def test_zero_samples_for_an_importance_is_a_config_error():
    model = small_model(False)
    with pytest.raises(ConfigError):
        fisher_diagonal(model, inputs(0))
    with pytest.raises(ConfigError):
        mas_importance(model, inputs(0))


@pytest.mark.parametrize("combination", ["ewc", "online-ewc", "si", "mas", "l2sp", "lwf+ewc"])
def test_state_dict_round_trip_gives_identical_penalties(combination, tmp_path):
    config = make_config(benchmark="split-digits", scenario="task", tasks=3, epochs=1, hidden=[16], batch_size=64)
    scenario = build_scenario("split-digits", "task", 3, seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", scenario.input_shape, scenario.head_sizes, True, [16])
    strategies = make_strategies(combination)
    learner = Learner(scenario, model, strategies, config)
    for task_index in range(2):
        learner.train_task(task_index)
    ctx = learner.ctx
    ctx.advance(task_index=2)
    for strategy in strategies:
        strategy.before_task(ctx)
    batch = Batch(ctx.prepare(scenario.tasks[2].train_x[:16]), scenario.tasks[2].train_y[:16], 2)
    ctx.advance(current_size=16)
    with torch.no_grad():  # move away from every anchor and from the old model
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    logits = model(batch.x, 2)
    path = tmp_path / "state.pt"
    torch.save([s.state_dict() for s in strategies], path)
    states = torch.load(path)
    fresh = make_strategies(combination)
    for strategy, state in zip(fresh, states, strict=True):
        strategy.load_state_dict(state, ctx)
    for old, new in zip(strategies, fresh, strict=True):
        a, b = old.loss(ctx, batch, ModelOutput(logits)), new.loss(ctx, batch, ModelOutput(logits))
        assert a is not None and float(a.detach()) > 0
        assert torch.equal(a, b)
    assert learner.result.report  # bytes and term counts are reported


def test_ewc_stores_one_term_per_task_and_online_ewc_one_in_all():
    """EWC keeps every task's Fisher and anchor (merged or not: merging is how they are evaluated)."""
    config = make_config(benchmark="split-digits", scenario="class", epochs=1, hidden=[16])
    scenario = build_scenario("split-digits", "class", 5, seed=0)
    sizes = {}
    for label, name, extra in (
        ("literal", "ewc", {"merge_terms": False}),
        ("merged", "ewc", {}),
        ("online", "online-ewc", {}),
    ):
        torch.manual_seed(0)
        model = build_model("mlp", scenario.input_shape, scenario.head_sizes, False, [16])
        strategies = make_strategies(name, {name: {"fisher_samples": 64, **extra}})
        learner = Learner(scenario, model, strategies, config)
        for task in range(3):
            learner.train_task(task)
        sizes[label] = learner.result.report[name]["bytes_per_term"]
    n_params = sum(p.numel() for p in model.parameters())
    assert sizes["literal"] == sizes["merged"] == [8 * n_params] * 3
    assert sizes["online"] == [8 * n_params]


def _random_terms(model: nn.Module, count: int, seed: int, sparse: bool):
    generator = torch.Generator().manual_seed(seed)
    terms = []
    for _ in range(count):
        importance = {}
        for n, p in model.named_parameters():
            value = torch.rand(p.shape, generator=generator)
            if sparse:  # zero importance everywhere in some entries (and in every term for some)
                value = value * (torch.rand(p.shape, generator=generator) > 0.5)
            importance[n] = value
        anchor = {n: p.detach() + torch.randn(p.shape, generator=generator) for n, p in model.named_parameters()}
        weight = float(torch.rand((), generator=generator)) + 0.5
        terms.append((importance, anchor, weight))
    return terms


@settings(max_examples=25, deadline=None)
@given(count=st.integers(1, 6), seed=st.integers(0, 2**16), sparse=st.booleans())
def test_merged_evaluation_has_the_value_and_gradient_of_the_sum(count, seed, sparse):
    """EWC's merge (S = sum F_t, mu = sum F_t a_t / S, constant C) is exact: value and gradient."""
    model = small_model(False)
    literal, merged = AnchoredPenalty(), AnchoredPenalty(merge=True)
    for importance, anchor, weight in _random_terms(model, count, seed, sparse):
        literal.add_term(importance, anchor, weight)
        merged.add_term(importance, anchor, weight)
    with torch.no_grad():  # move away from the anchors so the gradient is not trivially small
        for p in model.parameters():
            p.add_(0.1)
    value_literal = literal.penalty(model)
    grad_literal = torch.autograd.grad(value_literal, list(model.parameters()))
    value_merged = merged.penalty(model)
    grad_merged = torch.autograd.grad(value_merged, list(model.parameters()))
    assert len(merged._resolve(model)[1]) == 1 and len(merged.terms) == count  # one evaluated, all kept
    assert torch.allclose(value_merged, value_literal, rtol=1e-4)
    for a, b in zip(grad_merged, grad_literal, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    # the stored terms survive a state_dict round trip, and so does the merged evaluation
    restored = AnchoredPenalty(merge=True)
    restored.load_state_dict(merged.state_dict())
    assert torch.equal(restored.penalty(model), value_merged)


def test_merge_keeps_terms_over_other_parameters_apart():
    model = small_model(False)
    names = [n for n, _ in model.named_parameters()]
    penalty = AnchoredPenalty(merge=True)
    penalty.add_term(None, snapshot(model))  # no importance: evaluated on its own
    for chosen in (names, names, names[:1]):
        values = {n: p.detach() for n, p in model.named_parameters() if n in chosen}
        penalty.add_term({n: torch.ones_like(v) for n, v in values.items()}, values)
    _, plan = penalty._resolve(model)
    assert sorted(len(indices) for _, indices in plan) == [1, len(names), len(names)]
    assert len(penalty.terms) == 4
    penalty.merge = False  # switching the mode rebuilds the plan
    assert len(penalty._resolve(model)[1]) == 4


def test_ewc_merged_and_literal_train_the_same_model():
    """Merged EWC is the same optimisation problem: the accuracy matrices agree."""
    config = make_config(benchmark="split-digits", scenario="domain", epochs=1, hidden=[16], tasks=5)
    scenario = build_scenario("split-digits", "domain", 5, seed=0)
    matrices = []
    for merge in (False, True):
        torch.manual_seed(0)
        model = build_model("mlp", scenario.input_shape, scenario.head_sizes, False, [16])
        strategies = make_strategies("ewc", {"ewc": {"fisher_samples": 64, "merge_terms": merge}})
        matrices.append(Learner(scenario, model, strategies, config, seed=0).run().matrix)
    assert abs(matrices[0] - matrices[1]).max() <= 0.02  # float rounding may flip a few predictions


def test_composition_ewc_plus_lwf_trains_both(monkeypatch):
    config = make_config(benchmark="split-digits", scenario="task", tasks=2, epochs=1, hidden=[16])
    scenario = build_scenario("split-digits", "task", 2, seed=0)
    model = build_model("mlp", scenario.input_shape, scenario.head_sizes, True, [16])
    strategies = make_strategies("ewc+lwf")
    calls = {"ewc": 0, "lwf": 0}
    for strategy in strategies:
        original = strategy.loss

        def counted(ctx, batch, logits, original=original, name=strategy.name):
            out = original(ctx, batch, logits)
            calls[name] += out is not None
            return out

        monkeypatch.setattr(strategy, "loss", counted)
    Learner(scenario, model, strategies, config).run()
    assert calls["ewc"] > 0 and calls["lwf"] > 0


def test_penalty_of_a_bfloat16_model_is_computed_in_float32():
    """Reduced-precision models: the penalty's value is float32-accurate, gradients keep the model's dtype."""
    model = small_model(False).to(torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    fisher = {n: torch.rand(p.shape, generator=generator) for n, p in model.named_parameters()}
    penalty = AnchoredPenalty()
    penalty.add_term(fisher, snapshot(model))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    value = penalty.penalty(model)
    value.backward()
    anchor = {n: a.float() for n, a in penalty.term_dicts(0)[1].items()}
    exact = sum((fisher[n] * (p.detach().float() - anchor[n]).square()).sum() for n, p in model.named_parameters())
    assert value.dtype == torch.float32 and torch.allclose(value.detach(), exact, rtol=1e-5)
    assert all(p.grad.dtype == torch.bfloat16 for p in model.parameters())


class _DataDependent(nn.Module):
    """A model torch.func cannot trace (Python control flow on a tensor's value, as
    Hugging Face transformers have), with a sequence output [B, T, C]."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.mix = nn.Conv1d(6, 6, 3, padding=1)  # shared across positions: not the identity path
        self.out = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        h = self.embed(x)
        if float(h.detach().abs().max()) > 0:  # data-dependent: vmap refuses it
            h = self.mix(h.transpose(1, 2)).transpose(1, 2).tanh()
        return self.out(h)


def test_an_untraceable_sequence_model_falls_back_to_the_loop_with_the_same_fisher() -> None:
    torch.manual_seed(0)
    model = _DataDependent()
    x = torch.randint(0, 11, (7, 4))
    fast = fisher_diagonal(model, x, kind="sampled", generator=torch.Generator().manual_seed(2))
    slow = fisher_diagonal(model, x, kind="sampled", generator=torch.Generator().manual_seed(2), method="loop")
    assert set(fast) == set(slow) == {n for n, _ in model.named_parameters()}
    for name in fast:
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-5, atol=1e-8)
    # one sequence by hand: the squared gradient of the NLL summed over its drawn tokens
    one = fisher_diagonal(model, x[:1], kind="sampled", generator=torch.Generator().manual_seed(4), method="loop")
    generator = torch.Generator().manual_seed(4)
    model.eval()
    logits = model(x[:1])[0]
    drawn = torch.multinomial(torch.softmax(logits.detach(), -1), 1, generator=generator)[:, 0]
    nll = -torch.log_softmax(logits, -1)[torch.arange(4), drawn].sum()
    grad = torch.autograd.grad(nll, model.out.weight)[0]
    torch.testing.assert_close(one["out.weight"], grad.square(), rtol=1e-5, atol=1e-9)
    with pytest.raises(ConfigError, match="sampled"):
        fisher_diagonal(model, x, kind="exact")
