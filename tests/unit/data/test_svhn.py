"""SVHN format 1: the digitStruct.mat reader, Goodfellow crops, label encoding, the prepared cache
(reuse, invalidation, resumable builds), splits, errors and `run.py prepare svhn` over loopback HTTP.

Data comes from tests/helpers/svhn_fixture.py: MNIST digits on textured backgrounds with a digitStruct.mat in
the official MATLAB v7.3 layout.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from attn.config import DataBase, data_config
from attn.data import build_data
from attn.data import svhn
from attn.data.base import IGNORE_INDEX
from attn.data.svhn.crop import FROM_VALID_DIGITS, WHOLE_IMAGE, fallback_box
from attn.data.svhn import (
    crop_box,
    crop_image,
    decode_tokens,
    encode_number,
    ensure_cache,
    load_svhn,
    prepare_svhn,
    read_digit_struct,
)
from attn.errors import DataError

from helpers.svhn_fixture import LONG_NUMBER_DIGITS, make_svhn_dataset, make_svhn_folder, write_digit_struct

from helpers.cli import ROOT


N_TRAIN, N_EXTRA, N_TEST = 60, 40, 24


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A read-only format 1 root with long numbers and bad boxes, and the records written."""
    root = tmp_path_factory.mktemp("svhn") / "src"
    records = {
        "train": make_svhn_folder(root, "train", N_TRAIN, seed=1, max_len=5, long_numbers=2, bad_boxes=2),
        "extra": make_svhn_folder(root, "extra", N_EXTRA, seed=2, max_len=4, long_numbers=1),
        "test": make_svhn_folder(root, "test", N_TEST, seed=3, max_len=5, long_numbers=1, bad_boxes=1),
    }
    return root, records


def _copy(source, tmp_path: Path, folders=("train", "extra", "test")) -> Path:
    root = tmp_path / "svhn"
    for folder in folders:
        shutil.copytree(source[0] / folder, root / folder)
    return root


def _cfg(root: Path, **kw) -> DataBase:
    return data_config(task="svhn", data_dir=str(root), **kw)


def _boxes(rec) -> np.ndarray:
    return np.array(rec["boxes"], dtype=np.float64).reshape(-1, 5)


# ---------------------------------------------------------------------------------------------
# digitStruct.mat
# ---------------------------------------------------------------------------------------------
def test_fixture_has_the_official_layout(source):
    root, records = source
    mat = root / "train" / "digitStruct.mat"
    assert mat.read_bytes()[:19] == b"MATLAB 7.3 MAT-file"
    with h5py.File(mat, "r") as f:
        assert f.userblock_size == 512 and "#refs#" in f
        names, bbox = f["digitStruct/name"], f["digitStruct/bbox"]
        assert names.shape == bbox.shape == (N_TRAIN, 1) and bbox.dtype == h5py.ref_dtype
        one = f[bbox[0, 0]]  # record 0 has one digit: values stored in place
        assert one.attrs["MATLAB_class"] == b"struct" and one["label"].shape == (1, 1)
        assert one["label"].dtype == np.float64 and one["label"].attrs["MATLAB_class"] == b"double"
        two = f[bbox[1, 0]]  # record 1 has two: references to 1 x 1 datasets
        assert two["left"].shape == (2, 1) and two["left"].dtype == h5py.ref_dtype
        assert f[two["left"][1, 0]][()].shape == (1, 1)
        assert f[names[0, 0]].attrs["MATLAB_class"] == b"char" and f[names[0, 0]].shape == (len("1.png"), 1)


def test_parse_matches_records_direct_and_via_h5py(source, tmp_path, monkeypatch):
    root, records = source
    recs = records["train"]
    ds = read_digit_struct(root / "train" / "digitStruct.mat")
    assert len(ds) == N_TRAIN and ds.names == [r["name"] for r in recs]
    for n, rec in enumerate(recs):
        name, boxes = ds.record(n)
        assert name == rec["name"]
        np.testing.assert_array_equal(boxes, _boxes(rec))
    assert {len(r["boxes"]) for r in recs} >= {1, 2, 5, LONG_NUMBER_DIGITS}
    # The slow path (h5py for every record) agrees, and the direct reader really read this file.
    assert read_digit_struct(root / "train" / "digitStruct.mat", direct=False).digest() == ds.digest()

    def no_fallback(*a, **k):
        raise AssertionError("the direct reader fell back to h5py on a MATLAB-layout file")

    monkeypatch.setattr(svhn.digitstruct, "_h5py_record", no_fallback)
    direct, used_direct = svhn.digitstruct._read_digit_struct(root / "train" / "digitStruct.mat", True)
    assert used_direct and direct.digest() == ds.digest()
    monkeypatch.undo()
    # A newer HDF5 file format (v2 object headers, link messages) is read through the h5py path.
    write_digit_struct(tmp_path / "latest.mat", recs, libver="latest")
    assert read_digit_struct(tmp_path / "latest.mat").digest() == ds.digest()


