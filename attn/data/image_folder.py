"""Your own images: ``image_folder`` (one folder per class, for RAM) and ``image_sequences`` (label
sequences from a CSV or JSON file, for DRAM).

Layouts (``data.data_dir`` = DIR); a ``train/`` folder selects the first form of each:

    image_folder      DIR/train/<class>/<images>   [DIR/val/<class>/...]   [DIR/test/<class>/...]
                      DIR/<class>/<images>
    image_sequences   DIR/train/labels.csv + images   [DIR/val/labels.csv ...]   [DIR/test/labels.csv ...]
                      DIR/labels.csv + images

Without a ``val/`` (``test/``) folder a seeded ``val_fraction`` (``test_fraction``) of the training
images is held out (image_folder: per class, so every class keeps its share). The split depends only
on ``split_seed`` and the listing, never on the cache.

image_folder, as torchvision's ``ImageFolder``: class names are the class folders' names, sorted
(class index = position); images are the files under a class folder (searched recursively) whose
extension, in any case, is one of IMAGE_EXTENSIONS; hidden files and folders and the cache folder
are skipped. A class folder without images is an error, as is a val/ or test/ class train/ lacks.

image_sequences label files (``data.labels_file``; default labels.csv or labels.json), one row per
image, image paths relative to the label file's folder:

    CSV   a header naming the columns ``file`` and ``label`` (others are ignored), then rows such as
          ``img/0001.png,3 1 4`` (tokens "3", "1", "4") or ``img/0002.png,314`` (no spaces: one token
          per character, the same tokens);
    JSON  a list of objects ``{"file": "img/0001.png", "label": "314"}``, where ``label`` is a text
          (split like a CSV label) or a list of tokens ``["3", "1", "4"]`` (tokens may be longer than
          one character: ``["cat", "dog"]``).

The vocabulary is the sorted set of tokens of the kept labels (all splits); token 0 is the end token
``<end>``, token i > 0 the i-th vocabulary entry, so ``class_names = ("<end>", *vocabulary)``.
Labels are int64 (N, max_length + 1): the tokens, the end token, then IGNORE_INDEX. Labels longer than
``max_length`` are skipped and counted in the notes, never cut.

Images are decoded once with PIL, converted to ``data.color`` (L: 1 channel, RGB: 3; an image of the
other kind is an error unless ``data.convert``) and brought to ``target_size`` (H, W) by
``data.resize``: fit (scaled to fit, aspect ratio kept, centred on a ``pad_fill`` canvas), stretch, or
pad (own scale, centred; shrunk only when larger than the canvas). Splits hold uint8 (N, C, H, W).

Cache: ``<cache_dir>/<task>-<color>-<options digest>.npz`` holds the decoded images of every listed
file and the digest of the listing they came from (each file's path, byte size and mtime), so a
changed folder is rebuilt. Normalisation statistics (unless ``data.mean`` / ``data.std`` are given)
are computed exactly from the training split's pixel histogram and kept beside it in
``<same name>.stats.json``, keyed by the listing and the training ids.

Ids: the image's position in the listing (image_folder: split folders train, val, test in that
order, classes sorted, files sorted; image_sequences: label-file rows of train, val, test).
"""

from __future__ import annotations

import concurrent.futures
import csv
import hashlib
import io
import json
import os
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from attn.data.base import IGNORE_INDEX, DataSpec, Split, TaskData
from attn.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
"""torchvision ImageFolder's extensions, plus .gif (first frame)."""
SPLITS = ("train", "val", "test")
CACHE_NAME = "attn-cache"
LABEL_FILES = ("labels.csv", "labels.json")
END_NAME = "<end>"
END_TOKEN = 0
CACHE_VERSION = 1
"""Bump when what a cache holds changes (conversion, resizing): older files are then rebuilt."""
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def channel_kind(mode: str) -> str:
    """PIL mode -> "gray" (one channel, with or without alpha) or "rgb" (colour, palette, CMYK, ...)."""
    return "gray" if mode in _GRAY_MODES else "rgb"


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


