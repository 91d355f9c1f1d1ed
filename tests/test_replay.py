"""Correctness of the memory buffer and the replay strategies (ER, GEM, A-GEM, DER, DER++, DGR)."""

from __future__ import annotations

import numpy as np
import pytest
import quadprog
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from forgetless.config import make_config
from forgetless.data.benchmarks import build_scenario
from forgetless.errors import ConfigError
from forgetless.models import build_model
from forgetless.models.heads import INACTIVE_LOGIT
from forgetless.strategies import make_strategies
from forgetless.strategies._buffer import MemoryBuffer, masked_logit_mse
from forgetless.strategies.agem import agem_project
from forgetless.strategies.base import Batch, FlatGradient, ModelOutput, ParameterLayout, TrainingContext
from forgetless.strategies.gem import gem_project
from forgetless.training.learner import Learner


# -- helpers ---------------------------------------------------------------------------------
def _context(kind: str = "class", tasks: int = 5, **config) -> TrainingContext:
    scenario = build_scenario("split-digits", kind, tasks)
    model = build_model("mlp", scenario.input_shape, scenario.head_sizes, kind == "task", [32])
    cfg = make_config(benchmark="split-digits", scenario=kind, batch_size=16, **config)
    return TrainingContext(model, scenario, cfg, torch.device("cpu"), torch.Generator().manual_seed(0))


def _batch(ctx: TrainingContext, start: int, n: int = 16) -> Batch:
    task = ctx.task
    raw = task.train_x[start : start + n]
    return Batch(ctx.prepare(raw), task.train_y[start : start + n], ctx.task_id(ctx.task_index), raw)


def _strategy(ctx: TrainingContext, name: str, **params):
    strategy = make_strategies(name, {name: params} if params else None, scenario=ctx.scenario.kind)[0]
    strategy.setup(ctx)
    return strategy


# -- reservoir sampling ----------------------------------------------------------------------
def test_reservoir_keeps_every_sample_with_equal_probability() -> None:
    """Algorithm R: after a stream of 30, each item is held with probability 5/30."""
    capacity, stream, runs = 5, 30, 3000
    counts = np.zeros(stream)
    items = torch.arange(stream)
    for run in range(runs):
        buffer = MemoryBuffer(capacity, seed=run)
        for start in range(0, stream, 7):  # batches of 7: several rows may hit one slot
            rows = items[start : start + 7]
            buffer.add(rows.to(torch.uint8)[:, None], rows, 0)
        assert len(buffer) == capacity
        assert len(set(buffer.labels.tolist())) == capacity  # no item stored twice
        counts[buffer.labels.numpy()] += 1
    expected = runs * capacity / stream
    assert counts.sum() == runs * capacity
    # each count is binomial(runs, 1/6): within 5 standard deviations
    sd = np.sqrt(runs * (capacity / stream) * (1 - capacity / stream))
    assert np.abs(counts - expected).max() < 5 * sd
    assert stats.chisquare(counts).pvalue > 1e-3


def test_reservoir_fills_in_order_then_stays_full() -> None:
    buffer = MemoryBuffer(10, seed=0)
    x = torch.arange(6, dtype=torch.uint8)[:, None]
    buffer.add(x, torch.arange(6), 0)
    assert len(buffer) == 6 and buffer.labels[:6].tolist() == list(range(6))
    buffer.add(x, torch.arange(6, 12), 1)
    assert len(buffer) == 10 and buffer.seen == 12


# -- class-balanced selection ----------------------------------------------------------------
def test_balanced_buffer_stays_within_one_per_class() -> None:
    generator = torch.Generator().manual_seed(1)
    buffer = MemoryBuffer(50, "balanced", seed=0, num_groups=10)
    seen = torch.zeros(10, dtype=torch.int64)
    for task in range(5):  # classes arrive two per task, unequal amounts
        labels = torch.tensor([2 * task] * 37 + [2 * task + 1] * 23)
        labels = labels[torch.randperm(60, generator=generator)]
        for start in range(0, 60, 16):
            y = labels[start : start + 16]
            buffer.add(y.to(torch.uint8)[:, None], y, task, groups=y)
            seen += torch.bincount(y, minlength=10)
            counts = torch.bincount(buffer.labels[: len(buffer)], minlength=10)
            assert len(buffer) == min(50, int(seen.sum()))
            # stored rows are what their label says (the write went to the right slots)
            assert torch.equal(buffer.inputs[: len(buffer), 0].long(), buffer.labels[: len(buffer)])
            held = seen > 0
            below = counts < seen  # classes that lost rows: they must be the largest
            if below.any():
                assert counts[below].min() >= counts[held].max() - 1
            assert (counts <= seen).all()
    assert torch.bincount(buffer.labels, minlength=10).tolist() == [5] * 10


