"""SVHN labels as token sequences: token 0 = end, 1-9 = digits 1-9, 10 = digit "0" (the release's own
label 10 is kept). A row holds the digits left to right, then the end token, then IGNORE_INDEX."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from attn.data.base import IGNORE_INDEX

END_TOKEN = 0
CLASS_NAMES = ("<end>", "1", "2", "3", "4", "5", "6", "7", "8", "9", "0")

def encode_number(labels: Sequence[int], max_digits: int) -> Optional[np.ndarray]:
    """Release labels of one number (1-9, 10 = digit 0) -> int64 (max_digits + 1,) tokens: the digits,
    END_TOKEN, then IGNORE_INDEX. None when the number has more than ``max_digits`` digits (skipped,
    never cut)."""
    if len(labels) > max_digits:
        return None
    out = np.full(max_digits + 1, IGNORE_INDEX, dtype=np.int64)
    out[: len(labels)] = labels
    out[len(labels)] = END_TOKEN
    return out


def decode_tokens(tokens: Sequence[int]) -> str:
    """Tokens -> the number as text, up to the first end token ("<end>" and padding dropped; 10 -> "0")."""
    out = []
    for t in tokens:
        t = int(t)
        if t == END_TOKEN or t == IGNORE_INDEX:
            break
        out.append(CLASS_NAMES[t])
    return "".join(out)


def label_matrix(offsets: np.ndarray, digit_labels: np.ndarray, rows: np.ndarray, max_digits: int) -> np.ndarray:
    """Tokens (len(rows), max_digits + 1) of the records ``rows`` (all at most max_digits long)."""
    k = offsets[rows + 1] - offsets[rows]
    out = np.full((len(rows), max_digits + 1), IGNORE_INDEX, dtype=np.int64)
    out[np.arange(len(rows)), k] = END_TOKEN
    r = np.repeat(np.arange(len(rows)), k)
    j = np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k)
    src = np.repeat(offsets[rows], k) + j
    out[r, j] = np.rint(digit_labels[src]).astype(np.int64)
    return out
