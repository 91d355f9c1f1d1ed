"""Continual-learning scenarios and the builders that cut a data set into tasks.

Three scenarios (van de Ven & Tolias 2019), each an explicit object, not a test-time trick:

* ``task``: task-incremental. Each task has its own output head; the task id is given at
  training *and* test time; labels are local to the task (``0..k-1``).
* ``domain``: domain-incremental. One head with the same label space for every task; no task
  id is needed (labels local to the task, shared across tasks).
* ``class``: class-incremental. One shared head over every class of the stream, no task id;
  labels are global, numbered in the order the classes arrive.

Builders: :func:`split` (disjoint classes per task), :func:`permuted` (one seeded pixel
permutation per task), :func:`rotated` (one fixed angle per task) and :func:`by_domain` (one
task per acquisition domain, CORe50's sessions). Every task keeps its
inputs as compact tensors (``uint8`` for images) already in their final pixel order, so the
training loop only slices and scales them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
import torch.nn.functional as F

from forgetless.data.dataset import ImageDataset
from forgetless.errors import ConfigError, DataError

ScenarioKind = Literal["task", "domain", "class"]
SCENARIOS: dict[str, str] = {
    "task": "task-incremental: task id given, one head per task",
    "domain": "domain-incremental: no task id, one head, same labels every task",
    "class": "class-incremental: no task id, one shared head over all classes seen",
}


@dataclass
class Task:
    """One task of a stream: compact inputs, labels in the scenario's output space."""

    index: int
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[int, ...]
    """Classes of the *original* data set present in this task."""
    description: str = ""

    @property
    def num_train(self) -> int:
        return int(self.train_y.shape[0])


@dataclass
class Scenario:
    """A stream of tasks and what the model's head must look like to learn it."""

    kind: ScenarioKind
    name: str
    tasks: list[Task]
    input_shape: tuple[int, ...]
    max_value: float
    head_sizes: list[int]
    """One output count per task (task-IL) or a single entry (domain-/class-IL)."""
    active_outputs: list[int] = field(default_factory=list)
    """Class-IL: number of live outputs after each task arrives (cumulative class count)."""
    sources: tuple[str, ...] = ()
    """Where the data were read from (:attr:`ImageDataset.sources`); empty for in-memory tasks."""

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def uses_task_id(self) -> bool:
        return self.kind == "task"

    def task_labels(self) -> list[torch.Tensor] | None:
        """Class-IL: each task's labels in the head's output space (sorted, on the task's device),
        for the task-IL accuracy of a class-IL run; ``None`` for task- and domain-IL.

        Read from the labels the task's rows carry, not from :attr:`Task.classes` (the original
        data set's classes, which a class order or a permuted/rotated stream renumbers).
        """
        if self.kind != "class":
            return None
        return [torch.unique(torch.cat([task.train_y, task.test_y])) for task in self.tasks]

    def to_float(self, x: torch.Tensor) -> torch.Tensor:
        """Scale compact inputs to floats in ``[0, 1]`` (done batch by batch in the hot loop)."""
        return x.to(torch.float32).div_(self.max_value)

    def subsample(
        self, train: int | None = None, test: int | None = None, tasks: int | None = None, seed: int = 0
    ) -> Scenario:
        """A smaller copy: the first ``tasks`` tasks, each with ``train`` / ``test`` rows drawn at
        random (seeded; ``None`` keeps them all). For quick experiments, tests and benchmarks on
        real data; the original scenario is left untouched.

        Per task the training rows are drawn first, then the test rows, from one generator.
        """
        generator = torch.Generator().manual_seed(seed)

        def pick(x: torch.Tensor, y: torch.Tensor, count: int | None) -> tuple[torch.Tensor, torch.Tensor]:
            if count is None:
                return x, y
            keep = torch.randperm(y.shape[0], generator=generator)[:count].to(y.device)
            return x[keep], y[keep]

        kept = []
        for task in self.tasks[:tasks]:
            train_x, train_y = pick(task.train_x, task.train_y, train)
            test_x, test_y = pick(task.test_x, task.test_y, test)
            kept.append(replace(task, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y))
        n = len(kept)
        heads = self.head_sizes[:n] if self.uses_task_id else list(self.head_sizes)
        return replace(self, tasks=kept, head_sizes=heads, active_outputs=self.active_outputs[:n])

    def to(self, device: torch.device | str) -> Scenario:
        """Move every task's tensors to ``device`` (compact dtype kept); a tensor that several
        tasks share (CORe50's one test set) is moved once and stays shared."""
        moved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (original, moved)
        for task in self.tasks:
            for name in ("train_x", "train_y", "test_x", "test_y"):
                tensor = getattr(task, name)
                if id(tensor) not in moved:
                    moved[id(tensor)] = (tensor, tensor.to(device))
                setattr(task, name, moved[id(tensor)][1])
        return self


