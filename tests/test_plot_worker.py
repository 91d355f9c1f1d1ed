"""The plotting helper process: same plots as in-process, failures fall back or name the folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from forgetless.errors import OutputError
from forgetless.reports import plots
from forgetless.reports.plot_worker import PlotWorker

MATRICES = {"naive": np.eye(3), "er": np.tril(np.full((3, 3), 0.8))}
SUMMARY = {name: {key: {"mean": 0.5, "std": 0.1} for key in ("acc", "bwt", "forgetting")} for name in MATRICES}
PNGS = ("accuracy_matrix.png", "accuracy_curves.png", "strategies.png")


def test_the_worker_draws_the_same_plots_as_this_process(tmp_path: Path):
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir(), there.mkdir()
    plots.draw_all(MATRICES, SUMMARY, here)
    with PlotWorker() as worker:
        assert worker.process is not None
        worker.draw(MATRICES, SUMMARY, there)
    for name in PNGS:
        assert (there / name).read_bytes() == (here / name).read_bytes(), name


def test_a_dead_worker_falls_back_to_drawing_here(tmp_path: Path):
    worker = PlotWorker()
    worker.process.kill()
    worker.process.wait()
    worker.draw(MATRICES, SUMMARY, tmp_path)
    assert all((tmp_path / name).stat().st_size > 0 for name in PNGS)


def test_an_unwritable_folder_is_one_output_error(tmp_path: Path):
    missing = tmp_path / "gone"  # the worker cannot create files in a folder that is not there
    with PlotWorker() as worker, pytest.raises(OutputError, match="cannot write the plots"):
        worker.draw(MATRICES, SUMMARY, missing)


def test_closing_an_unused_worker_stops_it():
    worker = PlotWorker()
    process = worker.process
    worker.close()
    assert process is not None and process.poll() is not None
