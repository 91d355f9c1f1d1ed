"""Parameter-isolation strategies: exact stability (BWT = 0), masks, parameter counts, bad input.

Fast tests on a tiny synthetic task-IL stream; the Fashion-MNIST behaviour checks live in
test_architecture_behaviour.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from forgetless.config import make_config
from forgetless.data.scenarios import Scenario, Task
from forgetless.errors import ConfigError, NumericalError
from forgetless.models import build_model
from forgetless.strategies import make_strategies
from forgetless.strategies._isolation import pack_bits, unpack_bits
from forgetless.training.learner import Learner

METHODS = ["progressive", "packnet", "supermask", "lora", "adapter"]


def tiny_scenario(n_tasks: int = 3, shape: tuple[int, ...] = (1, 4, 4), seed: int = 0) -> Scenario:
    """A task-IL stream of ``n_tasks`` two-class tasks; each class lights up its own pixels."""
    g = torch.Generator().manual_seed(seed)
    pixels = math.prod(shape)
    tasks = []
    for t in range(n_tasks):
        xs, ys = [], []
        for label in range(2):
            x = torch.randint(0, 120, (48, pixels), generator=g, dtype=torch.uint8)
            x[:, (3 * t + 5 * label) % pixels] = 255
            xs.append(x.view(48, *shape))
            ys.append(torch.full((48,), label))
        x, y = torch.cat(xs), torch.cat(ys)
        order = torch.randperm(96, generator=g)
        x, y = x[order], y[order]
        tasks.append(Task(t, x[:64], y[:64], x[64:], y[64:], (2 * t, 2 * t + 1)))
    return Scenario("task", "tiny", tasks, shape, 255.0, [2] * n_tasks)


def tiny_learner(
    combination: str,
    params: dict | None = None,
    scenario: Scenario | None = None,
    model: str = "mlp",
    hidden: list[int] | None = None,
    **config_values,
) -> Learner:
    scenario = scenario or tiny_scenario()
    values = dict(epochs=8, batch_size=16, scenario="task", lr=0.01)
    values.update(config_values)
    config = make_config(**values)
    strategies = make_strategies(combination, params or {}, scenario="task") if combination else []
    torch.manual_seed(0)
    network = build_model(model, scenario.input_shape, scenario.head_sizes, True, hidden or [16, 12])
    return Learner(scenario, network, strategies, config, seed=0)


def test_logits(learner: Learner, task: int) -> torch.Tensor:
    scenario = learner.scenario
    with torch.no_grad():
        return learner.model(scenario.to_float(scenario.tasks[task].test_x), task)


test_logits.__test__ = False  # a helper, not a test


def mixed_logits(learner: Learner) -> torch.Tensor:
    """Every task's test inputs in one batch with a tensor of task ids (the routed path)."""
    scenario = learner.scenario
    x = torch.cat([scenario.to_float(t.test_x) for t in scenario.tasks])
    ids = torch.cat([torch.full_like(t.test_y, t.index) for t in scenario.tasks])
    with torch.no_grad():
        return learner.model(x, ids)


# -- exact stability ----------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_old_task_logits_are_bit_identical_after_later_tasks(method: str, model: str) -> None:
    hidden = [4, 6] if model == "cnn" else [16, 12]
    learner = tiny_learner(method, model=model, hidden=hidden)
    stored = []
    for task in range(learner.scenario.num_tasks):
        learner.train_task(task)
        stored.append(test_logits(learner, task))
    for task, logits in enumerate(stored):
        assert torch.equal(test_logits(learner, task), logits), f"{method}: task {task} changed"
    # the accuracy matrix: every old task's column is constant below the diagonal (BWT = 0)
    matrix = learner.result.matrix
    for task in range(matrix.shape[0]):
        assert np.all(matrix[task:, task] == matrix[task, task])
    assert matrix.diagonal().mean() > 0.75  # and the tasks were learnt
    # a mixed batch (tensor task ids) routes each row to its task's parameters
    n = learner.scenario.tasks[0].test_y.shape[0]
    mixed = mixed_logits(learner)
    for task, logits in enumerate(stored):
        assert torch.allclose(mixed[task * n : (task + 1) * n], logits, atol=1e-5)


