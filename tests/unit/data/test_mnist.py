"""The embedded MNIST, our IDX reader, the seeded split and the batch loader."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from attn.data.base import BatchLoader, Split
from attn.data.idx import read_idx
from attn.data.mnist import EMBEDDED_DIR, load_mnist
from attn.errors import DataError

from helpers.cli import ROOT


def test_embedded_files_match_published_checksums():
    sums = dict(line.split()[::-1] for line in (EMBEDDED_DIR / "MD5SUMS.raw").read_text().splitlines())
    for name, md5 in sums.items():
        raw = gzip.decompress((EMBEDDED_DIR / f"{name}.gz").read_bytes())
        assert hashlib.md5(raw).hexdigest() == md5
    assert "Creative Commons" in (EMBEDDED_DIR / "README.md").read_text()


def test_idx_reader_hand_made(tmp_path):
    payload = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + (4).to_bytes(4, "big") + payload.tobytes()
    (tmp_path / "a-idx3-ubyte").write_bytes(raw)
    (tmp_path / "a-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        np.testing.assert_array_equal(read_idx(tmp_path / name), payload)


def test_full_mnist_and_seeded_split():
    d = load_mnist()
    assert d.train.images.shape == (54000, 1, 28, 28) and d.train.images.dtype == torch.uint8
    assert len(d.val) == 6000 and len(d.test) == 10000
    all_train = torch.cat([d.train.labels, d.val.labels])
    assert torch.bincount(all_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(d.test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    ids = set(d.train.ids.tolist())
    assert not ids & set(d.val.ids.tolist()) and len(ids) + len(d.val) == 60000
    again = load_mnist()
    assert torch.equal(again.val.ids, d.val.ids)
    assert not torch.equal(load_mnist(split_seed=1).val.ids, d.val.ids)
    x = d.normalize(d.train.images[:1000])
    assert abs(x.mean().item()) < 0.05  # normalised with the training statistics


def _copy_mnist(dst: Path) -> Path:
    dst.mkdir()
    for f in EMBEDDED_DIR.glob("*.gz"):
        shutil.copy(f, dst / f.name)
    return dst


def test_corrupt_and_missing_files(tmp_path):
    d = _copy_mnist(tmp_path / "m")
    data = gzip.decompress((d / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(data[:-10]))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: corrupt IDX file"):
        load_mnist(str(d))
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(DataError, match="cannot read or decompress"):
        load_mnist(str(d))
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_mnist(str(d))
    with pytest.raises(DataError, match="does not exist"):
        load_mnist(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("case", ["missing", "corrupt"])
def test_cli_bad_data_dir_one_line(tmp_path, case):
    if case == "missing":
        target = tmp_path / "nowhere"
    else:
        target = _copy_mnist(tmp_path / "m")
        (target / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03garbage"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), str(ROOT / "experiments" / "mnist_ram.yaml"), f"data.data_dir={target}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and str(target) in lines[-1] and "Traceback" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing was started


def test_batch_loader_shards_cover_split_once():
    split = Split(torch.zeros(103, 1, 2, 2, dtype=torch.uint8), torch.arange(103), torch.arange(103))
    # evaluation: contiguous shards, no duplicates
    seen = torch.cat([ids for r in range(3) for _, _, ids in BatchLoader(split, 10, shuffle=False, rank=r, world=3)])
    assert sorted(seen.tolist()) == list(range(103))
    # training: equal batch counts per rank, a seeded permutation per epoch, padded by wrapping
    loaders = [BatchLoader(split, 8, shuffle=True, seed=3, rank=r, world=2) for r in range(2)]
    assert len(loaders[0]) == len(loaders[1]) == 7
    ep0 = torch.cat([ids for ld in loaders for _, _, ids in ld])
    assert set(ep0.tolist()) == set(range(103)) and len(ep0) == 104
    for ld in loaders:
        ld.set_epoch(1)
    ep1 = torch.cat([ids for ld in loaders for _, _, ids in ld])
    assert not torch.equal(ep0, ep1)
    for ld in loaders:
        ld.set_epoch(0)
    assert torch.equal(torch.cat([ids for ld in loaders for _, _, ids in ld]), ep0)


def test_a_loader_that_fills_its_last_batch_has_full_batches_that_cover_the_split():
    """fill_last (a compiled step: one batch shape): every batch of every rank is full, every image
    is in the epoch, the padding repeats the epoch's first images, and the order is the unpadded one's."""
    split = Split(torch.zeros(103, 1, 2, 2, dtype=torch.uint8), torch.arange(103), torch.arange(103))
    for world, batch in ((1, 8), (2, 8), (3, 50), (2, 128)):
        loaders = [BatchLoader(split, batch, shuffle=True, seed=3, rank=r, world=world, fill_last=True)
                   for r in range(world)]
        plain = [BatchLoader(split, batch, shuffle=True, seed=3, rank=r, world=world) for r in range(world)]
        for filled, unfilled in zip(loaders, plain):
            batches = [ids for _, _, ids in filled]
            assert len(batches) == len(filled) == len(unfilled) and {len(b) for b in batches} == {batch}
            head = torch.cat([ids for _, _, ids in unfilled])
            assert torch.equal(torch.cat(batches)[: len(head)], head)
        seen = torch.cat([ids for ld in loaders for _, _, ids in ld])
        assert set(seen.tolist()) == set(range(103)) and len(seen) == world * len(loaders[0]) * batch
    order = torch.randperm(103, generator=torch.Generator().manual_seed(3 * 100_003))
    first = torch.cat([ids for _, _, ids in BatchLoader(split, 8, shuffle=True, seed=3, fill_last=True)])
    assert torch.equal(first[103:], order[:1])  # 104 = 13 full batches: the first image again


def test_images_kept_on_another_device_are_gathered_there_and_labels_stay_on_the_host():
    """train.data_on_device: the loader slices a split whose images live on another device there (the
    meta device stands in for a GPU: shapes without memory), in the same batches as on the host, with
    labels and ids on the host, where the loop reads them without waiting for the device."""
    images = torch.arange(103 * 4, dtype=torch.uint8).view(103, 1, 2, 2)
    split = Split(images, torch.arange(103) % 10, torch.arange(103))
    moved = split.images_on(torch.device("meta"))
    assert moved.images.device.type == "meta" and moved.labels is split.labels and moved.ids is split.ids
    host = list(BatchLoader(split, 8, shuffle=True, seed=3))
    there = list(BatchLoader(moved, 8, shuffle=True, seed=3))
    assert len(host) == len(there) == 13
    for (hi, hl, hid), (ti, tl, tid) in zip(host, there):
        assert ti.device.type == "meta" and ti.shape == hi.shape
        assert tl.device.type == tid.device.type == "cpu" and torch.equal(tl, hl) and torch.equal(tid, hid)
