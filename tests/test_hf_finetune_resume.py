"""A killed ``forgetless finetune`` resumes (``--resume DIR``) to the report of an uninterrupted run.

Tiny GPT-2 (2 layers, width 32, dropout on), 6 steps on CPU, seeded. The kill is a test callback
raising ``KeyboardInterrupt`` after step 3 (a checkpoint was written at step 2), added to the
trainer by the test only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback  # noqa: E402

from cli_helpers import one_error_line, run_cli  # noqa: E402
from forgetless.integrations.hf.tiny import byte_tokenizer  # noqa: E402
from forgetless.integrations.hf.trainer import ForgetlessTrainer  # noqa: E402

PROSE = "In the beginning the model could read plain English prose quite well.\n" * 80
CODE = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n" * 80
WALL_CLOCK = ("wall_seconds", "tokens_per_second")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("resume-data")
    config = GPT2Config(
        vocab_size=257, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=256, eos_token_id=256
    )
    GPT2LMHeadModel(config).save_pretrained(folder / "model")
    byte_tokenizer().save_pretrained(folder / "model")
    (folder / "prose.txt").write_text(PROSE)
    (folder / "code.txt").write_text(CODE)
    return folder


def argv(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "finetune",
        "--model",
        str(data / "model"),
        "--task",
        str(data / "code.txt"),
        "--keep",
        f"perplexity:{data / 'prose.txt'}",
        "--steps",
        "6",
        "--batch-size",
        "4",
        "--seq-len",
        "32",
        "--eval-every",
        "2",
        "--eval-size",
        "4",
        "--train-size",
        "16",
        "--lr",
        "1e-2",
        "--seed",
        "3",
        "--quiet",
        "--out",
        str(out),
        *extra,
    ]


class KillAfter(TrainerCallback):
    """Ctrl-C right after optimizer step ``step`` (as a kill between two checkpoints)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def killed_run(
    data: Path, out: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *extra: str
) -> Path:
    """``forgetless finetune`` killed after step 3 (its checkpoint is of step 2)."""
    init = ForgetlessTrainer.__init__

    def with_kill(self, *args, **kwargs):
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), KillAfter(3)]
        init(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(ForgetlessTrainer, "__init__", with_kill)
        code, _, err = run_cli(argv(data, out, *extra), capsys)
    assert code == 130, err
    assert f"--resume {out}" in one_error_line(err)
    assert not (out / "forgetting.json").exists()
    return out


def report(out: Path) -> dict:
    runs = json.loads((out / "forgetting.json").read_text())
    for run in runs.values():
        for key in WALL_CLOCK:
            run.pop(key)
    return runs


@pytest.fixture(scope="module")
def checkpointed(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A killed run's folder (checkpoint of step 2), copied by the tests that damage it."""
    out = tmp_path_factory.mktemp("killed") / "run"
    with pytest.MonkeyPatch.context() as patch:
        init = ForgetlessTrainer.__init__

        def with_kill(self, *args, **kwargs):
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), KillAfter(3)]
            init(self, *args, **kwargs)

        patch.setattr(ForgetlessTrainer, "__init__", with_kill)
        from forgetless.integrations.hf import run_finetune
        from forgetless.integrations.hf.finetune import FinetuneConfig

        cfg = FinetuneConfig(
            model=str(data / "model"),
            task=str(data / "code.txt"),
            keep=[f"perplexity:{data / 'prose.txt'}"],
            steps=6,
            batch_size=4,
            seq_len=32,
            eval_every=2,
            eval_size=4,
            train_size=16,
            lr=1e-2,
        )
        with pytest.raises(KeyboardInterrupt):
            run_finetune(cfg, out)
    return out