def test_naive_changes_old_logits_so_the_identity_check_has_teeth() -> None:
    learner = tiny_learner("naive")
    learner.train_task(0)
    before = test_logits(learner, 0)
    learner.train_task(1)
    assert not torch.equal(test_logits(learner, 0), before)


# -- progressive networks -----------------------------------------------------------------
def test_progressive_forward_matches_eq1_and_reports_growth() -> None:
    learner = tiny_learner("progressive", hidden=[16, 12])
    learner.train_task(0)
    learner.train_task(1)
    net = learner.model
    x = learner.scenario.to_float(learner.scenario.tasks[1].test_x).flatten(1)
    c0, c1 = net.columns[0], net.columns[1]
    u = net.laterals[1][0][0]
    # Eq. 1 of Rusu et al. written out: h1 = relu(W1 x), h2 = relu(W2 h1 + U h1^(0))
    h0_1 = F.relu(F.linear(x, c0[0][0].weight, c0[0][0].bias))
    h1_1 = F.relu(F.linear(x, c1[0][0].weight, c1[0][0].bias))
    h1_2 = F.relu(F.linear(h1_1, c1[1][0].weight, c1[1][0].bias) + h0_1 @ u.weight.T)
    head = net.head.heads[1]
    expected = F.linear(h1_2, head.weight, head.bias)
    with torch.no_grad():
        assert torch.allclose(net(x.view(-1, 1, 4, 4), 1), expected, atol=1e-6)
    report = learner.result.report["progressive"]
    column = 16 * 16 + 16 + 16 * 12 + 12
    heads = 3 * (12 * 2 + 2)
    assert report["parameters_after_task"] == [column + heads, 2 * column + heads + 16 * 12]
    assert report["columns"] == 2


# -- PackNet ------------------------------------------------------------------------------
def reference_prune(weight: torch.Tensor, owner: torch.Tensor, keep: float, free_value: int) -> list[float]:
    """Slow reference: magnitudes of the ``keep`` largest free weights, largest first."""
    free = [abs(float(weight.view(-1)[i])) for i in range(weight.numel()) if owner.view(-1)[i] == free_value]
    return sorted(free, reverse=True)[: round(keep * len(free))]


def test_packnet_prunes_by_magnitude_masks_never_overlap_and_owned_weights_freeze() -> None:
    learner = tiny_learner("packnet", {"packnet": {"prune_ratio": 0.5}}, weight_decay=0.01)
    strategy = learner.strategies[0]
    net = learner.model
    n_tasks = learner.scenario.num_tasks
    owned_values = []
    for task in range(n_tasks):
        # train without the after-task pruning to compare it with the reference
        original_after_task = strategy.after_task
        strategy.after_task = lambda ctx: None  # type: ignore[method-assign]
        learner.train_task(task)
        strategy.after_task = original_after_task  # type: ignore[method-assign]
        before = [(w.detach().clone(), o.clone()) for w, o in zip(strategy.weights(), net.owners())]
        strategy.after_task(learner.ctx)
        for (weight, owner), new_owner in zip(before, net.owners()):
            kept = weight.view(-1)[new_owner.view(-1) == task].abs()
            # the same magnitudes as the reference (ties at equal magnitude may pick other indices)
            assert sorted(kept.tolist(), reverse=True) == reference_prune(weight, owner, 0.5, net.free)
            released = (owner == net.free) & (new_owner == net.free)
            assert kept.min() >= weight[released].abs().max()
        owned_values.append([torch.where(o == task, w, 0.0).clone() for w, o in zip(strategy.weights(), net.owners())])
    # owner maps: each weight belongs to one task or is free, so per-task masks cannot overlap;
    # every task kept half of what was free
    for weight, owner in zip(strategy.weights(), net.owners()):
        masks = [owner == t for t in range(n_tasks)]
        for a in range(n_tasks):
            for b in range(a + 1, n_tasks):
                assert not (masks[a] & masks[b]).any()
        free = owner == net.free
        assert torch.equal(sum(m.int() for m in masks) + free.int(), torch.ones_like(owner, dtype=torch.int))
        assert torch.all(weight[free] == 0)
    report = strategy.report()
    assert report["capacity_left_after_task"] == pytest.approx([0.5, 0.25, 0.125], abs=0.01)
    # task t's weights are bit-identical after later tasks (despite weight decay and momentum)
    for task, values in enumerate(owned_values):
        for value, weight, owner in zip(values, strategy.weights(), net.owners()):
            assert torch.equal(torch.where(owner == task, weight, 0.0), value)


