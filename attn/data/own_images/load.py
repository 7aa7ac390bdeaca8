"""Loading your own images for a run: ``image_folder`` (one folder per class, for RAM) and
``image_sequences`` (label sequences from a CSV or JSON file, for DRAM).

Splits hold uint8 (N, C, H, W) images (:mod:`attn.data.own_images.decode`, cached by
:mod:`attn.data.own_images.cache`); labels int64 (N,) class indices in sorted class-name order
(image_folder) or int64 (N, max_length + 1) tokens (image_sequences, ``class_names = ("<end>",
*vocabulary)``; labels longer than ``max_length`` are skipped and counted in the notes, never cut);
ids int64 (N,) = the image's position in the listing.
"""

from __future__ import annotations

import numpy as np
import torch

from attn.data.base import DataSpec, Split, TaskData
from attn.data.own_images.cache import load_images
from attn.data.own_images.labels import END_NAME, END_TOKEN, encode_labels
from attn.data.own_images.listing import SPLITS, cache_folder, data_root, list_image_folder, list_sequences, listing_digest
from attn.data.own_images.splits import assign_splits
from attn.data.own_images.statistics import normalisation
from attn.errors import DataError


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
    mean, std = normalisation(cfg, task, cache, listing_digest(listing.files), parts["train"], images[parts["train"]], notes)
    _, C, H, W = images.shape
    spec = DataSpec(channels=C, height=H, width=W, num_classes=len(listing.classes), class_names=tuple(listing.classes))
    return TaskData(
        spec=spec,
        **{s: _split(images[parts[s]], listing.labels[parts[s]], parts[s]) for s in SPLITS},
        mean=mean,
        std=std,
        notes=notes,
    )




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
    mean, std = normalisation(
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


