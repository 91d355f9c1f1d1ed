"""Fine-tune Hugging Face transformers without forgetting: measure, guard and mitigate.

Needs the ``hf`` extra (``pip install forgetless[hf]``: transformers, peft, accelerate).
"""

from __future__ import annotations

from forgetless.extras import check

check(("transformers", "peft", "accelerate"), "the Hugging Face integration")

from forgetless.integrations.hf.callback import ForgettingCallback
from forgetless.integrations.hf.capabilities import (
    Capability,
    HeadAccuracy,
    KnnProbe,
    MultipleChoice,
    Perplexity,
    build_capability,
    encode_texts,
    lm_blocks,
    lm_rows,
)
from forgetless.integrations.hf.data import ChoiceItem, Example, TextData, Turn, load_choices, load_texts
from forgetless.integrations.hf.finetune import FinetuneConfig, run_finetune
from forgetless.integrations.hf.instruct import instruction_rows, render_text
from forgetless.integrations.hf.mixing import (
    MixedDataset,
    MixingBatchSampler,
    RowsDataset,
    SplitCollator,
)
from forgetless.integrations.hf.penalties import estimate_fisher, ewc_penalty, l2sp_penalty
from forgetless.integrations.hf.schedules import GradualUnfreezing, layerwise_adamw
from forgetless.integrations.hf.sequence import SequenceConfig, run_sequence
from forgetless.integrations.hf.tracker import CapabilityTracker
from forgetless.integrations.hf.trainer import ForgetlessTrainer, ForgettingTrainerMixin

__all__ = [
    "Capability",
    "CapabilityTracker",
    "ChoiceItem",
    "Example",
    "FinetuneConfig",
    "ForgetlessTrainer",
    "ForgettingCallback",
    "ForgettingTrainerMixin",
    "GradualUnfreezing",
    "HeadAccuracy",
    "KnnProbe",
    "MixedDataset",
    "MixingBatchSampler",
    "MultipleChoice",
    "Perplexity",
    "RowsDataset",
    "SequenceConfig",
    "SplitCollator",
    "TextData",
    "Turn",
    "build_capability",
    "encode_texts",
    "estimate_fisher",
    "ewc_penalty",
    "instruction_rows",
    "l2sp_penalty",
    "layerwise_adamw",
    "lm_blocks",
    "lm_rows",
    "load_choices",
    "load_texts",
    "render_text",
    "run_finetune",
    "run_sequence",
]
