"""The SVHN multiple-numbers generator and loader (design reference 2.5, 2.6) on a small fixture SVHN.

The fixture (tests/helpers/svhn_fixture.py) writes real format 1 folders: MNIST digits with exact boxes,
numbers of 1-3 digits, so the 1-2 digit pools are known record by record.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from PIL import Image

from attn.data import multinumber as mn
from attn.data.base import IGNORE_INDEX
from attn.data.svhn import crop_box, read_digit_struct
from attn.errors import DataError
from helpers.cli import ROOT
from helpers.svhn_fixture import make_svhn_dataset, make_svhn_folder, write_digit_struct

SIZE, BOX = 96, 32
OPTS = dict(size=SIZE, box=BOX, count=30, split=(0.6, 0.2, 0.2), seed=3, progress=False)


@pytest.fixture(scope="module")
def svhn_root(tmp_path_factory) -> Path:
    return make_svhn_dataset(tmp_path_factory.mktemp("svhn"), n_train=60, n_test=30)


@pytest.fixture(scope="module")
def made(svhn_root, tmp_path_factory) -> Path:
    """The reference output: generated in this process with one worker."""
    out = tmp_path_factory.mktemp("mn") / "out"
    assert mn.generate_multinumber(svhn_root, out, workers=1, **OPTS) == {"train": 18, "val": 6, "test": 6}
    return out


@pytest.fixture(scope="module")
def records(svhn_root):
    return {f: read_digit_struct(svhn_root / f / "digitStruct.mat") for f in ("train", "test")}


def tree(folder: Path) -> dict[str, bytes]:
    """Every generated file (loader caches excluded) by relative path."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "attn-cache" not in p.parts
    }


def entries(out: Path) -> dict[str, list[dict]]:
    return {s: json.loads((out / f"{s}.json").read_text()) for s in mn.SPLITS}


def source_crop(svhn_root: Path, folder: str, ds, index: int) -> np.ndarray:
    """The tight union box of record ``index``, gray, resized to BOX x BOX -- computed independently."""
    name, rows = ds.record(index)
    x0, y0 = rows[:, 2].min(), rows[:, 3].min()
    x1, y1 = (rows[:, 2] + rows[:, 4]).max(), (rows[:, 3] + rows[:, 0]).max()
    with Image.open(svhn_root / folder / name) as im:
        return np.asarray(im.convert("L").crop((x0, y0, x1, y1)).resize((BOX, BOX), Image.BILINEAR))


# ---------------------------------------------------------------------------------------------
# generator
# ---------------------------------------------------------------------------------------------
def test_layout_splits_and_meta(made, svhn_root):
    meta = json.loads((made / "meta.json").read_text())
    assert meta["format"] == mn.FORMAT and meta["version"] == mn.FORMAT_VERSION
    assert (meta["size"], meta["box"], meta["count"], meta["seed"], meta["test_pool"]) == (SIZE, BOX, 30, 3, "test")
    assert meta["split"] == [0.6, 0.2, 0.2] and meta["split_sizes"] == {"train": 18, "val": 6, "test": 6}
    assert meta["svhn"]["train"]["records"] == 60 and meta["svhn"]["test"]["records"] == 30
    assert meta["inpaint"] == {"method": "telea", "radius": 32, "scale": 4}
    ent = entries(made)
    # Splits are consecutive id ranges in train, val, test order.
    assert [e["id"] for e in ent["train"]] == list(range(18))
    assert [e["id"] for e in ent["val"]] == list(range(18, 24))
    assert [e["id"] for e in ent["test"]] == list(range(24, 30))
    for split, es in ent.items():
        assert sorted(p.name for p in (made / split).iterdir()) == sorted(f"{e['id']}.png" for e in es)
        for e in es:
            assert e["file"] == f"{split}/{e['id']}.png"
            img = cv2.imread(str(made / e["file"]), cv2.IMREAD_UNCHANGED)
            assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
            assert (img[..., 0] == img[..., 1]).all() and (img[..., 0] == img[..., 2]).all()


def test_split_sizes_follow_the_option():
    assert mn.split_sizes(500_000, (0.8, 0.1, 0.1)) == {"train": 400_000, "val": 50_000, "test": 50_000}
    assert mn.split_sizes(10, (0.5, 0.5, 0.0)) == {"train": 5, "val": 5, "test": 0}
    assert mn.split_sizes(7, (0.0, 0.0, 1.0)) == {"train": 0, "val": 0, "test": 7}