def damaged(checkpointed: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(checkpointed, out)
    return out


@pytest.mark.parametrize("extra", [(), ("--strategies", "ewc", "--ewc-samples", "2", "--replay-ratio", "0.25")])
def test_a_killed_finetune_resumes_to_the_uninterrupted_report(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, extra: tuple
) -> None:
    whole = tmp_path / "whole"
    code, _, err = run_cli(argv(data, whole, *extra), capsys)
    assert code == 0, err
    assert not (whole / "checkpoint").exists()  # a finished run removes its checkpoint
    out = killed_run(data, tmp_path / "killed", capsys, monkeypatch, *extra)
    assert json.loads((out / "checkpoint" / "trainer.json").read_text())["data"]["global_step"] == 2
    code, _, err = run_cli(["finetune", "--resume", str(out), "--quiet"], capsys)
    assert code == 0, err
    assert report(out) == report(whole)  # same curves, figures and config, bit for bit
    assert (out / "before_after.csv").read_text() == (whole / "before_after.csv").read_text()
    assert (out / "capability_curves.png").stat().st_size > 0
    assert not (out / "checkpoint").exists()


def test_the_checkpoint_holds_no_pickle(checkpointed: Path) -> None:
    files = sorted((checkpointed / "checkpoint").iterdir())
    names = {f.name for f in files}
    assert {"model.safetensors", "optimizer.safetensors", "trainer.json", "config.json", "manifest.json"} <= names
    assert {"strategies.json", "forgetless_callback.json"} <= names
    for path in files:
        assert path.suffix not in PICKLE_SUFFIXES, path
        head = path.read_bytes()[:4]
        assert not head.startswith(b"\x80") and head != b"PK\x03\x04", path  # pickle / torch.save zip


def test_a_flipped_byte_is_refused_in_one_line(
    checkpointed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = damaged(checkpointed, tmp_path)
    weights = out / "checkpoint" / "optimizer.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0x01
    weights.write_bytes(bytes(raw))
    code, _, err = run_cli(["finetune", "--resume", str(out), "--quiet"], capsys)
    line = one_error_line(err)
    assert code == 2 and "optimizer.safetensors" in line and "SHA-256" in line


def test_an_edited_json_field_is_refused_in_one_line(
    checkpointed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from forgetless.training.checkpoint import write_manifest

    out = damaged(checkpointed, tmp_path)
    folder = out / "checkpoint"
    path = folder / "trainer.json"
    document = json.loads(path.read_text())
    document["data"]["global_step"] = "2"
    path.write_text(json.dumps(document))
    code, _, err = run_cli(["finetune", "--resume", str(out), "--quiet"], capsys)  # the manifest sees it first
    assert code == 2 and "trainer.json" in one_error_line(err) and "SHA-256" in one_error_line(err)
    write_manifest(folder)  # as if written so: the schema sees it
    code, _, err = run_cli(["finetune", "--resume", str(out), "--quiet"], capsys)
    line = one_error_line(err)
    assert code == 2 and "trainer.json" in line and "global_step" in line
    config = folder / "config.json"
    document = json.loads(config.read_text())
    del document["data"]["steps"]
    document["data"]["lr"] = "fast"
    config.write_text(json.dumps(document))
    write_manifest(folder)
    code, _, err = run_cli(["finetune", "--resume", str(out), "--quiet"], capsys)
    line = one_error_line(err)
    assert code == 2 and "config.json" in line and "steps: field required" in line
    document["data"]["steps"] = 6
    config.write_text(json.dumps(document))
    write_manifest(folder)
    code, _, err = run_cli(["finetune", "--resume", str(out), "--quiet"], capsys)
    line = one_error_line(err)
    assert code == 2 and "config.json" in line and "lr" in line


def test_resume_refuses_options_another_model_and_a_folder_without_checkpoint(
    checkpointed: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["finetune", "--resume", str(checkpointed), "--steps", "9", "--lr", "1"], capsys)
    line = one_error_line(err)
    assert code == 2 and "drop --steps, --lr" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(["finetune", "--resume", str(empty)], capsys)
    line = one_error_line(err)
    assert code == 2 and "no checkpoint" in line and "without --resume" in line
    out = damaged(checkpointed, tmp_path)  # the --model folder changed since: refused
    other = tmp_path / "other-model"
    shutil.copytree(data / "model", other)
    torch.manual_seed(1)
    GPT2LMHeadModel(GPT2LMHeadModel.config_class.from_pretrained(other)).save_pretrained(other)
    from forgetless.training.checkpoint import read_tree, write_manifest, write_tree

    config = read_tree(out / "checkpoint", "config")
    write_tree(out / "checkpoint", "config", {**config, "model": str(other)})
    write_manifest(out / "checkpoint")
    code, _, err = run_cli(["finetune", "--resume", str(out), "--quiet"], capsys)
    line = one_error_line(err)
    assert code == 2 and "--model weights changed" in line


def test_the_sampler_state_at_the_trained_batch_behind_a_prefetching_loader() -> None:
    from forgetless.integrations.hf.mixing import MixingBatchSampler

    sampler = MixingBatchSampler(20, 9, 8, 0.25, num_batches=10, seed=4)
    batches = iter(sampler)
    drawn = [next(batches) for _ in range(5)]  # 4 trained on, the 5th drawn ahead by the loader
    again = MixingBatchSampler(20, 9, 8, 0.25, num_batches=6, seed=99)
    again.load_state_dict(sampler.state_at(4))
    assert again.drawn == 4 and next(iter(again)) == drawn[4]
    with pytest.raises(ValueError, match="not among the last"):
        sampler.state_at(5 - MixingBatchSampler.MARKS - 1)


def test_a_resume_runs_with_the_threads_the_killed_run_had(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the hostile probe: killed at --threads 1, resumed at the default count, the
    curves moved in their 8th digit (a CPU's float sums depend on the threads)."""
    import torch

    before = torch.get_num_threads()
    try:
        out = killed_run(data, tmp_path / "run", capsys, monkeypatch, "--threads", "1")
        torch.set_num_threads(2)
        seen = []
        real = torch.set_num_threads
        monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), real(n)))
        code, _, err = run_cli(["finetune", "--resume", str(out), "--quiet"], capsys)
        assert code == 0, err
        assert seen[:1] == [1]
    finally:
        torch.set_num_threads(before)


def _ft_edit_tensor(folder: Path, part: str, where: str, change) -> None:
    """Replace the first tensor of ``part`` whose key contains ``where``."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / f"{part}.safetensors"))
    key = next(k for k in sorted(tensors) if where in k)
    tensors[key] = change(tensors[key]).contiguous()
    save_file(tensors, str(folder / f"{part}.safetensors"))


def _ft_drop_terms(folder: Path) -> None:
    path = folder / "strategies.json"
    document = json.loads(path.read_text())
    document["data"]["state"]["ewc"]["penalty"]["terms"] = {}
    path.write_text(json.dumps(document))


FT_EDITS = {
    "penalty lost its term": (_ft_drop_terms, "ewc holds 0 penalty terms"),
    "integer weights": (lambda f: _ft_edit_tensor(f, "model", "", lambda t: t.to(torch.int64)), "model.safetensors"),
    "integer Fisher": (
        lambda f: _ft_edit_tensor(f, "strategies", "importance", lambda t: t.to(torch.int64)),
        "not a float tensor",
    ),
    "Adam moment misshapen": (
        lambda f: _ft_edit_tensor(f, "optimizer", "exp_avg", lambda t: torch.zeros(3, 1)),
        "exp_avg",
    ),
}


@pytest.mark.parametrize("edit", sorted(FT_EDITS))
def test_a_re_signed_edit_that_does_not_fit_the_fine_tune_is_refused(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, edit: str
) -> None:
    """Found by the hostile probe: a re-signed fine-tune checkpoint whose EWC term was removed,
    whose weights or Fisher became integers, or whose Adam moment lost its shape, resumed into a
    different report. After the pretrained model (task 0) EWC holds one term; every tensor must
    have the dtype and shape of what it replaces."""
    from forgetless.training.checkpoint import write_manifest

    out = killed_run(data, tmp_path / "killed", capsys, monkeypatch, "--strategies", "ewc", "--ewc-samples", "2")
    folder = out / "checkpoint"
    change, says = FT_EDITS[edit]
    change(folder)
    write_manifest(folder)
    code, _, err = run_cli(["finetune", "--resume", str(out), "--quiet"], capsys)
    line = one_error_line(err)
    assert code == 2 and says in line, line