def test_packnet_default_shares_capacity_equally() -> None:
    learner = tiny_learner("packnet")
    learner.run()
    report = learner.result.report["packnet"]
    assert report["capacity_left_after_task"] == pytest.approx([2 / 3, 1 / 3, 0.0], abs=0.01)
    assert report["owner_map_bytes"] == 16 * 16 + 16 * 12


# -- supermasks ---------------------------------------------------------------------------
@pytest.mark.parametrize("numel", [1, 7, 8, 9, 64, 1001])
def test_pack_bits_round_trips_at_one_bit_per_entry(numel: int) -> None:
    mask = torch.rand(numel, generator=torch.Generator().manual_seed(numel)) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(numel / 8)
    assert torch.equal(unpack_bits(packed, (numel,)), mask)
    # most significant bit first: reference by hand
    first = mask[:8].tolist() + [False] * max(0, 8 - numel)
    assert int(packed[0]) == sum(int(bit) << (7 - i) for i, bit in enumerate(first))


def test_supermask_weights_stay_fixed_masks_keep_k_and_bytes_are_reported() -> None:
    learner = tiny_learner("supermask", {"supermask": {"keep_fraction": 0.3}})
    net = learner.model
    fixed = {k: v.clone() for k, v in net.net.state_dict().items()}
    learner.run()
    for k, v in net.net.state_dict().items():
        assert torch.equal(v, fixed[k]), k
    sizes = {"backbone.1.weight": 16 * 16, "backbone.3.weight": 16 * 12}
    for task in range(3):
        masks = net.stored_masks(task)
        for name, size in {**sizes, f"head.heads.{task}.weight": 12 * 2}.items():
            assert int(masks[name].sum()) == max(1, round(0.3 * size))
        # the forward is the random network with the mask applied (reference written out)
        x = learner.scenario.to_float(learner.scenario.tasks[task].test_x).flatten(1)
        w1, w2 = (torch.where(masks[n], fixed[n], 0.0) for n in sizes)
        wh = torch.where(masks[f"head.heads.{task}.weight"], fixed[f"head.heads.{task}.weight"], 0.0)
        expected = F.relu(F.relu(x @ w1.T) @ w2.T) @ wh.T
        assert torch.allclose(test_logits(learner, task), expected, atol=1e-5)
    per_task = sum(math.ceil(s / 8) for s in sizes.values()) + math.ceil(24 / 8)
    report = learner.result.report["supermask"]
    assert report["mask_bytes_per_task"] == {"0": per_task, "1": per_task, "2": per_task}
    assert report["mask_bytes"] == 3 * per_task