def test_boxes_order_labels_and_sources(made, records):
    for split, es in entries(made).items():
        for e in es:
            (xa, ya, wa, ha), (xb, yb, wb, hb) = e["boxes"]
            assert wa == ha == wb == hb == BOX
            for x, y in ((xa, ya), (xb, yb)):
                assert 0 <= x <= SIZE - BOX and 0 <= y <= SIZE - BOX
            # Never overlapping (touching allowed after the padded tries).
            assert abs(xa - xb) >= BOX or abs(ya - yb) >= BOX
            # Reading order: side by side -> left first, else upper first.
            if abs(ya - yb) < BOX:
                assert xa < xb
            else:
                assert ya < yb
            # Test pairs come from SVHN test/ only; train and val from train/ (no extra here).
            want = "test" if split == "test" else "train"
            assert [f for f, _ in e["source"]] == [want, want]
            assert e["source"][0] != e["source"][1]
            for key, (folder, index) in zip(("first", "second"), e["source"]):
                _, rows = records[folder].record(index)
                assert 1 <= len(rows) <= 2
                assert e[key] == [int(v) for v in rows[:, 1]]


def test_pixels_are_the_pasted_numbers_on_an_inpainted_background(made, svhn_root, records):
    for es in entries(made).values():
        for e in es:
            img = cv2.imread(str(made / e["file"]), cv2.IMREAD_GRAYSCALE)
            inside = np.zeros(img.shape, bool)
            pasted = []
            for (x, y, w, h), (folder, index) in zip(e["boxes"], e["source"]):
                want = source_crop(svhn_root, folder, records[folder], index).astype(int)
                got = img[y : y + h, x : x + w].astype(int)
                # Exactly the resized crop (no x256 wrap turning white black): inpainting leaves it alone.
                assert np.abs(got - want).max() <= 1
                assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99
                inside[y : y + h, x : x + w] = True
                pasted.append(got)
            values = np.concatenate([p.ravel() for p in pasted])
            bg = img[~inside]
            # The black canvas was filled from the numbers: no black left, values within theirs.
            assert bg.min() >= values.min() and bg.max() <= values.max()
            assert bg.mean() > 0.5 * values.mean() and (bg == 0).mean() < 0.01


def test_identical_for_any_worker_count_different_for_another_seed(made, svhn_root, tmp_path):
    mn.generate_multinumber(svhn_root, tmp_path / "w2", workers=2, **OPTS)
    assert tree(tmp_path / "w2") == tree(made)
    other = dict(OPTS, seed=4)
    mn.generate_multinumber(svhn_root, tmp_path / "s4", workers=1, **other)
    a, b = tree(made), tree(tmp_path / "s4")
    assert a["train.json"] != b["train.json"]
    assert sum(a[k] != b[k] for k in a if k.endswith(".png")) >= 25


def test_resume_after_interruption_gives_the_same_files(made, svhn_root, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(made, out, ignore=shutil.ignore_patterns("attn-cache"))
    # The state a killed run leaves: missing PNGs, a temporary file, no split JSON.
    for sid in (0, 5, 19, 29):
        split = "train" if sid < 18 else "val" if sid < 24 else "test"
        (out / split / f"{sid}.png").unlink()
    (out / "train" / ".7.png.123.tmp").write_bytes(b"\x89PNG partial")
    (out / "val.json").unlink()
    (out / "test.json").unlink()
    keep = (out / "train" / "3.png").stat().st_mtime_ns
    assert mn.generate_multinumber(svhn_root, out, workers=2, **OPTS) == {"train": 18, "val": 6, "test": 6}
    assert tree(out) == tree(made)
    assert (out / "train" / "3.png").stat().st_mtime_ns == keep  # present PNGs are skipped


def test_killed_run_resumes_to_the_same_files(made, svhn_root, tmp_path):
    """A real SIGKILL of the whole process group mid-run (parent and workers), then a rerun."""
    opts = dict(OPTS, count=200, split=(0.8, 0.1, 0.1))  # 160 training images: the kill lands among them
    out = tmp_path / "out"
    code = (
        "import sys; from attn.data.multinumber import generate_multinumber as g\n"
        "if __name__ == '__main__':\n"
        f"    g(sys.argv[1], sys.argv[2], workers=2, **{opts!r})\n"
    )
    script = tmp_path / "gen.py"
    script.write_text(code)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(script), str(svhn_root), str(out)], env=env, start_new_session=True)
    deadline = time.monotonic() + 600  # generous: a loaded machine starts the workers slowly
    try:
        while time.monotonic() < deadline and len(list(out.glob("train/*.png"))) < 40:
            assert proc.poll() is None, "generation finished before it could be interrupted"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "train.json").exists()
    n_before = len(list((out / "train").glob("*.png")))
    assert 40 <= n_before < 160, f"{n_before} PNGs were written before the kill; 40 to 159 are needed"
    mn.generate_multinumber(svhn_root, out, workers=2, **opts)
    fresh = tmp_path / "fresh"
    mn.generate_multinumber(svhn_root, fresh, workers=1, **opts)
    assert tree(out) == tree(fresh)


