"""MNIST (LeCun et al.): 60k training and 10k test 28x28 digits, read from the four IDX files.

The full dataset ships inside the package (``attn/data/embedded/mnist``, with its licence notice),
so no run needs a download; ``data.data_dir`` may point at another copy holding the same four files,
gzip-compressed or raw. Validation is a seeded ``val_fraction`` of the training set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from attn.data.base import DataSpec, Split, TaskData
from attn.data.idx import read_idx
from attn.errors import DataError

EMBEDDED_DIR = Path(__file__).parent / "embedded" / "mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"{root}: MNIST file '{stem}' (or '{stem}.gz') not found; data.data_dir must hold the four "
        f"IDX files {', '.join(FILES.values())}, or leave data_dir unset to use the embedded copy"
    )


def _read_pair(root: Path, images_stem: str, labels_stem: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(_find(root, images_stem))
    labels = read_idx(_find(root, labels_stem))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{root}: '{images_stem}' {images.shape} and '{labels_stem}' {labels.shape} do not form an "
            "MNIST split (expected N x 28 x 28 images and N labels)"
        )
    if labels.size and int(labels.max()) > 9:
        raise DataError(f"{root}: '{labels_stem}' holds labels above 9; not MNIST labels")
    return images, labels


def load_mnist(
    data_dir: str | None = None,
    *,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    mean: float = 0.1307,
    std: float = 0.3081,
) -> TaskData:
    root = Path(data_dir).expanduser() if data_dir else EMBEDDED_DIR
    if not root.is_dir():
        raise DataError(
            f"{root}: data.data_dir does not exist; point it at a folder with the four MNIST IDX "
            "files, or leave it unset to use the embedded copy"
        )
    x_train, y_train = _read_pair(root, FILES["train_images"], FILES["train_labels"])
    x_test, y_test = _read_pair(root, FILES["test_images"], FILES["test_labels"])

    perm = np.random.default_rng(split_seed).permutation(len(y_train))
    n_val = int(round(val_fraction * len(y_train)))
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])

    def split(x: np.ndarray, y: np.ndarray, ids: np.ndarray) -> Split:
        return Split(
            images=torch.from_numpy(np.ascontiguousarray(x[ids])).unsqueeze(1),
            labels=torch.from_numpy(y[ids].astype(np.int64)),
            ids=torch.from_numpy(ids.astype(np.int64)),
        )

    spec = DataSpec(
        channels=1,
        height=int(x_train.shape[1]),
        width=int(x_train.shape[2]),
        num_classes=10,
        class_names=tuple(str(i) for i in range(10)),
    )
    return TaskData(
        spec=spec,
        train=split(x_train, y_train, train_idx),
        val=split(x_train, y_train, val_idx),
        test=split(x_test, y_test, np.arange(len(y_test))),
        mean=mean,
        std=std,
    )


def load_mnist_task(cfg) -> TaskData:
    """:func:`load_mnist` with the options of the ``data`` section ``cfg`` (task ``mnist``)."""
    return load_mnist(cfg.data_dir, val_fraction=cfg.val_fraction, split_seed=cfg.split_seed, mean=cfg.mean, std=cfg.std)
