"""``forgetless demo words``: catastrophic forgetting you can read, live in the terminal.

The classic picture of catastrophic interference (McCloskey & Cohen 1989, "Catastrophic
interference in connectionist networks: the sequential learning problem"; Ratcliff 1990): a
network that learns one list of associations after another does not merely get a little worse
at the old ones, it overwrites them. Here the lists are four tasks of short words (animals,
colors, numbers, shapes), learned in turn by a tiny character-level model, and what the model
"remembers" is shown as the strings it now produces: after the last task, plain fine-tuning
(``naive``) turns ``tiger`` into ``cirere`` and ``three`` into ``crrere`` (seed 0), while
experience replay (``er``) and elastic weight consolidation (``ewc``) still spell most earlier
words exactly.

The framing fits the library's classification learner unchanged. Every (word, character
position) pair is one sample: the input is a one-hot of the word's identity within the whole
vocabulary of the demo followed by a one-hot of the position, and the label is the character at
that position (``_`` pads short words, so a word is produced exactly only when the padding is
too). The four tasks form a ``domain``-incremental scenario (:func:`~forgetless.data.scenarios.
from_task_data`): one shared output head over every character, labels meaning the same in every
task. The model is the library's MLP (:func:`~forgetless.models.build_model`), each strategy
comes from :func:`~forgetless.strategies.make_strategies`, and each run is a
:class:`~forgetless.training.Learner`; the three learners are stepped through the tasks in
lockstep (``Learner.train_task``) so the screen can show them side by side after every task.

A word is produced by taking the most likely character at each position; its *exact match* is
1 when the whole string equals the word. The results folder holds the exact-match accuracy
matrices (``R[i][j]``: share of task ``j``'s words spelled exactly after training task ``i``)
in the format of ``forgetless run`` (``metrics.json``, ``accuracy_matrix.csv``, plots), the
learner's own per-character accuracy matrices under each run's ``report``, and the final
screen as ``words.svg``.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from forgetless.config import RunConfig, make_config
from forgetless.data.scenarios import Scenario, from_task_data
from forgetless.io import atomic_write_text, prepare_run_dir
from forgetless.reports.results import save_experiment
from forgetless.training.experiment import ExperimentResult, build_learner, default_out_dir
from forgetless.training.learner import Learner
from forgetless.training.result import RunResult

TASKS: dict[str, tuple[str, ...]] = {
    "animals": ("cat", "dog", "horse", "mouse", "sheep", "tiger", "zebra", "rabbit"),
    "colors": ("red", "blue", "green", "black", "white", "yellow", "violet", "orange"),
    "numbers": ("one", "two", "three", "four", "five", "six", "seven", "eight"),
    "shapes": ("circle", "square", "oval", "cube", "cone", "star", "sphere", "prism"),
}
"""The four tasks, learned in this order."""
PAD = "_"
"""The padding character: label of the positions after a word's end (shown as ``·``)."""
BENCHMARK = "demo-words"
"""The ``benchmark`` field of the run's config (``metrics.json``, default results folder)."""
SCREEN_WIDTH = 84
"""Width of the recorded final screen (``words.svg``), whatever the terminal's width."""


@dataclass(frozen=True)
class WordsSettings:
    """Hyperparameters of the demo, measured to give a clear picture in about a second of training.

    With seeds 0-4: naive spells 0% of the earlier words exactly after the last task, er 88-100%,
    ewc 92-100%; every strategy spells 100% of the task it has just learned.
    """

    epochs: int = 80
    batch_size: int = 16
    lr: float = 0.01
    hidden: tuple[int, ...] = (256,)
    buffer_size: int = 500
    """er's reservoir, in samples; every epoch offers each (word, position) row again, so it
    holds repeats: about 93% of the distinct rows of each earlier task at the end."""
    ewc_lambda: float = 3000.0
    fisher: str = "exact"
    """EWC's Fisher: the expectation over every character (cheap here, steadier than sampling)."""
    strategies: tuple[str, ...] = ("naive", "er", "ewc")


