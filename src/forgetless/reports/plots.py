"""Plots a person would rather look at than read: heatmaps, curves across the stream, bars."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

# Figures are made without pyplot (no GUI backend, no global figure list, ~0.3 s less import):
# ``Figure.savefig`` renders PNG through Agg.


DPI = 120


def _save(fig: Figure, path: Path) -> None:
    """Render ``fig`` to a temporary file, then rename it to ``path``.

    The constrained layout is solved once, at the resolution of the file, and then switched
    off: ``savefig`` with a layout engine set walks every artist twice (a draw without
    rendering to lay out, then the real one), without it once. The same pixels, a third
    less time (no second pass for a tight bounding box either)."""
    fig.set_dpi(DPI)
    engine = fig.get_layout_engine()
    if engine is not None:
        engine.execute(fig)
        fig.set_layout_engine(None)
        if fig.get_layout_engine() is not None:  # a matplotlibrc asks for one: lay nothing out again
            fig.set_layout_engine("none")
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=DPI)
    tmp.replace(path)


def accuracy_heatmaps(
    matrices: dict[str, np.ndarray],
    path: Path,
    columns: list[str] | None = None,
    shades: dict[str, np.ndarray] | None = None,
    scale_label: str = "accuracy",
) -> None:
    """One annotated heatmap of R per strategy: rows = after training task i, cols = task j.

    A matrix may have more columns than rows (a sequence of fine-tunes: the tasks, then the
    kept capabilities), named by ``columns``; ``shades`` (same shapes, in [0, 1]) then colour
    the cells while the annotations show the values of ``matrices`` (``scale_label`` names
    the colour scale); by default a cell's colour is its value (an accuracy)."""
    n = len(matrices)
    cols = n if n <= 3 else math.ceil(math.sqrt(n))
    rows = (n + cols - 1) // cols
    first = matrices[next(iter(matrices))]
    size, width = first.shape[0], first.shape[1]
    cell = max(0.45, min(0.9, 6.0 / max(size, width)))
    fig = Figure(
        figsize=(cols * (width * cell + 1.6), rows * (size * cell + 1.2)),
        layout="constrained",
    )
    axes = fig.subplots(
        rows,
        cols,
        squeeze=False,
    )
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (name, matrix) in zip(axes.flat, matrices.items()):
        shade = matrix if shades is None else shades[name]
        image = ax.imshow(shade, vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_title(name)
        ax.set_xlabel("evaluated on task j" if columns is None else "evaluated on")
        ax.set_ylabel("after training task i")
        if columns is None:
            ax.set_xticks(range(width))
        else:
            ax.set_xticks(range(width), columns, rotation=30, ha="right", fontsize=7)
        ax.set_yticks(range(size))
        if max(size, width) <= 12:
            for i in range(size):
                for j in range(width):
                    value = matrix[i, j]
                    ax.text(
                        j,
                        i,
                        f"{value:.2f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="black" if shade[i, j] > 0.6 else "white",
                    )
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label=scale_label)
    _save(fig, path)


def accuracy_curves(matrices: dict[str, np.ndarray], path: Path) -> None:
    """Per strategy, each task's accuracy as the stream goes on (one line per task)."""
    n = len(matrices)
    fig = Figure(figsize=(4.2 * n, 3.4), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False, sharey=True)
    for ax, (name, matrix) in zip(axes[0], matrices.items()):
        size = matrix.shape[0]
        colors = colormaps["tab10"](np.linspace(0, 1, max(size, 2)))
        for j in range(size):
            steps = np.arange(j, size)
            ax.plot(steps + 1, matrix[j:, j], marker="o", ms=3, color=colors[j], label=f"task {j}")
        ax.plot(
            np.arange(1, size + 1),
            [matrix[i, : i + 1].mean() for i in range(size)],
            color="black",
            lw=2,
            ls="--",
            label="mean of seen",
        )
        ax.set_title(name)
        ax.set_xlabel("tasks trained")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    _save(fig, path)


def strategy_bars(summary: dict[str, dict[str, dict[str, float]]], path: Path) -> None:
    """ACC, BWT and forgetting per strategy (mean with std error bars over seeds)."""
    names = list(summary)
    metrics = [("acc", "average accuracy"), ("bwt", "backward transfer"), ("forgetting", "forgetting")]
    fig = Figure(figsize=(max(9, 1.2 * len(names) * 3), 3.4), layout="constrained")
    axes = fig.subplots(1, 3)
    x = np.arange(len(names))
    for ax, (key, label) in zip(axes, metrics):
        means = [summary[n][key]["mean"] for n in names]
        stds = [summary[n][key]["std"] for n in names]
        ax.bar(x, means, yerr=stds, color=colormaps["tab10"](x % 10), capsize=3)
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title(label)
        ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def draw_all(matrices: dict[str, np.ndarray], summary: dict[str, dict[str, dict[str, float]]], out: Path) -> None:
    """The three plots of a run folder: heatmaps, curves along the stream, strategy bars."""
    accuracy_heatmaps(matrices, out / "accuracy_matrix.png")
    accuracy_curves(matrices, out / "accuracy_curves.png")
    strategy_bars(summary, out / "strategies.png")