# ---------------------------------------------------------------------------------------------
# listing
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageFile:
    path: Path
    rel: str
    """Path relative to data_dir (posix), or the absolute path of a file outside it."""
    size: int
    mtime_ns: int


def _stat(path: Path, root: Path) -> ImageFile:
    st = path.stat()
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        rel = str(path)
    return ImageFile(path, rel, st.st_size, st.st_mtime_ns)


def listing_digest(files: Sequence[ImageFile]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.rel}\t{f.size}\t{f.mtime_ns}\n".encode())
    return h.hexdigest()


def data_root(data_dir: Optional[str], task: str) -> Path:
    what = "one sub-folder of images per class" if task == "image_folder" else "a labels.csv or labels.json and the images"
    if not data_dir:
        raise DataError(f"data.data_dir must point at your image folder ({what}, or train/, val/, test/ folders of that)")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: data.data_dir does not exist; point it at your image folder ({what})")
    return root


def cache_folder(cfg, root: Path) -> Path:
    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else root / CACHE_NAME


def split_folders(root: Path) -> Optional[dict[str, Path]]:
    """{split: folder} of the split-folder layout (train/ present), else None (one pool)."""
    if (root / "train").is_dir():
        return {s: root / s for s in SPLITS if (root / s).is_dir()}
    strays = [s for s in ("val", "test") if (root / s).is_dir()]
    if strays:
        raise DataError(
            f"{root}: has {'/, '.join(strays)}/ but no train/ folder; either add train/ (split folders) or put "
            "everything in one pool (no train/, val/, test/), from which seeded val and test shares are held out"
        )
    return None


def _skip_dir(path: Path, skip: frozenset[Path]) -> bool:
    return path.name.startswith(".") or path.name == CACHE_NAME or path.resolve() in skip


def _walk_images(folder: Path, skip: frozenset[Path]) -> tuple[list[Path], list[Path]]:
    """(image files, other files) under ``folder``, recursively, sorted; hidden entries skipped."""
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if not _skip_dir(d / n, skip))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            (images if is_image_file(name) else others).append(d / name)
    return sorted(images), others


@dataclass
class FolderListing:
    """An image_folder listing: ``files`` with their ``labels`` (class index) and ``source`` (index in
    SPLITS of the split folder each came from; 0 for the pool layout)."""

    root: Path
    layout: dict[str, Path]
    """Split folders present; empty for the one-pool layout."""
    classes: list[str]
    files: list[ImageFile]
    labels: np.ndarray
    source: np.ndarray
    ignored: list[Path] = field(default_factory=list)
    """Non-image files inside class folders, and loose files or extra folders beside them."""


def _class_dirs(folder: Path, skip: frozenset[Path]) -> tuple[list[Path], list[Path]]:
    dirs, loose = [], []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            if not _skip_dir(entry, skip):
                dirs.append(entry)
        elif not entry.name.startswith("."):
            loose.append(entry)
    return dirs, loose


def list_image_folder(root: Path, cache_dir: Optional[Path] = None) -> FolderListing:
    """List an image_folder dataset (see the module docstring); DataError on a malformed layout."""
    skip = frozenset({cache_dir.resolve()} if cache_dir is not None else set())
    layout = split_folders(root) or {}
    ignored: list[Path] = []
    if layout:
        for entry in sorted(root.iterdir()):
            if entry.name not in SPLITS and not entry.name.startswith(".") and not (entry.is_dir() and _skip_dir(entry, skip)):
                ignored.append(entry)
    pools = layout or {"train": root}
    classes: list[str] = []
    files, labels, source = [], [], []
    for split, folder in pools.items():
        dirs, loose = _class_dirs(folder, skip)
        ignored += loose
        if not dirs:
            where = f"{folder}/<class name>/<image files>"
            raise DataError(
                f"{folder}: no class folders; data.task image_folder expects {where} (one sub-folder per class, "
                "as torchvision's ImageFolder)"
            )
        if split == "train":
            classes = [d.name for d in dirs]
        for d in dirs:
            if d.name not in classes:
                raise DataError(
                    f"{d}: class '{d.name}' has no folder in {pools['train']}; every {split}/ class must also be a "
                    "training class"
                )
            images, others = _walk_images(d, skip)
            ignored += others
            if not images:
                seen = f" (only {len(others)} other file(s), e.g. {others[0].name})" if others else ""
                raise DataError(
                    f"{d}: class folder '{d.name}' holds no images{seen}; add images "
                    f"({', '.join(IMAGE_EXTENSIONS)}) or remove the folder"
                )
            files += [_stat(p, root) for p in images]
            labels += [classes.index(d.name)] * len(images)
            source += [SPLITS.index(split)] * len(images)
    return FolderListing(
        root, layout, classes, files, np.asarray(labels, np.int64), np.asarray(source, np.int64), ignored
    )


