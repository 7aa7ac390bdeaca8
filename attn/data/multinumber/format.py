"""The generated multinumber folder's format: constants shared by the generator and the loader.

``OUT/meta.json`` (every option, the SVHN sources' record counts and digests, FORMAT and
FORMAT_VERSION, the split sizes), ``OUT/<split>/<id>.png`` (size x size x 3 uint8, gray in three
channels) and ``OUT/<split>.json`` (one entry per sample: id, file, first and second number's
tokens, boxes, source records), written when the whole dataset is done. Full layout: docs/data.md.

Labels for the model: first + [SEPARATOR_TOKEN] + second + [END_TOKEN], 4-6 tokens, padded with
IGNORE_INDEX to MAX_TOKENS = 6; 12 classes.
"""

from __future__ import annotations

import json

from attn.data.svhn import CLASS_NAMES as SVHN_CLASS_NAMES
from attn.data.svhn import END_TOKEN as SVHN_END_TOKEN

FORMAT = "attn-multinumber"
FORMAT_VERSION = 1
"""Bump when what a generated folder holds changes; meta.json of another version is refused."""
SEPARATOR_TOKEN = 11
END_TOKEN = SVHN_END_TOKEN
CLASS_NAMES = SVHN_CLASS_NAMES + ("<sep>",)
MAX_DIGITS = 2
"""Numbers with 1..MAX_DIGITS digits form the pools."""
MAX_TOKENS = 2 * MAX_DIGITS + 2
"""Label slots: two numbers, the separator and the end token."""
SPLITS = ("train", "val", "test")
PREPARE_HINT = "run `python run.py prepare multinumber --svhn DIR --to OUT`"
FOLDER_NAMES = ("train", "extra", "test")
"""SVHN folders; a pool stores each record's folder as an index into this tuple."""



def json_bytes(obj) -> bytes:
    """``obj`` as the indented, key-sorted JSON of meta.json and the cache keys."""
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode("utf-8")
