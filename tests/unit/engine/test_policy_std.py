"""sigma of the location policy decaying over training (model.policy_std_final): the schedule by
hand, what each training epoch samples with, and what the test and a rebuilt model sample with."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import attn.models.ram as ram_module
from attn.config import load_config
from attn.data import build_data
from attn.engine.trainer import NullTracker, WorkerInfo, fit
from attn.errors import ConfigError
from attn.models import build_model
from attn.models.policy import policy_std_at
from helpers.reporters import FolderReporter

ROOT = Path(__file__).resolve().parents[3]
SMALL = ["data.train_subset=256", "data.eval_subset=128", "train.batch_size=64", "eval.mc_samples=2",
         "model.hidden_size=32", "eval.viz_images=0", "train.epochs=3", "model.policy_std=0.2"]


def test_the_schedule_is_a_cosine_from_policy_std_to_the_final_sigma():
    # 5 epochs: cos(0) = 1, cos(pi/4), cos(pi/2) = 0, cos(3pi/4), cos(pi) = -1
    got = [policy_std_at(0.2, 0.05, e, 5) for e in range(5)]
    half = 0.15 / 2
    want = [0.2, 0.05 + half * (1 + math.sqrt(0.5)), 0.125, 0.05 + half * (1 - math.sqrt(0.5)), 0.05]
    assert got == pytest.approx(want, abs=1e-12)
    assert policy_std_at(0.2, 0.05, 9, 5) == 0.05  # a run resumed with more epochs keeps the final sigma
    assert policy_std_at(0.2, None, 3, 5) == 0.2
    assert policy_std_at(0.2, 0.05, 0, 1) == 0.2  # one epoch: it trains at policy_std


def test_each_epoch_samples_with_its_sigma_and_the_test_with_the_final_one(monkeypatch):
    cfg = load_config(ROOT / "experiments" / "mnist_ram.yaml", SMALL + ["model.policy_std_final=0.05"])
    seen: list[tuple[bool, float]] = []  # (training pass, sigma) of every episode's log pi
    real = ram_module.gaussian_log_prob

    def spy(sample, mu, std):
        import torch

        seen.append((torch.is_grad_enabled(), std))
        return real(sample, mu, std)

    monkeypatch.setattr(ram_module, "gaussian_log_prob", spy)
    lines: list[str] = []
    fit(cfg, WorkerInfo(), FolderReporter(), NullTracker(), log=lines.append)
    training = [std for grad, std in seen if grad]
    per_epoch = len(training) // 3  # 256 images, batch 64: the same number of steps every epoch
    assert [set(training[e * per_epoch:(e + 1) * per_epoch]) for e in range(3)] == [{0.2}, {0.125}, {0.05}]
    assert seen[-1] == (False, 0.05)  # the final test
    data = build_data(cfg.data)
    assert build_model(cfg.model, data.spec, (data.mean, data.std)).std == 0.05  # `run.py eval`, loaded models


def test_a_decaying_sigma_is_refused_with_a_compiled_step():
    with pytest.raises(ConfigError, match="model.policy_std_final changes sigma every epoch.*train.compile=off"):
        load_config(ROOT / "experiments" / "mnist_ram.yaml", ["model.policy_std_final=0.05", "train.compile=default"])
