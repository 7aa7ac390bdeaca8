"""Pictures: glimpse boxes drawn where the retina really read, one GIF frame per glimpse, and the
test-pass breakdown (heat map counts, per-class and per-length tables) against slow references."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from attn import viz
from attn.config import load_config
from attn.data.base import IGNORE_INDEX, DataSpec
from attn.engine.objective import objective_for
from attn.engine.pictures import draw_episodes
from attn.engine.split_stats import SplitStats
from attn.models import build_model
from attn.models.retina import Retina, patch_boxes, patch_sizes

from helpers.cli import ROOT


def sampled_region(loc: torch.Tensor, height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """Independent of patch_boxes: read a coordinate-coded image through a one-scale retina of side
    ``size`` and see which pixels came back -> (x0, y0, x1, y1), exclusive ends."""
    xs = torch.arange(1, width + 1, dtype=torch.float64).expand(height, width)
    ys = torch.arange(1, height + 1, dtype=torch.float64)[:, None].expand(height, width)
    image = torch.stack([xs, ys])[None]  # (1, 2, H, W), 0 = outside
    retina = Retina(patch_size=size, num_scales=1)
    patch = retina(retina.pad(image), loc[None], height, width)[0]
    px, py = patch[0][patch[0] > 0], patch[1][patch[1] > 0]
    return int(px.min()) - 1, int(py.min()) - 1, int(px.max()), int(py.max())


def test_boxes_are_drawn_exactly_where_the_retina_sampled():
    H, W = 30, 40  # not square: x and y must not be swapped
    sizes = patch_sizes(4, 3, 2.0)  # 4, 8, 16
    locs = torch.tensor([[0.2, -0.1], [-0.5, 0.45]])
    boxes = patch_boxes(locs, H, W, sizes)  # (T, k, 4)
    for t in range(2):
        for i, size in enumerate(sizes):
            assert tuple(boxes[t, i].tolist()) == sampled_region(locs[t], H, W, size)

    image = torch.zeros(1, H, W, dtype=torch.uint8)
    picture, layout = viz.glimpse_frame(image, boxes, title="x", zoom=6)
    path = Path(__import__("tempfile").mkdtemp()) / "frame.png"
    picture.save(path)
    px = Image.open(path).convert("RGB").load()  # the written PNG, not the in-memory picture
    colors = {0: viz.FIRST_COLOR, 1: viz.STEP_COLORS[1]}
    for t in range(2):
        for box in boxes[t].tolist():
            X0, Y0, X1, Y1 = layout.rect(box)
            assert (X0, Y0) == (layout.left + box[0] * 6, layout.top + box[1] * 6)
            for corner, outside in (((X0, Y0), (X0 - 1, Y0 - 1)), ((X1, Y1), (X1 + 1, Y1 + 1))):
                assert px[corner] == colors[t], (t, box, corner)
                assert px[outside] not in colors.values(), (t, box, outside)
    # the image itself is where the layout says: its top-left pixel block is black, the margin is not
    assert px[layout.left, layout.top + 100] == (0, 0, 0) or px[layout.left, layout.top + 100] in colors.values()
    assert px[layout.left - 1, layout.top + 100] == viz.BACKGROUND


@pytest.mark.parametrize("experiment", ["mnist_ram", "svhn_dram"])
def test_one_gif_frame_per_glimpse(tmp_path, experiment):
    overrides = ["model.hidden_size=32"] + (["model.conv_channels=[4,4,8]"] if experiment == "svhn_dram" else [])
    cfg = load_config(ROOT / "experiments" / f"{experiment}.yaml", overrides)
    if experiment == "mnist_ram":
        spec = DataSpec(1, 28, 28, 10, tuple(str(i) for i in range(10)))
        labels = torch.tensor([3, 5])
    else:
        names = ("<end>", "1", "2", "3", "4", "5", "6", "7", "8", "9", "0")
        spec = DataSpec(1, 54, 54, 11, names, max_tokens=6, end_token=0)
        labels = torch.tensor([[1, 10, 0, IGNORE_INDEX], [4, 0, IGNORE_INDEX, IGNORE_INDEX]])
    torch.manual_seed(0)
    model = build_model(cfg.model, spec)
    images = torch.randint(0, 256, (2, 1, spec.height, spec.width), dtype=torch.uint8)
    r = cfg.model.retina
    drawings = draw_episodes(
        model, images, images.float() / 255, labels, spec, patch_sizes(r.patch_size, r.num_scales, r.scale), seed=3
    )
    for d in drawings:
        T = d.boxes.shape[0]
        expected = cfg.model.num_glimpses if experiment == "mnist_ram" else 3 * cfg.model.steps_per_token()
        assert T == expected
        gif = viz.save_gif(d.frames(), tmp_path / "episode.gif")
        assert Image.open(gif).n_frames == T
    assert drawings[0].title().endswith("| true 10") if experiment == "svhn_dram" else "true 3" in drawings[0].title()


def test_details_match_a_slow_reference():
    spec = DataSpec(1, 6, 8, 3, ("cat", "dog", "eel"))
    details = SplitStats(spec, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    hist = torch.zeros(6, 8)
    confusion = torch.zeros(3, 3)
    for _ in range(3):
        locs = torch.rand(5, 4, 2, generator=g) * 2.4 - 1.2  # some outside [-1, 1]
        log_probs = torch.randn(5, 3, generator=g)
        y = torch.randint(0, 3, (5,), generator=g)
        details.add(locs, log_probs, y)
        for b in range(5):
            confusion[y[b], log_probs[b].argmax()] += 1
            for t in range(4):
                lx, ly = (max(-1.0, min(1.0, float(v))) for v in locs[b, t])
                cx, cy = int((lx + 1) / 2 * 8), int((ly + 1) / 2 * 6)
                hist[min(cy, 5), min(cx, 7)] += 1
    assert torch.equal(details.glimpse_hist.float(), hist)
    assert torch.equal(details.table.confusion.float(), confusion)
    acc = details.table.class_accuracy()
    assert list(acc) == ["cat", "dog", "eel"]
    for i, name in enumerate(spec.class_names):
        assert acc[name] == pytest.approx(float(confusion[i, i] / confusion[i].sum()))


def test_sequence_table_by_hand():
    # tokens: 0 = end, 1..3 digits; max 3 tokens (2 digits + end)
    spec = DataSpec(1, 4, 4, 4, ("<end>", "1", "2", "3"), max_tokens=3, end_token=0)
    details = SplitStats(spec, torch.device("cpu"))
    y = torch.tensor([[1, 2, 0], [3, 0, IGNORE_INDEX], [2, 0, IGNORE_INDEX], [1, 1, 0]])
    pred = torch.tensor([[1, 2, 0], [3, 1, 1], [2, 0, 0], [1, 3, 0]])
    log_probs = torch.nn.functional.one_hot(pred, 4).float()
    details.add(torch.zeros(4, 2, 2), log_probs, y)
    rows = {r["length"]: r for r in details.table.rows()}
    # one digit: "3" read but end missed; "2" read with its end -> 1 of 2 right
    assert rows[1] == {"length": 1, "images": 2, "sequence_accuracy": 0.5, "slot_1": 1.0, "slot_2": rows[1]["slot_2"], "end": 0.5}
    assert rows[1]["slot_2"] != rows[1]["slot_2"]  # NaN: one-digit labels have no second digit
    # two digits: "12" right; "11" read as "13" -> 1 of 2 right, slot 2 right once, ends both right
    assert rows[2] == {"length": 2, "images": 2, "sequence_accuracy": 0.5, "slot_1": 1.0, "slot_2": 0.5, "end": 1.0}


def test_parallel_coordinates_and_label_text(tmp_path):
    rows = [
        {"trial_id": "a", "model.core.kind": "rnn", "train.lr": 1e-4, "metric": 12.0},
        {"trial_id": "b", "model.core.kind": "gpt2", "train.lr": 1e-2, "metric": 8.0},
        {"trial_id": "c", "model.core.kind": "rnn", "train.lr": 1e-3, "metric": float("nan")},
    ]
    path = viz.parallel_coordinates(rows, ["model.core.kind", "train.lr"], "metric", tmp_path / "p.png", metric_label="val")
    assert Image.open(path).size[0] > 300
    with pytest.raises(ValueError, match="no trial has a finite metric"):
        viz.parallel_coordinates(rows[2:], ["train.lr"], "metric", tmp_path / "q.png")
    seq = DataSpec(1, 4, 4, 12, ("<end>",) + tuple("123456789") + ("0", "<sep>"), max_tokens=6, end_token=0)
    assert objective_for(seq).label_text([1, 10, 11, 5, 0, IGNORE_INDEX]) == "1 0 <sep> 5"
    digits = DataSpec(1, 4, 4, 11, ("<end>",) + tuple("123456789") + ("0",), 6, 0)
    assert objective_for(digits).label_text([2, 0]) == "2"


def test_learning_curves_points_and_picture(tmp_path):
    rows = [
        {"epoch": 0, "val_error": 50.0, "epoch_time_s": 30.0},
        {"epoch": 1, "val_error": float("nan"), "epoch_time_s": 60.0},  # no value: skipped, time still counts
        {"epoch": 2, "val_error": 0.0, "epoch_time_s": 30.0},
    ]
    assert viz.curve_points(rows) == ([1, 3], [0.5, 2.0], [50.0, 1e-3])
    path = viz.learning_curves({"rnn": rows, "gtrxl": rows[:1]}, tmp_path / "c.png", title="t")
    assert Image.open(path).size == (1100, 420)


def test_a_first_plot_on_a_machine_says_nothing_on_an_info_console(tmp_path):
    """A Ray worker's root logger is at INFO: the first plot on a fresh machine builds matplotlib's
    font cache, and its "generated new fontManager" must not land among the user's epoch lines."""
    code = (
        "import logging, sys, torch; logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
        "from attn import viz\n"
        f"viz.heatmap(torch.ones(4, 4), viz.Path({str(tmp_path / 'h.png')!r}))\n"
    )
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "fresh")}  # no font cache yet
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list((tmp_path / "fresh").glob("fontlist*.json")), "the cache was not built: the test saw no first plot"
    # its warnings stay ("building the font cache" when that takes over 5 s): a user should know why
    assert "INFO:matplotlib" not in proc.stderr and "fontManager" not in proc.stderr, proc.stderr[-2000:]
