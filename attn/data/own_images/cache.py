"""The decoded images of your own folder, cached once per option set and listing.

``<cache_dir>/<task>-<color>-<options token>.npz`` holds ``images`` uint8 (N, C, H, W), every listed
file decoded in listing order, and ``source``, the digest of the listing it came from (each file's
path, byte size and mtime): change, add or remove a file and it is decoded again on the next run.
The options (:class:`attn.data.cache.CacheKey`: task, root, target_size, resize, pad_fill, color,
convert, version) pick the file name, so each option set keeps its own cache.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Sequence

import numpy as np

from attn.data.cache import CacheKey, building, locked, note
from attn.data.own_images.decode import canvas_size, check_channels, decode_all, probe_all
from attn.data.own_images.listing import ImageFile, cache_folder, listing_digest

CACHE_VERSION = 1
"""Bump when what a cache holds changes (conversion, resizing): older files are then rebuilt."""


def cache_key(cfg, task: str, root: Path, files: Sequence[ImageFile]) -> CacheKey:
    options = {
        "version": CACHE_VERSION,
        "task": task,
        "root": str(root.resolve()),
        "target_size": list(cfg.target_size) if cfg.target_size is not None else None,
        "resize": cfg.resize,
        "pad_fill": cfg.pad_fill,
        "color": cfg.color,
        "convert": cfg.convert,
    }
    return CacheKey(options, {"listing": listing_digest(files)})


def _cached(path: Path, key: CacheKey):
    """The cached images at ``path`` if they were decoded from the same listing, else None. (The
    options are in the file name: only the listing is stored.)"""
    try:
        with np.load(path, allow_pickle=False) as z:
            if not key.source_changes({"listing": str(z["source"])}):
                return z["images"]
    except (OSError, ValueError, KeyError, EOFError):
        pass  # unreadable or partial: rebuilt
    return None


def load_images(cfg, task: str, root: Path, files: Sequence[ImageFile], notes: list[str]) -> tuple[np.ndarray, Path]:
    """uint8 (N, C, H, W) of ``files``, from the cache when it matches the listing, else decoded (and
    cached). Returns the images and the cache file's path (which may not exist if unwritable)."""
    cache_dir = cache_folder(cfg, root)
    key = cache_key(cfg, task, root, files)
    path = cache_dir / f"{task}-{cfg.color}-{key.options_token()}.npz"
    with contextlib.suppress(OSError):  # unwritable: decoded every run, said below
        cache_dir.mkdir(parents=True, exist_ok=True)
    with locked(path, task):
        if path.is_file():
            images = _cached(path, key)
            if images is not None:
                return images, path
            note(notes, f"{task}: the images changed since {path} was made; decoding them again")
        probed = probe_all(files)
        check_channels(files, [m for m, _, _ in probed], cfg.color, cfg.convert)
        height, width = canvas_size(cfg, files, [(w, h) for _, w, h in probed])
        images = decode_all(files, cfg, height, width)
        try:
            with building(path) as partial, open(partial, "wb") as fh:
                np.savez(fh, images=images, source=np.array(key.source["listing"]))
        except OSError as exc:
            note(notes, f"{task}: cannot write the cache {path} ({exc.strerror or exc}); set data.cache_dir to a writable folder")
    return images, path
