"""``--model hf:NAME``: a pretrained ``transformers`` ViT as backbone, on a small randomly
initialised ViT saved with ``save_pretrained``; ``--channels-last`` and ``--compile``
(issue #17, items 1 and 4)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cli_helpers import FAST, one_error_line, run_cli
from forgetless.config import make_config
from forgetless.errors import ConfigError
from forgetless.models import build_model
from forgetless.training import checkpoint as ckpt
from forgetless.training import compiled
from forgetless.training.experiment import build_learner, load_scenario, resolve

pytest.importorskip("transformers")

MEAN, STD = [0.3, 0.4, 0.5], [0.2, 0.25, 0.3]


def _save_vit(folder: Path, processor: bool = True) -> Path:
    """A 2-layer ViT (32x32 images, 8x8 patches, width 32), random weights, saved like a hub model."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(7)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = ViTModel(config, add_pooling_layer=False)
    model.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "expected.pt")  # the weights the folder holds, by module name
    if processor:
        ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=MEAN, image_std=STD).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_vit(tmp_path_factory.mktemp("vit"))


def _saved(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "expected.pt")


def _encoder_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k.removeprefix("backbone.encoder."): v for k, v in model.state_dict().items() if k.startswith("backbone.")}


def _same_as_saved(model: torch.nn.Module, folder: Path) -> bool:
    saved, state = _saved(folder), _encoder_state(model)
    return set(saved) == set(state) and all(torch.equal(saved[k], state[k].cpu()) for k in saved)


