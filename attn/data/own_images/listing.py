"""Finding your own images: the two layouts of each task and the files they list, in a fixed order.

image_folder: ``DIR/train/<class>/<images>`` (optional val/, test/) or ``DIR/<class>/<images>``, as
torchvision's ``ImageFolder``; image_sequences: label files (:mod:`attn.data.own_images.labels`) in
``DIR/train/`` etc. or ``DIR``. A listing's order gives the ids (split folders train, val, test;
classes sorted; files sorted; label-file rows in order). Full rules: docs/data.md, "Your own data".
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from attn.data.own_images.labels import LabelRow, find_label_file, read_label_file
from attn.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
"""torchvision ImageFolder's extensions, plus .gif (first frame)."""
SPLITS = ("train", "val", "test")
CACHE_NAME = "attn-cache"


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


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
    """List an image_folder dataset (rules: the module docstring); DataError on a malformed layout."""
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


