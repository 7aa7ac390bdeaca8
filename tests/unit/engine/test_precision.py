"""train.precision: bf16 and fp16 train the real loop (loss falls) and land near fp32 after the same
steps, weights stay float32, fp16's loss scale is saved with the checkpoint, and both stay free of
host reads (tests/unit/engine/test_host_syncs.py counts them with fp32; here for bf16 and fp16)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attn.config import load_config
from attn.data import BatchLoader, build_data
from attn.engine.optim import build_optimizer
from attn.engine.passes import NonFiniteGuard, train_epoch
from attn.engine.precision import Precision, cpu_has_native_bf16
from attn.engine.train_state import TrainState
from attn.models import build_model
from helpers.cli import ROOT

SMALL = ["data.train_subset=1024", "data.eval_subset=64", "train.batch_size=64", "model.hidden_size=64", "train.lr=2e-3"]


def _train(precision: str, core: str = "rnn", epochs: int = 3):
    cfg = load_config(ROOT / "experiments" / "mnist_ram.yaml", SMALL + [f"model.core.kind={core}"])
    data = build_data(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.spec, (data.mean, data.std))
    optimizer = build_optimizer(model, cfg.train)
    p = Precision(precision, torch.device("cpu"))
    loader = BatchLoader(data.train, 64, shuffle=True, seed=0)
    losses = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        torch.manual_seed(epoch)
        out = train_epoch(model, loader, data, optimizer, rl_coef=0.01, device=torch.device("cpu"), precision=p,
                          nonfinite=NonFiniteGuard(limit=20))
        losses.append(out["nll"])
    return losses, model, optimizer, p


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_near_fp32(precision):
    ref, _, _, _ = _train("fp32")
    got, model, _, p = _train(precision)
    assert got[-1] < 0.9 * got[0], got  # it learns (fp32: 2.14 -> 1.85 in these 48 steps)
    # the same steps in lower precision: the classifier's loss ends within 10% of fp32's
    assert abs(got[-1] - ref[-1]) < 0.10 * ref[-1], (got, ref)
    assert all(q.dtype == torch.float32 for q in model.parameters())
    assert (p.scaler is not None) == (precision == "fp16")


def test_a_transformer_core_trains_in_bf16():
    got, _, _, _ = _train("bf16", core="gtrxl", epochs=2)
    assert got[-1] < got[0], got


def test_the_fp16_loss_scale_is_part_of_the_checkpoint(tmp_path):
    _, model, optimizer, p = _train("fp16", epochs=1)
    p.scaler.update(1024.0)
    state = TrainState(model, optimizer, None, p)
    state.epoch = 0
    folder = state.save(tmp_path, "cfg: 1\n")
    fresh = Precision("fp16", torch.device("cpu"))
    assert fresh.scaler.get_scale() != 1024.0
    TrainState(model, optimizer, None, fresh).restore(folder, "cfg: 1\n")
    assert fresh.scaler.get_scale() == 1024.0


def _x86_flags() -> set[str] | None:
    """The CPU's feature flags from Linux's /proc/cpuinfo; None elsewhere (another OS, or ARM's "Features")."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    line = next((line for line in lines if line.startswith("flags")), None)
    return set(line.split(":", 1)[1].split()) if line else None


@pytest.mark.skipif(_x86_flags() is None, reason="reads an x86 CPU's flags from Linux's /proc/cpuinfo")
def test_native_bf16_is_what_the_cpu_flags_say():
    flags = _x86_flags()
    assert cpu_has_native_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags), sorted(f for f in flags if "avx512" in f)


def test_bf16_on_a_cpu_without_native_bfloat16_says_fp32_is_faster():
    note = Precision("bf16", torch.device("cpu")).note(native_bf16=False)
    assert "no native bfloat16" in note and "train.precision=fp32" in note
    assert Precision("bf16", torch.device("cpu")).note(native_bf16=True) is None
    for other in ("fp32", "fp16"):
        assert Precision(other, torch.device("cpu")).note(native_bf16=False) is None
