"""Splits of your own images: the split folders' own, plus seeded shares held out where val/ or test/
is missing (image_folder: per class, so every class keeps its share). The split depends only on
``split_seed`` and the listing, never on the cache."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from attn.data.own_images.listing import SPLITS
from attn.errors import DataError


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