def test_balanced_buffer_keeps_a_uniform_subset_within_a_class() -> None:
    """Bottom-k priorities: each of the 40 items of one class is kept with probability 10/40."""
    counts = np.zeros(40)
    for run in range(1500):
        buffer = MemoryBuffer(10, "balanced", seed=run)
        for start in range(0, 40, 16):
            items = torch.arange(start, min(start + 16, 40))
            buffer.add(items.to(torch.uint8)[:, None], items, 0, groups=torch.zeros_like(items))
        counts[buffer.labels.numpy()] += 1
    assert stats.chisquare(counts).pvalue > 1e-3


# -- storage, memory, bad input, checkpoints -------------------------------------------------
def test_buffer_keeps_dtype_and_memory_is_budget_times_sample_size() -> None:
    buffer = MemoryBuffer(100, seed=0)
    x = torch.randint(0, 255, (30, 1, 28, 28), dtype=torch.uint8)
    buffer.add(x, torch.zeros(30, dtype=torch.int64), 0)
    assert buffer.inputs.dtype == torch.uint8
    assert torch.equal(buffer.inputs[:30], x)
    assert buffer.bytes_per_sample() == 784 + 8 + 8
    assert buffer.memory_bytes() == 100 * (784 + 8 + 8)
    with_logits = MemoryBuffer(100, seed=0)
    with_logits.add(x, torch.zeros(30, dtype=torch.int64), 0, logits=torch.randn(30, 10))
    assert with_logits.memory_bytes() == 100 * (784 + 8 + 8 + 10 * 4 + 8)


def test_sampling_is_index_slicing_without_replacement() -> None:
    buffer = MemoryBuffer(64, seed=0)
    buffer.add(torch.arange(64, dtype=torch.uint8)[:, None], torch.arange(64), 0)
    sample = buffer.sample(32)
    assert len(sample) == 32 and len(set(sample.labels.tolist())) == 32
    assert torch.equal(sample.inputs[:, 0].long(), sample.labels)
    assert len(buffer.sample(1000)) == 64
    assert MemoryBuffer(5).sample(3) is None


@pytest.mark.parametrize("size", [0, -3])
def test_non_positive_budget_is_rejected(size: int) -> None:
    with pytest.raises(ConfigError, match="buffer"):
        MemoryBuffer(size)
    with pytest.raises(ConfigError, match="er.buffer_size"):
        make_strategies("er", {"er": {"buffer_size": size}})
    with pytest.raises(ConfigError, match="buffer_size"):
        make_config(buffer_size=size)


def test_balanced_budget_smaller_than_classes_is_rejected() -> None:
    ctx = _context("class")
    with pytest.raises(ConfigError, match="at least 10"):
        _strategy(ctx, "er", selection="balanced", buffer_size=5)
    with pytest.raises(ConfigError, match="at least 5"):
        _strategy(ctx, "gem", buffer_size=3)  # GEM balances by task


def test_buffer_state_dict_round_trip_reproduces_next_samples() -> None:
    for selection in ("reservoir", "balanced"):
        buffer = MemoryBuffer(20, selection, seed=3)
        y = torch.arange(50) % 4
        buffer.add(torch.arange(50, dtype=torch.uint8)[:, None], y, 0, torch.randn(50, 4), y)
        state = buffer.state_dict()
        assert state["generator"].dtype == torch.uint8
        copy = MemoryBuffer(20, selection, seed=99)
        copy.load_state_dict(state)
        more = torch.arange(50, 80, dtype=torch.uint8)[:, None]
        for b in (buffer, copy):
            b.add(more, torch.arange(30) % 4, 1, torch.ones(30, 4), torch.arange(30) % 4)
        assert torch.equal(buffer.inputs, copy.inputs)
        assert torch.equal(buffer.sample(8).indices, copy.sample(8).indices)
    with pytest.raises(ConfigError, match="same settings"):
        MemoryBuffer(10).load_state_dict(MemoryBuffer(20).state_dict())


