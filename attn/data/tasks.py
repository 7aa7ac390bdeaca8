"""The task registry: every ``data.task`` is one :class:`Task` naming its config section, its loader,
its checker and, where it has one, the ``run.py prepare`` step that makes its folder.

Loaders and checkers are named as ``"module:function"`` and imported on first use, so that choosing
MNIST never imports h5py or PIL. A loader takes the task's config section and returns
:class:`~attn.data.base.TaskData` (train / val / test splits and the spec the model is built from).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Optional

from attn.config.data import DATA_VARIANTS, DataBase
from attn.data.base import TaskData


def _resolve(ref: str) -> Callable:
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Task:
    """One task: ``loader`` and ``checker`` are ``"module:function"`` references; ``prepare`` is the
    dataset name of ``run.py prepare`` that makes its folder, None when the data need no preparing."""

    name: str
    loader: str
    checker: Optional[str] = None
    prepare: Optional[str] = None

    @property
    def section(self) -> type[DataBase]:
        """The task's variant of the ``data`` section, the one ``data.task`` selects."""
        return DATA_VARIANTS[self.name]

    def load(self, cfg: DataBase) -> TaskData:
        """The task's splits, before the subset caps and normalisation defaults of ``build_data``."""
        return _resolve(self.loader)(cfg)

    def check(self, cfg: DataBase) -> None:
        """Fail in one line on missing or corrupt data and build what must exist before training.
        Without a checker, loading is the check (the data are small)."""
        if self.checker is None:
            self.load(cfg)
        else:
            _resolve(self.checker)(cfg)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("mnist", "attn.data.mnist:load_mnist_task"),
        Task("mnist_translated", "attn.data.mnist_variants:load_mnist_variant"),
        Task("mnist_cluttered", "attn.data.mnist_variants:load_mnist_variant"),
        Task("mnist_pairs", "attn.data.mnist_pairs:load_mnist_pairs"),
        Task("mnist_addition", "attn.data.mnist_pairs:load_mnist_pairs"),
        Task("svhn", "attn.data.svhn:load_svhn", "attn.data.svhn:check_svhn", prepare="svhn"),
        Task(
            "svhn_background", "attn.data.svhn:load_svhn", "attn.data.svhn:check_svhn",
            prepare="svhn",
        ),
        Task(
            "multinumber", "attn.data.multinumber:load_multinumber",
            "attn.data.multinumber:check_multinumber", prepare="multinumber",
        ),
        Task("image_folder", "attn.data.own_images:load_image_folder"),
        Task("image_sequences", "attn.data.own_images:load_image_sequences"),
    )
}
"""data.task -> its task; the same names as :data:`attn.config.data.DATA_VARIANTS` (a test holds them equal)."""

PREPARE_DATASETS: tuple[str, ...] = tuple(sorted({t.prepare for t in TASKS.values() if t.prepare}))
"""The datasets ``run.py prepare`` makes."""


def task_of(cfg: DataBase) -> Task:
    return TASKS[cfg.task]
