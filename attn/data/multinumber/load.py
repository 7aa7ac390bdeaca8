"""Loading a generated multinumber folder for a run, through per-split caches of the decoded PNGs.

Each split: images uint8 (N, C, S, S) with C = 1 (gray) or 3 (rgb, R = G = B) and S = meta.json's
size, memory-mapped copy-on-write from ``<cache_dir>/<split>-<color>.npy`` (pages load on use; no
20+ GB copy for 500k images); labels int64 (N, 6) = first + [11] + second + [0], then IGNORE_INDEX;
ids int64 (N,) = sample id. The cache is keyed by meta.json's and the split JSON's digests
(:class:`attn.data.cache.CacheKey`, stored in ``<split>-<color>.json`` beside it).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
from pathlib import Path

import cv2
import numpy as np
import torch

from attn.data.base import IGNORE_INDEX, DataSpec, Split, TaskData
from attn.data.cache import CacheKey, Progress, building, cache_folder, digest, locked, note
from attn.data.multinumber.format import (
    CLASS_NAMES,
    END_TOKEN,
    FORMAT,
    FORMAT_VERSION,
    MAX_DIGITS,
    MAX_TOKENS,
    PREPARE_HINT,
    SEPARATOR_TOKEN,
    SPLITS,
)
from attn.errors import DataError

CACHE_VERSION = 1
"""Bump when the loader's cache layout changes; older caches are then rebuilt."""


def _dataset_dir(cfg) -> Path:
    if not cfg.data_dir:
        raise DataError(f"data.data_dir must point at a generated multinumber folder; {PREPARE_HINT}")
    out = Path(cfg.data_dir).expanduser()
    if not (out / "meta.json").is_file():
        raise DataError(
            f"{out / 'meta.json'}: not found, so {out} is no multinumber dataset; {PREPARE_HINT} "
            "with --to pointing at data.data_dir"
        )
    return out


def _read_meta(out: Path) -> tuple[dict, bytes]:
    path = out / "meta.json"
    raw = path.read_bytes()
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); {PREPARE_HINT} into a new folder") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise DataError(f"{path}: not a version {FORMAT_VERSION} {FORMAT} folder; {PREPARE_HINT} into a new folder")
    return meta, raw


def _read_split(out: Path, name: str, meta: dict) -> tuple[list[dict], bytes]:
    path = out / f"{name}.json"
    if not path.is_file():
        raise DataError(
            f"{path}: not found: the generation into {out} did not finish; {PREPARE_HINT} again with the "
            "same options to complete it"
        )
    raw = path.read_bytes()
    try:
        entries = json.loads(raw)
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); delete it and {PREPARE_HINT} again") from None
    want = meta["split_sizes"][name]
    if not isinstance(entries, list) or len(entries) != want:
        raise DataError(f"{path}: expected a list of {want} samples (meta.json); delete it and {PREPARE_HINT} again")
    return entries, raw


def _labels(entries: list[dict], path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Entries -> labels int64 (N, MAX_TOKENS) = first + [SEPARATOR] + second + [END], IGNORE_INDEX
    padded; ids int64 (N,)."""
    labels = np.full((len(entries), MAX_TOKENS), IGNORE_INDEX, dtype=np.int64)
    ids = np.empty(len(entries), dtype=np.int64)
    for i, e in enumerate(entries):
        try:
            seq = list(e["first"]) + [SEPARATOR_TOKEN] + list(e["second"]) + [END_TOKEN]
            ids[i] = int(e["id"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: entry {i} lacks 'id', 'first' or 'second'; regenerate the dataset") from None
        ok = all(isinstance(t, int) and 1 <= t <= 10 for t in list(e["first"]) + list(e["second"]))
        if not ok or not 1 <= len(e["first"]) <= MAX_DIGITS or not 1 <= len(e["second"]) <= MAX_DIGITS:
            raise DataError(f"{path}: entry {i} (id {ids[i]}) holds tokens other than 1-2 digits 1-10")
        labels[i, : len(seq)] = seq
    return labels, ids


def _read_png(path: Path, size: int, color: str) -> np.ndarray:
    """One generated PNG -> uint8 (C, size, size); C = 1 (channel 0: the PNG is gray in 3 channels)
    or 3 (RGB)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        raise DataError(f"{path}: missing or unreadable; {PREPARE_HINT} again with the same options") from None
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None or img.shape != (size, size, 3) or img.dtype != np.uint8:
        raise DataError(
            f"{path}: not a {size}x{size} 3-channel PNG; delete it and {PREPARE_HINT} again with the same options"
        )
    if color == "gray":
        return img[None, :, :, 0]
    return img[:, :, ::-1].transpose(2, 0, 1)  # OpenCV decodes BGR


def _cache_files(cache_dir: Path, name: str, color: str) -> tuple[Path, Path]:
    return cache_dir / f"{name}-{color}.npy", cache_dir / f"{name}-{color}.json"


def _ensure_cache(out: Path, cache_dir: Path, name: str, color: str, key: CacheKey, entries: list[dict],
                  notes: list[str]) -> Path:
    """The decoded images of one split, uint8 (N, C, S, S) in ``<cache_dir>/<split>-<color>.npy``,
    (re)built when missing or when its key file does not match ``key``. The key is written only after
    the array file is complete, so an interrupted build reads as stale."""
    npy, keyfile = _cache_files(cache_folder(cache_dir), name, color)
    with locked(npy, "multinumber"):
        if npy.is_file() and key.matches(CacheKey.read_json(keyfile)):
            return npy
        keyfile.unlink(missing_ok=True)
        N, C, S, _ = key.options["shape"]
        with building(npy) as partial:
            arr = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(N, C, S, S))
            note(notes, f"multinumber: caching {N} {name} images ({color}) into {npy}")
            # cv2 decodes with the GIL released: threads overlap the PNG work.
            with Progress(f"multinumber {name} cache", N) as report, \
                    concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
                block = 1024
                for a in range(0, N, block):
                    b = min(N, a + block)
                    paths = [out / entries[i]["file"] for i in range(a, b)]
                    for i, img in enumerate(pool.map(lambda p: _read_png(p, S, color), paths)):
                        arr[a + i] = img
                    report.update(b, b - a)
            arr.flush()
            del arr
        key.write_json(keyfile)
    return npy