# ---------------------------------------------------------------------------------------------
# label files
# ---------------------------------------------------------------------------------------------
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
    """Rows of a CSV or JSON label file (format in the module docstring); DataError naming the file
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


@dataclass
class SequenceListing:
    """An image_sequences listing: label rows with their split folder (``source``) and image index
    into ``files`` (the distinct images, in order of first mention)."""

    root: Path
    layout: dict[str, Path]
    label_files: dict[str, Path]
    rows: list[LabelRow]
    source: np.ndarray
    image_index: np.ndarray
    files: list[ImageFile]


def list_sequences(root: Path, labels_file: Optional[str] = None) -> SequenceListing:
    layout = split_folders(root) or {}
    pools = layout or {"train": root}
    label_files: dict[str, Path] = {}
    for split, folder in pools.items():
        p = find_label_file(folder, labels_file)
        if p is None:
            wanted = repr(labels_file) if labels_file else "labels.csv or labels.json"
            raise DataError(
                f"{folder}: no label file {wanted}; data.task image_sequences needs one per "
                f"{'split folder' if layout else 'data_dir'}: a CSV with the columns file,label or a JSON list "
                'of {"file": ..., "label": ...}'
            )
        label_files[split] = p
    rows, source, image_index = [], [], []
    seen: dict[Path, int] = {}
    files: list[ImageFile] = []
    for split, p in label_files.items():
        for row in read_label_file(p):
            path = p.parent / row.file
            if path not in seen:
                if not path.is_file():
                    raise DataError(f"{row.where}: image '{row.file}' not found (looked for {path})")
                seen[path] = len(files)
                files.append(_stat(path, root))
            rows.append(row)
            source.append(SPLITS.index(split))
            image_index.append(seen[path])
    return SequenceListing(
        root, layout, label_files, rows, np.asarray(source, np.int64), np.asarray(image_index, np.int64), files
    )


# ---------------------------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------------------------
def _unreadable(path: Path, exc: BaseException) -> DataError:
    why = "unknown or corrupt image format" if isinstance(exc, UnidentifiedImageError) else str(exc) or type(exc).__name__
    return DataError(f"{path}: cannot read the image ({why}); replace or remove the file")


def probe(path: Path) -> tuple[str, int, int]:
    """(PIL mode, width, height) from the file's header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.mode, im.width, im.height
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _unreadable(path, exc) from None


def probe_all(files: Sequence[ImageFile]) -> list[tuple[str, int, int]]:
    with concurrent.futures.ThreadPoolExecutor(_threads()) as pool:
        return list(pool.map(lambda f: probe(f.path), files, chunksize=64))


def _threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _as_color(im: Image.Image, color: str) -> Image.Image:
    if im.mode in _WIDE_MODES:
        # 16-bit, 32-bit and float images: PIL's own conversion to L clips instead of scaling
        a = np.asarray(im, dtype=np.float64)
        peak = a.max(initial=0.0)
        if im.mode.startswith("I;16"):
            top = 65535.0
        elif im.mode == "F" and peak <= 1.0:
            top = 1.0
        else:
            top = 255.0 if peak <= 255 else 65535.0
        im = Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("L" if color == "gray" else "RGB")


