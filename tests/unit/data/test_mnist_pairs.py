"""mnist_pairs / mnist_addition (the DRAM paper's MNIST tasks): two digits of one split, without
overlap, inside the canvas, rendered as a slow pixel loop renders them; labels against a reference
made from the MNIST labels by id, in reading order (the digit read first is where the label says,
without biasing which digit is there) or ascending; evaluation canvases the same across loads and batches, training
positions new every batch; unordered pair scoring; the two experiment files train a step, and DRAM
on the addition task is one classification whose gradient reaches the context network (also the
learned start of the no-context ablation)."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from attn.config import data_config, load_config
from attn.data import BatchLoader, build_data
from attn.data.base import DataSpec
from attn.data.mnist import load_mnist
from attn.data.mnist_pairs import DIGIT, pair_positions
from attn.engine.objective import objective_for
from attn.errors import ConfigError
from attn.models import build_model
from helpers.cli import ROOT


@lru_cache(maxsize=None)
def data(task: str = "mnist_pairs", seed: int = 0, **keys):
    return build_data(data_config(task=task, placement_seed=seed, train_subset=300, eval_subset=200, **keys))


def _disjoint(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b).abs() >= DIGIT).any(-1)


@pytest.mark.parametrize("size", [84, 100, 160])
def test_the_second_digit_never_overlaps_the_first_and_stays_inside(size):
    """At 84 px most candidates overlap, so the fallback beside the first digit is taken often too."""
    g = torch.Generator().manual_seed(size)
    first = torch.randint(0, size - DIGIT + 1, (20000, 2), generator=g)
    second = pair_positions(first, size, g)
    assert bool(_disjoint(first, second).all())
    assert int(second.min()) >= 0 and int(second.max()) <= size - DIGIT


def _slow_canvas(a: torch.Tensor, b: torch.Tensor, at: torch.Tensor, size: int) -> torch.Tensor:
    canvas = torch.zeros(size, size, dtype=torch.uint8)
    for digit, (top, left) in zip((a, b), at.tolist()):
        for y in range(DIGIT):
            for x in range(DIGIT):
                canvas[top + y, left + x] = max(int(canvas[top + y, left + x]), int(digit[y, x]))
    return canvas


def test_canvases_hold_the_digit_and_its_partner_where_the_frames_say():
    d = data()
    canvas = d.canvas
    images, _, ids = next(iter(BatchLoader(d.val, 6, shuffle=False)))
    out, frames = canvas.place(images, train=False, ids=ids)
    assert out.shape == (6, 1, 100, 100) and out.dtype == torch.uint8 and frames.shape == (6, 2, 4)
    rows = canvas.rows(ids)
    for i in range(6):
        at = frames[i, :, [1, 0]].long()  # (top, left) of each frame
        assert bool(_disjoint(at[0], at[1]))
        partner = canvas.pool[canvas.partner[rows[i]]]
        assert torch.equal(out[i, 0], _slow_canvas(images[i, 0], partner, at, 100))


def test_labels_are_the_two_digits_of_one_split_in_reading_order_or_ascending_or_their_sum():
    mnist = load_mnist(val_fraction=0.1, split_seed=0)
    pairs, sums, ascending = data("mnist_pairs"), data("mnist_addition"), data("mnist_pairs", pair_order="ascending")
    n_train = len(mnist.train) + len(mnist.val)
    label_of = {int(i): int(y) for s in (mnist.train, mnist.val) for i, y in zip(s.ids, s.labels)}
    label_of.update({int(i) + n_train: int(y) for i, y in zip(mnist.test.ids, mnist.test.labels)})
    canvas = pairs.canvas
    pool_labels = torch.cat([s.labels for s in (mnist.train, mnist.val, mnist.test)])  # the pool's row order
    for name, split, own in (("train", pairs.train, mnist.train), ("val", pairs.val, mnist.val),
                             ("test", pairs.test, mnist.test)):
        rows = canvas.rows(split.ids)
        partner_rows = canvas.partner[rows]
        same_split = set(canvas.rows(torch.as_tensor(
            [int(i) + (n_train if name == "test" else 0) for i in own.ids])).tolist())
        assert set(partner_rows.tolist()) <= same_split and bool((partner_rows != rows).all()), name
        for k in range(len(split)):
            a = label_of[int(split.ids[k])]
            b = int(pool_labels[partner_rows[k]])
            assert split.labels[k].tolist() == [a + 1, b + 1, 0], (name, k)
            assert getattr(ascending, name).labels[k].tolist() == [min(a, b) + 1, max(a, b) + 1, 0], (name, k)
            assert int(getattr(sums, name).labels[k]) == a + b
    assert pairs.spec.max_tokens == 3 and pairs.spec.end_token == 0 and pairs.spec.unordered_slots == 2
    assert sums.spec.num_classes == 19 and sums.spec.end_token is None


@pytest.mark.parametrize("train", [False, True])
def test_left_to_right_the_first_label_is_the_digit_read_first_and_either_digit_can_be_it(train):
    """Reading order: the first label's digit is the one whose frame starts further left (the higher one
    on a tie), found here from the rendered pixels by a slow loop. The label follows the positions
    without biasing the canvases: the smaller digit is the left one in about half of the pairs (the
    ascending order placed by its label would put it there every time)."""
    d = data()
    images, labels, ids = next(iter(BatchLoader(d.train if train else d.test, 200, shuffle=False)))
    torch.manual_seed(0)
    out, frames = d.canvas.place(images, train=train, ids=ids)
    partners = d.canvas.pool[d.canvas.partner[d.canvas.rows(ids)]]
    smaller_left = differ = 0
    for i in range(len(ids)):
        at = frames[i, :, [1, 0]].long()  # (top, left) of the digit's frame, then its partner's
        first = min(range(2), key=lambda k: (int(at[k, 1]), int(at[k, 0])))
        assert first == 0, (i, at.tolist())
        # the digit the label names first (its pool row's label) is drawn in the first frame
        assert torch.equal(_slow_canvas(images[i, 0], partners[i], at, 100), out[i, 0])
        a, b = int(labels[i, 0]) - 1, int(labels[i, 1]) - 1
        if a != b:
            differ += 1
            smaller_left += a < b
    assert 0.35 < smaller_left / differ < 0.65, (smaller_left, differ)


def test_evaluation_canvases_are_fixed_and_training_ones_new_every_batch():
    d, again, other = data(), build_data(data_config(task="mnist_pairs", placement_seed=0, eval_subset=50)), data(seed=1)
    images, _, ids = next(iter(BatchLoader(d.test, 50, shuffle=False)))
    first = d.model_input(images, train=False, ids=ids)
    assert torch.equal(first, again.model_input(images, train=False, ids=ids))  # another load, another subset
    halves = torch.cat([d.model_input(images[i:i + 25], train=False, ids=ids[i:i + 25]) for i in (0, 25)])
    assert torch.equal(first, halves)
    assert not torch.equal(first, other.model_input(images, train=False, ids=ids))
    torch.manual_seed(0)
    one = d.model_input(images, train=True, ids=ids)
    assert not torch.equal(one, d.model_input(images, train=True, ids=ids))


@pytest.mark.parametrize("truth", [[4, 8, 0], [8, 4, 0]], ids=["label-ascending", "label-left-to-right"])
def test_a_pair_is_right_in_either_order_whatever_order_its_label_is_stored_in(truth):
    """Digits 3 and 7, the label stored smaller first or in reading order (7 on the left): predictions
    (3, 7) and (7, 3) are right, (3, 3) and a pair without its end token wrong, in the evaluation sums,
    the per-image check of the pictures and the per-length table of the test split."""
    from attn.engine.split_stats import SplitStats

    spec = DataSpec(1, 100, 100, 11, ("<end>",) + tuple("0123456789"), max_tokens=3, end_token=0, unordered_slots=2)
    objective = objective_for(spec)
    preds = [[4, 8, 0], [8, 4, 0], [4, 4, 0], [8, 4, 5]]
    log_probs = torch.full((len(preds), 3, 11), -9.0)
    for i, tokens in enumerate(preds):
        for j, t in enumerate(tokens):
            log_probs[i, j, t] = 0.0
    targets = torch.tensor([truth] * len(preds))
    # EVAL_SUMS: nll, tokens, correct, ...
    assert objective.score_batch(log_probs, targets)[2].item() == 2.0
    for pred in (objective.predict(log_probs), log_probs.argmax(-1)):  # sorted, or as the episode read them
        assert [objective.correct(p.tolist(), truth) for p in pred] == [True, True, False, False]
    stats = SplitStats(spec, torch.device("cpu"))
    stats.add(torch.zeros(4, 9, 2), log_probs, targets)
    (row,) = stats.table.rows()
    assert row["length"] == 2 and row["images"] == 4 and row["sequence_accuracy"] == 0.5


def test_the_experiment_files_and_dram_classifying_the_sum():
    cfg = load_config(ROOT / "experiments" / "dram_mnist_addition.yaml", ["model.hidden_size=32"])
    d = data("mnist_addition")
    model = build_model(cfg.model, d.spec, (d.mean, d.std))
    images, labels, ids = next(iter(BatchLoader(d.train, 8, shuffle=True, seed=0)))
    episode = model(d.model_input(images, train=True, ids=ids))
    assert episode.log_probs.shape == (8, 19) and episode.log_pi.shape == (8, 8) and episode.locations.shape == (8, 8, 2)
    objective_for(d.spec).loss(episode, labels, 0.01).total.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith(("context.", "glimpse.")))
    ablation = load_config(ROOT / "experiments" / "dram_mnist_pairs.yaml", ["model.hidden_size=32",
                                                                            "model.context={kind: none}"])
    model = build_model(ablation.model, data().spec, (d.mean, d.std))
    p = data()
    images, labels, ids = next(iter(BatchLoader(p.train, 8, shuffle=True, seed=0)))
    episode = model(p.model_input(images, train=True, ids=ids), **objective_for(p.spec).slots(labels))
    objective_for(p.spec).loss(episode, labels, 0.01).total.backward()
    assert [n for n, _ in model.context.named_parameters()] == ["ctx"] and model.context.ctx.grad is not None
    with pytest.raises(ConfigError, match="data.mnist_canvas_size.*84"):
        load_config(ROOT / "experiments" / "dram_mnist_pairs.yaml", ["data.mnist_canvas_size=60"])