def _check_kind(kind: str) -> None:
    if kind not in SCENARIOS:
        from forgetless.errors import unknown_name

        raise unknown_name("scenario", kind, list(SCENARIOS))


def class_order(num_classes: int, seed: int | None) -> list[int]:
    """The order in which classes arrive: ``0..n-1``, or a seeded permutation of it."""
    if seed is None:
        return list(range(num_classes))
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_classes, generator=generator).tolist()


def split(
    data: ImageDataset,
    n_tasks: int,
    kind: ScenarioKind = "class",
    order: list[int] | None = None,
    classes_per_task: int | None = None,
    first_task_classes: int | None = None,
) -> Scenario:
    """Split the classes of ``data`` into ``n_tasks`` disjoint groups, in ``order``.

    With ``classes_per_task`` unset the classes are shared out as evenly as possible (earlier
    tasks get one more when they do not divide). ``first_task_classes`` gives the first task
    that many classes and shares the rest among the other tasks (CORe50-NC's 10 + 8 x 5,
    Lomonaco & Maltoni 2017). Domain-IL needs equal groups.
    """
    _check_kind(kind)
    n_classes = data.num_classes
    order = list(range(n_classes)) if order is None else list(order)
    if sorted(order) != list(range(n_classes)):
        raise ConfigError(f"class order must be a permutation of 0..{n_classes - 1}, got {order}")
    if n_tasks < 1 or n_tasks > n_classes:
        raise ConfigError(
            f"cannot split {n_classes} classes of {data.name} into {n_tasks} tasks: "
            f"choose --tasks between 1 and {n_classes}"
        )
    if classes_per_task is not None:
        if classes_per_task * n_tasks > n_classes:
            raise ConfigError(
                f"{n_tasks} tasks x {classes_per_task} classes exceeds the {n_classes} classes of "
                f"{data.name}: lower --tasks or the classes per task"
            )
        sizes = [classes_per_task] * n_tasks
    elif first_task_classes is not None:
        rest = n_classes - first_task_classes
        if n_tasks < 2 or not 1 <= first_task_classes or rest < n_tasks - 1:
            raise ConfigError(
                f"a first task of {first_task_classes} classes leaves {rest} of the {n_classes} classes of "
                f"{data.name} for {n_tasks - 1} more tasks: choose --tasks between 2 and {rest + 1}"
            )
        base, extra = divmod(rest, n_tasks - 1)
        sizes = [first_task_classes] + [base + (1 if i < extra else 0) for i in range(n_tasks - 1)]
    else:
        base, extra = divmod(n_classes, n_tasks)
        sizes = [base + (1 if i < extra else 0) for i in range(n_tasks)]
    if kind in ("task", "domain") and min(sizes) < 2:
        raise ConfigError(
            f"{n_classes} classes of {data.name} in {n_tasks} tasks leave a task with one class: its "
            f"{kind}-IL head has one output and scores 1.0 whatever the model learns; choose --tasks "
            f"at most {n_classes // 2}, or --scenario class"
        )
    if kind == "domain" and len(set(sizes)) > 1:
        raise ConfigError(
            f"domain-incremental split needs the same number of classes in every task; "
            f"{n_classes} classes do not divide into {n_tasks} tasks: choose a divisor of {n_classes}"
        )
    # global label = position of the class in the arrival order
    position = torch.empty(n_classes, dtype=torch.int64)
    position[torch.tensor(order)] = torch.arange(n_classes)
    tasks: list[Task] = []
    start = 0
    for index, size in enumerate(sizes):
        classes = order[start : start + size]
        offset = 0 if kind in ("task", "domain") else start
        train_x, train_y, test_x, test_y = _select(data, classes, position, start, offset)
        tasks.append(Task(index, train_x, train_y, test_x, test_y, tuple(classes), f"classes {classes}"))
        start += size
    used = start
    head_sizes = sizes if kind == "task" else [max(sizes)] if kind == "domain" else [used]
    active = list(torch.tensor(sizes).cumsum(0).tolist()) if kind == "class" else []
    return check_tasks(
        Scenario(
            kind=kind,
            name=f"split-{data.name}",
            tasks=tasks,
            input_shape=data.input_shape,
            max_value=data.max_value,
            head_sizes=head_sizes,
            active_outputs=active,
            sources=data.sources,
        )
    )