def test_rerun_with_other_options_is_refused(made, svhn_root, tmp_path):
    with pytest.raises(DataError, match=r"meta\.json.*seed = 3.*4"):
        mn.generate_multinumber(svhn_root, made, workers=1, **dict(OPTS, seed=4))
    with pytest.raises(DataError, match=r"meta\.json.*count"):
        mn.generate_multinumber(svhn_root, made, workers=1, **dict(OPTS, count=31))
    with pytest.raises(DataError, match=r"meta\.json.*test_pool"):
        mn.generate_multinumber(svhn_root, made, workers=1, **dict(OPTS, test_pool="train"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty and holds no meta.json"):
        mn.generate_multinumber(svhn_root, tmp_path / "busy", workers=1, **OPTS)


def test_test_pool_train_and_default_geometry(tmp_path):
    """test_pool="train": SVHN test/ is not needed and test pairs come from train/; default 224/64."""
    root = tmp_path / "svhn"
    make_svhn_folder(root, "train", 30, seed=5)
    out = tmp_path / "out"
    sizes = mn.generate_multinumber(
        root, out, count=5, split=(0.4, 0.2, 0.4), test_pool="train", workers=1, progress=False
    )
    assert sizes == {"train": 2, "val": 1, "test": 2}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["test_pool"] == "train" and set(meta["svhn"]) == {"train"} and meta["size"] == 224
    for e in entries(out)["test"]:
        assert [f for f, _ in e["source"]] == ["train", "train"]
    assert cv2.imread(str(out / "test" / "4.png")).shape == (224, 224, 3)


def test_pool_rules_mirror_crop_box(tmp_path):
    records = make_svhn_folder(tmp_path, "train", 60, seed=7, bad_boxes=6, long_numbers=2)
    ds = read_digit_struct(tmp_path / "train" / "digitStruct.mat")
    pool = mn.pools.folder_pool("train", ds)
    want = []
    for i in range(len(ds)):
        _, rows = ds.record(i)
        box = crop_box(rows, math.inf, math.inf, expand=0.0)
        if 1 <= len(rows) <= 2 and box is not None:
            want.append((i, box))
    assert pool.index.tolist() == [i for i, _ in want]
    assert np.array_equal(pool.box, np.array([b for _, b in want]))
    assert all(not records[i]["bad"] for i in pool.index.tolist())
    assert [pool.tokens(r) for r in range(len(pool))] == [records[i]["labels"] for i in pool.index.tolist()]


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(box=7), "box = 7 is invalid; use an integer >= 8"),
        (dict(size=68), r"size = 68 is invalid; use an integer >= 2 \* box \+ 5 = 69"),
        (dict(count=0), "count = 0 is invalid"),
        (dict(split=(0.8, 0.1)), "split = .* three non-negative fractions"),
        (dict(split=(0.8, 0.1, 0.05)), "split = .* sum to 1"),
        (dict(split=(1.2, -0.1, -0.1)), "split = .* non-negative"),
        (dict(test_pool="extra"), "test_pool = 'extra' is invalid"),
        (dict(seed=-1), "seed = -1 is invalid"),
        (dict(workers=0), "workers = 0 is invalid"),
        (dict(inpaint_scale=30), "shrinks the 96 px canvas"),
    ],
)
def test_bad_options_are_one_sentence_errors(svhn_root, tmp_path, change, match):
    with pytest.raises(DataError, match=match):
        mn.generate_multinumber(svhn_root, tmp_path / "out", **dict(OPTS, **change))
    assert not (tmp_path / "out").exists()


