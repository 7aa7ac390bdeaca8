"""The task registry (attn.data.tasks): one registered task per data.task variant, its loader fed
the section's own options, and loaders imported only when their task is chosen."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from attn.config.data import DATA_VARIANTS, data_config
from attn.data import TASKS, build_data, check_data
from attn.data.mnist import load_mnist
from attn.data.tasks import PREPARE_DATASETS, _resolve
from attn.errors import DataError
from tests.helpers.cli import ROOT


def test_every_task_variant_has_one_registered_task_with_its_own_section():
    assert set(TASKS) == set(DATA_VARIANTS)
    for name, task in TASKS.items():
        assert task.name == name
        assert task.section is DATA_VARIANTS[name]
        assert callable(_resolve(task.loader))
        assert task.checker is None or callable(_resolve(task.checker))
    assert PREPARE_DATASETS == ("multinumber", "svhn")


def test_mnist_loader_reads_the_sections_split_options():
    cfg = data_config(task="mnist", val_fraction=0.2, split_seed=3)
    got = build_data(cfg)
    want = load_mnist(None, val_fraction=0.2, split_seed=3)
    assert len(got.val) == 12000
    assert np.array_equal(got.val.ids.numpy(), want.val.ids.numpy())
    assert not np.array_equal(got.val.ids.numpy(), load_mnist(None, val_fraction=0.2, split_seed=0).val.ids.numpy())


def test_a_task_with_a_checker_runs_it_and_one_without_loads(tmp_path):
    with pytest.raises(DataError, match="data.data_dir"):
        check_data(data_config(task="mnist", data_dir=str(tmp_path / "nowhere")))
    with pytest.raises(DataError, match=str(tmp_path / "none")):
        check_data(data_config(task="multinumber", data_dir=str(tmp_path / "none")))


def test_choosing_mnist_imports_no_other_task():
    code = (
        "import sys\n"
        "from attn.config.data import data_config\n"
        "from attn.data import build_data\n"
        "build_data(data_config(task='mnist', eval_subset=10))\n"
        "print(sorted(m for m in sys.modules if m.startswith(('attn.data.svhn', 'attn.data.multinumber', "
        "'attn.data.own_images', 'h5py'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