def _prepare_splits(cfg, notes: list[str]):
    if cfg.color not in ("gray", "rgb"):
        raise DataError(f"data.color = {cfg.color!r} is invalid; use 'gray' or 'rgb'")
    out = _dataset_dir(cfg)
    meta, meta_raw = _read_meta(out)
    cache_dir = Path(getattr(cfg, "cache_dir", None) or out / "attn-cache").expanduser()
    # Every split JSON is read and checked before any cache is built: an unfinished folder fails fast.
    read = {}
    for name in SPLITS:
        entries, raw = _read_split(out, name, meta)
        read[name] = (entries, raw, *_labels(entries, out / f"{name}.json"))
    result = {}
    for name, (entries, raw, labels, ids) in read.items():
        key = CacheKey(
            options={
                "format": f"{FORMAT}-cache",
                "version": CACHE_VERSION,
                "shape": [len(entries), 1 if cfg.color == "gray" else 3, meta["size"], meta["size"]],
            },
            source={"meta_sha256": digest(meta_raw), "split_sha256": digest(raw)},
        )
        npy = _ensure_cache(out, cache_dir, name, cfg.color, key, entries, notes)
        result[name] = (npy, labels, ids)
    return out, meta, result


def check_multinumber(cfg) -> None:
    """Validate the generated folder at ``cfg.data_dir`` and build the image caches for
    ``cfg.color``, without loading them (run before workers start, so they only read caches)."""
    _prepare_splits(cfg, [])


def load_multinumber(cfg) -> TaskData:
    """Load a generated multinumber folder (``cfg``: data_dir, color, mean, std; optional cache_dir,
    default ``data_dir/attn-cache``) for DRAM; shapes in the module docstring. Missing or unfinished
    folders raise DataError naming the prepare command.
    """
    notes: list[str] = []
    out, meta, parts = _prepare_splits(cfg, notes)
    splits = {}
    for name, (npy, labels, ids) in parts.items():
        # mmap_mode "c": writable for torch.from_numpy, yet nothing is written back to the cache.
        images = np.load(npy, mmap_mode="c") if labels.shape[0] else np.load(npy)
        splits[name] = Split(
            images=torch.from_numpy(images), labels=torch.from_numpy(labels), ids=torch.from_numpy(ids)
        )
    S = meta["size"]
    notes.append(
        f"multinumber: {out} ({S}x{S} canvas, {meta['box']} px numbers, seed {meta['seed']}, test pairs from "
        f"SVHN {meta['test_pool']}/); train {len(splits['train'])}, val {len(splits['val'])}, "
        f"test {len(splits['test'])}"
    )
    spec = DataSpec(
        channels=1 if cfg.color == "gray" else 3,
        height=S,
        width=S,
        num_classes=len(CLASS_NAMES),
        class_names=CLASS_NAMES,
        max_tokens=MAX_TOKENS,
        end_token=END_TOKEN,
    )
    return TaskData(
        spec=spec,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        mean=cfg.mean,
        std=cfg.std,
        crop=None,
        notes=notes,
    )