def test_features_are_the_cls_token_of_the_resized_normalised_batch(vit_dir: Path) -> None:
    from transformers import ViTModel

    model = build_model(f"hf:{vit_dir}", (1, 8, 8), [10], multi_head=False, hidden=[], init="xavier")
    assert _same_as_saved(model, vit_dir)  # xavier init touched the head only
    assert torch.count_nonzero(model.head.linear.bias) == 0  # ... and did initialise it
    x = torch.rand(5, 1, 8, 8)
    reference = ViTModel.from_pretrained(vit_dir, add_pooling_layer=False).eval()
    pixels = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    pixels = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    model.eval()
    with torch.no_grad():
        expected = reference(pixel_values=pixels).last_hidden_state[:, 0]
        got = model.features(x)
    assert got.shape == (5, 32)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # a 3-channel 32x32 batch goes in unresized; grey and colour take different statistics
    colour = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        direct = reference(
            pixel_values=(colour - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
        )
        torch.testing.assert_close(model.features(colour), direct.last_hidden_state[:, 0], rtol=1e-5, atol=1e-5)


def test_without_a_processor_config_imagenet_statistics(tmp_path: Path) -> None:
    folder = _save_vit(tmp_path / "bare", processor=False)
    backbone = build_model(f"hf:{folder}", (3, 32, 32), [4], False, []).backbone
    assert torch.allclose(backbone.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert torch.allclose(backbone.std.flatten(), torch.tensor([0.229, 0.224, 0.225]))
    with torch.device("meta"):  # the parameter count of check_memory: shapes only
        meta = build_model(f"hf:{folder}", (3, 32, 32), [4], False, [])
    assert sum(p.numel() for p in meta.parameters()) == sum(p.numel() for p in build_model(
        f"hf:{folder}", (3, 32, 32), [4], False, []).parameters())  # fmt: skip


def test_run_through_the_cli_naive_ewc_er(vit_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = ["run", *FAST, "--model", f"hf:{vit_dir}", "--strategies", "naive,ewc,er", "--out", str(out)]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "Loading weights" not in err  # --quiet: no transformers progress bar either
    runs = json.loads((out / "metrics.json").read_text())["runs"]
    assert set(runs) == {"naive", "ewc", "er"}
    # a resume with another --channels-last / --compile value is refused like any other setting
    for flag, field in (("--channels-last", "channels_last"), ("--compile", "compile")):
        code, _, err = run_cli(["run", "--resume", str(out), flag, "--quiet"], capsys)
        assert code == 2 and f"{field}: False in the run, True now" in one_error_line(err)


def test_a_relative_hf_folder_is_saved_absolute_and_resumes_from_another_folder(
    vit_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    monkeypatch.chdir(vit_dir.parent)
    argv = ["run", *FAST, "--model", f"hf:{vit_dir.name}", "--strategies", "naive", "--out", str(out)]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert f"model: hf:{vit_dir.resolve()}" in (out / "config.yaml").read_text()
    (out / "metrics.json").unlink()  # a resume must rebuild the model from the checkpoint
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["run", "--resume", str(out), "--quiet"], capsys)
    assert code == 0, err


def test_freeze_backbone_trains_the_head_only(vit_dir: Path) -> None:
    config = resolve(
        make_config(
            benchmark="split-digits",
            strategies=["naive"],
            tasks=2,
            epochs=1,
            batch_size=64,
            model=f"hf:{vit_dir}",
            freeze_backbone=True,
            threads=1,
        )
    )
    learner = build_learner(config, load_scenario(config, 0), "naive", 0)
    head_before = {k: v.clone() for k, v in learner.model.head.state_dict().items()}
    learner.run()
    assert _same_as_saved(learner.model, vit_dir)
    assert any(not torch.equal(v, learner.model.head.state_dict()[k]) for k, v in head_before.items())
    config = config.model_copy(update={"freeze_backbone": False})
    learner = build_learner(config, load_scenario(config, 0), "naive", 0)
    learner.run()
    assert not _same_as_saved(learner.model, vit_dir)  # without the flag the encoder fine-tunes


def test_checkpoint_resume_is_bit_identical(vit_dir: Path, tmp_path: Path) -> None:
    from test_resume import _all_checkpoint_results, _resume_result

    values = dict(benchmark="split-digits", strategies=["er"], tasks=2, epochs=1, batch_size=32)
    config = resolve(make_config(**values, model=f"hf:{vit_dir}", checkpoint_every=4, threads=1, buffer_size=40))
    reference, folders = _all_checkpoint_results(config, "er", tmp_path)
    where = [ckpt.load_checkpoint(f).where() for f in folders]
    assert any("step" in w for w in where) and any("start of task" in w for w in where)
    for index in sorted({1, len(folders) // 2, len(folders) - 2}):
        resumed = _resume_result(config, "er", folders[index])
        assert np.array_equal(resumed.matrix, reference.matrix), f"resume from {where[index]} differs"


def test_missing_folder_and_unreachable_hub_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["run", *FAST, "--strategies", "naive", "--out", str(tmp_path / "x")]
    code, _, err = run_cli([*base, "--model", f"hf:{tmp_path / 'nowhere'}"], capsys)
    assert code == 2 and "does not exist" in one_error_line(err)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli([*base, "--model", "hf:google/vit-base-patch16-224-in21k"], capsys)
    assert code == 2 and "HF_HUB_OFFLINE is set" in one_error_line(err)
    code, _, err = run_cli([*base, "--model", "hf:"], capsys)
    assert code == 2 and "unknown model" in one_error_line(err)
    assert not (tmp_path / "x").exists()  # refused before the run folder is written


def test_without_transformers_one_line_names_the_extra(vit_dir: Path, tmp_path: Path) -> None:
    from test_core_install import cli

    done = cli("run", "--model", f"hf:{vit_dir}", "--tasks", "2", "--quiet", "--out", str(tmp_path / "r"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "--model hf:" in lines[0] and 'pip install "forgetless[hf]"' in lines[0]
    assert not (tmp_path / "r").exists()


def test_a_non_vision_model_and_non_image_inputs_are_refused(vit_dir: Path, tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises(ConfigError, match="is not a vision model"):
        build_model(f"hf:{tmp_path / 'bert'}", (1, 8, 8), [4], False, [])
    with pytest.raises(ConfigError, match=r"takes images .* gives \(2, 8, 8\)"):
        build_model(f"hf:{vit_dir}", (2, 8, 8), [4], False, [])


# -- channels_last and compile --------------------------------------------------------------
def _cnn_config(**extra):
    values = dict(benchmark="split-digits", strategies=["er"], tasks=2, epochs=1, batch_size=32, model="cnn")
    return resolve(make_config(**values, hidden=[8, 8], threads=1, buffer_size=40, **extra))


def test_channels_last_trains_in_nhwc_and_matches_the_default_layout(vit_dir: Path) -> None:
    seen: list[bool] = []
    config = _cnn_config(channels_last=True)
    learner = build_learner(config, load_scenario(config, 0), "er", 0)
    conv = [m for m in learner.model.modules() if isinstance(m, torch.nn.Conv2d)][-1]  # 8 input channels
    conv.register_forward_pre_hook(  # training forwards only (evaluation batches stay NCHW)
        lambda module, args: (
            seen.append(args[0].is_contiguous(memory_format=torch.channels_last)) if module.training else None
        )
    )
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    nhwc = learner.run().matrix
    assert seen and all(seen)  # every training batch (replay rows included) is NHWC
    colour = compiled.channels_last_batch(torch.rand(4, 3, 5, 5))
    assert colour.is_contiguous(memory_format=torch.channels_last) and not colour.is_contiguous()
    plain = _cnn_config()
    reference = build_learner(plain, load_scenario(plain, 0), "er", 0).run().matrix
    assert np.abs(nhwc - reference).max() <= 0.02  # the same training up to float rounding
    assert not compiled.uses_convolutions(build_model("mlp", (1, 8, 8), [4], False, [16]))
    assert not compiled.uses_convolutions(build_model(f"hf:{vit_dir}", (1, 8, 8), [4], False, []))


@pytest.mark.parametrize("name", ["packnet", "supermask"])
def test_isolation_strategies_train_channels_last_and_stay_isolated(name: str) -> None:
    """Their masks index weights flat: every memory format must give the same ownership."""
    values = dict(scenario="task", strategies=[name], epochs=1, batch_size=32, model="cnn", hidden=[8, 8])
    matrices = []
    for layout in (False, True):
        config = resolve(make_config(benchmark="split-digits", tasks=2, threads=1, channels_last=layout, **values))
        matrices.append(build_learner(config, load_scenario(config, 0), name, 0).run().matrix)
    assert matrices[1][1, 0] == matrices[1][0, 0]  # task 0 untouched by task 1's training
    if name == "packnet":  # same weights, same ownership (supermask's scores are drawn in memory order)
        assert np.array_equal(matrices[0], matrices[1])


def test_compile_is_refused_in_one_line_where_torch_cannot_compile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(compiled, "_compile_problem", lambda device: "InvalidCxxCompiler: no working C++ compiler")
    out = tmp_path / "c"
    code, _, err = run_cli(["run", *FAST, "--strategies", "naive", "--compile", "--out", str(out)], capsys)
    assert code == 2 and "--compile: torch" in one_error_line(err) and "C++ compiler" in err
    assert not out.exists()  # refused before the run folder is written


@pytest.mark.slow
def test_compiled_training_equals_eager_within_tolerance() -> None:
    try:
        compiled.check_compile("cpu")
    except ConfigError as error:
        pytest.skip(str(error))
    eager_config = _cnn_config()
    started = time.perf_counter()
    eager = build_learner(eager_config, load_scenario(eager_config, 0), "er", 0).run().matrix
    eager_seconds = time.perf_counter() - started
    config = _cnn_config(compile=True)
    learner = build_learner(config, load_scenario(config, 0), "er", 0)
    matrix = learner.run().matrix
    assert isinstance(learner._forward, compiled.CompiledForward) and learner._forward._model is learner.model
    assert np.abs(matrix - eager).max() <= 0.02, (matrix, eager, eager_seconds)
