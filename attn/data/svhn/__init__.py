"""SVHN format 1 (Netzer et al. 2011): house-number photos with per-digit boxes, read as digit sequences.

Prepared once (``python run.py prepare svhn --to DIR``, or the first run): :mod:`.prepare` downloads
and extracts ``DIR/train``, ``DIR/test``, ``DIR/extra``; :mod:`.digitstruct` parses each folder's
digitStruct.mat; :mod:`.cache` crops every number (:mod:`.crop`, Goodfellow et al.: the digits' union
box grown by 30%, resized to ``image_size``) into one HDF5 file per folder. Loaded every run:
:mod:`.load` reads those files into splits of uint8 (N, C, S, S) crops with int64
(N, max_digits + 1) token labels (:mod:`.labels`: 1-9 digits, 10 = "0", 0 = end). Formats, split and
cache rules: docs/data.md.
"""

from attn.data.svhn.cache import CACHE_VERSION, cache_path, ensure_cache
from attn.data.svhn.crop import EXPAND, crop_box, crop_image
from attn.data.svhn.digitstruct import FIELDS, DigitStruct, read_digit_struct
from attn.data.svhn.labels import CLASS_NAMES, END_TOKEN, decode_tokens, encode_number
from attn.data.svhn.layout import FOLDERS, ID_OFFSET, PREPARE_HINT
from attn.data.svhn.load import check_svhn, load_svhn
from attn.data.svhn.prepare import DEFAULT_URL, prepare_svhn

__all__ = [
    "CACHE_VERSION",
    "CLASS_NAMES",
    "DEFAULT_URL",
    "END_TOKEN",
    "EXPAND",
    "FIELDS",
    "FOLDERS",
    "ID_OFFSET",
    "PREPARE_HINT",
    "DigitStruct",
    "cache_path",
    "check_svhn",
    "crop_box",
    "crop_image",
    "decode_tokens",
    "encode_number",
    "ensure_cache",
    "load_svhn",
    "prepare_svhn",
    "read_digit_struct",
]
