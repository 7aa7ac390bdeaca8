"""Label files of ``image_sequences``: a CSV (header naming ``file`` and ``label``) or a JSON list of
``{"file", "label"}`` objects, one row per image, paths relative to the label file's folder.

A text label with spaces is split at them into tokens, one without spaces is one token per
character; a JSON label may also be a list of tokens. Labels become int64 (N, max_length + 1): the
tokens' ids (1.. in sorted vocabulary order), END_TOKEN 0, then IGNORE_INDEX. Examples: docs/data.md.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from attn.data.base import IGNORE_INDEX
from attn.errors import DataError

LABEL_FILES = ("labels.csv", "labels.json")
END_NAME = "<end>"
END_TOKEN = 0


def split_label(text: str) -> list[str]:
    """A text label -> tokens: split at whitespace when it has any, else one token per character."""
    t = text.strip()
    return t.split() if any(c.isspace() for c in t) else list(t)


def find_label_file(folder: Path, name: Optional[str]) -> Optional[Path]:
    """The label file of ``folder``: ``name`` if given, else labels.csv or labels.json; None if absent."""
    if name:
        p = folder / name
        return p if p.is_file() else None
    found = [folder / n for n in LABEL_FILES if (folder / n).is_file()]
    if len(found) > 1:
        raise DataError(
            f"{folder}: holds both {' and '.join(p.name for p in found)}; keep one or choose with data.labels_file"
        )
    return found[0] if found else None


@dataclass(frozen=True)
class LabelRow:
    where: str
    """'<label file>, line N' (CSV) or '<label file>, entry N' (JSON), for messages."""
    file: str
    tokens: tuple[str, ...]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: the label file is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_label_file(path: Path) -> list[LabelRow]:
    """Rows of a CSV or JSON label file (format: the module docstring); DataError naming the file
    and line on anything malformed."""
    text = _read_text(path)
    rows = _read_json(path, text) if path.suffix.lower() == ".json" else _read_csv(path, text)
    if not rows:
        raise DataError(f"{path}: the label file lists no images; add one row per image (file, label)")
    return rows


def _read_csv(path: Path, text: str) -> list[LabelRow]:
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: the label file is empty; expected a header line 'file,label', then one row per image")
        cols = [h.strip().lower() for h in header]
        if "file" not in cols or "label" not in cols:
            raise DataError(
                f"{path}: the first line {','.join(header)!r} does not name the columns file and label; it must "
                "be a header such as 'file,label'"
            )
        fi, li = cols.index("file"), cols.index("label")
        rows = []
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            if not any(c.strip() for c in row):
                continue
            if len(row) <= max(fi, li):
                raise DataError(f"{where}: {len(row)} column(s), expected {len(cols)} as in the header")
            rows.append(_row(where, row[fi], row[li]))
        return rows
    except csv.Error as exc:
        raise DataError(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from None


def _read_json(path: Path, text: str) -> list[LabelRow]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, list):
        raise DataError(f'{path}: expected a JSON list of {{"file": ..., "label": ...}} objects')
    rows = []
    for i, item in enumerate(data):
        where = f"{path}, entry {i}"
        if not isinstance(item, dict) or "file" not in item or "label" not in item:
            raise DataError(f'{where}: expected an object {{"file": ..., "label": ...}}, got {str(item)[:60]}')
        rows.append(_row(where, item["file"], item["label"]))
    return rows


def _row(where: str, file, label) -> LabelRow:
    if not isinstance(file, str) or not file.strip():
        raise DataError(f"{where}: the file name is missing or not text")
    if isinstance(label, str):
        tokens = split_label(label)
    elif isinstance(label, list) and all(isinstance(t, (str, int)) and not isinstance(t, bool) for t in label):
        tokens = [str(t).strip() for t in label]
        if any(not t for t in tokens):
            raise DataError(f"{where}: the label of '{file}' holds an empty token")
    else:
        raise DataError(f"{where}: the label of '{file}' must be text or a list of tokens (texts or integers)")
    if not tokens:
        raise DataError(f"{where}: the label of '{file}' is empty; every image needs at least one token")
    if END_NAME in tokens:
        raise DataError(f"{where}: the label of '{file}' uses the token {END_NAME!r}, which is reserved for the end token")
    return LabelRow(where, file.strip(), tuple(tokens))



def encode_labels(rows: Sequence[tuple[str, ...]], vocab: dict[str, int], max_length: int) -> np.ndarray:
    """Token sequences (each at most max_length long) -> int64 (N, max_length + 1): ids, END_TOKEN,
    then IGNORE_INDEX."""
    out = np.full((len(rows), max_length + 1), IGNORE_INDEX, dtype=np.int64)
    for i, tokens in enumerate(rows):
        out[i, : len(tokens)] = [vocab[t] for t in tokens]
        out[i, len(tokens)] = END_TOKEN
    return out



def label_summary(rows: Sequence[LabelRow]) -> tuple[Counter, list[str]]:
    """(Counter of label lengths, sorted vocabulary) of label rows."""
    return Counter(len(r.tokens) for r in rows), sorted({t for r in rows for t in r.tokens})
