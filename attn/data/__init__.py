"""Datasets, one module per task; :func:`build_data` picks the task named in the config."""

from __future__ import annotations

from attn.config import MNIST_MEAN, MNIST_STD, DataConfig
from attn.data.base import IGNORE_INDEX, BatchLoader, DataSpec, Split, TaskData


def check_data(cfg: DataConfig) -> None:
    """Fail now, in one line, on missing or corrupt data; prepare what must exist before training
    (the SVHN caches). Cheaper than :func:`build_data` where a dataset is large."""
    if cfg.task in ("svhn", "svhn_background"):
        from attn.data.svhn import check_svhn

        check_svhn(cfg)
    elif cfg.task == "multinumber":
        from attn.data.multinumber import check_multinumber

        check_multinumber(cfg)
    else:
        build_data(cfg)


def build_data(cfg: DataConfig) -> TaskData:
    """Load the task's splits, then apply the optional ``train_subset`` / ``eval_subset`` caps."""
    if cfg.task == "mnist":
        from attn.data.mnist import load_mnist

        data = load_mnist(
            cfg.data_dir, val_fraction=cfg.val_fraction, split_seed=cfg.split_seed, mean=cfg.mean, std=cfg.std
        )
    elif cfg.task in ("svhn", "svhn_background"):
        from attn.data.svhn import load_svhn

        data = load_svhn(cfg)
    elif cfg.task == "multinumber":
        from attn.data.multinumber import load_multinumber

        data = load_multinumber(cfg)
    elif cfg.task in ("mnist_translated", "mnist_cluttered"):
        from attn.data.mnist_variants import load_mnist_variant

        data = load_mnist_variant(cfg)
    elif cfg.task == "image_folder":
        from attn.data.own_images import load_image_folder

        data = load_image_folder(cfg)
    elif cfg.task == "image_sequences":
        from attn.data.own_images import load_image_sequences

        data = load_image_sequences(cfg)
    else:  # pragma: no cover - the schema admits only the tasks above
        raise ValueError(f"unknown task {cfg.task!r}")
    data.per_image = cfg.normalize == "per_image"
    # data.mean / data.std stay None only with per_image, where normalisation does not read them
    data.mean = MNIST_MEAN if data.mean is None else data.mean
    data.std = MNIST_STD if data.std is None else data.std
    data.train = data.train.head(cfg.train_subset)
    data.val = data.val.head(cfg.eval_subset)
    data.test = data.test.head(cfg.eval_subset)
    return data


__all__ = ["IGNORE_INDEX", "BatchLoader", "DataSpec", "Split", "TaskData", "build_data", "check_data"]