def fit_image(im: Image.Image, height: int, width: int, resize: str, fill: int) -> np.ndarray:
    """An L or RGB image -> uint8 (height, width[, 3]) by ``resize`` (fit, stretch, pad)."""
    w, h = im.size
    if resize == "stretch":
        if (w, h) != (width, height):
            im = im.resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(im)
    s = min(height / h, width / w)
    if resize == "pad":
        s = min(s, 1.0)
    nw, nh = (w, h) if s == 1.0 else (min(width, max(1, round(w * s))), min(height, max(1, round(h * s))))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    a = np.asarray(im)
    out = np.full((height, width) + a.shape[2:], fill, dtype=np.uint8)
    top, left = (height - nh) // 2, (width - nw) // 2
    out[top : top + nh, left : left + nw] = a
    return out


def decode(path: Path, color: str, height: int, width: int, resize: str, fill: int) -> np.ndarray:
    """One image file -> uint8 (C, height, width), C = 1 (gray) or 3 (rgb)."""
    try:
        with Image.open(path) as im:
            im.load()
            a = fit_image(_as_color(im, color), height, width, resize, fill)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _unreadable(path, exc) from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _check_channels(files: Sequence[ImageFile], modes: Sequence[str], color: str, convert: bool) -> None:
    kinds = [channel_kind(m) for m in modes]
    other = next((i for i, k in enumerate(kinds) if k != color), None)
    if other is None or convert:
        return
    f, mode = files[other].path, modes[other]
    if color in kinds:
        same = files[kinds.index(color)].path
        raise DataError(
            f"{f}: a {kinds[other]} image (PIL mode {mode}) among {color} ones such as {same}: the images mix channel "
            f"counts; set data.convert=true to convert them all to data.color ({color!r})"
        )
    n = len(kinds)
    raise DataError(
        f"{f}: a {kinds[other]} image (PIL mode {mode}, like all {n}) but data.color = {color!r}; set "
        f"data.color={kinds[other]}, or data.convert=true to convert them to {color}"
    )


def _canvas(cfg, files: Sequence[ImageFile], sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    if cfg.target_size is not None:
        return int(cfg.target_size[0]), int(cfg.target_size[1])
    first = sizes[0]
    for f, s in zip(files, sizes):
        if s != first:
            raise DataError(
                f"{f.path}: {s[1]}x{s[0]} (height x width) while {files[0].path} is {first[1]}x{first[0]}; images of "
                "different sizes need data.target_size=[height, width] (and data.resize: fit, stretch or pad)"
            )
    return first[1], first[0]


def _options_digest(cfg, task: str, root: Path) -> str:
    opts = {
        "version": CACHE_VERSION,
        "task": task,
        "root": str(root.resolve()),
        "target_size": list(cfg.target_size) if cfg.target_size is not None else None,
        "resize": cfg.resize,
        "pad_fill": cfg.pad_fill,
        "color": cfg.color,
        "convert": cfg.convert,
    }
    return hashlib.sha256(json.dumps(opts, sort_keys=True).encode()).hexdigest()[:16]


def _note(notes: list[str], line: str) -> None:
    print(line, file=sys.stderr, flush=True)
    notes.append(line)


def _decode_all(files: Sequence[ImageFile], cfg, height: int, width: int) -> np.ndarray:
    C = 1 if cfg.color == "gray" else 3
    out = np.empty((len(files), C, height, width), dtype=np.uint8)

    def job(i: int) -> None:
        out[i] = decode(files[i].path, cfg.color, height, width, cfg.resize, cfg.pad_fill)

    # PIL's warnings (palette transparency, odd EXIF) are harmless here; the filter is process-wide,
    # so it is set around the whole pool rather than inside its threads
    with warnings.catch_warnings(), concurrent.futures.ThreadPoolExecutor(_threads()) as pool:
        warnings.simplefilter("ignore")
        for _ in pool.map(job, range(len(files)), chunksize=32):
            pass
    return out


def load_images(cfg, task: str, root: Path, files: Sequence[ImageFile], notes: list[str]) -> tuple[np.ndarray, Path]:
    """uint8 (N, C, H, W) of ``files``, from the cache when it matches the listing, else decoded (and
    cached). Returns the images and the cache file's path (which may not exist if unwritable)."""
    cache_dir = cache_folder(cfg, root)
    path = cache_dir / f"{task}-{cfg.color}-{_options_digest(cfg, task, root)}.npz"
    digest = listing_digest(files)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["source"]) == digest:
                    return z["images"], path
        except (OSError, ValueError, KeyError, EOFError):
            pass  # unreadable or partial: rebuilt below
        _note(notes, f"{task}: the images changed since {path} was made; decoding them again")
    probed = probe_all(files)
    _check_channels(files, [m for m, _, _ in probed], cfg.color, cfg.convert)
    height, width = _canvas(cfg, files, [(w, h) for _, w, h in probed])
    images = _decode_all(files, cfg, height, width)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, images=images, source=np.array(digest))
        os.replace(tmp, path)
    except OSError as exc:
        _note(notes, f"{task}: cannot write the cache {path} ({exc.strerror or exc}); set data.cache_dir to a writable folder")
    return images, path


