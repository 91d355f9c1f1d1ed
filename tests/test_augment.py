"""Batched crop-flip augmentation (issue #17, item 3): the formula against a per-image
reference, its distribution, where it applies (training and replay rows, never evaluation) and
exact resume with it on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from forgetless.config import make_config
from forgetless.errors import ConfigError
from forgetless.training.augment import crop_flip, default_padding
from forgetless.training.experiment import build_learner, load_scenario, resolve


def _reference(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """torchvision's RandomCrop(padding) + RandomHorizontalFlip, one image at a time, with the
    same draws (offsets for every image, then the flips)."""
    n, _, height, width = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    padded = F.pad(x, (padding,) * 4)
    out = []
    for i in range(n):
        top, left = int(offsets[0, i]), int(offsets[1, i])
        image = padded[i, :, top : top + height, left : left + width]
        out.append(image.flip(-1) if flips[i] else image)
    return torch.stack(out)


@pytest.mark.parametrize(("shape", "padding"), [((7, 3, 32, 32), 4), ((5, 1, 28, 20), 3), ((4, 2, 8, 8), 0)])
def test_crop_flip_equals_the_per_image_reference(shape: tuple[int, ...], padding: int) -> None:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    fast = crop_flip(x, padding, torch.Generator().manual_seed(7))
    slow = _reference(x, padding, torch.Generator().manual_seed(7))
    assert fast.shape == x.shape and torch.equal(fast, slow)


def test_offsets_are_uniform_and_half_the_images_flip() -> None:
    """A one-hot image per pixel of an 8x8 canvas: where its pixel lands gives the offset."""
    n, padding = 4000, 2
    x = torch.zeros(n, 1, 8, 8)
    x[:, 0, 3, 2] = 1.0  # column 2 lands at 2 - dx, or mirrored at 7 - (2 - dx)
    out = crop_flip(x, padding, torch.Generator().manual_seed(0))
    kept = out.flatten(1).sum(1) == 1  # cropped out of the window: all zero
    rows, cols = torch.nonzero(out[kept, 0], as_tuple=True)[1:]
    assert set((3 + padding - rows).tolist()) == set(range(2 * padding + 1))
    counts = torch.bincount(3 + padding - rows, minlength=2 * padding + 1).float()
    assert (counts / counts.sum() - 0.2).abs().max() < 0.03
    mirrored = (cols > 3).float().mean()  # unflipped: 2 - dx + 2 <= 4 ... flipped: >= 3
    assert 0.4 < float(mirrored) < 0.6


def test_default_padding_follows_the_image_size() -> None:
    assert default_padding((3, 32, 32)) == 4 and default_padding((1, 28, 28)) == 3
    assert default_padding((1, 8, 8)) == 1 and default_padding((3, 64, 64)) == 4
    with pytest.raises(ConfigError, match="augment"):
        make_config(augment="mixup")


def _config(name: str = "er", **extra):
    values = dict(benchmark="split-digits", tasks=2, epochs=2, batch_size=32, hidden=[24], threads=1)
    values.update({"buffer_size": 40, "strategies": [name], "augment": "crop-flip", **extra})
    return resolve(make_config(**values))


def test_training_and_replay_rows_are_augmented_and_evaluation_is_not() -> None:
    config = _config("er")
    learner = build_learner(config, load_scenario(config, 0), "er", 0)
    sizes: list[int] = []
    augment = learner.ctx.augment

    def counting(x: torch.Tensor) -> torch.Tensor:
        sizes.append(len(x))
        return augment(x)

    learner.ctx.augment = counting
    result = learner.run()
    steps = sum(result.steps)
    # every step's current rows, and from the second step on the replay rows drawn for them
    assert len(sizes) == 2 * steps - 1 and sizes[0] == 32
    before = learner.evaluate()
    learner.ctx.augment = None
    assert np.array_equal(before, learner.evaluate())  # evaluation never sees augmentation


def test_augmentation_changes_training_and_is_seeded() -> None:
    def final(**extra) -> np.ndarray:
        config = _config("naive", **extra)
        return build_learner(config, load_scenario(config, 0), "naive", 0).run().matrix

    assert np.array_equal(final(), final())
    assert not np.array_equal(final(), final(augment="none"))


@pytest.mark.parametrize("name", ["naive", "derpp"])
def test_resume_with_augmentation_is_exact(name: str, tmp_path: Path) -> None:
    from test_resume import _all_checkpoints, _resume_from

    config = _config(name, checkpoint_every=3)
    reference, folders = _all_checkpoints(config, name, tmp_path)
    for index in (1, len(folders) // 2):
        assert np.array_equal(_resume_from(config, name, folders[index]), reference)
