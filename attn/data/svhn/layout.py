"""Where SVHN format 1 lives on disk: ``DIR/train/``, ``DIR/test/``, ``DIR/extra/``, each with its PNGs
and digitStruct.mat (docs/data.md), and the checks that name what is missing."""

from __future__ import annotations

import os
from pathlib import Path

from attn.errors import DataError

FOLDERS = ("train", "extra", "test")
ID_OFFSET = {"train": 0, "extra": 1_000_000, "test": 0}
"""Added to an image's position in its folder to form its id (extra has 202,353 < 1,000,000 images)."""
PREPARE_HINT = "prepare it with `python run.py prepare svhn --to DIR`"


def data_root(cfg) -> Path:
    """``cfg.data_dir`` after checking that it holds the folders ``cfg`` reads (train/, test/, and
    extra/ with ``use_extra``)."""
    if not cfg.data_dir:
        raise DataError(
            "data.data_dir must point at SVHN format 1 (a folder with train/, test/ and extra/ holding the "
            f"PNGs and digitStruct.mat); {PREPARE_HINT}"
        )
    root = Path(cfg.data_dir).expanduser()
    if not root.is_dir():
        raise DataError(
            f"{root}: data.data_dir does not exist; point it at SVHN format 1 (train/, test/, extra/); {PREPARE_HINT}"
        )
    for folder in ("train", "test") + (("extra",) if cfg.use_extra else ()):
        d = root / folder
        if d.is_dir():
            continue
        if folder == "extra":
            raise DataError(
                f"{d}: not found but data.use_extra=true; add the extra/ folder of SVHN format 1 or set "
                "data.use_extra=false"
            )
        raise DataError(
            f"{d}: folder not found; data.data_dir must hold SVHN format 1 train/ and test/ (and extra/); "
            f"{PREPARE_HINT}"
        )
    return root


def source_folder(folder_dir: Path) -> Path:
    """digitStruct.mat of one source folder, after checking that both exist."""
    mat = folder_dir / "digitStruct.mat"
    if not folder_dir.is_dir():
        raise DataError(
            f"{folder_dir}: folder not found; an SVHN format 1 root holds train/, test/ and extra/; {PREPARE_HINT}"
        )
    if not mat.is_file():
        raise DataError(
            f"{mat}: not found; each SVHN format 1 folder holds its PNGs and digitStruct.mat; {PREPARE_HINT}"
        )
    return mat


def png_names(folder_dir: Path) -> set[str]:
    """Names of the PNG files in ``folder_dir`` (not recursive)."""
    try:
        return {e.name for e in os.scandir(folder_dir) if e.name.lower().endswith(".png")}
    except OSError as exc:
        raise DataError(f"{folder_dir}: cannot list the folder ({exc.strerror})") from None

