"""Datasets, one package or module per task; :func:`build_data` loads the task ``data.task`` names
(:mod:`attn.data.tasks`, the registry)."""

from __future__ import annotations

from attn.config import MNIST_MEAN, MNIST_STD, DataConfig
from attn.data.base import IGNORE_INDEX, BatchLoader, DataSpec, Split, TaskData
from attn.data.tasks import TASKS, Task, task_of


def check_data(cfg: DataConfig) -> None:
    """Fail now, in one line, on missing or corrupt data; prepare what must exist before training
    (the SVHN caches). Cheaper than :func:`build_data` where a dataset is large."""
    task_of(cfg).check(cfg)


def build_data(cfg: DataConfig) -> TaskData:
    """Load the task's splits, then apply the optional ``train_subset`` / ``eval_subset`` caps."""
    data = task_of(cfg).load(cfg)
    data.per_image = cfg.normalize == "per_image"
    # data.mean / data.std stay None only with per_image, where normalisation does not read them
    data.mean = MNIST_MEAN if data.mean is None else data.mean
    data.std = MNIST_STD if data.std is None else data.std
    data.train = data.train.head(cfg.train_subset)
    data.val = data.val.head(cfg.eval_subset)
    data.test = data.test.head(cfg.eval_subset)
    return data


__all__ = [
    "IGNORE_INDEX", "TASKS", "BatchLoader", "DataSpec", "Split", "Task", "TaskData", "build_data", "check_data", "task_of",
]
