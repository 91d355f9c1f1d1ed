"""A tiny byte-level GPT-2 built and pretrained locally (no hub): for demos, tests, benchmarks.

The tokenizer maps each byte to one token (GPT-2's byte-to-unicode alphabet, no merges), so any
text is encodable and perplexity is *per byte*. Saved with ``save_pretrained``, the folder loads
with ``AutoModelForCausalLM`` / ``AutoTokenizer`` like any hub model.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from forgetless.integrations.hf.capabilities import lm_blocks
from forgetless.integrations.hf.data import TextData


def _byte_chars(alphabet: list[str]) -> list[str]:
    """GPT-2's byte-to-unicode table (Radford et al. 2019), ordered by byte value."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, shift = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + shift)
            shift += 1
    assert set(chars.values()) == set(alphabet)
    return [chars[b] for b in range(256)]


def byte_tokenizer() -> Any:
    """A ``PreTrainedTokenizerFast`` with 256 byte tokens plus ``<|endoftext|>`` (id 256)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins of the bytes
    vocab = {char: b for b, char in enumerate(_byte_chars(alphabet))}
    vocab["<|endoftext|>"] = 256
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )


def tiny_gpt2(n_layer: int = 4, n_embd: int = 256, n_head: int = 4, n_positions: int = 256, seed: int = 0) -> Any:
    """A randomly initialised byte-level GPT-2 (defaults: ~3.3M parameters)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=257,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=256,
        eos_token_id=256,
        pad_token_id=256,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config)


def cache_dir() -> Path:
    """``$FORGETLESS_CACHE`` or ``$XDG_CACHE_HOME/forgetless`` (default ``~/.cache/forgetless``)."""
    if os.environ.get("FORGETLESS_CACHE"):
        return Path(os.environ["FORGETLESS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "forgetless"


def pretrain_lm(
    model: Any,
    blocks: torch.Tensor,
    seconds: float,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    max_steps: int | None = None,
) -> int:
    """Plain AdamW loop on random blocks for a time budget (warmup 50 steps); returns steps."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 50))
    model.train()
    start, step = time.perf_counter(), 0
    while time.perf_counter() - start < seconds and (max_steps is None or step < max_steps):
        rows = torch.randint(0, blocks.shape[0], (batch_size,), generator=generator)
        ids = blocks[rows].to(next(model.parameters()).device)
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        step += 1
    model.eval()
    return step


def pretrained_tiny_gpt2(
    general: TextData, seconds: float = 150.0, seq_len: int = 128, tag: str = "", folder: Path | None = None
) -> Path:
    """Folder of a tiny GPT-2 pretrained on ``general`` for ``seconds`` (cached: built once)."""
    folder = folder or cache_dir() / f"tiny-gpt2-bytes{('-' + tag) if tag else ''}-{int(seconds)}s"
    if (folder / "config.json").exists():
        return folder
    tokenizer = byte_tokenizer()
    model = tiny_gpt2(n_positions=max(256, seq_len))
    blocks = lm_blocks(tokenizer, general, seq_len)
    pretrain_lm(model, blocks, seconds)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    return folder