# -- A-GEM -----------------------------------------------------------------------------------
def test_agem_projection_matches_closed_form() -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        g = torch.randn(50, generator=generator, dtype=torch.float64)
        ref = torch.randn(50, generator=generator, dtype=torch.float64)
        out = agem_project(g, ref)
        if g @ ref < 0:
            expected = g - (g @ ref) / (ref @ ref) * ref  # eq. 11
            assert torch.allclose(out, expected)
            assert float(out @ ref) >= -1e-6
            assert abs(float(out @ ref)) < 1e-9  # lands on the constraint boundary
        else:
            assert torch.equal(out, g)


def test_agem_keeps_gradient_without_conflict() -> None:
    g = torch.tensor([1.0, 2.0, 0.0])
    assert torch.equal(agem_project(g, torch.tensor([1.0, 0.0, 5.0])), g)
    out = agem_project(g, torch.tensor([-1.0, 0.0, 0.0]))
    assert torch.allclose(out, torch.tensor([0.0, 2.0, 0.0]))


# -- GEM -------------------------------------------------------------------------------------
_vectors = st.integers(2, 12).flatmap(
    lambda p: st.tuples(
        st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=p, max_size=p),
        st.lists(
            st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=p, max_size=p),
            min_size=1,
            max_size=4,
        ),
    )
)


@settings(max_examples=80, deadline=None)
@given(_vectors)
def test_gem_projection_satisfies_every_constraint(data) -> None:
    g = torch.tensor(data[0], dtype=torch.float64)
    G = torch.tensor(data[1], dtype=torch.float64)
    out = gem_project(g, G)
    # relative 1e-5: degenerate cones (nearly opposed task gradients) leave ~4e-6 after the QP
    scale = 1e-5 * (1 + float(g.norm()) * float(G.norm()))
    assert (G @ out >= -scale).all()
    if (G @ g >= 0).all():
        assert torch.equal(out, g)


def test_gem_projection_matches_the_primal_qp() -> None:
    """Without margin, the dual solution equals the primal one (eq. 6-8): min ||g~ - g||^2
    s.t. G g~ >= 0, solved directly over the parameters by quadprog."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(10):
        g = torch.randn(30, generator=generator, dtype=torch.float64)
        G = torch.randn(3, 30, generator=generator, dtype=torch.float64) - 0.5 * g
        out = gem_project(g, G, margin=0.0, eps=1e-10)
        primal = quadprog.solve_qp(np.eye(30), g.numpy(), G.numpy().T, np.zeros(3))[0]
        assert np.allclose(out.numpy(), primal, atol=1e-6)


def test_gem_without_earlier_task_is_a_no_op() -> None:
    ctx = _context("class")
    gem = _strategy(ctx, "gem", buffer_size=50)
    batch = _batch(ctx, 0)
    params = [p for p in ctx.model.parameters()]
    flat = FlatGradient(torch.randn(sum(p.numel() for p in params)), ParameterLayout(params))
    assert gem.project_gradient(ctx, batch, flat) is None  # task 0: nothing to protect
    ctx.advance(task_index=1)
    assert gem.project_gradient(ctx, _batch(ctx, 0), flat) is None  # empty memory: same


def test_gem_task_gradients_use_the_learners_layout() -> None:
    """Rows of task_gradients equal .grad concatenated in model.parameters() order."""
    ctx = _context("task")
    gem = _strategy(ctx, "gem", buffer_size=40)
    ctx.advance(current_size=16)
    gem.after_step(ctx, _batch(ctx, 0), ModelOutput(torch.zeros(16, 2)))
    ctx.advance(task_index=1)
    batch = _batch(ctx, 0)
    model = ctx.model
    F.cross_entropy(model(batch.x, 1), batch.y).backward()  # heads 0 and 2.. have no grad
    params = [p for p in model.parameters() if p.grad is not None]
    rows = gem.task_gradients(ctx, ParameterLayout(params))
    grads_before = [p.grad.clone() for p in params]
    sample = gem.buffer.take(torch.arange(len(gem.buffer)))
    model.zero_grad(set_to_none=False)
    F.cross_entropy(model(ctx.prepare(sample.inputs), sample.tasks), sample.labels).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in params])
    assert rows.shape == (1, expected.numel())
    assert torch.allclose(rows[0], expected, atol=1e-6)
    assert all(not torch.equal(a, p.grad) for a, p in zip(grads_before, params))


def test_gem_and_agem_train_in_the_learner() -> None:
    scenario = build_scenario("split-digits", "class", 3)
    config = make_config(benchmark="split-digits", epochs=1, batch_size=32, buffer_size=60)
    for name in ("gem", "agem"):
        torch.manual_seed(0)
        model = build_model("mlp", scenario.input_shape, scenario.head_sizes, False, [32])
        learner = Learner(scenario, model, make_strategies(name, shared={"buffer_size": 60}), config)
        result = learner.run()
        assert result.matrix.shape == (3, 3)
        assert result.report[name]["buffer_size"] == 60


# -- DER / DER++ -----------------------------------------------------------------------------
def _der_step(der, ctx: TrainingContext, batch: Batch) -> tuple[Batch, ModelOutput, torch.Tensor | None]:
    """As the learner runs a step: replay rows appended, one forward, the strategy's terms."""
    extra = der.replay_batch(ctx, batch)
    full = batch if extra is None else batch.concat(extra)
    output = ModelOutput(ctx.model(full.x))
    return full, output, der.loss(ctx, full, output)