def test_bad_svhn_folders(svhn_root, tmp_path):
    with pytest.raises(DataError, match=r"nowhere: --svhn folder not found"):
        mn.generate_multinumber(tmp_path / "nowhere", tmp_path / "out", **OPTS)
    partial = tmp_path / "partial"
    shutil.copytree(svhn_root / "train", partial / "train")
    with pytest.raises(DataError, match=r"partial/test: folder not found"):
        mn.generate_multinumber(partial, tmp_path / "out", **OPTS)
    (partial / "extra").mkdir()
    with pytest.raises(DataError, match=r"extra: present but holds no digitStruct.mat"):
        mn.generate_multinumber(partial, tmp_path / "out", **OPTS)
    (partial / "extra").rmdir()
    # A test/ folder whose numbers all have 3 digits: an empty test pool.
    (partial / "test").mkdir()
    recs = []
    for i in range(4):
        name = f"{i + 1}.png"
        Image.new("RGB", (80, 40), (90, 90, 90)).save(partial / "test" / name)
        recs.append({"name": name, "boxes": [(20, 1 + j, 5 + 20 * j, 5, 15) for j in range(3)]})
    write_digit_struct(partial / "test" / "digitStruct.mat", recs)
    with pytest.raises(DataError, match=r"test: 0 usable numbers with 1-2 digits"):
        mn.generate_multinumber(partial, tmp_path / "out", **OPTS)
    (partial / "test" / "2.png").unlink()
    with pytest.raises(DataError, match=r"1 of 4 PNGs named in digitStruct.mat are missing, first '2.png'"):
        mn.generate_multinumber(partial, tmp_path / "out", **OPTS)


def test_inpaint_keeps_known_pixels_for_every_scale():
    rng = np.random.default_rng(0)
    canvas = np.zeros((64, 64), np.uint8)
    canvas[5:25, 8:28] = rng.integers(50, 200, (20, 20))
    mask = np.full(canvas.shape, 255, np.uint8)
    mask[5:25, 8:28] = 0
    for scale in (1, 2, 4):
        out = mn.inpaint(canvas, mask, 8, scale)
        assert np.array_equal(out[5:25, 8:28], canvas[5:25, 8:28])
        assert out[mask > 0].min() > 0  # nothing left black


# ---------------------------------------------------------------------------------------------
# loader
# ---------------------------------------------------------------------------------------------
def cfg(out: Path, color: str = "gray"):
    return SimpleNamespace(data_dir=str(out), color=color, mean=0.4, std=0.2)


