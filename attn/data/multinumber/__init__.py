"""SVHN "multiple numbers": two house numbers pasted on one canvas, read as one token sequence.

Prepared once: ``python run.py prepare multinumber --svhn DIR --to OUT`` (:mod:`.generate`, drawing
from :mod:`.pools` one sample at a time with :mod:`.draw`) writes PNGs, meta.json and the split
JSONs (:mod:`.format`). Loaded every run with ``data.data_dir=OUT`` (:mod:`.load`): uint8
(N, C, S, S) canvases and int64 (N, 6) labels first + [11] + second + [0]. Design reference
sections 2.5 (generator) and 2.6 (labels); formats and rules: docs/data.md.
"""

from attn.data.multinumber.draw import INPAINT_RADIUS, INPAINT_SCALE, MAX_PAIR_DRAWS, PAD, PLACE_TRIES, inpaint
from attn.data.multinumber.format import (
    CLASS_NAMES,
    END_TOKEN,
    FOLDER_NAMES,
    FORMAT,
    FORMAT_VERSION,
    MAX_DIGITS,
    MAX_TOKENS,
    PREPARE_HINT,
    SEPARATOR_TOKEN,
    SPLITS,
)
from attn.data.multinumber.generate import PNG_COMPRESSION, generate_multinumber, split_sizes
from attn.data.multinumber.load import CACHE_VERSION, check_multinumber, load_multinumber

__all__ = [
    "CACHE_VERSION",
    "CLASS_NAMES",
    "END_TOKEN",
    "FOLDER_NAMES",
    "FORMAT",
    "FORMAT_VERSION",
    "INPAINT_RADIUS",
    "INPAINT_SCALE",
    "MAX_DIGITS",
    "MAX_PAIR_DRAWS",
    "MAX_TOKENS",
    "PAD",
    "PLACE_TRIES",
    "PNG_COMPRESSION",
    "PREPARE_HINT",
    "SEPARATOR_TOKEN",
    "SPLITS",
    "check_multinumber",
    "generate_multinumber",
    "inpaint",
    "load_multinumber",
    "split_sizes",
]
