"""Trained models as products, without Ray: transfer between tasks, cost counting, sources and the
experiment-file `base:` chain."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attn.config import load_config
from attn.data.base import DataSpec
from attn.engine.checkpoint import save_checkpoint
from attn.engine.cost import flops_per_image, parameter_counts
from attn.engine.transfer import transfer_weights
from attn.errors import CheckpointError, ConfigError
from attn.models import build_model
from attn.sources import load_source

from helpers.cli import ROOT


SVHN_NAMES = ("<end>",) + tuple("123456789") + ("0",)
SVHN = DataSpec(1, 54, 54, 11, SVHN_NAMES, max_tokens=6, end_token=0)
MULTI = DataSpec(1, 54, 54, 12, SVHN_NAMES + ("<sep>",), max_tokens=6, end_token=0)
SMALL = ["model.hidden_size=32", "model.conv_channels=[4,4,8]"]


def dram(spec: DataSpec, *overrides: str, seed: int = 0) -> tuple[nn.Module, object]:
    cfg = load_config(ROOT / "experiments" / "svhn_dram.yaml", SMALL + list(overrides))
    torch.manual_seed(seed)
    return build_model(cfg.model, spec), cfg


def test_svhn_model_into_multinumber_model_loads_every_compatible_tensor():
    source, _ = dram(SVHN, seed=1)
    target, _ = dram(MULTI, seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    report = transfer_weights(target, source.state_dict())
    after = target.state_dict()
    src = source.state_dict()
    assert set(report.loaded) == {k for k in after if not k.startswith("classifier.")}
    for k in report.loaded:
        assert torch.equal(after[k], src[k]), k
    assert sorted(s.split(":")[0] for s in report.skipped) == ["classifier.fc.bias", "classifier.fc.weight"]
    assert all("class count changed (source 11" in s for s in report.skipped)
    for k in ("classifier.fc.weight", "classifier.fc.bias"):
        assert torch.equal(after[k], before[k])  # left at its initial values
    assert report.new == [] and report.unused == [] and report.reshaped == []
    md = report.markdown("run X")
    assert "classifier.fc.weight" in md and f"{len(report.loaded)} tensors loaded" in md


def test_positional_tables_are_reshaped_and_options_drop_parts():
    # gpt2 cores: the position table has one row per glimpse step, which changes with the glimpse count
    source, _ = dram(SVHN, "model.core.kind=gpt2", "model.glimpses_per_digit=3", seed=1)
    target, _ = dram(SVHN, "model.core.kind=gpt2", "model.glimpses_per_digit=2", seed=2)
    report = transfer_weights(target, source.state_dict(), context="drop")
    src, now = source.state_dict(), target.state_dict()
    reshaped = {r.split(" ")[0] for r in report.reshaped}
    assert reshaped == {"lower.gpt2.wpe.weight", "upper.gpt2.wpe.weight"}
    for k in reshaped:
        n = now[k].shape[0]
        assert n < src[k].shape[0] and torch.equal(now[k], src[k][:n])
    assert {s.split(":")[0] for s in report.skipped} == {k for k in now if k.startswith("context.")}
    with pytest.raises(ValueError, match="init_classifier = keep, but the classifier's shape differs"):
        transfer_weights(dram(MULTI)[0], source.state_dict(), classifier="keep")
    dropped = transfer_weights(dram(SVHN, "model.core.kind=gpt2", "model.glimpses_per_digit=3")[0], source.state_dict(),
                               classifier="drop")
    assert {s.split(":")[0] for s in dropped.skipped} == {"classifier.fc.weight", "classifier.fc.bias"}


def test_flops_match_a_count_of_every_layer_call():
    cfg = load_config(None, ["model.retina.patch_size=4", "model.what_size=8", "model.where_size=8",
                             "model.hidden_size=16", "model.num_glimpses=3"])
    spec = DataSpec(1, 12, 12, 10, tuple("0123456789"))
    model = build_model(cfg.model, spec)
    expected = 0

    def count(module, inputs, output):
        nonlocal expected
        if isinstance(module, nn.Linear):
            rows = inputs[0].numel() // module.in_features  # (B, T-1, d) inputs count T-1 rows
            expected += 2 * rows * module.in_features * module.out_features
        else:  # RNNCell: W_ih x + W_hh h
            expected += 2 * inputs[0].shape[0] * module.hidden_size * (module.input_size + module.hidden_size)

    counted = flops_per_image(model, spec)  # the hand-written rnn episode (attn/models/rnn_episode.py)
    model.hand_written = False  # the module-by-module loop, whose layer calls the hooks see
    counted_loop = flops_per_image(model, spec)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.RNNCell)):
            m.register_forward_hook(count)
    with torch.no_grad():
        model(torch.zeros(1, 1, 12, 12), policy="mean")
    # by hand: 3 glimpses x (what 16->8, where 2->8, out 16->16, core 16->16 + 16->16), 2 emissions
    # (16->8->2) and baselines (16->1), one classifier (16->10)
    by_hand = 2 * (3 * (16 * 8 + 2 * 8 + 16 * 16 + 2 * 16 * 16) + 2 * (16 * 8 + 8 * 2 + 16) + 16 * 10)
    assert counted_loop == expected == by_hand
    # the hand-written episode skips W_hh h_0 at the first glimpse (h_0 = 0) and nothing else
    assert counted == by_hand - 2 * 16 * 16
    assert parameter_counts(model)[0] == sum(p.numel() for p in model.parameters())


def test_sources_from_checkpoint_files_and_bad_paths(tmp_path):
    model, cfg = dram(SVHN)
    from attn.config import dump_config

    folder = save_checkpoint(tmp_path / "ckpt", {"model": model.state_dict()}, model.state_dict(), dump_config(cfg))
    for given in (folder, folder / "best_model.pt", f"file://{folder}"):
        weights = load_source(str(given), "sqlite:///unused.db")
        assert weights.config_yaml == dump_config(cfg)
        assert all(torch.equal(weights.state[k], v) for k, v in model.state_dict().items())
    (folder / "config.yaml").unlink()
    with pytest.raises(CheckpointError, match="config.yaml missing"):
        load_source(str(folder), "sqlite:///unused.db")
    with pytest.raises(CheckpointError, match="neither a file or folder, nor an MLflow run id"):
        load_source(str(tmp_path / "nope"), "sqlite:///unused.db")


def test_experiment_files_can_build_on_a_base(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("model:\n  hidden_size: 64\n  num_glimpses: 4\ntrain:\n  lr: 0.001\n")
    (tmp_path / "sub").mkdir()
    child = tmp_path / "sub" / "child.yaml"
    child.write_text("base: ../base.yaml\nmodel:\n  num_glimpses: 7\n")
    cfg = load_config(child)
    assert (cfg.model.hidden_size, cfg.model.num_glimpses, cfg.train.lr) == (64, 7, 0.001)
    assert cfg.tracking.experiment_name == "child"
    base.write_text("base: sub/child.yaml\n")
    with pytest.raises(ConfigError, match="the files include each other"):
        load_config(child)
    child.write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml: no such experiment file \\(the base of"):
        load_config(child)
    chain = load_config(ROOT / "experiments" / "chain_multinumber.yaml")
    assert chain.data.task == "multinumber" and chain.train.init_from == "experiment:chain_224"