def test_loader_shapes_labels_and_pixels(made, svhn_root, records, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(made, out)
    data = mn.load_multinumber(cfg(out))
    spec = data.spec
    assert (spec.channels, spec.height, spec.width) == (1, SIZE, SIZE)
    assert spec.num_classes == 12 and spec.class_names[11] == "<sep>" and spec.class_names[10] == "0"
    assert spec.max_tokens == 6 and spec.end_token == 0 and data.crop is None
    assert (data.mean, data.std) == (0.4, 0.2)
    ent = entries(out)
    for name in mn.SPLITS:
        split = getattr(data, name)
        n = len(ent[name])
        assert split.images.shape == (n, 1, SIZE, SIZE) and split.images.dtype.is_floating_point is False
        assert split.labels.shape == (n, 6) and str(split.labels.dtype) == "torch.int64"
        assert split.ids.tolist() == [e["id"] for e in ent[name]]
        for row, e in zip(split.labels.tolist(), ent[name]):
            seq = e["first"] + [mn.SEPARATOR_TOKEN] + e["second"] + [0]
            assert row == seq + [IGNORE_INDEX] * (6 - len(seq))
            assert 4 <= len(seq) <= 6
        for img, e in zip(split.images.numpy(), ent[name]):
            assert np.array_equal(img[0], cv2.imread(str(out / e["file"]), cv2.IMREAD_GRAYSCALE))
            (x, y, w, h), (folder, index) = e["boxes"][0], e["source"][0]
            want = source_crop(svhn_root, folder, records[folder], index).astype(float)
            assert np.corrcoef(img[0, y : y + h, x : x + w].astype(float).ravel(), want.ravel())[0, 1] > 0.99
    # The model sees normalised floats of the whole canvas.
    x = data.model_input(data.train.images[:2], train=True)
    assert x.shape == (2, 1, SIZE, SIZE) and x.dtype.is_floating_point
    assert any("multinumber" in n for n in data.notes)


def test_loader_cache_is_reused_and_rebuilt_when_stale(made, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(made, out, ignore=shutil.ignore_patterns("attn-cache"))
    mn.check_multinumber(cfg(out))
    npy = out / "attn-cache" / "train-gray.npy"
    key = out / "attn-cache" / "train-gray.json"
    assert npy.is_file() and key.is_file()
    stamp = npy.stat().st_mtime_ns
    first = mn.load_multinumber(cfg(out))
    assert npy.stat().st_mtime_ns == stamp and not any("caching" in n for n in first.notes)
    # A key from another dataset (or an interrupted build): rebuilt, same content.
    key.write_text(json.dumps({"meta_sha256": "0" * 64}))
    again = mn.load_multinumber(cfg(out))
    assert any("caching" in n and "train" in n for n in again.notes)
    assert np.array_equal(again.train.images.numpy(), first.train.images.numpy())
    rgb = mn.load_multinumber(cfg(out, "rgb"))
    assert rgb.spec.channels == 3 and rgb.train.images.shape[1] == 3
    assert np.array_equal(rgb.train.images[:, 0].numpy(), first.train.images[:, 0].numpy())
    assert (rgb.train.images[:, 0] == rgb.train.images[:, 2]).all()


def test_loader_refuses_missing_or_unfinished_datasets(made, tmp_path):
    with pytest.raises(DataError, match=r"meta.json: not found.*prepare multinumber --svhn DIR --to OUT"):
        mn.load_multinumber(cfg(tmp_path / "none"))
    out = tmp_path / "out"
    shutil.copytree(made, out, ignore=shutil.ignore_patterns("attn-cache"))
    (out / "test.json").unlink()
    with pytest.raises(DataError, match=r"test.json: not found: the generation .* did not finish.*prepare multinumber"):
        mn.check_multinumber(cfg(out))
    assert not (out / "attn-cache" / "train-gray.npy").exists()  # every split is checked before caching
    shutil.copy(made / "test.json", out / "test.json")
    (out / "val" / "20.png").unlink()
    with pytest.raises(DataError, match=r"20.png: missing or unreadable"):
        mn.load_multinumber(cfg(out))


def test_changed_svhn_source_is_named(made, svhn_root, tmp_path):
    other = make_svhn_dataset(tmp_path / "svhn2", n_train=40, n_test=30, seed=9)
    want = r"meta\.json: .* with SVHN folders train/ \(60 records\), test/ \(30 records\); this run reads train/ \(40"
    with pytest.raises(DataError, match=want):
        mn.generate_multinumber(other, made, workers=1, **OPTS)


def test_prepare_multinumber_command(svhn_root, tmp_path):
    """`python run.py prepare multinumber` makes the dataset with the options given, then training
    finds it through the config (data.task=multinumber); a bad option is one line, no traceback."""
    out = tmp_path / "mn"
    cmd = [sys.executable, str(ROOT / "run.py"), "prepare", "multinumber", "--svhn", str(svhn_root), "--to", str(out),
           "--size", "96", "--box", "32", "--count", "20", "--split", "0.5", "0.25", "0.25", "--seed", "3",
           "--workers", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "done: multinumber in" in proc.stdout and "train 10 images, val 5 images, test 5 images" in proc.stdout
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["size"], meta["box"], meta["count"], meta["seed"]) == (96, 32, 20, 3)

    from attn.config import load_config
    from attn.data import build_data

    cfg = load_config(None, ["data.task=multinumber", f"data.data_dir={out}", "model.name=dram",
                             "model.retina.patch_size=12"])
    data = build_data(cfg.data)
    assert len(data.train) == 10 and data.spec.height == 96 and data.spec.max_tokens == cfg.max_tokens() == 6

    bad = subprocess.run(cmd[:-2] + ["--workers", "1", "--split", "0.5", "0.5", "0.5"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "split" in lines[0], bad.stderr
