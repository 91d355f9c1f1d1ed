"""The registry of kept-capability kinds: ``--keep KIND:DATA`` is a lookup, a new kind one class."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from forgetless.errors import ConfigError  # noqa: E402
from forgetless.integrations.hf.capabilities import (  # noqa: E402
    CAPABILITIES,
    Capability,
    HeadAccuracy,
    KeepOptions,
    KnnProbe,
    MultipleChoice,
    Perplexity,
    parse_keep,
    register_capability,
)
from forgetless.integrations.hf.data import TextData  # noqa: E402
from forgetless.integrations.hf.finetune import FinetuneConfig, build_capabilities  # noqa: E402
from forgetless.integrations.hf.tiny import byte_tokenizer  # noqa: E402


def test_every_builtin_kind_is_registered_under_its_keep_name():
    expected = {"perplexity": Perplexity, "accuracy": HeadAccuracy, "knn": KnnProbe, "choice": MultipleChoice}
    assert {kind: CAPABILITIES[kind] for kind in expected} == expected
    assert parse_keep("choice:builtin:kjv-word-order") == (MultipleChoice, "builtin:kjv-word-order")
    assert parse_keep("perplexity:a:b.txt") == (Perplexity, "a:b.txt")  # only the first colon splits


@pytest.mark.parametrize(
    ("spec", "says"), [("perplex:x.txt", "did you mean 'perplexity'"), ("perplexity", "KIND:DATA"), ("knn:", "KIND")]
)
def test_a_bad_keep_spec_is_one_line_naming_the_fix(spec: str, says: str):
    with pytest.raises(ConfigError, match=says):
        parse_keep(spec)


def test_a_new_kind_is_one_registered_class(tmp_path: Path):
    """A kind defined outside the package works in build_capabilities with no other change."""

    @register_capability
    class MeanLength(Capability):
        kind = "mean-length"
        metric = "characters"

        @classmethod
        def from_texts(cls, name: str, data: TextData, tokenizer, options: KeepOptions) -> Capability:
            made = cls(name)
            made.length = sum(map(len, data.texts)) / len(data.texts)
            return made

        def evaluate(self, model: nn.Module) -> float:
            return self.length

    try:
        source = tmp_path / "texts.txt"
        source.write_text("short text\n" * 50)
        cfg = FinetuneConfig(model="unused", task="unused", keep=[f"mean-length:{source}"])
        (capability,) = build_capabilities(cfg.keep, byte_tokenizer(), cfg, "classify")
        assert isinstance(capability, MeanLength) and capability.name == f"mean-length:{source}"
        assert capability.evaluate(nn.Linear(1, 1)) > 0
    finally:
        CAPABILITIES.pop("mean-length")


def test_lm_kinds_are_refused_for_a_classification_task(tmp_path: Path):
    source = tmp_path / "texts.txt"
    source.write_text("some prose to keep\n" * 800)  # several ~2,000-character documents
    cfg = FinetuneConfig(model="unused", task="unused", keep=[f"perplexity:{source}"])
    with pytest.raises(ConfigError, match="needs a causal LM"):
        build_capabilities(cfg.keep, byte_tokenizer(), cfg, "classify")
    (perplexity,) = build_capabilities(cfg.keep, byte_tokenizer(), cfg.model_copy(update={"seq_len": 16}), "lm")
    assert isinstance(perplexity, Perplexity) and perplexity.test_ids.shape[1] == 16
    assert torch.equal(perplexity.test_ids, perplexity.test_ids.long())