def test_a_misreading_direct_reader_is_caught_by_the_h5py_sample(source, monkeypatch, capsys):
    """Were the fast reader to misread a real file without noticing, the sampled h5py check must
    discard its parse: wrong labels are never returned."""
    root, _ = source
    path = root / "train" / "digitStruct.mat"
    want = read_digit_struct(path, direct=False).digest()
    from attn.data.svhn import digitstruct_fast

    real = digitstruct_fast.DirectReader.record

    def off_by_one(self, name_addr, bbox_addr):
        name, cols = real(self, name_addr, bbox_addr)
        cols[1] = [v % 10 + 1 for v in cols[1]]  # every label shifted
        return name, cols

    monkeypatch.setattr(digitstruct_fast.DirectReader, "record", off_by_one)
    assert read_digit_struct(path).digest() == want
    assert "disagreed with h5py" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# crops and labels
# ---------------------------------------------------------------------------------------------
def test_crop_box_hand_worked():
    # One digit, left 10, top 5, 20 wide, 40 high, on a 100 x 60 image: the union box grows by
    # 15% of 20 = 3 px left and right, 15% of 40 = 6 px up and down; the top is clipped at 0.
    assert crop_box([(40, 1, 10, 5, 20)], 100, 60) == (7.0, 0.0, 33.0, 51.0)
    # Two digits: union x 50..74 (24 wide), y 28..52 (24 high) -> 3.6 px per side; on a 76 x 50 image
    # the right and bottom edges clip.
    two = [(20, 2, 50, 30, 10), (24, 10, 62, 28, 12)]
    np.testing.assert_allclose(crop_box(two, 200, 200), (46.4, 24.4, 77.6, 55.6))
    np.testing.assert_allclose(crop_box(two, 76, 50), (46.4, 24.4, 76.0, 50.0))
    # Unclipped, the crop is symmetric about the union box and 1.3 times its size.
    x0, y0, x1, y1 = crop_box(two, 200, 200)
    assert np.isclose((x0 + x1) / 2, 62) and np.isclose((y0 + y1) / 2, 40) and np.isclose(x1 - x0, 1.3 * 24)
    # Unusable records.
    assert crop_box([(40, 1, 10, -1, 20)], 100, 60) is None  # negative field
    assert crop_box([(40, 1, 10, 5, 0)], 100, 60) is None  # empty box
    assert crop_box([(40, 11, 10, 5, 20)], 100, 60) is None  # label outside 1-10
    assert crop_box([(40, 1, 300, 5, 20)], 100, 60) is None  # outside the image
    assert crop_box(np.zeros((0, 5)), 100, 60) is None


def test_crop_image_takes_exactly_the_box():
    img = np.zeros((60, 100, 3), dtype=np.uint8)
    img[10:30, 20:60] = (200, 100, 50)
    pil = Image.fromarray(img)
    rgb = crop_image(pil, (20.0, 10.0, 60.0, 30.0), 16, "rgb")
    assert rgb.shape == (3, 16, 16) and rgb.dtype == np.uint8
    assert rgb[:, 0, 0].tolist() == [200, 100, 50] and (rgb == rgb[:, :1, :1]).all()
    gray = crop_image(pil, (20.0, 10.0, 60.0, 30.0), 16, "gray")
    assert gray.shape == (1, 16, 16) and (gray == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)).all()
    half = crop_image(pil, (0.0, 0.0, 40.0, 20.0), 8, "gray")  # box straddles the patch's corner
    assert half[0, -1, -1] > 100 and half[0, 0, 0] == 0