def test_der_stores_logits_at_insertion_time() -> None:
    ctx = _context("class", epochs=1)
    der = _strategy(ctx, "der", buffer_size=200)
    ctx.model.head.set_active_outputs(2)
    optimizer = torch.optim.SGD(ctx.model.parameters(), lr=0.5)
    inserted = {}
    for step, start in enumerate(range(0, 128, 16)):
        ctx.advance(step=step)
        batch = _batch(ctx, start)
        ctx.advance(current_size=len(batch))
        full, output, term = _der_step(der, ctx, batch)
        base = der.criterion(ctx, full, output)
        loss = (F.cross_entropy(output.logits, full.y) if base is None else base) + (term or 0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        der.after_step(ctx, full, output)
        inserted[start] = output.logits[: len(batch)].detach().clone()
    stored = der.buffer.logits[:128]
    expected = torch.cat([inserted[s] for s in sorted(inserted)])
    assert torch.equal(stored, expected)  # 128 < 200 rows: reservoir keeps them in order
    assert (der.buffer.active[:128] == 2).all()
    now = ctx.model(ctx.prepare(der.buffer.inputs[:128]))
    assert not torch.allclose(now, stored, atol=1e-3)  # the model moved; the record did not


def test_der_fills_newly_active_outputs_and_keeps_the_rest() -> None:
    ctx = _context("class")
    der = _strategy(ctx, "der", buffer_size=100, future_logits="model")
    ctx.model.head.set_active_outputs(2)
    batch = _batch(ctx, 0)
    ctx.advance(current_size=len(batch))
    der.after_step(ctx, batch, ModelOutput(ctx.model(batch.x).detach()))
    before = der.buffer.logits[:16].clone()
    assert (before[:, 2:] == INACTIVE_LOGIT).all()
    ctx.advance(task_index=1, step=0)
    ctx.model.head.set_active_outputs(4)
    der.replay_batch(ctx, _batch(ctx, 0))
    after = der.buffer.logits[:16]
    assert torch.equal(after[:, :2], before[:, :2])
    live = ctx.model(ctx.prepare(der.buffer.inputs[:16])).detach()
    assert torch.equal(after[:, 2:4], live[:, 2:4])
    assert (after[:, 4:] == INACTIVE_LOGIT).all() and (der.buffer.active[:16] == 4).all()


def test_der_caps_newly_active_outputs_below_the_rows_stored_logits() -> None:
    """The fix of issue #14: a class masked when a row was stored is recorded below every class
    the row was stored with. Filled with the untrained outputs' raw values (the old code), the
    later classes could outrank the true class on stored rows and DER lost task 0 entirely."""
    ctx = _context("class")
    der = _strategy(ctx, "der", buffer_size=100)
    ctx.model.head.set_active_outputs(2)
    batch = _batch(ctx, 0)
    ctx.advance(current_size=len(batch))
    der.after_step(ctx, batch, ModelOutput(ctx.model(batch.x).detach()))
    before = der.buffer.logits[:16].clone()
    with torch.no_grad():  # untrained outputs of the next task's classes well above the others
        ctx.model.head.linear.bias[2:4] += 100.0
    ctx.advance(task_index=1, step=0)
    ctx.model.head.set_active_outputs(4)
    der.replay_batch(ctx, _batch(ctx, 0))
    after = der.buffer.logits[:16]
    lowest = before[:, :2].min(dim=1, keepdim=True).values
    assert torch.equal(after[:, :2], before[:, :2])
    assert torch.equal(after[:, 2:4], lowest.expand(16, 2))
    assert (der.buffer.active[:16] == 4).all() and (after[:, 4:] == INACTIVE_LOGIT).all()
    # where the model's own value is lower already, it is kept as it is
    ctx.advance(task_index=2, step=0)
    with torch.no_grad():
        ctx.model.head.linear.bias[4:6] -= 100.0
    ctx.model.head.set_active_outputs(6)
    der.replay_batch(ctx, _batch(ctx, 0))
    live = ctx.model(ctx.prepare(der.buffer.inputs[:16])).detach()
    assert torch.equal(der.buffer.logits[:16, 4:6], live[:, 4:6])


def test_masked_logit_mse_ignores_outputs_inactive_at_storage() -> None:
    live = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 5.0]])
    stored = torch.tensor([[0.0, 0.0, INACTIVE_LOGIT], [0.0, 0.0, 0.0]])
    active = torch.tensor([2, 3])
    expected = (1 + 4 + 0 + 1 + 25) / 5
    assert masked_logit_mse(live, stored, active).item() == pytest.approx(expected)
    # full width (mammoth's F.mse_loss): the same sum over every entry of the block
    assert masked_logit_mse(live, stored, active, over="full").item() == pytest.approx((1 + 4 + 0 + 1 + 25) / 6)
    recorded = torch.tensor([[0.5, 0.0, 1.0], [0.0, 2.0, 0.0]])
    every = torch.tensor([3, 3])
    assert masked_logit_mse(live, recorded, every, over="full").item() == pytest.approx(
        F.mse_loss(live, recorded).item()
    )


