"""fit() cut after epoch k and continued from its checkpoint ends exactly where an uninterrupted
fit() ends: the same weights, best epoch, per-epoch curves and test numbers (TrainState round trip)."""

from __future__ import annotations

from pathlib import Path

import torch

from attn.config import load_config
from attn.engine.checkpoint import load_checkpoint
from attn.engine.trainer import NullTracker, WorkerInfo, fit
from helpers.reporters import FolderReporter

ROOT = Path(__file__).resolve().parents[3]
# plateau: its learning rates do not depend on train.epochs, so a 2-epoch fit continued to 3 epochs
# is the same run as a 3-epoch fit cut after 2 (a cosine schedule spans train.epochs)
SMALL = ["data.train_subset=256", "data.eval_subset=128", "train.batch_size=64", "eval.mc_samples=2",
         "model.hidden_size=32", "eval.viz_images=0", "train.scheduler=plateau"]


def _fit(epochs: int, reporter: FolderReporter, lines: list[str]):
    cfg = load_config(ROOT / "experiments" / "mnist_ram.yaml", SMALL + [f"train.epochs={epochs}"])
    return fit(cfg, WorkerInfo(), reporter, NullTracker(), log=lines.append)


def test_a_cut_and_continued_fit_equals_an_uninterrupted_one(tmp_path):
    whole = FolderReporter(tmp_path / "whole")
    reference = _fit(3, whole, [])

    first = FolderReporter(tmp_path / "first")
    _fit(2, first, [])
    # the checkpoint after epoch 2 (index 1; index 2 is the final report of the 2-epoch run)
    cut = first.saved[1]
    state, _ = load_checkpoint(cut)
    assert state["epoch"] == 1 and len(state["history"]) == 2

    lines: list[str] = []
    second = FolderReporter(tmp_path / "second", resume_from=cut)
    resumed = _fit(3, second, lines)
    assert lines[0].startswith(f"resuming from {cut}: epoch 2,"), lines[0]
    assert not any(line.startswith(("epoch 1/", "epoch 2/")) for line in lines)  # it did not start over
    assert [r["epoch"] for r in second.reports] == [2, 2]  # epoch 3 (index 2), then the final report
    for key in ("test_error", "test_error_mc", "test_error_sample", "best_epoch", "best_val_error"):
        assert resumed[key] == reference[key], key
    ref_state, ref_best = load_checkpoint(whole.saved[-1])
    got_state, got_best = load_checkpoint(second.saved[-1])
    assert [h["val_error"] for h in got_state["history"]] == [h["val_error"] for h in ref_state["history"]]
    assert [h["train_loss"] for h in got_state["history"]] == [h["train_loss"] for h in ref_state["history"]]
    for name, tensor in ref_best.items():
        assert torch.equal(got_best[name], tensor), name
    for name, tensor in ref_state["model"].items():
        assert torch.equal(got_state["model"][name], tensor), name