def _select(
    data: ImageDataset, classes: list[int], position: torch.Tensor, start: int, offset: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of ``classes`` with labels ``position[y] - start + offset``."""
    wanted = torch.tensor(classes)
    out = []
    for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
        rows = torch.isin(y, wanted)
        out += [rows_of(x, rows), position[y[rows]] - start + offset]
    return out[0], out[1], out[2], out[3]


def rows_of(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``x[rows]`` (a boolean mask) as a contiguous tensor: a view when the rows are one run
    (a data set stored class by class, memory-mapped or not, is sliced without a copy)."""
    where = rows.nonzero().squeeze(1)
    if len(where) and int(where[-1]) - int(where[0]) + 1 == len(where):
        return x[int(where[0]) : int(where[-1]) + 1].contiguous()  # no copy when x is contiguous
    return x[where].contiguous()


def _relabelled_stream(
    data: ImageDataset,
    kind: ScenarioKind,
    inputs: list[tuple[torch.Tensor, torch.Tensor]],
    name: str,
    descriptions: list[str],
) -> Scenario:
    """A stream where every task holds all classes of ``data`` (permuted, rotated)."""
    _check_kind(kind)
    k = data.num_classes
    tasks = []
    for index, ((train_x, test_x), text) in enumerate(zip(inputs, descriptions, strict=True)):
        offset = index * k if kind == "class" else 0
        tasks.append(
            Task(
                index=index,
                train_x=train_x,
                train_y=data.train_y + offset,
                test_x=test_x,
                test_y=data.test_y + offset,
                classes=tuple(range(k)),
                description=text,
            )
        )
    n = len(tasks)
    head_sizes = [k] * n if kind == "task" else [k * n] if kind == "class" else [k]
    active = [k * (i + 1) for i in range(n)] if kind == "class" else []
    return check_tasks(
        Scenario(kind, name, tasks, data.input_shape, data.max_value, head_sizes, active, sources=data.sources)
    )


def by_domain(data: ImageDataset, n_tasks: int | None = None, kind: ScenarioKind = "domain") -> Scenario:
    """One task per acquisition domain of the training images (:attr:`ImageDataset.train_domains`),
    every task tested on the whole test set: CORe50's new-instances (NI) stream, one task per
    training session (Lomonaco & Maltoni 2017). ``n_tasks`` keeps the first domains.

    Labels as in :func:`permuted`: the same label space every task (``task``, ``domain``), or
    shifted by ``k`` per task (``class``). A domain stored as one run of rows is a view.
    """
    _check_kind(kind)
    if data.train_domains is None:
        raise ConfigError(f"{data.name} records no domain per image: use a split, permuted or rotated stream")
    names = data.domain_names or tuple(str(d) for d in range(int(data.train_domains.max()) + 1))
    n_tasks = len(names) if n_tasks is None else n_tasks
    if not 1 <= n_tasks <= len(names):
        raise ConfigError(
            f"{data.name} has {len(names)} domains ({', '.join(names)}): choose --tasks between 1 and {len(names)}"
        )
    k = data.num_classes
    tasks = []
    for index in range(n_tasks):
        rows = data.train_domains == index
        offset = index * k if kind == "class" else 0
        train_y = data.train_y[rows]
        tasks.append(
            Task(
                index=index,
                train_x=rows_of(data.train_x, rows),
                train_y=train_y + offset if offset else train_y,
                test_x=data.test_x,
                test_y=data.test_y + offset if offset else data.test_y,
                classes=tuple(sorted(set(train_y.tolist()))),
                description=f"domain {names[index]}",
            )
        )
    head_sizes = [k] * n_tasks if kind == "task" else [k * n_tasks] if kind == "class" else [k]
    active = [k * (i + 1) for i in range(n_tasks)] if kind == "class" else []
    return check_tasks(
        Scenario(
            kind, f"domains-{data.name}", tasks, data.input_shape, data.max_value, head_sizes, active, data.sources
        )
    )


def pixel_permutations(n_pixels: int, n_tasks: int, seed: int) -> list[torch.Tensor]:
    """One fixed permutation per task; task 0 keeps the identity (the original data set).

    Drawn from a dedicated generator seeded with ``seed``, so every process and worker that
    builds the stream with the same seed gets the same permutations.
    """
    generator = torch.Generator().manual_seed(seed)
    perms = [torch.arange(n_pixels)]
    perms += [torch.randperm(n_pixels, generator=generator) for _ in range(n_tasks - 1)]
    return perms


def permuted(data: ImageDataset, n_tasks: int, kind: ScenarioKind = "domain", seed: int = 0):
    """Permuted-pixel stream (Goodfellow et al. 2013; Kirkpatrick et al. 2017)."""
    if n_tasks < 1:
        raise ConfigError(f"--tasks must be at least 1, got {n_tasks}")
    shape = data.input_shape
    perms = pixel_permutations(math.prod(shape), n_tasks, seed)

    def apply(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, perm].reshape(x.shape).contiguous()

    inputs = [(apply(data.train_x, p), apply(data.test_x, p)) for p in perms]
    texts = ["identity" if i == 0 else f"pixel permutation {i}" for i in range(n_tasks)]
    return _relabelled_stream(data, kind, inputs, f"permuted-{data.name}", texts)


def rotation_angles(n_tasks: int, max_angle: float = 180.0) -> list[float]:
    """Evenly spaced fixed angles ``0, d, 2d, ...`` with ``d = max_angle / n_tasks``."""
    return [i * max_angle / n_tasks for i in range(n_tasks)]


def rotate_images(x: torch.Tensor, angle_degrees: float) -> torch.Tensor:
    """Rotate ``[N, C, H, W]`` images about their centre (bilinear), keeping dtype and range."""
    if angle_degrees == 0:
        return x.clone()
    theta = math.radians(angle_degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    matrix = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=torch.float32)
    out = torch.empty_like(x)
    for start in range(0, x.shape[0], 8192):  # bounded memory for 60k images
        chunk = x[start : start + 8192].to(torch.float32)
        grid = F.affine_grid(matrix.expand(chunk.shape[0], 2, 3), list(chunk.shape), False)
        rotated = F.grid_sample(chunk, grid, mode="bilinear", align_corners=False)
        out[start : start + 8192] = rotated.round().to(x.dtype) if not x.is_floating_point() else rotated
    return out


def rotated(
    data: ImageDataset,
    n_tasks: int,
    kind: ScenarioKind = "domain",
    angles: list[float] | None = None,
):
    """Rotated stream: task ``i`` shows every image rotated by a fixed angle."""
    if n_tasks < 1:
        raise ConfigError(f"--tasks must be at least 1, got {n_tasks}")
    angles = rotation_angles(n_tasks) if angles is None else list(angles)
    if len(angles) != n_tasks:
        raise ConfigError(f"give one rotation angle per task: {n_tasks} tasks, {len(angles)} angles")
    inputs = [(rotate_images(data.train_x, a), rotate_images(data.test_x, a)) for a in angles]
    texts = [f"rotated {a:g} degrees" for a in angles]
    return _relabelled_stream(data, kind, inputs, f"rotated-{data.name}", texts)


def validation_split(scenario: Scenario, fraction: float, seed: int) -> Scenario:
    """Hold out ``fraction`` of each task's *training* data as its evaluation set.

    Used to choose hyperparameters without looking at test data; the test sets are dropped.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"validation fraction must be in (0, 1), got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    tasks = []
    for task in scenario.tasks:
        perm = torch.randperm(task.num_train, generator=generator)
        n_val = max(1, int(round(fraction * task.num_train)))
        val, train = perm[:n_val], perm[n_val:]
        tasks.append(
            Task(
                index=task.index,
                train_x=task.train_x[train],
                train_y=task.train_y[train],
                test_x=task.train_x[val],
                test_y=task.train_y[val],
                classes=task.classes,
                description=task.description,
            )
        )
    return check_tasks(
        Scenario(
            scenario.kind,
            scenario.name,
            tasks,
            scenario.input_shape,
            scenario.max_value,
            scenario.head_sizes,
            scenario.active_outputs,
            scenario.sources,
        )
    )


MAX_LABEL = 2**24
"""Labels are class indices, one output of the head each: a larger one is a mistake."""


def _tensor(value: object, task: int, name: str) -> torch.Tensor:
    """``torch.as_tensor(value)``, or a one-line DataError naming the task and the array."""
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:
        kind = type(value).__name__
        raise DataError(
            f"task {task} {name} is a {kind} that is not a numeric array ({' '.join(str(error).split())}): "
            "give a tensor or a numpy array"
        ) from None
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise DataError(f"task {task} {name} has dtype {tensor.dtype}: give real numbers (inputs) or integers (labels)")
    return tensor


def _check_inputs(x: torch.Tensor, task: int, name: str) -> None:
    split_name = name.split("_")[0]
    if x.ndim < 2:
        raise DataError(f"task {task} {name} has shape {tuple(x.shape)}: expected [N, ...] with one row per example")
    if x.shape[0] == 0:
        why = " (an empty test set would report accuracy 0)" if split_name == "test" else ""
        raise DataError(
            f"task {task} {split_name}: {name} holds no examples: give every task at least one {split_name} "
            f"example{why}"
        )
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise DataError(f"task {task} {name} holds NaN or infinite values: clean or drop those rows")


def _check_labels(y: torch.Tensor, task: int, name: str) -> None:
    if y.is_floating_point():
        raise DataError(
            f"task {task} {name} has dtype {y.dtype}: labels must be integer class indices (convert them with .long())"
        )
    values = y.cpu().numpy()  # numpy: torch has no min/max for uint32/uint64
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if low < 0:
        raise DataError(f"task {task} {name} holds label {low}: labels must be 0 or more")
    if high >= MAX_LABEL:
        raise DataError(
            f"task {task} {name} holds label {high}: labels are class indices (one output each), "
            f"below {MAX_LABEL}; number the classes 0, 1, 2, ..."
        )


def check_tasks(scenario: Scenario) -> Scenario:
    """A DataError naming the first task with no training or no test example (a task that could
    not train, or an accuracy of 0 measured on nothing)."""
    for task in scenario.tasks:
        for split_name, y in (("train", task.train_y), ("test", task.test_y)):
            if y.shape[0] == 0:
                raise DataError(
                    f"{scenario.name}: task {task.index} ({task.description or 'no description'}) has no {split_name} "
                    f"example: give every class {split_name} examples (an empty test set would report accuracy 0)"
                )
    return scenario


def from_task_data(
    kind: ScenarioKind,
    tasks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    name: str = "custom",
    max_value: float | None = None,
) -> Scenario:
    """A scenario from your own per-task tensors ``[(train_x, train_y, test_x, test_y), ...]``.

    Labels are as you give them: local to each task (``0..k-1``) for ``task`` and ``domain``,
    global class indices for ``class`` (a task's labels must not reappear in another task).
    Inputs keep their dtype; ``max_value`` scales them to ``[0, 1]`` (default: 255 for
    ``uint8``, 1 for floats). To use a ``torch.utils.data.Dataset`` per task, materialise it
    first with :func:`forgetless.data.custom.from_torch_dataset`.
    """
    _check_kind(kind)
    try:
        tasks = [] if isinstance(tasks, (str, bytes, Mapping)) else list(tasks)
    except TypeError:
        tasks = []
    if not tasks:
        raise ConfigError("give at least one task: a list of (train_x, train_y, test_x, test_y)")
    if max_value is not None and (
        isinstance(max_value, bool) or not isinstance(max_value, (int, float)) or not 0 < max_value < math.inf
    ):
        raise ConfigError(f"max_value must be a positive finite number, got {max_value!r}")
    built: list[Task] = []
    for index, item in enumerate(tasks):
        try:
            count = -1 if isinstance(item, (str, bytes, Mapping)) else len(item)
        except TypeError:
            count = -1
        if count != 4:
            got = f"{count} items" if count >= 0 else f"a value of type {type(item).__name__}"
            raise ConfigError(f"task {index} must be (train_x, train_y, test_x, test_y), got {got}")
        names = ("train_x", "train_y", "test_x", "test_y")
        train_x, train_y, test_x, test_y = (_tensor(t, index, n) for t, n in zip(item, names, strict=True))
        for split_name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
            _check_inputs(x, index, f"{split_name}_x")
            if x.shape[0] != y.shape[0] or y.ndim != 1:
                raise ConfigError(
                    f"task {index} {split_name}: {x.shape[0]} inputs but labels of shape "
                    f"{tuple(y.shape)}: give one integer label per input"
                )
            _check_labels(y, index, f"{split_name}_y")
        if test_x.shape[1:] != train_x.shape[1:] or test_x.dtype != train_x.dtype:
            raise DataError(
                f"task {index}: test_x is {test_x.dtype} {tuple(test_x.shape[1:])} but train_x is "
                f"{train_x.dtype} {tuple(train_x.shape[1:])}: train and test inputs need one shape and dtype"
            )
        if built and (train_x.shape[1:] != built[0].train_x.shape[1:] or train_x.dtype != built[0].train_x.dtype):
            raise DataError(
                f"task {index} inputs are {train_x.dtype} {tuple(train_x.shape[1:])}, task 0's are "
                f"{built[0].train_x.dtype} {tuple(built[0].train_x.shape[1:])}: every task needs the same input "
                "shape and dtype"
            )
        classes = tuple(sorted(set(train_y.tolist())))
        unseen = sorted(set(test_y.tolist()) - set(classes))
        if unseen:
            raise DataError(
                f"task {index} test: label(s) {unseen[:5]} never appear in its train_y (labels {list(classes)[:10]}): "
                "every test label needs training examples in the same task; check the labels of this task"
            )
        built.append(Task(index, train_x, train_y.long(), test_x, test_y.long(), classes, f"task {index}"))
    if kind == "class":
        seen: set[int] = set()
        for task in built:
            if seen & set(task.classes):
                raise ConfigError(
                    f"class-incremental tasks must not share labels: task {task.index} repeats "
                    f"{sorted(seen & set(task.classes))}"
                )
            seen |= set(task.classes)
    widths = [int(max(t.train_y.max(), t.test_y.max())) + 1 for t in built]
    if kind == "task":
        head_sizes, active = widths, []
    elif kind == "domain":
        head_sizes, active = [max(widths)], []
    else:
        head_sizes = [max(widths)]
        active = [max(widths[: i + 1]) for i in range(len(built))]
    first = built[0].train_x
    scale = max_value if max_value is not None else (255.0 if first.dtype == torch.uint8 else 1.0)
    return Scenario(kind, name, built, tuple(first.shape[1:]), scale, head_sizes, active)