def test_derpp_adds_replay_cross_entropy() -> None:
    ctx = _context("class")
    ctx.model.head.set_active_outputs(2)
    der = _strategy(ctx, "derpp", buffer_size=64, alpha=0.0, beta=1.0)
    batch = _batch(ctx, 0)
    ctx.advance(current_size=len(batch), step=1)
    der.after_step(ctx, batch, ModelOutput(ctx.model(batch.x).detach()))
    state = der.buffer.generator.get_state()
    _, _, term = _der_step(der, ctx, batch)
    der.buffer.generator.set_state(state)
    der.buffer.sample(16)  # the DER draw (alpha = 0)
    sample = der.buffer.sample(16)
    expected = F.cross_entropy(ctx.model(ctx.prepare(sample.inputs)), sample.labels)
    assert term.item() == pytest.approx(expected.item(), rel=1e-6)


def test_derpp_shared_sample_takes_both_terms_on_one_draw() -> None:
    """``second_sample="shared"`` (Avalanche's DER++): alpha * MSE + beta * CE on the same rows."""
    ctx = _context("class")
    ctx.model.head.set_active_outputs(2)
    der = _strategy(ctx, "derpp", buffer_size=64, alpha=0.7, beta=0.3, second_sample="shared")
    batch = _batch(ctx, 0)
    ctx.advance(current_size=len(batch), step=1)
    der.after_step(ctx, batch, ModelOutput(ctx.model(batch.x).detach() + 0.5))  # stored logits differ
    state = der.buffer.generator.get_state()
    full, _, term = _der_step(der, ctx, batch)
    assert len(full) == 2 * len(batch)  # one replay draw appended, not two
    der.buffer.generator.set_state(state)
    sample = der.buffer.sample(16)
    live = ctx.model(ctx.prepare(sample.inputs))
    expected = 0.7 * masked_logit_mse(live, sample.logits, sample.active, over="full")
    expected = expected + 0.3 * F.cross_entropy(live, sample.labels)
    assert term.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("name", ["er", "der"])
def test_task_end_fill_offers_the_whole_task_with_the_trained_models_logits(name: str) -> None:
    """``fill="task-end"`` (Avalanche's): nothing enters during the task; after it, a class-balanced
    selection of its rows, DER's with the logits of the model as trained (eval mode)."""
    ctx = _context("class")
    ctx.model.head.set_active_outputs(2)
    strategy = _strategy(ctx, name, buffer_size=60, fill="task-end", selection="balanced")
    batch = _batch(ctx, 0)
    ctx.advance(current_size=len(batch), step=1)
    strategy.after_step(ctx, batch, ModelOutput(ctx.model(batch.x).detach()))
    assert len(strategy.buffer) == 0 and strategy.replay_batch(ctx, batch) is None  # task 0: no replay
    strategy.after_task(ctx)
    buffer, task = strategy.buffer, ctx.scenario.tasks[0]
    assert len(buffer) == 60 and torch.bincount(buffer.labels[:60]).tolist() == [30, 30]
    if name == "der":
        ctx.model.eval()
        expected = ctx.model(ctx.prepare(buffer.inputs[:60]))
        assert torch.allclose(buffer.logits[:60], expected, atol=1e-6) and (buffer.active[:60] == 2).all()
    rows = {bytes(x.numpy()) for x in task.train_x}
    assert all(bytes(x.numpy()) in rows for x in buffer.inputs[:60])  # rows of the task, none invented
    ctx.advance(task_index=1, step=0)
    ctx.model.head.set_active_outputs(4)
    strategy.after_task(ctx)  # task 1: the budget is shared by four classes now
    assert torch.bincount(buffer.labels[:60]).tolist() == [15, 15, 15, 15]


