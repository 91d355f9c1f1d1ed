"""The strategy protocol: small objects with typed hooks that *return* what they contribute.

A :class:`Strategy` never edits the trainer. The :class:`~forgetless.training.Learner` calls its
hooks and combines what they return, so several strategies compose in one run (``ewc+er``):

==========================  ==================================================================
hook                        returns / role
==========================  ==================================================================
``setup``                   a replacement model (architecture methods) or ``None``
``before_task``             prepare for task ``ctx.task_index`` (own state only)
``resume_task``             a task resumed from a mid-task checkpoint (instead of ``before_task``)
``training_set``            the data to train this task on (``joint`` returns every task's)
``replay_batch``            extra samples appended to the current batch (experience replay)
``criterion``               the batch's base loss in place of cross-entropy (ER-ACE, DFT)
``loss``                    an extra loss term for this batch (penalties, distillation)
``project_gradient``        an edited flat gradient (GEM, A-GEM) or ``None`` to keep it
``before_step``             look at gradients / parameters before the optimizer step (SI)
``after_step``              ``True`` asks the learner to stop this task (safety brake)
``after_task``              consolidate (Fisher, importance, buffer update, pruning)
``report``                  extra figures for ``metrics.json`` (parameter counts, bytes)
``state_dict``              everything needed to resume exactly (tensors and plain values)
``load_state_dict``         restore it, with the context of the run being resumed
==========================  ==================================================================

Hooks see the run through a :class:`TrainingContext`: the model, the data and a frozen
:class:`StepClock` (task, epoch, step) that the learner replaces between steps, never edits.
``criterion``, ``loss`` and ``after_step`` get the batch's :class:`ModelOutput` (logits and the
features the head read), ``project_gradient`` a :class:`FlatGradient` that knows its layout.

Hooks a strategy does not override cost nothing: the learner only calls overridden ones.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from forgetless.errors import ConfigError
from forgetless.strategies._fisher import sample_rows

if TYPE_CHECKING:
    from forgetless.config import RunConfig
    from forgetless.data.scenarios import Scenario, Task


@dataclass
class Batch:
    """A training batch. ``x`` is model-ready (float); ``raw`` is the compact stored form."""

    x: torch.Tensor
    y: torch.Tensor
    task_ids: torch.Tensor | int | None
    raw: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def task_id_tensor(self) -> torch.Tensor | None:
        """Per-row task ids as a tensor (``None`` where the scenario has no task ids)."""
        if self.task_ids is None or isinstance(self.task_ids, torch.Tensor):
            return self.task_ids
        return torch.full_like(self.y, self.task_ids)

    def concat(self, other: Batch) -> Batch:
        """This batch followed by ``other`` (task ids become a tensor when they differ)."""
        same_int = isinstance(self.task_ids, int) and isinstance(other.task_ids, int)
        if same_int and self.task_ids == other.task_ids:
            task_ids: torch.Tensor | int | None = self.task_ids
        elif self.task_ids is None and other.task_ids is None:
            task_ids = None
        else:
            task_ids = torch.cat([self.task_id_tensor(), other.task_id_tensor()])
        raw = None
        if self.raw is not None and other.raw is not None:
            raw = torch.cat([self.raw, other.raw])
        return Batch(torch.cat([self.x, other.x]), torch.cat([self.y, other.y]), task_ids, raw)


@dataclass(frozen=True)
class ModelOutput:
    """What the model computed on a batch: ``logits`` and, where the model has a separate
    feature extractor (``ContinualModel``), the ``features`` the head read (``None`` else).
    A fine-tune passes the Hugging Face output, which has ``logits`` too."""

    logits: torch.Tensor
    features: torch.Tensor | None = None


@dataclass
class TrainingSet:
    """The compact tensors a task trains on (``task_ids`` an int when they are all one task)."""

    x: torch.Tensor
    y: torch.Tensor
    task_ids: torch.Tensor | int | None

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class ImportanceSample:
    """Rows to estimate a parameter importance on (a Fisher, MAS), in the calling convention
    of the per-sample engine (:func:`forgetless.strategies._fisher.per_sample_reduce`):
    ``module(x, task_id)`` gives the logits. ``module``'s parameters are the model's under
    ``prefix`` (a fine-tune's view wraps the model); ``names`` (model names) limits the
    estimate to those parameters (``None``: every trainable one)."""

    module: nn.Module
    x: torch.Tensor
    y: torch.Tensor | None
    task_id: int | None
    names: list[str] | None = None
    prefix: str = ""
    chunk_size: int = 512

    def model_names(self, estimate: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """An estimate keyed by ``module``'s names, re-keyed by the model's."""
        return {name.removeprefix(self.prefix): value for name, value in estimate.items()}


@dataclass(frozen=True)
class StepClock:
    """Where the run is: the learner replaces it between steps (``dataclasses.replace``),
    so a hook always reads one consistent, unchangeable moment."""

    task_index: int = 0
    epoch: int = 0
    step: int = 0
    """Optimizer steps taken in the current task."""
    global_step: int = 0
    steps_in_task: int = 0
    """Optimizer steps the current task takes: epochs x batches of the set it trains on (after
    every ``training_set`` hook), known from the task's first step on."""
    current_size: int = 0
    """Rows of the current batch that come from the current task (replay rows follow them)."""


class ParameterLayout:
    """The parameters of a flat gradient, in order: flatten per-parameter tensors into that
    layout, or take a loss's gradient directly in it."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.params = params
        self.sizes = [p.numel() for p in params]

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def flatten(self, tensors: list[torch.Tensor | None]) -> torch.Tensor:
        """One vector of ``tensors`` (one per parameter; ``None`` counts as zeros)."""
        return torch.cat(
            [(t if t is not None else torch.zeros_like(p)).reshape(-1) for t, p in zip(tensors, self.params)]
        )

    def gradient_of(self, loss: torch.Tensor, retain_graph: bool = False) -> torch.Tensor:
        """d loss / d params in this layout (``.grad`` untouched)."""
        grads = torch.autograd.grad(loss, self.params, retain_graph=retain_graph, allow_unused=True)
        return self.flatten(list(grads))

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """``flat`` cut back into one view per parameter, shaped like it."""
        return [part.view_as(p) for part, p in zip(flat.split(self.sizes), self.params)]


@dataclass(frozen=True)
class FlatGradient:
    """The step's gradient as one vector and the :class:`ParameterLayout` it follows."""

    vector: torch.Tensor
    layout: ParameterLayout


@dataclass
class TrainingContext:
    """What the learner shows its strategies. Read it; do not assign to it: the learner
    replaces :attr:`clock` between steps (:meth:`advance`)."""

    model: nn.Module
    scenario: Scenario
    config: RunConfig
    device: torch.device
    generator: torch.Generator
    """The run's seeded generator on the CPU: use it (or your own seeded one) for any sampling."""
    clock: StepClock = field(default_factory=StepClock)
    accuracies: Callable[[list[int] | None], Any] | None = None
    """Set by the learner: test accuracy of the current model on the given tasks (``None``:
    all), evaluated exactly as the accuracy matrix is (precision included)."""
    strategies: list[Strategy] = field(default_factory=list)
    """Set by the learner: every strategy of the run, in order (the safety brake's rollback
    restores their state)."""
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None
    """Set by the learner from ``config.augment``: the batched training augmentation."""
    pretrained: frozenset[str] = frozenset()
    """Parameters that come trained from before the first task (a fine-tune's pretrained
    weights): strategies count them as trained by an earlier task (L2-SP anchors them)."""

    def advance(self, **changes: int) -> None:
        """Replace the clock by a copy with ``changes`` (the learner's move between steps)."""
        self.clock = replace(self.clock, **changes)

    @property
    def task_index(self) -> int:
        return self.clock.task_index

    @property
    def epoch(self) -> int:
        return self.clock.epoch

    @property
    def step(self) -> int:
        """Optimizer steps taken in the current task."""
        return self.clock.step

    @property
    def global_step(self) -> int:
        return self.clock.global_step

    @property
    def steps_in_task(self) -> int:
        return self.clock.steps_in_task

    @property
    def current_size(self) -> int:
        return self.clock.current_size

    @property
    def task(self) -> Task:
        return self.scenario.tasks[self.task_index]

    def task_id(self, task_index: int) -> int | None:
        """The task id the model receives for ``task_index`` (``None`` without task ids)."""
        return task_index if self.scenario.uses_task_id else None

    def prepare(self, raw: torch.Tensor) -> torch.Tensor:
        """Compact stored inputs to model-ready floats."""
        return self.scenario.to_float(raw)

    def training_inputs(self, raw: torch.Tensor) -> torch.Tensor:
        """:meth:`prepare`, then the run's augmentation (``--augment``) when it has one: for
        rows the model trains on, never for evaluation or importance estimates."""
        x = self.scenario.to_float(raw)
        return x if self.augment is None else self.augment(x)

    def importance_samples(self, count: int) -> list[ImportanceSample]:
        """Up to ``count`` training inputs of the current task (drawn with ``generator``), for
        an importance estimate after the task; a fine-tune's context gives its kept
        capabilities' rows instead (:mod:`forgetless.integrations.hf.strategies`)."""
        task = self.task
        rows = sample_rows(task.num_train, count, self.generator).to(task.train_y.device)
        x = self.prepare(task.train_x[rows]).to(self.device)
        return [ImportanceSample(self.model, x, task.train_y[rows].to(self.device), self.task_id(self.task_index))]

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]


