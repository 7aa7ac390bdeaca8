"""Your own images: the image_folder / image_sequences loaders, `run.py init-experiment`, bad folders. (RAM /
DRAM trained end to end on them through Ray Train into MLflow: tests/e2e/test_image_folder_training.py.)

Every folder is made from real MNIST digits written as PNG files:
    gray:  train/<class>/ and test/<class>/ of 28x28 grayscale digits (no val/: held out per class);
    rgb:   one pool <class>/ of RGB digits in a bright colour on a dark coloured background, on canvases
           of several non-square sizes (36x44, 44x36, 30x40);
    seq:   train/ (labels.csv) and test/ (labels.json) of 1-3 digits side by side (28 x 28n), labelled
           with the digit string.
Class folders are named by words ("zero" .. "nine"), so their sorted order differs from the digits'.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attn.cli import main
from attn.config import load_config
from attn.data import build_data
from attn.data import own_images as imf
from attn.data.base import IGNORE_INDEX
from attn.data.own_images import inspect_folder
from attn.errors import DataError
from helpers.image_folders import NAMES, make_gray, make_rgb, make_seq, mnist_arrays

@pytest.fixture(scope="module")
def mnist():
    return mnist_arrays()


def cfg_of(root: Path, *overrides: str, task: str = "image_folder"):
    model = [] if task == "image_folder" else ["model.name=dram", "model.retina.patch_size=12"]
    return load_config(None, [f"data.task={task}", f"data.data_dir={root}", *model, *overrides]).data


@pytest.fixture(scope="module")
def gray_dir(tmp_path_factory, mnist) -> Path:
    return make_gray(tmp_path_factory.mktemp("gray") / "digits", mnist)


@pytest.fixture(scope="module")
def rgb_dir(tmp_path_factory, mnist) -> Path:
    return make_rgb(tmp_path_factory.mktemp("rgb") / "digits", mnist, n=8)


@pytest.fixture(scope="module")
def seq(tmp_path_factory, mnist):
    root = tmp_path_factory.mktemp("seq") / "numbers"
    return root, make_seq(root, mnist)


def _mnist_index(files: list, ids) -> list[int]:
    """The MNIST index each listed image was written from (its file name)."""
    return [int(Path(files[i].rel).stem) for i in ids]


# ---------------------------------------------------------------------------------------------
# image_folder
# ---------------------------------------------------------------------------------------------
def test_split_folders_class_names_labels_pixels_and_held_out_validation(gray_dir, mnist):
    data = build_data(cfg_of(gray_dir))
    assert data.spec.class_names == tuple(sorted(NAMES))
    assert (data.spec.channels, data.spec.height, data.spec.width, data.spec.num_classes) == (1, 28, 28, 10)
    assert data.spec.end_token is None and data.spec.max_tokens == 1
    listing = imf.list_image_folder(gray_dir)
    for split, source in (("train", "train"), ("val", "train"), ("test", "test")):
        s = getattr(data, split)
        assert s.images.dtype == torch.uint8 and s.images.shape[1:] == (1, 28, 28)
        x, y = mnist[source]
        idx = _mnist_index(listing.files, s.ids.tolist())
        assert all(listing.files[i].rel.startswith(f"{source}/") for i in s.ids.tolist())
        # labels name the digit that was written, through the sorted class names
        assert [NAMES.index(data.spec.class_names[c]) for c in s.labels.tolist()] == y[idx].tolist()
        assert np.array_equal(s.images[:, 0].numpy(), x[idx])
    # val: a seeded 10% of each class of train/ (2 of 20); test: test/ exactly
    assert np.bincount(data.val.labels.numpy(), minlength=10).tolist() == [2] * 10
    assert len(data.train) == 180 and len(data.test) == 50
    assert not set(data.train.ids.tolist()) & set(data.val.ids.tolist())
    again = build_data(cfg_of(gray_dir))
    assert again.val.ids.tolist() == data.val.ids.tolist()
    other = build_data(cfg_of(gray_dir, "data.split_seed=1"))
    assert other.val.ids.tolist() != data.val.ids.tolist()
    assert sorted(other.val.ids.tolist() + other.train.ids.tolist()) == sorted(
        data.val.ids.tolist() + data.train.ids.tolist()
    )


def test_pool_rgb_non_square_fit_pad_stretch(rgb_dir, mnist):
    base = ["data.color=rgb", "data.pad_fill=7"]
    fit = build_data(cfg_of(rgb_dir, *base, "data.target_size=[40, 40]"))
    assert (fit.spec.channels, fit.spec.height, fit.spec.width) == (3, 40, 40)
    assert fit.spec.class_names == tuple(sorted(NAMES))
    assert (len(fit.train), len(fit.val), len(fit.test)) == (64, 8, 8)
    # 10% of the 80 held out, shared over the classes by largest remainder: one each from 8 classes
    assert sorted(np.bincount(fit.test.labels.numpy(), minlength=10).tolist()) == [0, 0] + [1] * 8
    listing = imf.list_image_folder(rgb_dir)
    pad = build_data(cfg_of(rgb_dir, *base, "data.target_size=[48, 48]", "data.resize=pad"))
    stretch = build_data(cfg_of(rgb_dir, *base, "data.target_size=[40, 40]", "data.resize=stretch"))
    for k, i in enumerate(fit.train.ids.tolist()[:9]):
        original = np.asarray(Image.open(listing.files[i].path).convert("RGB")).transpose(2, 0, 1)
        h, w = original.shape[1:]
        # fit: scaled to fit 40x40 with the aspect ratio kept, centred on pad_fill
        img = fit.train.images[k].numpy()
        inside = np.argwhere((img != 7).any(axis=0))
        (y0, x0), (y1, x1) = inside.min(0), inside.max(0) + 1
        assert max(y1 - y0, x1 - x0) == 40
        assert (y1 - y0) / (x1 - x0) == pytest.approx(h / w, abs=0.04)
        assert (y0, x0) == ((40 - (y1 - y0)) // 2, (40 - (x1 - x0)) // 2)
        # pad: the image at its own scale, centred; the border is pad_fill
        img = pad.train.images[k].numpy()
        top, left = (48 - h) // 2, (48 - w) // 2
        assert np.array_equal(img[:, top : top + h, left : left + w], original)
        border = np.ones((48, 48), bool)
        border[top : top + h, left : left + w] = False
        assert (img[:, border] == 7).all()
        # stretch: the whole canvas is image
        assert not (stretch.train.images[k].numpy() == 7).all(axis=0).any()


def test_own_size_needs_one_size_and_channel_kinds(rgb_dir, gray_dir, tmp_path):
    with pytest.raises(DataError, match=r"\.png: .* different sizes need data\.target_size"):
        build_data(cfg_of(rgb_dir, "data.color=rgb"))
    with pytest.raises(DataError, match=r"\.png: a rgb image .* but data\.color = 'gray'; set data\.color=rgb"):
        build_data(cfg_of(rgb_dir, "data.target_size=[40, 40]"))
    # gray images with convert: 3 equal channels; colour images with convert: 1 channel
    rgb_of_gray = build_data(cfg_of(gray_dir, "data.color=rgb", "data.convert=true"))
    plain = build_data(cfg_of(gray_dir))
    assert rgb_of_gray.spec.channels == 3
    assert np.array_equal(rgb_of_gray.test.images.numpy(), np.repeat(plain.test.images.numpy(), 3, axis=1))
    gray_of_rgb = build_data(cfg_of(rgb_dir, "data.target_size=[40, 40]", "data.convert=true"))
    assert gray_of_rgb.spec.channels == 1


def test_cache_is_reused_and_rebuilt_when_a_file_changes(tmp_path, mnist, monkeypatch):
    root = make_gray(tmp_path / "d", mnist, n_train=6, n_test=2)
    cfg = cfg_of(root)
    first = build_data(cfg)
    caches = list((root / "attn-cache").glob("image_folder-*.npz"))
    assert len(caches) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache matches")

    monkeypatch.setattr("attn.data.own_images.cache.decode_all", no_decoding)
    cached = build_data(cfg)
    assert np.array_equal(cached.train.images.numpy(), first.train.images.numpy())
    assert (cached.mean, cached.std) == (first.mean, first.std)
    assert any("cached from" in n for n in cached.notes)
    monkeypatch.undo()

    # a changed image: the cache is rebuilt and the new pixels are read
    target = root / "test" / "seven" / sorted(os.listdir(root / "test" / "seven"))[0]
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(target)
    os.utime(target, ns=(1, 1))
    rebuilt = build_data(cfg)
    listing = imf.list_image_folder(root)
    k = [listing.files[i].path for i in rebuilt.test.ids.tolist()].index(target)
    assert (rebuilt.test.images[k].numpy() == 200).all()
    assert any("changed" in n for n in rebuilt.notes)
    # other options: their own cache file
    build_data(cfg_of(root, "data.target_size=[32, 32]"))
    assert len(list((root / "attn-cache").glob("image_folder-*.npz"))) == 2


def test_statistics_from_the_training_split_unless_given(gray_dir, rgb_dir):
    for data in (build_data(cfg_of(gray_dir)), build_data(cfg_of(rgb_dir, "data.color=rgb", "data.target_size=[36, 44]"))):
        x = data.train.images.numpy().astype(np.float64) / 255.0
        assert data.mean == pytest.approx(x.mean(), rel=1e-12, abs=0)
        assert data.std == pytest.approx(x.std(), rel=1e-12, abs=0)
    given = build_data(cfg_of(gray_dir, "data.mean=0.5"))
    assert given.mean == 0.5 and given.std == build_data(cfg_of(gray_dir)).std
    per_image = build_data(cfg_of(gray_dir, "data.normalize=per_image"))
    assert per_image.per_image
    # the built-in tasks keep MNIST's statistics
    assert (load_config(None).data.mean, load_config(None).data.std) == (0.1307, 0.3081)


# ---------------------------------------------------------------------------------------------
# image_sequences
# ---------------------------------------------------------------------------------------------
def _decode(labels, class_names) -> list[str]:
    out = []
    for row in labels.tolist():
        end = row.index(0)
        assert all(t == IGNORE_INDEX for t in row[end + 1 :])
        out.append("".join(class_names[t] for t in row[:end]))
    return out


def test_sequences_csv_and_json_labels_vocabulary_and_max_length(seq, mnist):
    root, written = seq
    cfg = cfg_of(root, "data.max_length=3", "data.target_size=[28, 84]", "data.resize=pad", task="image_sequences")
    data = build_data(cfg)
    assert data.spec.class_names == ("<end>",) + tuple("0123456789")
    assert (data.spec.end_token, data.spec.max_tokens, data.spec.num_classes) == (0, 4, 11)
    assert load_config(None, ["data.task=image_sequences", "model.name=dram", "model.retina.patch_size=12",
                              "data.max_length=3"]).max_tokens() == 4
    assert data.train.labels.shape[1] == 4 and data.train.images.shape[1:] == (1, 28, 84)
    listing = imf.list_sequences(root)
    by_file = {f"{s}/{name}": label for s, rows in written.items() for name, label in rows}
    for split in ("train", "val", "test"):
        s = getattr(data, split)
        files = [listing.files[listing.image_index[i]].rel for i in s.ids.tolist()]
        assert _decode(s.labels, data.spec.class_names) == [by_file[f] for f in files]
        # pad: the digits at their own scale, centred
        for k, f in enumerate(files[:5]):
            original = np.asarray(Image.open(root / f))
            left = (84 - original.shape[1]) // 2
            assert np.array_equal(s.images[k, 0, :, left : left + original.shape[1]].numpy(), original)
    assert len(data.test) == 15 and len(data.train) + len(data.val) == 60
    assert all(listing.files[listing.image_index[i]].rel.startswith("test/") for i in data.test.ids.tolist())

    short = build_data(cfg_of(root, "data.max_length=2", "data.target_size=[28, 84]", task="image_sequences"))
    n_long = {s: sum(len(label) > 2 for _, label in rows) for s, rows in written.items()}
    assert len(short.test) == 15 - n_long["test"]
    assert any(f"skipped {n_long['test']} of 15 test images" in n for n in short.notes)
    assert short.train.labels.shape[1] == 3


def test_label_file_formats(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text('file,label\na.png,314\n"a.png","3 14"\n\na.png, cat dog \n')
    rows = imf.read_label_file(csv_file)
    assert [r.tokens for r in rows] == [("3", "1", "4"), ("3", "14"), ("cat", "dog")]
    assert rows[2].where.endswith("labels.csv, line 5")
    json_file = tmp_path / "labels.json"
    json_file.write_text(json.dumps([{"file": "a.png", "label": "314"}, {"file": "a.png", "label": ["cat", 7]}]))
    assert [r.tokens for r in imf.read_label_file(json_file)] == [("3", "1", "4"), ("cat", "7")]


# ---------------------------------------------------------------------------------------------
# init-experiment
# ---------------------------------------------------------------------------------------------
def test_inspector_summary_and_written_experiment(gray_dir, rgb_dir, seq, tmp_path, capsys):
    s = inspect_folder(gray_dir)
    assert s.task == "image_folder" and s.classes == sorted(NAMES) and list(s.layout) == ["train", "test"]
    assert s.counts["train"]["seven"] == 20 and s.counts["test"]["seven"] == 5
    assert s.sizes == {(28, 28): 250} and s.modes == {"L": 250}

    out = tmp_path / "experiments" / "mine.yaml"
    assert main(["init-experiment", "--data", str(rgb_dir), "--to", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "10 classes: eight, five" in printed and "heights 30-44, widths 36-44" in printed and "rgb 80" in printed
    cfg = load_config(out)
    assert (cfg.data.task, cfg.data.color, cfg.data.target_size, cfg.model.name) == ("image_folder", "rgb", (44, 44), "ram")
    assert cfg.data.val_fraction == 0.1 and cfg.data.test_fraction == 0.1 and not cfg.data.convert
    assert cfg.model.retina.patch_size * 2 ** (cfg.model.retina.num_scales - 1) >= 33
    assert "# " in out.read_text() and "zero" in out.read_text()
    # never overwritten without --force
    assert main(["init-experiment", "--data", str(gray_dir), "--to", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["init-experiment", "--data", str(gray_dir), "--to", str(out), "--force"]) == 0
    cfg = load_config(out)
    assert (cfg.data.target_size, cfg.model.retina.patch_size, cfg.model.retina.num_scales) == ((28, 28), 8, 1)
    assert "val_fraction" in out.read_text() and "test_fraction" not in out.read_text()

    root, _ = seq
    seq_file = tmp_path / "seq.yaml"
    assert main(["init-experiment", "--data", str(root), "--to", str(seq_file)]) == 0
    cfg = load_config(seq_file)
    assert (cfg.data.task, cfg.model.name, cfg.data.max_length, cfg.data.target_size) == ("image_sequences", "dram", 3, (28, 84))
    assert cfg.model.retina.patch_size >= 9

    # a folder mixing gray and colour images: converted
    mixed = tmp_path / "mixed"
    shutil.copytree(gray_dir / "train", mixed)
    Image.new("RGB", (28, 28), (9, 99, 199)).save(mixed / "three" / "colour.png")
    assert main(["init-experiment", "--data", str(mixed), "--to", str(tmp_path / "mixed.yaml")]) == 0
    assert load_config(tmp_path / "mixed.yaml").data.convert is True


# ---------------------------------------------------------------------------------------------
# bad folders: one line naming the file
# ---------------------------------------------------------------------------------------------
def _bad_empty_class(t: Path, mnist):
    root = make_gray(t / "d", mnist, n_train=2, n_test=1)
    (root / "train" / "ten").mkdir()
    (root / "train" / "ten" / "notes.txt").write_text("no images here")
    return root, "image_folder", [], str(root / "train" / "ten")


def _bad_unreadable(t: Path, mnist):
    root = make_gray(t / "d", mnist, n_train=2, n_test=1)
    bad = root / "train" / "four" / "broken.png"
    bad.write_bytes(b"this is not a PNG")
    return root, "image_folder", [], str(bad)


def _bad_truncated(t: Path, mnist):
    root = make_gray(t / "d", mnist, n_train=2, n_test=1)
    bad = next((root / "test" / "two").iterdir())
    bad.write_bytes(bad.read_bytes()[:60])
    return root, "image_folder", [], str(bad)


def _bad_mixed(t: Path, mnist):
    root = make_gray(t / "d", mnist, n_train=2, n_test=1)
    bad = root / "train" / "one" / "colour.png"
    Image.new("RGB", (28, 28), (200, 10, 10)).save(bad)
    return root, "image_folder", [], str(bad)


def _bad_missing_image(t: Path, mnist):
    root = t / "s"
    make_seq(root, mnist, n_train=4, n_test=2)
    labels = root / "train" / "labels.csv"
    labels.write_text(labels.read_text() + "img/nowhere.png,42,x\n")
    return root, "image_sequences", [], f"{labels}, line 6: image 'img/nowhere.png' not found"


def _bad_no_header(t: Path, mnist):
    root = t / "s"
    make_seq(root, mnist, n_train=4, n_test=2)
    labels = root / "train" / "labels.csv"
    labels.write_text("img/0000.png,1\n")
    return root, "image_sequences", [], f"{labels}: the first line"


BAD = [_bad_empty_class, _bad_unreadable, _bad_truncated, _bad_mixed, _bad_missing_image, _bad_no_header]


@pytest.mark.parametrize("make", BAD, ids=[f.__name__[5:] for f in BAD])
def test_bad_folder_gives_one_line_naming_the_file(tmp_path, mnist, monkeypatch, capsys, make):
    root, task, extra, needle = make(tmp_path, mnist)
    monkeypatch.chdir(tmp_path)

    def no_ray(cfg):
        raise AssertionError("got past the data checks")

    monkeypatch.setattr("attn.distributed.lifecycle.start_ray", no_ray)
    model = ["model.name=ram"] if task == "image_folder" else ["model.name=dram", "model.retina.patch_size=12"]
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"data: {{task: {task}, data_dir: {json.dumps(str(root))}, target_size: [28, 84]}}\n")
    argv = [str(exp), *model, *extra, f"ray.storage_path={tmp_path / 'runs'}"]
    for args in (argv, ["init-experiment", "--data", str(root), "--to", str(tmp_path / "new.yaml"), "--task", task]):
        if make in (_bad_truncated, _bad_mixed) and args[0] == "init-experiment":
            continue  # the inspector reads headers only, and writes convert: true for a mixed folder
        assert main(args) == 1
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert err and err[-1].startswith("error: ") and needle in err[-1], err
        assert "Traceback" not in "\n".join(err)
