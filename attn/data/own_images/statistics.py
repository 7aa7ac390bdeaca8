"""Normalisation statistics of your own images: computed exactly once from the training split.

Unless ``data.mean`` / ``data.std`` are given, the mean and standard deviation of every training
pixel (as values in [0, 1]) come from the pixel histogram, and are kept beside the image cache in
``<cache>.stats.json``, keyed by the listing digest and the training ids.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Optional

import numpy as np

from attn.data.cache import digest
from attn.errors import DataError
from attn.io import write_bytes_atomic

STATS_KEPT = 16
"""Entries a stats file keeps (the newest): one per training split a folder was run with."""


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



def _stored(stats_path: Path) -> dict:
    try:
        table = json.loads(stats_path.read_text())
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


def normalisation(cfg, task: str, cache: Path, listing: str, train_ids: np.ndarray, train_images: np.ndarray,
                  notes: list[str]) -> tuple[Optional[float], Optional[float]]:
    """(mean, std) for the run: ``data.mean`` / ``data.std`` where given, else the training split's,
    from ``cache``'s stats file or computed (and stored there)."""
    if cfg.normalize == "per_image" or (cfg.mean is not None and cfg.std is not None):
        return cfg.mean, cfg.std
    key = digest(listing, np.ascontiguousarray(train_ids, np.int64).tobytes())
    stats_path = cache.with_name(cache.name + ".stats.json")
    table = _stored(stats_path)
    if isinstance(table.get(key), list) and len(table[key]) == 2:
        mean, std = table[key]
        how = "cached"
    else:
        mean, std = pixel_statistics(train_images)
        if std == 0.0:
            raise DataError(
                f"{cfg.data_dir}: every training pixel has the same value ({mean * 255:.0f}); there is nothing to "
                "learn from, or give data.mean and data.std"
            )
        table = {k: v for k, v in table.items() if k != key}
        table[key] = [mean, std]
        with contextlib.suppress(OSError):  # no cache folder: recomputed next time (the image cache said so)
            write_bytes_atomic(stats_path, json.dumps(dict(list(table.items())[-STATS_KEPT:])).encode())
        how = "computed"
    mean = cfg.mean if cfg.mean is not None else mean
    std = cfg.std if cfg.std is not None else std
    notes.append(f"{task}: normalisation mean {mean:.4f}, std {std:.4f} ({how} from the {len(train_ids)} training images)")
    return float(mean), float(std)