def test_label_encoding():
    assert encode_number([1, 10, 5], 5).tolist() == [1, 10, 5, 0, IGNORE_INDEX, IGNORE_INDEX]
    assert encode_number([10], 1).tolist() == [10, 0]
    assert encode_number([3, 1, 4, 1, 5], 5).tolist() == [3, 1, 4, 1, 5, 0]  # keeps its end token
    assert encode_number([3, 1, 4, 1, 5, 9], 5) is None  # skipped, never cut
    assert decode_tokens([1, 10, 5, 0, IGNORE_INDEX, IGNORE_INDEX]) == "105"
    assert decode_tokens([10, 10, 2, 0, 7]) == "002"


def _expected(records: dict, max_digits: int) -> dict[tuple[str, int], list[int]]:
    out = {}
    for folder, recs in records.items():
        for rec in recs:
            # test/ keeps its records with a bad box (a fallback crop); training folders drop them
            if (folder == "test" or not rec["bad"]) and len(rec["labels"]) <= max_digits:
                out[("test" if folder == "test" else "pool", svhn.ID_OFFSET[folder] + rec["index"])] = encode_number(
                    rec["labels"], max_digits
                ).tolist()
    return out


def test_load_labels_ids_and_notes(source, tmp_path):
    root, records = source
    d = load_svhn(_cfg(root, cache_dir=str(tmp_path / "cache")))
    assert d.spec.channels == 1 and (d.spec.height, d.spec.width) == (54, 54) and d.crop == 54
    assert d.spec.num_classes == 11 and d.spec.class_names[10] == "0" and d.spec.end_token == 0
    assert d.spec.max_tokens == 6
    for split in (d.train, d.val, d.test):
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (1, 64, 64)
        assert split.labels.dtype == torch.int64 and split.labels.shape[1] == 6 and split.ids.dtype == torch.int64
    want = _expected(records, 5)
    got = {("pool", int(i)): row for s in (d.train, d.val) for i, row in zip(s.ids, s.labels.tolist())}
    got.update({("test", int(i)): row for i, row in zip(d.test.ids, d.test.labels.tolist())})
    assert got == want
    assert any(10 in row for row in got.values())  # digit 0 is token 10
    five = [row for row in got.values() if row[4] > 0]
    assert five and all(row[5] == 0 for row in five)  # a 5-digit number keeps its end token
    assert any(int(i) >= 1_000_000 for i in d.train.ids)  # extra pooled in
    assert "svhn: skipped 2 of 60 train images with more than 5 digits" in d.notes
    assert any(n.startswith("svhn: dropped 2 of 60 train images") for n in d.notes)
    # the test split counts every image: the bad box kept, the 6-digit number an error the model cannot avoid
    assert not any("test images with more than" in n or n.startswith("svhn: dropped 1 of 24 test") for n in d.notes)
    assert any(n.startswith("svhn: kept 1 of 24 test images with a negative, empty or out-of-image digit box")
               for n in d.notes)
    assert any(n.startswith("svhn: 1 of 24 test images hold a number that 5 digits and the end token cannot spell")
               for n in d.notes)
    assert len(d.test) + d.test.missing == N_TEST and d.test.missing == 1
    # A stored image is the crop of its source PNG.
    rec = records["test"][0]
    with Image.open(root / "test" / rec["name"]) as im:
        ref = crop_image(im, crop_box(_boxes(rec), *im.size), 64, "gray")
    np.testing.assert_array_equal(d.test.images[0].numpy(), ref)

    # max_digits is applied at load time: the same cache, the long numbers now kept.
    cache = tmp_path / "cache" / "svhn-train-gray64.h5"
    before = cache.stat().st_mtime_ns
    d6 = load_svhn(_cfg(root, cache_dir=str(tmp_path / "cache"), max_digits=6))
    assert cache.stat().st_mtime_ns == before
    assert d6.spec.max_tokens == 7 and len(d6.train) + len(d6.val) == len(d.train) + len(d.val) + 3
    assert not any("more than" in n for n in d6.notes)