# -- LoRA and adapters --------------------------------------------------------------------
def test_lora_leaves_base_weights_bit_identical_and_matches_the_lora_formula() -> None:
    learner = tiny_learner("lora", {"lora": {"rank": 2, "alpha": 4.0}})
    learner.train_task(0)
    base = {k: v.clone() for k, v in learner.model.backbone.state_dict().items()}
    learner.train_task(1)
    learner.train_task(2)
    peft_model = learner.model.backbone
    for key, value in peft_model.state_dict().items():
        if "lora_" not in key:
            original = key.replace("base_model.model.", "").replace("base_layer.", "")
            assert torch.equal(value, base[original]), key
    # h = W0 x + (alpha / r) B A x on each adapted layer (Hu et al. Eq. 3), written out
    state = peft_model.state_dict()
    x = learner.scenario.to_float(learner.scenario.tasks[2].test_x).flatten(1)
    h = x
    for layer in ("1", "3"):
        w0, b0 = base[f"{layer}.weight"], base[f"{layer}.bias"]
        a = state[f"base_model.model.{layer}.lora_A.task_2.weight"]
        b = state[f"base_model.model.{layer}.lora_B.task_2.weight"]
        h = F.relu(h @ w0.T + b0 + 2.0 * (h @ a.T) @ b.T)
    head = learner.model.head.heads[2]
    assert torch.allclose(test_logits(learner, 2), F.linear(h, head.weight, head.bias), atol=1e-5)
    assert not torch.equal(state["base_model.model.1.lora_B.task_2.weight"], torch.zeros(16, 2))
    report = learner.result.report["lora"]
    per_task = (2 * 16 + 16 * 2) + (2 * 16 + 12 * 2)  # A is r x in, B is out x r
    assert report["module_parameters_per_task"] == {"1": per_task, "2": per_task}
    assert report["backbone_parameters"] == 16 * 16 + 16 + 16 * 12 + 12


def test_lora_and_adapter_with_a_pretrained_backbone_never_train_it() -> None:
    for method in ("lora", "adapter"):
        learner = tiny_learner(method, {method: {"train_first_task": False}})
        backbone = {k: v.clone() for k, v in learner.model.backbone.state_dict().items()}
        learner.run()
        after = learner.model.backbone.state_dict()
        for key, value in backbone.items():
            match = [
                v for k, v in after.items() if k.replace("base_model.model.", "").replace("base_layer.", "") == key
            ]
            assert torch.equal(match[0], value), (method, key)
        assert learner.result.matrix.diagonal().min() > 0.7


def test_adapter_starts_as_identity() -> None:
    learner = tiny_learner("adapter")
    learner.train_task(0)
    strategy = learner.strategies[0]
    learner.ctx.advance(task_index=1)
    before = test_logits(learner, 1)
    strategy.before_task(learner.ctx)  # adds task 1's adapters (zero-initialised up-projection)
    assert torch.equal(test_logits(learner, 1), before)


# -- checkpoints --------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_state_dict_round_trip_restores_every_task(method: str) -> None:
    learner = tiny_learner(method)
    learner.train_task(0)
    learner.train_task(1)
    state = learner.strategies[0].state_dict()
    expected = [test_logits(learner, t) for t in range(3)]
    fresh = tiny_learner(method)
    fresh.strategies[0].load_state_dict(state, fresh.ctx)
    for task in range(3):
        assert torch.equal(test_logits(fresh, task), expected[task]), task
    assert fresh.strategies[0].report() == learner.strategies[0].report()


# -- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_task_id_methods_refuse_class_and_domain_il_naming_the_supported_scenario(
    method: str,
) -> None:
    for scenario in ("class", "domain"):
        with pytest.raises(ConfigError) as error:
            make_strategies(method, scenario=scenario)
        message = str(error.value)
        assert "\n" not in message
        assert f"{method!r} supports the task scenario" in message and "--scenario task" in message


@pytest.mark.parametrize(
    ("method", "field", "value"),
    [
        ("packnet", "prune_ratio", 0.0),
        ("packnet", "prune_ratio", 1.0),
        ("packnet", "prune_ratio", -0.2),
        ("packnet", "prune_ratio", 1.5),
        ("lora", "rank", 0),
        ("lora", "rank", -3),
        ("supermask", "keep_fraction", 1.0),
        ("adapter", "bottleneck", 0),
    ],
)
def test_out_of_range_hyperparameters_give_one_line_errors_naming_the_field(method, field, value) -> None:
    with pytest.raises(ConfigError) as error:
        make_strategies(method, {method: {field: value}}, scenario="task")
    assert f"{method}.{field}" in str(error.value)
    assert "\n" not in str(error.value)


def test_a_model_without_a_multi_head_is_refused() -> None:
    scenario = tiny_scenario()
    config = make_config(epochs=1, scenario="task")
    model = build_model("mlp", scenario.input_shape, [2], False, [8])
    with pytest.raises(ConfigError, match="one head per task"):
        Learner(scenario, model, make_strategies("packnet", scenario="task"), config)


