"""Instruction data for a causal LM: render each example, mask its prompt, one example per row.

**Rendering.** A chat or Alpaca example (:class:`~forgetless.integrations.hf.data.Example`)
goes through the tokenizer's chat template (``tokenizer.apply_chat_template``) when it has one,
as the messages of :meth:`Example.messages` (Alpaca: ``user`` = instruction + input, ``assistant``
= output); without one, through the default templates of :meth:`Example.pieces`::

    chat     <|system|>\\nBe brief.\\n<|user|>\\nHi\\n<|assistant|>\\nHello!\\n<EOS>
    alpaca   ### Instruction:\\nI\\n\\n[### Input:\\nX\\n\\n]### Response:\\nO<EOS>
    prompt-completion   PC<EOS>   (prompt then completion, never templated)

**Response spans.** With a chat template the spans are found by rendering growing prefixes of
the conversation: before each response, the messages so far with ``add_generation_prompt=True``
(its header is prompt), then the messages up to the response included (the response and its
end-of-turn marker are trained). Each rendering must begin with the previous one (a
prefix-stable template); one that rewrites earlier turns is a one-line DataError. No EOS is
appended to a chat-template rendering (the template closes each turn); the default templates
end with the tokenizer's EOS token, trained with the response.

**Loss mask.** The whole rendering is tokenized once (``add_special_tokens=False``, as
:func:`~forgetless.integrations.hf.capabilities.lm_blocks` does) and a token is trained when
any character of it belongs to a response (offset mapping of a fast tokenizer; a slow one
tokenizes piece by piece). ``labels`` are the token ids there and ``-100`` elsewhere (the prompt,
the padding): the Hugging Face causal-LM loss and :class:`Perplexity` then count the response
tokens only. Rows are **not packed**: one example per row, cut to ``seq_len`` tokens from the
right (ids and mask together), right-padded to the longest row; an example whose cut leaves no
response token to predict is dropped (all dropped: a DataError asking for a longer ``seq_len``).
"""

from __future__ import annotations

from typing import Any

import torch

from forgetless.errors import DataError
from forgetless.integrations.hf.data import Example, TextData