def test_a_test_image_with_a_bad_box_is_cropped_from_its_valid_digits_or_whole():
    # digit 2's box has a negative top: the crop of digit 1 alone, as crop_box makes it
    rows = np.array([(20, 3, 10, 5, 8), (20, 4, -3, -1, 8)], dtype=np.float64)
    assert crop_box(rows, 100, 60) is None
    assert fallback_box(rows, 100, 60) == (crop_box(rows[:1], 100, 60), FROM_VALID_DIGITS)
    # a label outside 1-10 does not move the crop of a valid box
    assert fallback_box([(20, 11, 10, 5, 8)], 100, 60) == (crop_box([(20, 1, 10, 5, 8)], 100, 60), FROM_VALID_DIGITS)
    # nothing valid (zero width; outside the image): the whole image
    assert fallback_box([(20, 1, 10, 5, 0)], 100, 60) == ((0.0, 0.0, 100.0, 60.0), WHOLE_IMAGE)
    assert fallback_box([(20, 1, 300, 5, 8)], 100, 60) == ((0.0, 0.0, 100.0, 60.0), WHOLE_IMAGE)


def test_the_stored_crop_of_a_bad_test_record_is_its_fallback(source, tmp_path):
    root, records = source
    d = load_svhn(_cfg(root, cache_dir=str(tmp_path / "cache")))
    rec = next(r for r in records["test"] if r["bad"])
    row = int(torch.nonzero(d.test.ids == svhn.ID_OFFSET["test"] + rec["index"])[0])
    with Image.open(root / "test" / rec["name"]) as im:
        box, _ = fallback_box(_boxes(rec), *im.size)
        ref = crop_image(im, box, 64, "gray")
    np.testing.assert_array_equal(d.test.images[row].numpy(), ref)
    assert d.test.labels[row].tolist() == encode_number(rec["labels"], 5).tolist()


def test_splits_seeded_and_stable(source, tmp_path):
    root, _ = source
    a = load_svhn(_cfg(root, cache_dir=str(tmp_path / "c1"), val_fraction=0.25))
    b = load_svhn(_cfg(root, cache_dir=str(tmp_path / "c2"), val_fraction=0.25))  # built anew elsewhere
    assert torch.equal(a.val.ids, b.val.ids) and torch.equal(a.train.ids, b.train.ids)
    assert torch.equal(a.val.images, b.val.images)
    assert not set(a.train.ids.tolist()) & set(a.val.ids.tolist())
    assert 0.15 < len(a.val) / (len(a.train) + len(a.val)) < 0.35
    c = load_svhn(_cfg(root, cache_dir=str(tmp_path / "c1"), val_fraction=0.25, split_seed=1))
    assert not torch.equal(c.val.ids, a.val.ids)
    # max_digits only removes images; it never moves one between train and validation.
    wide = load_svhn(_cfg(root, cache_dir=str(tmp_path / "c1"), val_fraction=0.25, max_digits=6))
    assert set(a.val.ids.tolist()) <= set(wide.val.ids.tolist())
    assert set(a.train.ids.tolist()) <= set(wide.train.ids.tolist())
    # Without extra: only train ids; build_data applies the subset caps.
    no_extra = build_data(_cfg(root, cache_dir=str(tmp_path / "c1"), use_extra=False, train_subset=5, eval_subset=3))
    assert len(no_extra.train) == 5 and len(no_extra.val) == 3 and len(no_extra.test) == 3
    assert int(no_extra.train.ids.max()) < N_TRAIN


def test_eval_centre_crop_is_deterministic(source, tmp_path):
    root, _ = source
    d = load_svhn(_cfg(root, cache_dir=str(tmp_path / "cache"), use_extra=False))
    x = d.test.images[:8]
    e1, e2 = d.model_input(x, train=False), d.model_input(x, train=False)
    assert e1.shape == (8, 1, 54, 54) and torch.equal(e1, e2)
    assert torch.equal(e1, d.normalize(x[..., 5:59, 5:59]))
    t1 = d.model_input(x, train=True, generator=torch.Generator().manual_seed(0))
    t2 = d.model_input(x, train=True, generator=torch.Generator().manual_seed(1))
    assert t1.shape == (8, 1, 54, 54) and not torch.equal(t1, t2)