@dataclass(frozen=True)
class Vocabulary:
    """The words of every task and their encoding as (word, position) samples."""

    tasks: dict[str, tuple[str, ...]]

    @cached_property
    def words(self) -> list[str]:
        return [word for words in self.tasks.values() for word in words]

    @cached_property
    def length(self) -> int:
        """Positions per word (the longest word's length; shorter words are padded)."""
        return max(len(word) for word in self.words)

    @cached_property
    def alphabet(self) -> str:
        """Every output character: the padding first, then the letters in sorted order."""
        return PAD + "".join(sorted(set("".join(self.words)) - {PAD}))

    def task_words(self, task_index: int) -> tuple[str, ...]:
        return list(self.tasks.values())[task_index]

    def task_slice(self, task_index: int) -> slice:
        """Indices of the words of task ``task_index`` in :attr:`words`."""
        start = sum(len(words) for words in list(self.tasks.values())[:task_index])
        return slice(start, start + len(self.task_words(task_index)))

    def inputs(self) -> torch.Tensor:
        """``uint8`` one-hots ``[word, position]`` for every (word, position), word-major."""
        n, length = len(self.words), self.length
        x = torch.zeros(n * length, n + length, dtype=torch.uint8)
        rows = torch.arange(n * length)
        x[rows, rows // length] = 1
        x[rows, n + rows % length] = 1
        return x

    def labels(self) -> torch.Tensor:
        """Character id at every (word, position), word-major, padding after the word's end."""
        padded = "".join(word.ljust(self.length, PAD) for word in self.words)
        return torch.tensor([self.alphabet.index(c) for c in padded], dtype=torch.int64)

    def decode(self, ids: torch.Tensor) -> list[str]:
        """``[words, length]`` character ids to strings (padding kept)."""
        return ["".join(self.alphabet[i] for i in row) for row in ids.tolist()]


def build_scenario(vocab: Vocabulary) -> Scenario:
    """The domain-incremental scenario: one task per word list, tested on its own words."""
    x, y, length = vocab.inputs(), vocab.labels(), vocab.length
    tasks = []
    for index in range(len(vocab.tasks)):
        words = vocab.task_slice(index)
        rows = slice(words.start * length, words.stop * length)
        tasks.append((x[rows], y[rows], x[rows], y[rows]))
    scenario = from_task_data("domain", tasks, name="words", max_value=1.0)
    for task, name in zip(scenario.tasks, vocab.tasks):
        task.description = name
    return scenario


def build_config(settings: WordsSettings, seed: int, vocab: Vocabulary, out: Path | None = None) -> RunConfig:
    """The run config the learners train with (also written as the results folder's config.yaml)."""
    return make_config(
        benchmark=BENCHMARK,
        scenario="domain",
        strategies=list(settings.strategies),
        seed=seed,
        tasks=len(vocab.tasks),
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        model="mlp",
        hidden=list(settings.hidden),
        buffer_size=settings.buffer_size,
        params={"ewc": {"ewc_lambda": settings.ewc_lambda, "fisher": settings.fisher}},
        out=out,
    )


@torch.inference_mode()
def spell(learner: Learner, vocab: Vocabulary, inputs: torch.Tensor) -> list[str]:
    """What the learner's model produces for every word: the argmax character at each position."""
    model = learner.model
    was_training = model.training
    model.eval()
    x = learner.scenario.to_float(inputs.to(learner.device))
    ids = model(x, None).argmax(1).view(len(vocab.words), vocab.length)
    model.train(was_training)
    return vocab.decode(ids.cpu())


def exact_match(produced: list[str], vocab: Vocabulary) -> np.ndarray:
    """Per task, the share of its words produced exactly (padding included)."""
    targets = [word.ljust(vocab.length, PAD) for word in vocab.words]
    hits = np.array([p == t for p, t in zip(produced, targets)], dtype=np.float64)
    return np.array([hits[vocab.task_slice(i)].mean() for i in range(len(vocab.tasks))])


@dataclass
class WordsState:
    """Everything the screen shows: the strings each strategy produces after each task."""

    vocab: Vocabulary
    settings: WordsSettings
    seed: int
    produced: dict[str, list[list[str]]] = field(default_factory=dict)
    """Per strategy, per finished task, the strings produced for every word."""
    matrices: dict[str, list[np.ndarray]] = field(default_factory=dict)
    """Per strategy, the exact-match rows so far (one per finished task)."""
    status: str = ""

    @property
    def tasks_done(self) -> int:
        return min((len(rows) for rows in self.produced.values()), default=0)

    def earlier_mean(self, name: str) -> float | None:
        """Exact match on the tasks before the latest finished one (``None`` before task 2)."""
        done = self.tasks_done
        if done < 2:
            return None
        return float(np.mean(self.matrices[name][done - 1][: done - 1]))

    def __rich__(self) -> RenderableType:
        return render(self)


def _word_cell(output: str, target: str) -> Text:
    """The produced string: green when exact, else each wrong character in bold red.

    Trailing padding is left out, except where the word needed a letter (shown as a red ``·``).
    """
    if output == target.ljust(len(output), PAD):
        return Text(target, style="bold green")
    width = max(len(output.rstrip(PAD)), len(target))
    text = Text()
    for position, char in enumerate(output[:width]):
        right = char == target.ljust(width, PAD)[position]
        text.append("·" if char == PAD else char, style="green" if right else "bold red")
    return text


def task_table(state: WordsState, task_index: int) -> Table:
    """One task: each word beside what every strategy produces now, exact-match in the footer."""
    vocab, done = state.vocab, state.tasks_done
    name = list(vocab.tasks)[task_index]
    seen = task_index < done
    current = task_index == done - 1
    title = f"{task_index + 1} · {name}" + (" (just learned)" if current else "" if seen else " (not yet)")
    table = Table(
        title=title,
        title_style="bold" if seen else "dim",
        box=box.ROUNDED,
        show_footer=seen,
        style="" if seen else "dim",
        padding=(0, 1),
    )
    words = vocab.task_words(task_index)
    table.add_column("word", footer="exact", style="bold" if seen else "dim", min_width=6)
    for strategy in state.settings.strategies:
        footer = ""
        if seen:
            footer = f"{state.matrices[strategy][done - 1][task_index]:.2f}"
        table.add_column(strategy, footer=footer, justify="left", min_width=6)
    rows = range(vocab.task_slice(task_index).start, vocab.task_slice(task_index).stop)
    for word, row in zip(words, rows):
        cells = [
            _word_cell(state.produced[s][done - 1][row], word) if seen else Text("") for s in state.settings.strategies
        ]
        table.add_row(word, *cells)
    return table


def render(state: WordsState) -> RenderableType:
    """The whole screen: a header, the four task tables in a 2x2 grid, the earlier-task summary."""
    settings, done, n = state.settings, state.tasks_done, len(state.vocab.tasks)
    header = Text.assemble(
        ("forgetless demo words", "bold"),
        f" · seed {state.seed} · ",
        (f"after task {done} of {n}" if done else "before training", "bold"),
        f" ({list(state.vocab.tasks)[done - 1]})" if done else "",
    )
    meaning = {
        "naive": "fine-tune",
        "er": f"replay ({settings.buffer_size}-row memory)",
        "ewc": f"EWC λ={settings.ewc_lambda:g}",
    }
    rows = len(state.vocab.words) * state.vocab.length
    legend = Text(
        " · ".join([*(f"{s}: {meaning.get(s, s)}" for s in settings.strategies), f"data {rows} rows"]), style="dim"
    )
    grid = Table.grid(padding=(0, 2))
    grid.add_column()
    grid.add_column()
    tables = [task_table(state, i) for i in range(n)]
    for i in range(0, n, 2):
        grid.add_row(*tables[i : i + 2])
    parts: list[RenderableType] = [header, legend, grid]
    if done >= 2:
        summary = Text("exact match on earlier tasks: ", style="bold")
        for k, strategy in enumerate(settings.strategies):
            value = state.earlier_mean(strategy) or 0.0
            colour = "green" if value >= 0.7 else "red" if value <= 0.3 else "yellow"
            summary.append(("  " if k else "") + f"{strategy} ", style="bold")
            summary.append(f"{value:.2f}", style=f"bold {colour}")
        parts.append(summary)
    if state.status:
        parts.append(Text(state.status, style="dim"))
    return Group(*parts)


@dataclass
class WordsResult:
    """What :func:`run_words` produced: the exact-match runs, the final screen, the folder."""

    experiment: ExperimentResult
    state: WordsState
    out: Path | None
    screen: str
    """The final screen as plain text (what ``words.svg`` shows)."""

    def matrix(self, strategy: str) -> np.ndarray:
        """The exact-match accuracy matrix of ``strategy``."""
        return self.experiment.runs[strategy][0].matrix

    def earlier_mean(self, strategy: str) -> float:
        """Mean exact match on every task but the last, after the last task."""
        return float(self.matrix(strategy)[-1, :-1].mean())


def _progress(
    state: WordsState, live: Live | None, name: str, task_name: str
) -> Callable[[int, int, int], None] | None:
    """The learner's per-step callback: a status line on the live screen (none when quiet)."""
    if live is None:
        return None

    def callback(task_index: int, step: int, total: int) -> None:
        if step == total or step % 20 == 0:
            state.status = f"training task {task_index + 1} ({task_name}) · {name} · step {step}/{total}"

    return callback


def _exact_run(learner: Learner, matrix: list[np.ndarray], baseline: np.ndarray) -> RunResult:
    """The learner's result with its exact-match matrix; the per-character one goes to the report."""
    own = learner.result
    report = dict(own.report)
    report["per_character"] = {
        "accuracy_matrix": own.matrix.round(6).tolist(),
        "random_init_accuracy": np.asarray(own.baseline).round(6).tolist(),
    }
    return RunResult(
        strategy=own.strategy,
        seed=own.seed,
        matrix=np.stack(matrix),
        baseline=baseline,
        train_seconds=list(own.train_seconds),
        eval_seconds=own.eval_seconds,
        steps=list(own.steps),
        report=report,
        stopped_early=dict(own.stopped_early),
    )


def train(state: WordsState, config: RunConfig, live: Live | None = None, pause: float = 0.0) -> dict[str, RunResult]:
    """Train every strategy task after task in lockstep, recording what each produces."""
    vocab = state.vocab
    scenario = build_scenario(vocab)
    inputs = vocab.inputs()
    learners = {name: build_learner(config, scenario, name, config.seed) for name in config.strategies}
    baselines = {}
    for name, learner in learners.items():
        learner.result.baseline = learner.evaluate()  # what Learner.run does before the first task
        baselines[name] = exact_match(spell(learner, vocab, inputs), vocab)
        state.produced[name], state.matrices[name] = [], []
    for task_index, task_name in enumerate(vocab.tasks):
        outputs = {}
        for name, learner in learners.items():
            learner.train_task(task_index, _progress(state, live, name, task_name))
            outputs[name] = spell(learner, vocab, inputs)
        for name, produced in outputs.items():  # every column moves to the next task at once
            state.produced[name].append(produced)
            state.matrices[name].append(exact_match(produced, vocab))
        state.status = ""
        if live is not None:
            live.refresh()
            time.sleep(pause)
    return {name: _exact_run(learner, state.matrices[name], baselines[name]) for name, learner in learners.items()}


def record_screen(state: WordsState) -> Console:
    """A recording console holding the final screen (fixed width, for ``words.svg``)."""
    console = Console(
        record=True, width=SCREEN_WIDTH, file=io.StringIO(), force_terminal=True, color_system="truecolor"
    )
    console.print(render(state))
    return console


def run_words(
    seed: int = 0,
    out: Path | None = None,
    force: bool = False,
    quiet: bool = True,
    svg: Path | None = None,
    threads: int | None = None,
    console: Console | None = None,
    settings: WordsSettings | None = None,
    pause: float = 0.0,
) -> WordsResult:
    """Run the demo; with ``out``, write the results folder (refusing a non-empty one unless ``force``).

    ``quiet`` turns off the live display (the final screen is printed either way on ``console``,
    when one is given). ``svg`` saves a copy of the final screen there; ``pause`` holds each
    task's live screen for that many seconds.
    """
    settings = settings or WordsSettings()
    vocab = Vocabulary(TASKS)
    if out is not None:
        prepare_run_dir(out, force=force)  # before any training, like `forgetless run`
    if threads:
        torch.set_num_threads(threads)
    config = build_config(settings, seed, vocab, out)
    state = WordsState(vocab, settings, seed)
    if quiet or console is None:
        runs = train(state, config)
    else:
        with Live(state, console=console, refresh_per_second=10, transient=True) as live:
            runs = train(state, config, live, pause)
    experiment = ExperimentResult(config, {name: [run] for name, run in runs.items()})
    recorder = record_screen(state)
    screen = recorder.export_text(clear=False)
    if out is not None:
        _save(experiment, recorder, out)
    if svg is not None:
        Path(svg).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(svg), recorder.export_svg(title="forgetless demo words", clear=False))
    if console is not None:
        console.print(render(state))
    return WordsResult(experiment, state, out, screen)


def _save(experiment: ExperimentResult, recorder: Console, out: Path) -> None:
    """The results folder of ``forgetless run``, plus the final screen as words.svg / words.txt."""
    save_experiment(experiment, out)
    atomic_write_text(out / "words.svg", recorder.export_svg(title="forgetless demo words", clear=False))
    atomic_write_text(out / "words.txt", recorder.export_text(clear=False))


def main(
    seed: int = 0,
    out: Path | None = None,
    force: bool = False,
    quiet: bool = False,
    svg: Path | None = None,
    threads: int = 1,
) -> WordsResult:
    """The ``forgetless demo words`` command: live screen, results folder, final table."""
    console = Console()
    if out is None:
        out = default_out_dir(build_config(WordsSettings(), seed, Vocabulary(TASKS)))
    result = run_words(seed, out, force, quiet, svg, threads, console, pause=0.0 if quiet else 0.8)
    where = f"results in [bold]{out}[/] (metrics.json, accuracy_matrix.csv, *.png, words.svg)"
    console.print(where + (f"; screen also in [bold]{svg}[/]" if svg else ""))
    return result