IGNORE_INDEX = -100
"""The label of a token that is not trained on (the Hugging Face / PyTorch convention)."""


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` carries a chat template (``tokenizer.chat_template``)."""
    return bool(getattr(tokenizer, "chat_template", None))


def uses_chat_template(example: Example, tokenizer: Any) -> bool:
    """Chat and Alpaca examples go through the tokenizer's template when it has one;
    prompt-completion pairs never do (a raw continuation)."""
    return tokenizer is not None and example.format != "prompt-completion" and has_chat_template(tokenizer)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:160]


def _template_pieces(example: Example, tokenizer: Any) -> list[tuple[str, bool]]:
    messages, trained = example.messages(), example.trained_messages()
    where = example.origin or "an example"

    def render(count: int, generation: bool) -> str:
        try:
            text = tokenizer.apply_chat_template(messages[:count], tokenize=False, add_generation_prompt=generation)
        except Exception as error:  # jinja2's TemplateError ("roles must alternate", ...) and the like
            raise DataError(f"{where}: the tokenizer's chat template refused it ({_first_line(error)})") from None
        if not isinstance(text, str):
            raise DataError(f"{where}: the tokenizer's chat template did not render a string")
        return text

    pieces: list[tuple[str, bool]] = []
    done = ""

    def extend(text: str, train: bool, count: int) -> None:
        nonlocal done
        if not text.startswith(done):
            raise DataError(
                f"{where}: the tokenizer's chat template is not prefix-stable (the first {count} messages do not "
                "render as the beginning of the whole conversation), so its responses cannot be located: "
                "render the prompts yourself and give prompt/completion rows"
            )
        if len(text) > len(done):
            pieces.append((text[len(done) :], train))
        done = text

    for i, (message, train) in enumerate(zip(messages, trained)):
        whole = render(i + 1, False)
        if train and message["role"] == "assistant":
            if i:
                extend(render(i, True), False, i)
            else:  # a conversation opening with the assistant: its header is what precedes the content
                at = whole.find(message["content"]) if message["content"] else -1
                extend(whole[: max(at, 0)], False, 1)
        extend(whole, train, i + 1)
    return pieces


def render_pieces(example: Example, tokenizer: Any = None) -> list[tuple[str, bool]]:
    """``(text, trained)`` pieces of ``example``: through the tokenizer's chat template when
    :func:`uses_chat_template`, else the default template (:meth:`Example.pieces`)."""
    if uses_chat_template(example, tokenizer):
        return _template_pieces(example, tokenizer)
    return example.pieces()


def render_text(example: Example, tokenizer: Any = None) -> str:
    """The rendered text of ``example`` (without the EOS token the encoder may append)."""
    return "".join(text for text, _ in render_pieces(example, tokenizer))


def encode_pieces(tokenizer: Any, pieces: list[tuple[str, bool]], add_eos: bool) -> tuple[list[int], list[bool]]:
    """Token ids of the concatenated pieces and, per token, whether it is trained (any of its
    characters is in a trained piece); with ``add_eos`` the EOS token is appended (trained when
    the last piece is)."""
    text = "".join(piece for piece, _ in pieces)
    ids: list[int] = []
    trained: list[bool] = []
    if getattr(tokenizer, "is_fast", False):
        counted = [0]  # counted[k]: trained characters in text[:k]
        for piece, train in pieces:
            for _ in piece:
                counted.append(counted[-1] + int(train))
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(encoded["input_ids"])
        for start, end in encoded["offset_mapping"]:
            end = max(end, start + 1) if start < len(text) else start
            trained.append(counted[min(end, len(text))] > counted[min(start, len(text))])
    else:
        for piece, train in pieces:
            part = tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []
            ids.extend(part)
            trained.extend([train] * len(part))
    eos = getattr(tokenizer, "eos_token_id", None)
    if add_eos and eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
        trained.append(bool(pieces) and pieces[-1][1])
    return ids, trained


def encode_example(tokenizer: Any, example: Example) -> tuple[list[int], list[bool]]:
    """``(ids, trained)`` of one example: rendered (:func:`render_pieces`), tokenized, masked."""
    templated = uses_chat_template(example, tokenizer)
    return encode_pieces(tokenizer, render_pieces(example, tokenizer), add_eos=not templated)


def instruction_rows(
    tokenizer: Any, data: TextData, seq_len: int, max_rows: int | None = None
) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask`` and ``labels`` (``-100`` but on response tokens) of
    instruction data, one example per row (see the module docstring): ``[N, width]`` with
    ``width`` the longest row, at most ``seq_len``; at most ``max_rows`` rows."""
    if data.examples is None:
        raise DataError(f"{data.source}: not instruction data (no chat, Alpaca or prompt/completion rows)")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        pad = 0  # padded positions are masked out of the attention and the loss: any id will do
    rows: list[tuple[list[int], list[bool]]] = []
    for example in data.examples:
        ids, trained = encode_example(tokenizer, example)
        ids, trained = ids[:seq_len], trained[:seq_len]
        if any(trained[1:]):  # the first token is never predicted
            rows.append((ids, trained))
            if max_rows is not None and len(rows) >= max_rows:
                break
    if not rows:
        raise DataError(
            f"{data.source}: no example keeps a response token within --seq-len {seq_len} "
            "(the prompts fill it): raise --seq-len"
        )
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for r, (ids, trained) in enumerate(rows):
        row = torch.tensor(ids, dtype=torch.long)
        input_ids[r, : len(ids)] = row
        attention_mask[r, : len(ids)] = 1
        labels[r, : len(ids)] = torch.where(torch.tensor(trained), row, IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