def test_rgb_option_has_its_own_cache(source, tmp_path):
    root, _ = source
    cache = tmp_path / "cache"
    gray = load_svhn(_cfg(root, cache_dir=str(cache), use_extra=False))
    rgb = load_svhn(_cfg(root, cache_dir=str(cache), use_extra=False, color="rgb", image_size=32, crop_size=28))
    assert rgb.spec.channels == 3 and rgb.test.images.shape[1:] == (3, 32, 32) and rgb.spec.height == 28
    assert torch.equal(rgb.test.ids, gray.test.ids)
    assert (cache / "svhn-test-gray64.h5").exists() and (cache / "svhn-test-rgb32.h5").exists()


# ---------------------------------------------------------------------------------------------
# the cache
# ---------------------------------------------------------------------------------------------
def test_cache_reused_refreshed_and_rebuilt(source, tmp_path, monkeypatch, capsys):
    root = _copy(source, tmp_path, ("train", "test"))
    cfg = _cfg(root, use_extra=False)
    load_svhn(cfg)
    cache = root / "attn-cache" / "svhn-train-gray64.h5"
    stamp = cache.stat().st_mtime_ns
    builds = []
    real_build = svhn.cache._build
    monkeypatch.setattr(svhn.cache, "_build", lambda *a, **k: (builds.append(a[0].name), real_build(*a, **k))[1])

    load_svhn(cfg)  # second load: nothing rebuilt
    assert builds == [] and cache.stat().st_mtime_ns == stamp

    mat = root / "train" / "digitStruct.mat"
    st = mat.stat()
    os.utime(mat, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same content: adopted
    load_svhn(cfg)
    assert builds == []
    with h5py.File(cache, "r") as f:
        assert int(f.attrs["source_mat_mtime_ns"]) == st.st_mtime_ns + 10**9

    ds = read_digit_struct(mat)  # change one box: the cache is rebuilt, with a note
    recs = [{"name": ds.names[n], "boxes": ds.record(n)[1].tolist()} for n in range(len(ds))]
    recs[0]["boxes"][0][2] += 1
    write_digit_struct(mat, recs)
    d = load_svhn(cfg)
    assert builds == ["train"]
    assert any("digitStruct.mat changed" in n for n in d.notes)
    with h5py.File(cache, "r") as f:
        assert f["boxes"][0, 2] == ds.boxes[0, 2] + 1

    cache.write_bytes(b"not a cache")  # a damaged cache file is rebuilt, not fatal
    d = load_svhn(cfg)
    assert builds == ["train", "train"] and any("is unreadable" in n for n in d.notes)

    (root / "train" / "extra-file.png").write_bytes(b"")  # the folder's PNGs changed
    d = load_svhn(cfg)
    assert builds[-1] == "train" and any("now holds 61 PNGs" in n for n in d.notes)
    assert "rebuilding" in capsys.readouterr().err


def _arrays(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}


@pytest.mark.parametrize("stop", [RuntimeError, KeyboardInterrupt])
def test_interrupted_build_resumes_to_identical_arrays(source, tmp_path, stop):
    folder = source[0] / "train"
    reference = ensure_cache(folder, tmp_path / "whole", chunk_rows=16)

    def interrupt(done, total):
        if done >= 32:
            raise stop("stopped")

    with pytest.raises(stop):
        ensure_cache(folder, tmp_path / "cut", chunk_rows=16, progress=interrupt)
    final = tmp_path / "cut" / "svhn-train-gray64.h5"
    partial = final.with_name(final.name + ".partial")
    assert not final.exists() and partial.exists()  # never reads as complete
    with h5py.File(partial, "r") as f:
        assert int(f.attrs["rows_done"]) == 32 and int(f.attrs["complete"]) == 0

    seen, notes = [], []
    again = ensure_cache(folder, tmp_path / "cut", chunk_rows=16, progress=lambda d, t: seen.append(d), notes=notes)
    assert again == final
    assert seen == [48, 60] and notes == [f"svhn: resumed the cache build of {final} at 32 of 60 images"]
    assert not partial.exists()
    a, b = _arrays(reference), _arrays(final)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_partial_from_another_source_starts_over(source, tmp_path):
    folder = tmp_path / "train"
    shutil.copytree(source[0] / "train", folder)

    def interrupt(done, total):
        raise RuntimeError

    with pytest.raises(RuntimeError):
        ensure_cache(folder, tmp_path / "cache", chunk_rows=16, progress=interrupt)
    ds = read_digit_struct(folder / "digitStruct.mat")
    recs = [{"name": ds.names[n], "boxes": ds.record(n)[1].tolist()} for n in range(len(ds))]
    recs[-1]["boxes"][0][3] += 2
    write_digit_struct(folder / "digitStruct.mat", recs)
    notes = []
    path = ensure_cache(folder, tmp_path / "cache", chunk_rows=16, notes=notes)
    assert any("another source" in n for n in notes)
    with h5py.File(path, "r") as f:
        assert f["boxes"][-1, 3] == ds.boxes[-1, 3] + 2 and int(f.attrs["complete"]) == 1


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def test_missing_partial_and_corrupt_folders(source, tmp_path):
    with pytest.raises(DataError, match=r"data.data_dir must point at SVHN format 1.*prepare svhn --to DIR"):
        load_svhn(data_config(task="svhn"))
    with pytest.raises(DataError, match="nowhere: data.data_dir does not exist"):
        load_svhn(_cfg(tmp_path / "nowhere"))
    root = _copy(source, tmp_path, ("train", "test"))
    with pytest.raises(DataError, match=r"extra: not found but data.use_extra=true; add the extra/ .* data.use_extra=false"):
        load_svhn(_cfg(root))
    shutil.rmtree(root / "test")
    with pytest.raises(DataError, match=r"svhn/test: folder not found"):
        load_svhn(_cfg(root, use_extra=False))
    shutil.copytree(source[0] / "test", root / "test")

    mat = root / "train" / "digitStruct.mat"
    saved = mat.read_bytes()
    mat.unlink()
    with pytest.raises(DataError, match=r"train/digitStruct.mat: not found"):
        load_svhn(_cfg(root, use_extra=False))
    mat.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))  # e.g. a format 2 (v5) file
    with pytest.raises(DataError, match=r"digitStruct.mat: not an HDF5 file .*MATLAB v7.3"):
        load_svhn(_cfg(root, use_extra=False))
    with h5py.File(mat, "w") as f:
        f["something"] = 1
    with pytest.raises(DataError, match=r"digitStruct.mat: no N x 1 reference array 'digitStruct/name'"):
        load_svhn(_cfg(root, use_extra=False))
    mat.write_bytes(saved)

    for n in (7, 3, 12):
        (root / "train" / f"{n}.png").unlink()
    with pytest.raises(DataError, match=r"train: 3 of 60 PNGs named in digitStruct.mat are missing, first '3.png'"):
        load_svhn(_cfg(root, use_extra=False))
    for n in (7, 3, 12):
        shutil.copy(source[0] / "train" / f"{n}.png", root / "train" / f"{n}.png")
    png = root / "train" / "5.png"
    png.write_bytes(png.read_bytes()[:40])
    with pytest.raises(DataError, match=r"train/5.png: cannot read the PNG"):
        load_svhn(_cfg(root, use_extra=False))


