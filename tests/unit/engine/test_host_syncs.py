"""A training step never makes the host wait for the device: the real loop (``train_epoch``) run under
a ``TorchDispatchMode`` that records every operation which would synchronise a GPU: a device value
read on the host (``_local_scalar_dense``, from ``.item()``, ``bool()``, ``int()``), and operations
whose output shape depends on the data (``nonzero``, ``masked_select``, ``unique``, boolean indexing).
The count must not grow with the number of steps, for RAM with every core and for DRAM; what a pass
reads once at its end (the sums, the non-finite counters) is allowed.

On a CPU a copy to the host cannot be told from any other copy, so that kind is not counted here;
the loop has none (its metrics stay in device tensors until the end of the pass)."""

from __future__ import annotations

import collections
import re
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from attn.config import load_config
from attn.data import BatchLoader, build_data
from attn.engine.averaging import WeightAverage
from attn.engine.optim import build_optimizer
from attn.engine.passes import NonFiniteGuard, train_epoch
from attn.engine.precision import Precision
from attn.engine.trainer import _EpochProgress
from attn.models import build_model
from helpers.cli import ROOT
from helpers.svhn_fixture import make_svhn_folder

SYNCING = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.unique", "aten._unique",
           "aten.item", "aten.is_nonzero", "aten.equal")
INDEXING = ("aten.index.Tensor", "aten.index_put", "aten._index_put_impl_")


class SyncCounter(TorchDispatchMode):
    """Counts the syncing operations dispatched inside it, with where each came from."""

    def __init__(self):
        super().__init__()
        self.found: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        syncs = name.startswith(SYNCING)
        if name.startswith(INDEXING):  # a boolean mask gives a data-dependent shape
            indices = args[1] if len(args) > 1 else ()
            syncs = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())
        if syncs:
            here = [f for f in traceback.extract_stack()[:-1] if "/attn/" in f.filename]
            self.found[(name, f"{here[-1].filename.split('/attn/')[-1]}:{here[-1].lineno}" if here else "?")] += 1
        return func(*args, **(kwargs or {}))


def _syncs(cfg, batches: int, precision: str = "fp32") -> collections.Counter:
    """Syncing operations of one training pass over ``batches`` batches (with the weight average when
    ``cfg.train.ema_decay`` is set)."""
    data = build_data(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.spec, (data.mean, data.std))
    optimizer = build_optimizer(model, cfg.train)
    average = WeightAverage(model, cfg.train.ema_decay) if cfg.train.ema_decay else None
    bs = cfg.train.batch_size
    loader = BatchLoader(data.train, bs, shuffle=True, seed=0)
    assert len(loader) == batches, (len(loader), batches)
    lines: list[str] = []
    # with a progress line after every batch: the lines read nothing from the device either
    progress = _EpochProgress(lines.append, "epoch 1/1", bs, every_s=0.0)
    with SyncCounter() as counter:
        train_epoch(model, loader, data, optimizer, rl_coef=0.01, device=torch.device("cpu"),
                    nonfinite=NonFiniteGuard(limit=20), progress=progress,
                    precision=Precision(precision, torch.device("cpu")), average=average)
    assert len(lines) == batches - 1 and all(
        re.fullmatch(rf"epoch 1/1 \| {i + 1}/{batches} batches \| [\d,]+ img/s \| epoch left \S+", line)
        for i, line in enumerate(lines)), lines
    return counter.found


def _per_step(cfg_of, precision: str = "fp32") -> None:
    few, many = _syncs(cfg_of(2), 2, precision), _syncs(cfg_of(6), 6, precision)
    assert many == few, f"syncs that grow with the steps: {dict(many - few)}"
    assert sum(few.values()) <= 3, f"more than the end-of-pass reads: {dict(few)}"


@pytest.mark.parametrize("core", ["rnn", "lstm", "gpt2", "trxl", "gtrxl"])
def test_a_ram_training_step_reads_nothing_back(core):
    def cfg(batches):
        return load_config(ROOT / "experiments" / "mnist_ram.yaml", [
            f"data.train_subset={16 * batches}", "data.eval_subset=16", "train.batch_size=16",
            f"model.core.kind={core}", "model.hidden_size=32"])

    _per_step(cfg)


def test_the_weight_average_reads_nothing_back():
    def cfg(batches):
        return load_config(ROOT / "experiments" / "mnist_ram.yaml", [
            f"data.train_subset={16 * batches}", "data.eval_subset=16", "train.batch_size=16", "model.hidden_size=32",
            "train.ema_decay=0.99"])

    _per_step(cfg)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_mixed_precision_step_reads_nothing_back(precision):
    """Autocast, and fp16's gradient scaler (unscale, skip on overflow, new scale) all stay on the device."""
    def cfg(batches):
        return load_config(ROOT / "experiments" / "mnist_ram.yaml", [
            f"data.train_subset={16 * batches}", "data.eval_subset=16", "train.batch_size=16", "model.hidden_size=32"])

    _per_step(cfg, precision)


@pytest.mark.parametrize("core", ["lstm", "gtrxl"])
def test_a_dram_training_step_reads_nothing_back(tmp_path_factory, core):
    data = tmp_path_factory.mktemp("svhn")
    make_svhn_folder(data, "train", 60, seed=0)
    make_svhn_folder(data, "test", 8, seed=1)

    def cfg(batches):
        return load_config(ROOT / "experiments" / "svhn_dram.yaml", [
            f"data.data_dir={data}", "data.use_extra=false", f"data.train_subset={8 * batches}",
            "data.eval_subset=8", "train.batch_size=8", f"model.core.kind={core}", "model.hidden_size=32",
            "model.conv_channels=[4,4,8]", "model.explore_steps=1", f"data.cache_dir={data / 'cache'}"])

    _per_step(cfg)


def test_the_counter_sees_a_sync_that_a_step_would_make():
    """The harness itself: an ``.item()`` inside the step is found, per step."""
    x = torch.ones(3)
    with SyncCounter() as counter:
        for _ in range(4):
            (x * 2).sum().item()
            _ = x[x > 0]
    assert counter.found and sum(counter.found.values()) == 8, dict(counter.found)
