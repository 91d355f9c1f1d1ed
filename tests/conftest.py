"""Shared test setup: one CPU thread (deterministic, no oversubscription), seeded RNGs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
HAS_FMNIST = (FMNIST_DIR / "train-images-idx3-ubyte.gz").exists() or bool(os.environ.get("FORGETLESS_DATA"))
requires_fmnist = pytest.mark.skipif(
    not HAS_FMNIST, reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def isolated_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every data lookup folder inside tmp_path; any download attempt fails the test."""
    from forgetless.data import files

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FORGETLESS_DATA", raising=False)
    monkeypatch.setattr(files, "SYSTEM_DATA_DIR", tmp_path / "system")

    def no_download(url: str, dest: Path, timeout: float = 60.0) -> None:
        raise AssertionError(f"tests must not download ({url})")

    monkeypatch.setattr(files, "download_url", no_download)
    return tmp_path


# property tests draw their examples from a fixed seed: the suite is deterministic
from hypothesis import settings  # noqa: E402

settings.register_profile("forgetless", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("forgetless")
