"""svhn_background: the extended-background canvas against a float64 per-pixel reference, placement
inside the canvas with the number's box moving along, reproducible evaluation, no wrapped pixel
values, and the task loaded from real format 1 files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attn.config import data_config, load_config
from attn.data import build_data
from attn.data.background import BLEND, NOISE_STD, Canvas, border_level
from attn.data.svhn import read_digit_struct

from helpers.svhn_fixture import make_svhn_dataset

S = 64


def crops_with_a_number(levels=(100, 30, 250), box=(20, 25, 44, 40)) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops of flat background ``level`` with a bright 'number' (value 255 - level // 2) in ``box``."""
    x0, y0, x1, y1 = box
    out = torch.empty(len(levels), 1, S, S, dtype=torch.uint8)
    for i, lv in enumerate(levels):
        out[i] = lv
        out[i, :, y0:y1, x0:x1] = 255 - lv // 2
    return out, torch.tensor([box] * len(levels), dtype=torch.float32)


def reference_eval_canvas(crop: np.ndarray, image_id: int, size: int, seed: int) -> np.ndarray:
    """Float64, pixel by pixel: the seeded noise and spot of one evaluation image, the blend weights
    from the distance to the crop's edge, clip in float, round."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + image_id)
    C = crop.shape[0]
    noise = torch.randn(C, size, size, generator=g).double().numpy()
    top, left = torch.randint(0, size - S + 1, (2,), generator=g).tolist()
    ring = np.concatenate([crop[:, 0, :], crop[:, -1, :], crop[:, 1:-1, 0], crop[:, 1:-1, -1]], axis=1)
    out = np.clip(noise * 0.2 * 255 + np.median(ring, axis=1)[:, None, None], 0, 255)
    for i in range(S):
        for j in range(S):
            d = min(i, j, S - 1 - i, S - 1 - j)
            a = min(1.0, (d + 1) / (BLEND + 1))
            out[:, top + i, left + j] = a * crop[:, i, j] + (1 - a) * out[:, top + i, left + j]
    return np.round(out)


def test_eval_canvas_matches_a_float64_reference():
    crops, _ = crops_with_a_number()
    ids = torch.tensor([7, 3, 12])
    out, _ = Canvas(110, seed=5).place(crops, train=False, ids=ids)
    for k in range(3):
        ref = reference_eval_canvas(crops[k].double().numpy(), int(ids[k]), 110, 5)
        # float32 vs float64 may round a .5 the other way: at most 1 apart, and almost always equal
        diff = np.abs(out[k].numpy().astype(np.float64) - ref)
        assert diff.max() <= 1 and (diff == 0).mean() > 0.999


def test_placement_stays_inside_and_the_box_moves_with_the_number():
    crops, boxes = crops_with_a_number(levels=(100,) * 64)
    out, moved = Canvas(110).place(crops, train=True, boxes=boxes, generator=torch.Generator().manual_seed(0))
    assert out.shape == (64, 1, 110, 110) and out.dtype == torch.uint8
    assert (moved[:, :2] >= 0).all() and (moved[:, 2:] <= 110).all()
    assert len({tuple(b.tolist()) for b in moved}) > 50  # the spots differ from image to image
    for k in range(64):
        x0, y0, x1, y1 = (int(v) for v in moved[k])
        # the number's pixels, exactly, inside the moved box (alpha is 1 there) ...
        assert (out[k, 0, y0:y1, x0:x1] == 205).all()
        # ... and the number's shift equals the box's shift: the crop sits at (x0 - 20, y0 - 25)
        top, left = y0 - 25, x0 - 20
        assert torch.equal(out[k, 0, top + BLEND : top + S - BLEND, left + BLEND : left + S - BLEND],
                           crops[k, 0, BLEND : S - BLEND, BLEND : S - BLEND])


def test_evaluation_is_the_same_every_time_and_independent_of_the_batch():
    crops, _ = crops_with_a_number()
    c = Canvas(186, seed=1)
    ids = torch.tensor([4, 9, 2])
    a, _ = c.place(crops, train=False, ids=ids)
    b, _ = c.place(crops, train=False, ids=ids)
    assert torch.equal(a, b)
    swapped, _ = c.place(crops[[2, 0, 1]], train=False, ids=ids[[2, 0, 1]])
    assert torch.equal(swapped, a[[2, 0, 1]])
    assert not torch.equal(Canvas(186, seed=2).place(crops, train=False, ids=ids)[0], a)
    centre, boxes = Canvas(186, eval_placement="center").place(
        crops, train=False, ids=ids, boxes=torch.tensor([[0.0, 0.0, 64.0, 64.0]] * 3)
    )
    assert boxes[0].tolist() == [61.0, 61.0, 125.0, 125.0]
    with pytest.raises(ValueError, match="ids"):
        c.place(crops, train=False)


def test_background_continues_the_border_level_without_wrapped_values():
    crops, _ = crops_with_a_number(levels=(250, 5))
    assert border_level(crops).flatten().tolist() == [250.0, 5.0]
    out, _ = Canvas(224).place(crops, train=True, generator=torch.Generator().manual_seed(0))
    bright, dark = out[0, 0].float(), out[1, 0].float()
    # N(250, 51^2) clipped at 255: about 1% below 128 (z = -2.4), 46% at 255. Casting before
    # clipping would wrap every value above 255 to 0..~100 instead.
    assert (bright < 128).float().mean() < 0.03 and (bright == 255).float().mean() > 0.3
    assert (dark > 128).float().mean() < 0.03 and (dark == 0).float().mean() > 0.3
    # away from the crop the noise has the border's level and the configured spread
    noise = bright[bright < 255]
    assert float(noise.std()) == pytest.approx(NOISE_STD * 0.6, rel=0.35)


@pytest.fixture(scope="module")
def svhn_root(tmp_path_factory):
    return make_svhn_dataset(tmp_path_factory.mktemp("svhn_bg"), n_train=40, n_test=16, seed=3)


def test_svhn_background_task_from_format_1_files(svhn_root, tmp_path):
    cfg = data_config(task="svhn_background", data_dir=str(svhn_root), use_extra=False, canvas_size=110,
                     cache_dir=str(tmp_path / "cache"), val_fraction=0.25)
    data = build_data(cfg)
    assert data.spec.height == data.spec.width == 110 and data.crop is None
    test = data.test
    assert test.boxes.shape == (len(test), 4)
    # the tight box in crop pixels: the union of the digit boxes, mapped through the 30%-enlarged crop;
    # an unclipped crop puts the number at 64 / 1.3 of the side, 15% of its size in from each edge
    ds = read_digit_struct(svhn_root / "test" / "digitStruct.mat")
    from PIL import Image

    checked = 0
    for k, i in enumerate(test.ids.tolist()):
        name, rows = ds.record(int(i))
        x0, y0 = rows[:, 2].min(), rows[:, 3].min()
        x1, y1 = (rows[:, 2] + rows[:, 4]).max(), (rows[:, 3] + rows[:, 0]).max()
        w, h = x1 - x0, y1 - y0
        width, height = Image.open(svhn_root / "test" / name).size
        if x0 - 0.15 * w >= 0 and y0 - 0.15 * h >= 0 and x1 + 0.15 * w <= width and y1 + 0.15 * h <= height:
            np.testing.assert_allclose(test.boxes[k].numpy(), [0.15 / 1.3 * 64, 0.15 / 1.3 * 64, 1.15 / 1.3 * 64,
                                                               1.15 / 1.3 * 64], atol=1e-3, err_msg=name)
            checked += 1
    assert checked >= 3, f"only {checked} test numbers have an unclipped crop: the check above hardly ran"
    x = data.model_input(test.images[:6], train=False, ids=test.ids[:6])
    again = data.model_input(test.images[:6], train=False, ids=test.ids[:6])
    assert x.shape == (6, 1, 110, 110) and torch.equal(x, again)
    t = data.model_input(test.images[:6], train=True, ids=test.ids[:6])
    assert t.shape == x.shape and not torch.equal(t, x)
    assert data.train.boxes is not None and len(data.train.boxes) == len(data.train)


def test_svhn_background_options_are_validated():
    with pytest.raises(Exception, match="data.canvas_size = 186 does not apply to data.task 'svhn' \\(only to 'svhn_background'\\)"):
        load_config(None, ["data.task=svhn", "model.name=dram", "model.retina.patch_size=12", "data.canvas_size=186"])
    with pytest.raises(Exception, match="data.crop_size = 40 does not apply to data.task 'svhn_background' \\(only to 'svhn'\\)"):
        load_config(None, ["data.task=svhn_background", "model.name=dram", "model.retina.patch_size=12",
                           "data.crop_size=40"])
    with pytest.raises(Exception, match="canvas_size"):
        load_config(None, ["data.task=svhn_background", "data.canvas_size=32"])


def test_number_boxes_match_a_per_record_loop(tmp_path):
    """Tight boxes in crop pixels for every record, bad ones (zeros) between good ones, against a
    slow float64 loop: union of the digit boxes, minus the crop's corner, times size / crop side."""
    from PIL import Image

    from attn.data.svhn import crop_box, ensure_cache
    from attn.data.svhn.load import _read_index
    from helpers.svhn_fixture import make_svhn_folder

    make_svhn_folder(tmp_path / "src", "train", 30, seed=7, max_len=4, long_numbers=2, bad_boxes=4)
    folder = _read_index(ensure_cache(tmp_path / "src" / "train", tmp_path / "cache", image_size=48), "train")
    ds = read_digit_struct(tmp_path / "src" / "train" / "digitStruct.mat")
    assert (folder.status != 0).sum() == 4
    for n in range(len(ds)):
        name, rows = ds.record(n)
        with Image.open(tmp_path / "src" / "train" / name) as im:
            crop = crop_box(rows, *im.size)
        if crop is None:
            assert folder.status[n] != 0 and not folder.number_boxes[n].any()
            continue
        x0, y0 = rows[:, 2].min(), rows[:, 3].min()
        x1, y1 = (rows[:, 2] + rows[:, 4]).max(), (rows[:, 3] + rows[:, 0]).max()
        cx0, cy0, cx1, cy1 = crop
        sx, sy = 48 / (cx1 - cx0), 48 / (cy1 - cy0)
        want = [(x0 - cx0) * sx, (y0 - cy0) * sy, (x1 - cx0) * sx, (y1 - cy0) * sy]
        np.testing.assert_allclose(folder.number_boxes[n], want, rtol=1e-5, atol=1e-4)
