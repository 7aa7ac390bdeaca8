"""mnist_translated / mnist_cluttered (the RAM paper's tasks): seeded, reproducible canvases; the
digit whole inside the canvas with its box; clutter cut from other digits of the same split only;
exact sizes and dtype; a test split that is the same across loads, batch sizes, ranks and subsets;
the experiment files and the config checks."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from attn.config import data_config, load_config
from attn.data import BatchLoader, build_data
from attn.data.mnist import load_mnist
from attn.data.mnist_variants import DIGIT, DigitCanvas

from helpers.cli import ROOT


@lru_cache(maxsize=None)
def data(task: str = "mnist_cluttered", size: int = 60, seed: int = 0, eval_subset: int = 200):
    return build_data(
        data_config(task=task, mnist_canvas_size=size, placement_seed=seed, train_subset=300, eval_subset=eval_subset)
    )


def frame_region(canvas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(B, 1, N, N) canvases and (B, 4) 28 x 28 frame boxes -> (B, 28, 28) the pixels under the frame."""
    out = []
    for c, (x0, y0, x1, y1) in zip(canvas[:, 0], boxes.long().tolist()):
        out.append(c[y0:y1, x0:x1])
    return torch.stack(out)


def constant_digits(sizes: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames of one value each (1, 2, ..., R): any pixel names the digit it was cut from."""
    R = sum(sizes)
    pool = torch.arange(1, R + 1, dtype=torch.uint8)[:, None, None].expand(R, DIGIT, DIGIT).contiguous()
    return pool, torch.arange(R) * 3 + 5  # ids need not be positions


def test_canvases_have_the_exact_size_and_dtype():
    for task, size in (("mnist_translated", 60), ("mnist_cluttered", 60), ("mnist_cluttered", 100)):
        d = data(task, size)
        assert (d.spec.channels, d.spec.height, d.spec.width) == (1, size, size)
        assert d.spec.class_names == tuple("0123456789") and d.canvas.size == size
        for split, train in ((d.train, True), (d.test, False)):
            out, boxes = d.canvas.place(split.images[:16], train=train, ids=split.ids[:16])
            assert out.shape == (16, 1, size, size) and out.dtype == torch.uint8
            assert boxes.shape == (16, 4) and boxes.dtype == torch.float32
        x = d.model_input(d.test.images[:4], train=False, ids=d.test.ids[:4])
        assert x.shape == (4, 1, size, size) and x.dtype == torch.float32
    assert data("mnist_cluttered", 60).canvas.pieces == 4 and data("mnist_cluttered", 100).canvas.pieces == 8
    assert data("mnist_translated", 60).canvas.pieces == 0


def test_the_digit_lies_whole_inside_the_canvas_with_its_box():
    mnist = load_mnist()
    for task, size in (("mnist_translated", 60), ("mnist_cluttered", 100)):
        d = data(task, size)
        # The splits hold the real MNIST digits (test = the test file, in order).
        assert torch.equal(d.test.images, mnist.test.images[: len(d.test)])
        for split, train in ((d.train, True), (d.val, False), (d.test, False)):
            digits = split.images[:64]
            out, frame = d.canvas.place(digits, train=train, ids=split.ids[:64])
            assert bool((frame[:, :2] >= 0).all()) and bool((frame[:, 2:] <= size).all())
            assert torch.equal(frame[:, 2:] - frame[:, :2], torch.full((64, 2), float(DIGIT)))
            region = frame_region(out, frame)
            if task == "mnist_translated":
                # Exactly the digit, on black.
                assert torch.equal(region, digits[:, 0])
                assert torch.equal(out.sum(dim=(1, 2, 3)), digits.sum(dim=(1, 2, 3)))
            else:
                # Clutter may add to the frame but never darkens a digit pixel.
                assert bool((region >= digits[:, 0]).all())
            if task == "mnist_translated" and not train:
                # Split.boxes (tight ink boxes, 28 x 28 pixels) moved onto the canvas bound exactly its ink.
                _, ink = d.canvas.place(digits, train=False, ids=split.ids[:64], boxes=split.boxes[:64])
                for c, (x0, y0, x1, y1) in zip(out[:, 0], ink.long().tolist()):
                    ys, xs = torch.nonzero(c, as_tuple=True)
                    assert (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) == (x0, y0, x1, y1)


def test_clutter_comes_from_other_digits_of_the_same_split_only():
    sizes = (7, 3, 5)
    pool, ids = constant_digits(sizes)
    canvas = DigitCanvas(pool, ids, sizes, size=60, pieces=6, piece=8, seed=3)
    bounds = [0, 7, 10, 15]
    for s in range(3):
        rows = torch.arange(bounds[s], bounds[s + 1])
        own_split = set(range(bounds[s] + 1, bounds[s + 1] + 1))  # the values of the split's digits
        for train in (True, False):
            for _ in range(5 if train else 1):
                out, frame = canvas.place(pool[rows, None], train=train, ids=ids[rows])
                for k, r in enumerate(rows.tolist()):
                    c = out[k, 0].clone()
                    x0, y0, x1, y1 = frame[k].long().tolist()
                    assert bool((c[y0:y1, x0:x1] >= r + 1).all())
                    c[y0:y1, x0:x1] = 0  # outside the digit's frame only clutter is left
                    values = set(c.unique().tolist()) - {0}
                    assert values, "constant frames give non-blank pieces"
                    assert values <= own_split - {r + 1}, (s, train, r, values)


def test_a_split_of_one_digit_cannot_be_cluttered():
    pool, ids = constant_digits((4, 1, 3))
    with pytest.raises(Exception, match="val split holds a single digit"):
        DigitCanvas(pool, ids, (4, 1, 3), size=60, pieces=4)
    DigitCanvas(pool, ids, (4, 1, 3), size=60, pieces=0)  # translated: no clutter, fine


def test_training_canvases_are_seeded_draws():
    sizes = (40, 0, 0)
    pool, ids = constant_digits(sizes)
    canvas = DigitCanvas(pool, ids, sizes, size=100, pieces=8)
    x = pool[:, None]

    def gen(seed):
        return torch.Generator().manual_seed(seed)

    a = canvas.place(x, train=True, ids=ids, generator=gen(1))[0]
    assert torch.equal(a, canvas.place(x, train=True, ids=ids, generator=gen(1))[0])
    assert not torch.equal(a, canvas.place(x, train=True, ids=ids, generator=gen(2))[0])
    # Without a generator: the global RNG, which the trainer reseeds every epoch.
    torch.manual_seed(5)
    b = canvas.place(x, train=True, ids=ids)[0]
    c = canvas.place(x, train=True, ids=ids)[0]
    torch.manual_seed(5)
    assert torch.equal(b, canvas.place(x, train=True, ids=ids)[0]) and not torch.equal(b, c)


def test_evaluation_canvases_are_fixed_across_loads_batches_ranks_and_subsets():
    d = data("mnist_cluttered", 100)
    test = d.test
    whole = d.canvas.place(test.images, train=False, ids=test.ids)[0]
    # Another load (fresh tables), with a larger eval subset: the same first canvases.
    again = build_data(data_config(task="mnist_cluttered", mnist_canvas_size=100, train_subset=10, eval_subset=300))
    assert torch.equal(whole, again.canvas.place(again.test.images[:200], train=False, ids=again.test.ids[:200])[0])
    # Batches of 7, and two ranks of a world of 2, see the same canvas per image.
    for world in (1, 2):
        parts, order = [], []
        for rank in range(world):
            for images, _, ids in BatchLoader(test, 7, shuffle=False, rank=rank, world=world):
                parts.append(d.canvas.place(images, train=False, ids=ids)[0])
                order.append(ids)
        pos = {int(i): k for k, i in enumerate(test.ids)}
        got = torch.cat(parts)
        assert torch.equal(got, whole[[pos[int(i)] for i in torch.cat(order)]])
    # The evaluation seed changes them; training canvases do not repeat them.
    other = data("mnist_cluttered", 100, seed=1)
    assert not torch.equal(whole, other.canvas.place(test.images, train=False, ids=test.ids)[0])
    assert not torch.equal(whole[:32], d.canvas.place(test.images[:32], train=True, ids=test.ids[:32])[0])


def test_ids_name_one_digit_of_one_split():
    d = data("mnist_translated", 60)
    full = build_data(data_config(task="mnist_translated", train_subset=1, eval_subset=1))
    assert int(d.test.ids[0]) == 60_000 and int(full.test.ids[0]) == 60_000
    assert len(full.canvas.pool) == 70_000
    with pytest.raises(ValueError, match="image id 70000 is no digit"):
        d.canvas.place(d.test.images[:1], train=False, ids=torch.tensor([70_000]))
    with pytest.raises(ValueError, match="image ids"):
        d.canvas.place(d.test.images[:1], train=True)


def test_experiment_files_load_with_the_papers_settings():
    expect = {
        "mnist_translated.yaml": ("mnist_translated", 60, 3),
        "mnist_cluttered60.yaml": ("mnist_cluttered", 60, 3),
        "mnist_cluttered100.yaml": ("mnist_cluttered", 100, 4),
        "ram_paper_glimpses.yaml": ("mnist_cluttered", 60, 3),
    }
    for name, (task, size, scales) in expect.items():
        cfg = load_config(ROOT / "experiments" / name)
        assert (cfg.data.task, cfg.data.mnist_canvas_size) == (task, size)
        r = cfg.model.retina
        assert (r.patch_size, r.num_scales, r.scale, cfg.model.num_glimpses) == (12, scales, 2.0, 8)
    sweep = load_config(ROOT / "experiments" / "ram_paper_glimpses.yaml").sweep
    assert sweep.space["model.num_glimpses"].choice == [4, 6, 8]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.task=mnist_translated", "data.clutter_pieces=4"],
         r"data.clutter_pieces = 4 does not apply to data.task 'mnist_translated' \(only to 'mnist_cluttered'\)"),
        (["data.task=mnist", "data.mnist_canvas_size=90"],
         r"data.mnist_canvas_size = 90 does not apply to data.task 'mnist'"),
        (["data.task=mnist_cluttered", "data.mnist_canvas_size=20"], "mnist_canvas_size"),
        (["data.task=mnist_cluttered", "data.clutter_size=30"], "clutter_size"),
        (["data.task=mnist_cluttered", "data.mnist_canvas_size=80"],
         "data.clutter_pieces must be set for data.mnist_canvas_size = 80"),
        (["data.task=mnist_cluttered", "data.canvas_size=100"],
         "the canvas side of 'mnist_cluttered' is data.mnist_canvas_size"),
    ],
)
def test_options_are_validated(overrides, message):
    with pytest.raises(Exception, match=message):
        load_config(None, overrides)


def test_valid_options_pass():
    cfg = load_config(None, ["data.task=mnist_cluttered", "data.mnist_canvas_size=80", "data.clutter_pieces=6",
                             "data.clutter_size=28", "data.placement_seed=3", "data.split_seed=2"]).data
    assert (cfg.mnist_canvas_size, cfg.clutter_pieces, cfg.clutter_size) == (80, 6, 28)
    assert load_config(None, ["data.task=mnist_translated", "data.mnist_canvas_size=28"]).data.mnist_canvas_size == 28