# -- review defects -------------------------------------------------------------------------
def test_packnet_owners_of_task_255_and_later_stay_distinct_from_free() -> None:
    """The config allows 1000 tasks: owners past 254 must neither collide with the free marker
    nor overflow. The owner logic (prune, live masks) is driven directly, without training."""
    n_tasks = 300
    scenario = tiny_scenario(n_tasks)
    learner = tiny_learner("packnet", scenario=scenario, hidden=[32, 16])
    strategy, net = learner.strategies[0], learner.model
    kept = []
    for task in range(n_tasks):
        net.training_task.fill_(task)
        for weight in strategy.weights():  # as if trained: every free weight non-zero
            weight.data.add_(torch.rand_like(weight) + 0.1)
        kept.append(strategy.prune(task, 1.0 / (n_tasks - task)))
    owners = torch.cat([o.flatten().long() for o in net.owners()])
    counts = torch.bincount(owners[owners != net.free], minlength=n_tasks)
    assert counts.tolist()[:n_tasks] == kept and len(counts) == n_tasks  # every owner a task
    assert int((owners == net.free).sum()) == owners.numel() - sum(kept) == 0
    assert all(k > 0 for k in kept[255:])  # tasks 255.. own weights of their own
    for task in (254, 255, 256, n_tasks - 2):
        live = sum(int(net.live_mask(i, task).sum()) for i in range(len(net.names)))
        assert live == sum(kept[: task + 1]), task  # later tasks' weights stay masked


def test_packnet_owner_map_stays_one_byte_per_weight_up_to_255_tasks() -> None:
    assert tiny_learner("packnet", scenario=tiny_scenario(255)).model.owners()[0].dtype == torch.uint8
    wide = tiny_learner("packnet", scenario=tiny_scenario(256))
    assert wide.model.owners()[0].dtype == torch.int16
    assert wide.strategies[0].report()["owner_map_bytes"] == 2 * (16 * 16 + 16 * 12)


def _trained_without_pruning(learner: Learner) -> None:
    """Train task 0 and leave PackNet's after-task pruning and retraining to the test."""
    strategy = learner.strategies[0]
    original_after_task = strategy.after_task
    strategy.after_task = lambda ctx: None  # type: ignore[method-assign]
    learner.train_task(0)
    strategy.after_task = original_after_task  # type: ignore[method-assign]


def test_packnet_retrains_with_the_runs_optimizer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retraining uses the run's optimizer (SGD, momentum), weight decay and layer-wise rates."""
    learner = tiny_learner(
        "packnet",
        {"packnet": {"retrain_steps": 3}},
        epochs=1,
        optimizer="sgd",
        momentum=0.9,
        weight_decay=0.01,
        layerwise_lr_decay=0.5,
    )
    _trained_without_pruning(learner)
    built: list[torch.optim.Optimizer] = []
    init = torch.optim.Optimizer.__init__

    def spy(self, params, defaults) -> None:
        init(self, params, defaults)
        built.append(self)

    monkeypatch.setattr(torch.optim.Optimizer, "__init__", spy)
    learner.strategies[0].after_task(learner.ctx)
    assert len(built) == 1 and isinstance(built[0], torch.optim.SGD)  # the run's optimizer, not Adam
    assert built[0].defaults["momentum"] == 0.9 and built[0].defaults["weight_decay"] == 0.01
    assert sorted(g["lr"] for g in built[0].param_groups) == pytest.approx([0.0025, 0.005, 0.01])


def test_packnet_retraining_stops_at_a_non_finite_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    learner = tiny_learner("packnet", {"packnet": {"retrain_steps": 4}}, epochs=1)
    _trained_without_pruning(learner)
    monkeypatch.setattr(F, "cross_entropy", lambda logits, y: logits.sum() * float("nan"))
    with pytest.raises(NumericalError, match=r"the loss became nan at task 0, step 0 of PackNet's retraining"):
        learner.strategies[0].after_task(learner.ctx)