# ---------------------------------------------------------------------------------------------
# splits and statistics
# ---------------------------------------------------------------------------------------------
def _quotas(sizes: np.ndarray, fraction: float) -> np.ndarray:
    """How many of each group to hold out: round(fraction * total) in all (at least 1 when fraction > 0),
    shared in proportion to the group sizes by largest remainder (ties: the earlier group)."""
    total = int(sizes.sum())
    want = min(total, max(1, int(round(fraction * total)))) if fraction > 0 and total else 0
    exact = fraction * sizes
    out = np.minimum(np.floor(exact).astype(np.int64), sizes)
    order = np.lexsort((np.arange(len(sizes)), -(exact - out)))
    for g in order:
        if out.sum() >= want:
            break
        if out[g] < sizes[g]:
            out[g] += 1
    return out


def _held_out(groups: Sequence[np.ndarray], fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Seeded shares of the groups of indices: {split: sorted indices} for the splits in ``fractions``
    (test drawn first, then val; each group giving its share of the split's total), the rest "train"."""
    rng = np.random.default_rng(seed)
    perms = [g[rng.permutation(len(g))] for g in groups]
    sizes = np.asarray([len(g) for g in groups], np.int64)
    taken = np.zeros(len(groups), np.int64)
    out: dict[str, np.ndarray] = {}
    for split in ("test", "val"):
        if split in fractions:
            k = _quotas(sizes, fractions[split])
            k = np.minimum(k, sizes - taken)
            out[split] = np.concatenate([p[a : a + n] for p, a, n in zip(perms, taken, k)] or [np.zeros(0, np.int64)])
            taken += k
    out["train"] = np.concatenate([p[a:] for p, a in zip(perms, taken)] or [np.zeros(0, np.int64)])
    return {s: np.sort(v).astype(np.int64) for s, v in out.items()}


def assign_splits(
    cfg, source: np.ndarray, groups_of: Optional[np.ndarray], layout: dict[str, Path], notes: list[str], task: str
) -> dict[str, np.ndarray]:
    """Indices of the train, val and test rows: the split folders' own, plus seeded shares of train/
    (of the pool) where val/ or test/ is missing; per group (class) when ``groups_of`` is given."""
    fractions = {s: getattr(cfg, f"{s}_fraction") for s in ("val", "test") if s not in layout}
    pool = np.flatnonzero(source == 0)
    groups = [pool[groups_of[pool] == c] for c in np.unique(groups_of[pool])] if groups_of is not None else [pool]
    parts = _held_out(groups, fractions, cfg.split_seed)
    for split in ("val", "test"):
        if split not in fractions:
            parts[split] = np.flatnonzero(source == SPLITS.index(split))
    if fractions:
        where = "train/" if layout else "the pool"
        held = ", ".join(f"{s} {f:g}" for s, f in fractions.items())
        per = " per class" if groups_of is not None else ""
        notes.append(f"{task}: held out seeded shares of {where}{per} (split_seed {cfg.split_seed}): {held}")
    for split in SPLITS:
        if len(parts[split]) == 0:
            if split in fractions:
                raise DataError(
                    f"{cfg.data_dir}: the {split} split is empty (data.{split}_fraction = {fractions[split]} of "
                    f"{len(pool)} images); raise data.{split}_fraction or add a {split}/ folder"
                )
            raise DataError(f"{cfg.data_dir}: no {split} images; add some to {split}/ or lower the held-out fractions")
    return parts


def pixel_statistics(images: np.ndarray) -> tuple[float, float]:
    """Mean and (population) standard deviation of uint8 pixels as values in [0, 1], exact: from the
    pixel histogram with integer sums."""
    counts = np.bincount(np.ascontiguousarray(images).reshape(-1), minlength=256).tolist()
    n = sum(counts)
    s1 = sum(v * c for v, c in enumerate(counts))
    s2 = sum(v * v * c for v, c in enumerate(counts))
    mean = s1 / (255.0 * n)
    var = (n * s2 - s1 * s1) / (255.0 * 255.0 * n * n)
    return float(mean), float(max(var, 0.0) ** 0.5)


def _statistics(cfg, task: str, cache: Path, digest: str, train_ids: np.ndarray, train_images: np.ndarray,
                notes: list[str]) -> tuple[Optional[float], Optional[float]]:
    if cfg.normalize == "per_image" or (cfg.mean is not None and cfg.std is not None):
        return cfg.mean, cfg.std
    key = hashlib.sha256(digest.encode() + np.ascontiguousarray(train_ids, np.int64).tobytes()).hexdigest()
    stats_path = cache.with_name(cache.name + ".stats.json")
    table: dict = {}
    try:
        table = json.loads(stats_path.read_text())
    except (OSError, ValueError):
        pass
    if isinstance(table, dict) and isinstance(table.get(key), list) and len(table[key]) == 2:
        mean, std = table[key]
        how = "cached"
    else:
        mean, std = pixel_statistics(train_images)
        if std == 0.0:
            raise DataError(
                f"{cfg.data_dir}: every training pixel has the same value ({mean * 255:.0f}); there is nothing to "
                "learn from, or give data.mean and data.std"
            )
        table = {k: v for k, v in (table.items() if isinstance(table, dict) else []) if k != key}
        table[key] = [mean, std]
        try:
            tmp = stats_path.with_name(f".{stats_path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(dict(list(table.items())[-16:])))
            os.replace(tmp, stats_path)
        except OSError:
            pass  # no cache folder: recomputed next time (the image cache already said so)
        how = "computed"
    mean = cfg.mean if cfg.mean is not None else mean
    std = cfg.std if cfg.std is not None else std
    notes.append(f"{task}: normalisation mean {mean:.4f}, std {std:.4f} ({how} from the {len(train_ids)} training images)")
    return float(mean), float(std)


def _split(images: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> Split:
    return Split(
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
        ids=torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)),
    )


# ---------------------------------------------------------------------------------------------
# the two tasks
# ---------------------------------------------------------------------------------------------
def load_image_folder(cfg) -> TaskData:
    """One folder per class -> classification splits (labels (N,) class indices, in sorted class-name
    order); ``cfg`` is a :class:`attn.config.DataConfig` with task image_folder."""
    task = "image_folder"
    notes: list[str] = []
    root = data_root(cfg.data_dir, task)
    listing = list_image_folder(root, cache_folder(cfg, root))
    if listing.ignored:
        shown = ", ".join(str(p) for p in listing.ignored[:3])
        notes.append(f"{task}: ignored {len(listing.ignored)} non-image file(s) or folder(s), e.g. {shown}")
    parts = assign_splits(cfg, listing.source, listing.labels, listing.layout, notes, task)
    counts = {s: np.bincount(listing.labels[parts[s]], minlength=len(listing.classes)) for s in SPLITS}
    notes.append(
        f"{task}: {len(listing.classes)} classes; "
        + "; ".join(f"{s} {len(parts[s])}" for s in SPLITS)
        + " images; per class (train/val/test): "
        + ", ".join(f"{c} {counts['train'][i]}/{counts['val'][i]}/{counts['test'][i]}" for i, c in enumerate(listing.classes[:20]))
        + (" ..." if len(listing.classes) > 20 else "")
    )
    images, cache = load_images(cfg, task, root, listing.files, notes)
    mean, std = _statistics(cfg, task, cache, listing_digest(listing.files), parts["train"], images[parts["train"]], notes)
    _, C, H, W = images.shape
    spec = DataSpec(channels=C, height=H, width=W, num_classes=len(listing.classes), class_names=tuple(listing.classes))
    return TaskData(
        spec=spec,
        **{s: _split(images[parts[s]], listing.labels[parts[s]], parts[s]) for s in SPLITS},
        mean=mean,
        std=std,
        notes=notes,
    )


def encode_labels(rows: Sequence[tuple[str, ...]], vocab: dict[str, int], max_length: int) -> np.ndarray:
    """Token sequences (each at most max_length long) -> int64 (N, max_length + 1): ids, END_TOKEN,
    then IGNORE_INDEX."""
    out = np.full((len(rows), max_length + 1), IGNORE_INDEX, dtype=np.int64)
    for i, tokens in enumerate(rows):
        out[i, : len(tokens)] = [vocab[t] for t in tokens]
        out[i, len(tokens)] = END_TOKEN
    return out


def load_image_sequences(cfg) -> TaskData:
    """Images with label sequences -> DRAM splits (labels (N, max_length + 1), see the module
    docstring); ``cfg`` is a :class:`attn.config.DataConfig` with task image_sequences."""
    task = "image_sequences"
    notes: list[str] = []
    root = data_root(cfg.data_dir, task)
    listing = list_sequences(root, cfg.labels_file)
    parts = assign_splits(cfg, listing.source, None, listing.layout, notes, task)
    lengths = np.asarray([len(r.tokens) for r in listing.rows])
    for split in SPLITS:
        long = lengths[parts[split]] > cfg.max_length
        if long.any():
            notes.append(
                f"{task}: skipped {int(long.sum())} of {len(long)} {split} images with labels longer than "
                f"data.max_length = {cfg.max_length} tokens (longest {int(lengths[parts[split]].max())})"
            )
            parts[split] = parts[split][~long]
        if len(parts[split]) == 0:
            raise DataError(
                f"{listing.label_files.get(split, root)}: no {split} labels of at most data.max_length = "
                f"{cfg.max_length} tokens; raise data.max_length"
            )
    vocabulary = sorted({t for s in SPLITS for i in parts[s] for t in listing.rows[i].tokens})
    vocab = {t: k + 1 for k, t in enumerate(vocabulary)}
    unseen = sorted({t for s in ("val", "test") for i in parts[s] for t in listing.rows[i].tokens}
                    - {t for i in parts["train"] for t in listing.rows[i].tokens})
    if unseen:
        notes.append(f"{task}: tokens in val/test labels but in no training label: {' '.join(unseen[:20])}")
    notes.append(
        f"{task}: {len(vocabulary)} tokens + {END_NAME}: {' '.join(vocabulary[:40])}{' ...' if len(vocabulary) > 40 else ''}; "
        + "; ".join(f"{s} {len(parts[s])}" for s in SPLITS)
        + " images"
    )
    images, cache = load_images(cfg, task, root, listing.files, notes)
    img_of = listing.image_index
    mean, std = _statistics(
        cfg, task, cache, listing_digest(listing.files), parts["train"], images[img_of[parts["train"]]], notes
    )
    splits = {}
    for s in SPLITS:
        idx = parts[s]
        splits[s] = _split(
            images[img_of[idx]], encode_labels([listing.rows[i].tokens for i in idx], vocab, cfg.max_length), idx
        )
    _, C, H, W = images.shape
    spec = DataSpec(
        channels=C,
        height=H,
        width=W,
        num_classes=len(vocabulary) + 1,
        class_names=(END_NAME, *vocabulary),
        max_tokens=cfg.max_length + 1,
        end_token=END_TOKEN,
    )
    return TaskData(spec=spec, **splits, mean=mean, std=std, notes=notes)


def label_summary(rows: Sequence[LabelRow]) -> tuple[Counter, list[str]]:
    """(Counter of label lengths, sorted vocabulary) of label rows."""
    return Counter(len(r.tokens) for r in rows), sorted({t for r in rows for t in r.tokens})