class NoParams(BaseModel):
    """A strategy without hyperparameters."""

    model_config = ConfigDict(extra="forbid")


def check_finite_params(strategy: str, params: BaseModel) -> None:
    """Refuse a NaN or infinite hyperparameter (``--set ewc.ewc_lambda=inf``) up front.

    Such a value can only make the loss NaN; it would also be written to ``config.yaml`` as
    ``null`` (JSON has no infinity), so the run could not be resumed to the same error. Every
    strategy's ``Params`` is checked here, whatever its class (the subclasses of
    ``BufferParams`` included), so no Params class needs its own validator.
    """
    for name, value in params:
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(
                    f"invalid strategy parameter: {strategy}.{name} is {item!r}: hyperparameters must be "
                    f"finite numbers; give a finite value, e.g. --set {strategy}.{name}=100"
                )


HOOKS = (
    "setup",
    "before_task",
    "resume_task",
    "training_set",
    "replay_batch",
    "criterion",
    "loss",
    "project_gradient",
    "before_step",
    "after_step",
    "after_task",
    "report",
    "state_dict",
    "load_state_dict",
)
"""Every hook of the protocol, in the order of the table above."""


class Strategy:
    """Base class of every mitigation method. Override only the hooks the method needs.

    Subclasses set ``name`` (the CLI name), ``summary`` (one line for ``forgetless list``),
    ``scenarios`` (those the method supports) and ``Params`` (a pydantic model of its
    hyperparameters with documented defaults). Two more describe the method to the listing and
    the benchmarks (``benchmarks/``), which read them from the registry:

    * ``family``: the kind of method, one of ``baseline``, ``regularization``,
      ``distillation``, ``replay``, ``isolation`` (``other`` when unset).
    * ``speed_target``: the highest acceptable ratio of its training wall time to ``naive``'s
      on the benchmark suite's class-IL run (``naive``'s own is to the hand-written PyTorch
      loop); ``None``: no target.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    family: ClassVar[str] = "other"
    """The kind of method (``forgetless list``, the benchmark tables)."""
    speed_target: ClassVar[float | None] = None
    """Highest acceptable wall-time ratio to ``naive`` (``naive``: to the plain loop), or ``None``."""
    scenarios: ClassVar[tuple[str, ...]] = ("task", "domain", "class")
    Params: ClassVar[type[BaseModel]] = NoParams
    requires: ClassVar[tuple[str, ...]] = ()
    """Optional packages (import names) the method needs; checked before a run starts."""
    stacks: ClassVar[tuple[str, ...]] = ("run",)
    """Where the method runs: ``run`` (continual-learning runs) and ``finetune`` (a Hugging Face
    fine-tune, :mod:`forgetless.integrations.hf.strategies`: only the hooks that serves, data
    read through ``ctx.importance_samples``; ``loss`` and ``criterion`` get a ``TokenBatch`` and the
    Hugging Face output)."""

    def __init__(self, **params: Any):
        try:
            self.params = self.Params(**params)
        except ValidationError as error:
            parts = [f"{self.name}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()]
            raise ConfigError("invalid strategy parameter: " + "; ".join(parts)) from None
        check_finite_params(self.name, self.params)

    # -- hooks ---------------------------------------------------------------------------
    def setup(self, ctx: TrainingContext) -> nn.Module | None:
        return None

    def before_task(self, ctx: TrainingContext) -> None:
        return None

    def resume_task(self, ctx: TrainingContext) -> None:
        """The task ``ctx.task_index`` continues from a mid-task checkpoint: ``before_task``
        ran before the checkpoint and is not called again; state is already loaded."""
        return None

    def training_set(self, ctx: TrainingContext, data: TrainingSet) -> TrainingSet:
        return data

    def replay_batch(self, ctx: TrainingContext, batch: Batch) -> Batch | None:
        return None

    def criterion(self, ctx: TrainingContext, batch: Batch, output: ModelOutput) -> torch.Tensor | None:
        """The batch's base loss, replacing the cross-entropy (the first strategy that returns
        one wins); ``None`` keeps the default."""
        return None

    def loss(self, ctx: TrainingContext, batch: Batch, output: ModelOutput) -> torch.Tensor | None:
        return None

    def project_gradient(self, ctx: TrainingContext, batch: Batch, gradient: FlatGradient) -> torch.Tensor | None:
        """An edited ``gradient.vector`` (same layout), or ``None`` to keep it."""
        return None

    def before_step(self, ctx: TrainingContext) -> None:
        return None

    def after_step(self, ctx: TrainingContext, batch: Batch, output: ModelOutput) -> bool:
        return False

    def after_task(self, ctx: TrainingContext) -> None:
        return None

    def report(self) -> dict[str, Any]:
        return {}

    # -- checkpointing -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Tensors and JSON-serialisable values; nested dicts allowed (tensors go to safetensors)."""
        return {}

    def load_state_dict(self, state: dict[str, Any], ctx: TrainingContext) -> None:
        """Restore :meth:`state_dict` into a strategy built for the same run; ``ctx`` is that
        run's context, its clock already at the checkpoint (tasks done: ``ctx.task_index``)."""
        return None

    # -- helpers -------------------------------------------------------------------------
    @classmethod
    def overrides(cls, hook: str) -> bool:
        """Whether this class overrides ``hook`` (the learner skips hooks left as defaults)."""
        return getattr(cls, hook) is not getattr(Strategy, hook)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode that no gradient reaches (the "old model" of LwF,
    iCaRL and generative replay's previous scholar)."""
    old = copy.deepcopy(model).eval()
    for p in old.parameters():
        p.requires_grad_(False)
    return old