def test_cli_error_is_one_line(source, tmp_path):
    root = _copy(source, tmp_path, ("train", "test"))
    (root / "train" / "digitStruct.mat").write_bytes(b"garbage")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "prepare", "svhn", "--to", str(root), "--no-extra"]
        + ["--url", "http://127.0.0.1:9"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: ") and str(root / "train" / "digitStruct.mat") in last and "not an HDF5 file" in last
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# prepare svhn over loopback HTTP
# ---------------------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` (name -> bytes); honours Range; ``server.cut`` names files whose first
    response stops half-way (Content-Length promising the whole)."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        srv = self.server
        name = self.path.lstrip("/")
        srv.log.append((name, self.headers.get("Range")))
        data = srv.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name in srv.cut:
            srv.cut.discard(name)
            body = body[: len(body) // 2]
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _serve(files: dict[str, bytes], cut=()):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.cut, srv.log = files, set(cut), []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv, f"http://127.0.0.1:{srv.server_address[1]}/data"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(10)


def _targz(src: Path, folder: str, extra_member: tarfile.TarInfo | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src / folder, arcname=folder)
        if extra_member is not None:
            tar.addfile(extra_member, io.BytesIO(b"x" * extra_member.size))
    return buf.getvalue()


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    src = make_svhn_dataset(tmp_path_factory.mktemp("svhn-src"), n_train=30, n_test=12, n_extra=16, seed=5)
    return {f"data/{folder}.tar.gz": _targz(src, folder) for folder in ("train", "test", "extra")}


def test_prepare_downloads_extracts_and_builds_cache(archives, tmp_path, capsys):
    from attn.cli import main

    dest = tmp_path / "svhn"
    with _serve(archives) as (srv, url):
        sigterm = signal.getsignal(signal.SIGTERM)
        try:
            assert main(["prepare", "svhn", "--to", str(dest), "--url", url, "--keep-archives"]) == 0
        finally:
            signal.signal(signal.SIGTERM, sigterm)  # main() installs its own handler
        assert sorted(name for name, _ in srv.log) == ["data/extra.tar.gz", "data/test.tar.gz", "data/train.tar.gz"]
        out = capsys.readouterr().out
        assert "done: SVHN in" in out and "train 30 images, test 12 images, extra 16 images" in out
        for folder, n in (("train", 30), ("test", 12), ("extra", 16)):
            assert (dest / folder / "digitStruct.mat").is_file() and len(list((dest / folder).glob("*.png"))) == n
            assert (dest / "attn-cache" / f"svhn-{folder}-gray64.h5").is_file()
            assert (dest / f"{folder}.tar.gz").read_bytes() == archives[f"data/{folder}.tar.gz"]
        assert not list(dest.glob("*.part")) and not list(dest.glob(".*extracting"))

        stamp = (dest / "attn-cache" / "svhn-train-gray64.h5").stat().st_mtime_ns
        assert prepare_svhn(dest, base_url=url) == {"train": 30, "test": 12, "extra": 16}
        assert len(srv.log) == 3  # nothing fetched again
        assert (dest / "attn-cache" / "svhn-train-gray64.h5").stat().st_mtime_ns == stamp

        shutil.rmtree(dest / "test")  # a kept archive is extracted again without a download
        prepare_svhn(dest, base_url=url, extra=False)
        assert len(srv.log) == 3 and len(list((dest / "test").glob("*.png"))) == 12
        assert not (dest / "test.tar.gz").exists()  # not kept this time

    d = load_svhn(_cfg(dest))
    assert len(d.train) + len(d.val) == 46 and len(d.test) == 12


def test_prepare_resumes_a_broken_download(archives, tmp_path):
    dest = tmp_path / "svhn"
    with _serve(archives, cut=["data/train.tar.gz"]) as (srv, url):
        with pytest.raises(DataError, match=r"train.tar.gz: download stopped at \d+ of \d+ bytes; run the command again"):
            prepare_svhn(dest, base_url=url, extra=False)
        part = dest / "train.tar.gz.part"
        assert part.is_file() and not (dest / "train").exists()
        have = part.stat().st_size
        assert have == len(archives["data/train.tar.gz"]) // 2
        prepare_svhn(dest, base_url=url, extra=False)
        assert srv.log[1] == ("data/train.tar.gz", f"bytes={have}-")  # continued, not restarted
    assert not part.exists() and len(list((dest / "train").glob("*.png"))) == 30


def test_prepare_rejects_damaged_and_unsafe_archives(archives, tmp_path):
    truncated = dict(archives)
    truncated["data/train.tar.gz"] = archives["data/train.tar.gz"][:-300]  # served whole, but cut
    with _serve(truncated) as (_, url):
        with pytest.raises(DataError, match=r"train.tar.gz: not a complete gzip tar archive .*it was deleted"):
            prepare_svhn(tmp_path / "a", base_url=url, extra=False)
    assert not (tmp_path / "a" / "train").exists() and not (tmp_path / "a" / "train.tar.gz").exists()

    evil = tarfile.TarInfo("../evil.txt")
    evil.size = 4
    src = tmp_path / "src"
    make_svhn_folder(src, "train", 3, seed=0)
    bad = dict(archives, **{"data/train.tar.gz": _targz(src, "train", evil)})
    with _serve(bad) as (_, url):
        with pytest.raises(DataError, match=r"refusing member '../evil.txt'"):
            prepare_svhn(tmp_path / "b", base_url=url, extra=False)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "b" / "train").exists()

    with _serve({}) as (_, url):
        with pytest.raises(DataError, match=r"/data/train.tar.gz: download failed \(HTTP 404"):
            prepare_svhn(tmp_path / "c", base_url=url, extra=False)