# -- ER, task ids, generative replay ---------------------------------------------------------
def test_er_replays_task_ids_in_task_il() -> None:
    ctx = _context("task")
    er = _strategy(ctx, "er", buffer_size=32)
    batch = _batch(ctx, 0)
    ctx.advance(current_size=len(batch))
    assert er.replay_batch(ctx, batch) is None
    er.after_step(ctx, batch, ModelOutput(torch.zeros(16, 2)))
    ctx.advance(task_index=1)
    current = _batch(ctx, 0)
    mixed = current.concat(er.replay_batch(ctx, current))
    assert torch.equal(mixed.task_ids, torch.tensor([1] * 16 + [0] * 16))
    assert mixed.raw.dtype == torch.uint8 and len(mixed) == 32


def test_strategy_state_round_trip_resumes_identically() -> None:
    for name in ("er", "derpp", "generative-replay"):
        ctx = _context("class")
        ctx.model.head.set_active_outputs(2)
        strategy = _strategy(ctx, name)
        for start in (0, 16, 32):
            batch = _batch(ctx, start)
            ctx.advance(current_size=len(batch))
            strategy.after_step(ctx, batch, ModelOutput(ctx.model(batch.x).detach()))
        ctx.advance(task_index=1)
        strategy.before_task(ctx)
        state = strategy.state_dict()
        twin = _strategy(ctx, name)
        twin.load_state_dict(state, ctx)
        if name == "derpp":
            a, b = strategy.draw(ctx), twin.draw(ctx)
            assert torch.equal(a.logits, b.logits) and torch.equal(a.indices, b.indices)
        else:
            batch = _batch(ctx, 0)
            a, b = strategy.replay_batch(ctx, batch), twin.replay_batch(ctx, batch)
            assert torch.equal(a.raw, b.raw) and torch.equal(a.y, b.y)


def test_generative_replay_stores_no_data_and_labels_with_the_old_solver() -> None:
    ctx = _context("class")
    ctx.model.head.set_active_outputs(2)
    gr = _strategy(ctx, "generative-replay")
    batch = _batch(ctx, 0)
    assert gr.replay_batch(ctx, batch) is None  # first task: nothing to replay
    gr.after_step(ctx, batch, ModelOutput(ctx.model(batch.x)))
    ctx.advance(task_index=1)
    gr.before_task(ctx)
    ctx.model.head.set_active_outputs(4)
    replay = gr.replay_batch(ctx, _batch(ctx, 0))
    assert replay.raw.dtype == torch.uint8 and replay.x.shape == (16, 1, 8, 8)
    assert int(replay.y.max()) < 2  # the old solver only knew classes 0 and 1
    assert gr.report()["stored_samples"] == 0
    assert not any(
        isinstance(v, torch.Tensor) and v.dtype == torch.uint8 and v.dim() > 1 for v in gr.state_dict().values()
    )


def test_strategy_states_survive_the_checkpoint_format() -> None:
    """Buffers and the DGR scholar go through the safetensors + JSON tree unchanged."""
    from forgetless.training.checkpoint import flatten_tree, unflatten_tree

    for name in ("derpp", "gem", "generative-replay"):
        ctx = _context("class")
        ctx.model.head.set_active_outputs(2)
        strategy = _strategy(ctx, name)
        batch = _batch(ctx, 0)
        ctx.advance(current_size=len(batch))
        strategy.after_step(ctx, batch, ModelOutput(ctx.model(batch.x).detach()))
        ctx.advance(task_index=1)
        strategy.before_task(ctx)
        skeleton, tensors = flatten_tree(strategy.state_dict())
        twin = _strategy(ctx, name)
        twin.load_state_dict(unflatten_tree(skeleton, tensors), ctx)
        again, _ = flatten_tree(twin.state_dict())
        assert again == skeleton
