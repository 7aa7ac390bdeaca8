"""train.ema_decay: the weight average follows its formula (a float64 hand computation with the
warm-up, buffers copied, frozen parameters untouched), and a run that keeps one validates and keeps
the average, checkpoints it, and resumed from a checkpoint ends where an uninterrupted run ends."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from attn.config import load_config
from attn.engine.averaging import WeightAverage
from attn.engine.checkpoint import load_checkpoint
from attn.engine.trainer import NullTracker, WorkerInfo, fit
from helpers.cli import ROOT
from helpers.reporters import FolderReporter


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3, dtype=torch.float64))
        self.frozen = nn.Parameter(torch.ones(2, dtype=torch.float64), requires_grad=False)
        self.register_buffer("stat", torch.zeros(2, dtype=torch.float64))


def test_the_average_follows_the_formula_with_its_warm_up():
    model = Small()
    average = WeightAverage(model, decay=0.9)
    expected = torch.zeros(3, dtype=torch.float64)
    for t, value in enumerate([1.0, 5.0, -2.0, 4.0], start=1):
        with torch.no_grad():
            model.w.fill_(value)
            model.stat.fill_(10 * t)
            model.frozen.fill_(7.0)
        beta = min(0.9, (1 + t) / (10 + t))  # 2/11, 3/12, 4/13, 5/14: the warm-up, below 0.9
        expected = beta * expected + (1 - beta) * value
        average.update()
        torch.testing.assert_close(average.model.w, expected.expand(3), rtol=0, atol=1e-12)
        assert torch.equal(average.model.stat, model.stat) and torch.equal(average.model.frozen, model.frozen)
    assert average.steps == 4 and not average.model.w.requires_grad
    average.reset()
    assert average.steps == 0 and torch.equal(average.model.w, model.w)
    with pytest.raises(ValueError, match="train.ema_decay"):
        WeightAverage(model, decay=1.0)


SMALL = ["data.train_subset=256", "data.eval_subset=128", "train.batch_size=64", "eval.mc_samples=2",
         "model.hidden_size=32", "eval.viz_images=0", "train.scheduler=plateau", "train.ema_decay=0.95"]


def _fit(epochs: int, reporter: FolderReporter):
    cfg = load_config(ROOT / "experiments" / "mnist_ram.yaml", SMALL + [f"train.epochs={epochs}"])
    return fit(cfg, WorkerInfo(), reporter, NullTracker(), log=lambda line: None)


def test_a_run_keeps_validates_and_checkpoints_the_average(tmp_path):
    whole = FolderReporter(tmp_path / "whole")
    reference = _fit(3, whole)
    state, best = load_checkpoint(whole.saved[-1])
    assert state["average"]["steps"] == 3 * 4  # 256 images in batches of 64, three epochs
    assert state["average"]["model"].keys() == state["model"].keys()
    live, mean = state["model"], state["average"]["model"]
    assert any(v.is_floating_point() and not torch.equal(v, mean[k]) for k, v in live.items())  # not the live weights
    if state["best_epoch"] == state["epoch"]:  # the best weights are the average's, not the live ones
        assert all(torch.equal(best[k], v) for k, v in state["average"]["model"].items())

    first = FolderReporter(tmp_path / "first")
    _fit(2, first)
    second = FolderReporter(tmp_path / "second", resume_from=first.saved[1])
    resumed = _fit(3, second)
    assert resumed["test_error"] == reference["test_error"] and resumed["best_val_error"] == reference["best_val_error"]
    after, _ = load_checkpoint(second.saved[-1])  # the average came back from the checkpoint, not reset
    assert after["average"]["steps"] == 12
    assert all(torch.equal(after["average"]["model"][k], v) for k, v in state["average"]["model"].items())
