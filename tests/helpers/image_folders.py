"""Image folders made from real MNIST digits written as PNG files, for the image_folder and
image_sequences loaders (tests/unit/data/test_image_folder.py) and the trainings on them
(tests/e2e/test_image_folder_training.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
RGB_SIZES = ((36, 44), (44, 36), (30, 40))
"""(height, width) of the RGB canvases, cycled over the images."""


def mnist_arrays() -> dict:
    """{"train" | "test": (uint8 images (n, 28, 28), labels)} of the embedded MNIST."""
    from attn.data.mnist import load_mnist

    d = load_mnist()
    return {
        "train": (d.train.images.numpy()[:, 0], d.train.labels.numpy()),
        "test": (d.test.images.numpy()[:, 0], d.test.labels.numpy()),
    }


def _per_class(labels: np.ndarray, digits, n: int) -> list[int]:
    """The first n indices of each digit, in index order."""
    return sorted(i for d in digits for i in np.flatnonzero(labels == d)[:n].tolist())


def make_gray(root: Path, mnist, n_train: int = 20, n_test: int = 5, digits=range(10)) -> Path:
    """root/{train,test}/<name>/<mnist index>.png, 28x28 L."""
    for split, n in (("train", n_train), ("test", n_test)):
        x, y = mnist[split]
        for i in _per_class(y, digits, n):
            p = root / split / NAMES[y[i]] / f"{i:05d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(p)
    return root


def rgb_digit(digit: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A 28x28 digit in a bright colour, centred on a (h, w) dark coloured background: uint8 (h, w, 3)."""
    h, w = size
    bg = rng.integers(40, 121, 3)
    fg = rng.integers(170, 256, 3)
    out = np.empty((h, w, 3), np.float64)
    out[:] = bg
    top, left = (h - 28) // 2, (w - 28) // 2
    a = digit.astype(np.float64)[..., None] / 255.0
    out[top : top + 28, left : left + 28] = (1 - a) * bg + a * fg
    return np.rint(out).astype(np.uint8)


def make_rgb(root: Path, mnist, n: int = 20, digits=range(10), seed: int = 0) -> Path:
    """root/<name>/<mnist index>.png: one pool of RGB digits on several non-square canvases."""
    rng = np.random.default_rng(seed)
    x, y = mnist["train"]
    for k, i in enumerate(_per_class(y, digits, n)):
        p = root / NAMES[y[i]] / f"{i:05d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb_digit(x[i], RGB_SIZES[k % len(RGB_SIZES)], rng), "RGB").save(p)
    return root


def make_seq(root: Path, mnist, n_train: int = 60, n_test: int = 15, seed: int = 0, digits=range(10)) -> dict[str, list]:
    """root/train/ (labels.csv) and root/test/ (labels.json): images of 1-3 MNIST digits (of ``digits``)
    side by side, labelled with the digit string. Returns {split: [(file, digit string)]}."""
    rng = np.random.default_rng(seed)
    written: dict[str, list] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x, y = mnist[split]
        pool = np.flatnonzero(np.isin(y, list(digits)))
        rows = []
        for k in range(n):
            idx = pool[rng.integers(0, len(pool), int(rng.integers(1, 4)))]
            name = f"img/{k:04d}.png"
            p = root / split / name
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.concatenate([x[i] for i in idx], axis=1)).save(p)
            rows.append((name, "".join(str(y[i]) for i in idx)))
        written[split] = rows
    with open(root / "train" / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label", "note"])
        for k, (name, label) in enumerate(written["train"]):
            # half the rows as spaced tokens: both spellings give the same tokens
            w.writerow([name, " ".join(label) if k % 2 else label, "x"])
    entries = [
        {"file": name, "label": list(label) if k % 2 else label} for k, (name, label) in enumerate(written["test"])
    ]
    (root / "test" / "labels.json").write_text(json.dumps(entries))
    return written
