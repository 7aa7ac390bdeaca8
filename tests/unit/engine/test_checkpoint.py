"""Checkpoints: atomic, self-contained, loaded without unpickling arbitrary objects."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from attn.engine.checkpoint import STATE_FILE, load_checkpoint, load_file, save_checkpoint
from attn.errors import CheckpointError


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/attn-evil",))


def test_roundtrip(tmp_path):
    state = {"model": {"w": torch.arange(3.0)}, "epoch": 4, "best_error": 1.5, "best_epoch": 2}
    save_checkpoint(tmp_path / "c", state, {"w": torch.ones(3)}, "a: 1\n")
    got, best = load_checkpoint(tmp_path / "c")
    assert got["epoch"] == 4 and torch.equal(got["model"]["w"], torch.arange(3.0)) and torch.equal(best["w"], torch.ones(3))
    assert (tmp_path / "c" / "config.yaml").read_text() == "a: 1\n"
    assert not [p for p in (tmp_path / "c").iterdir() if p.name.startswith(".")]  # no temp files left


def test_unreadable_and_foreign_files(tmp_path):
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pt: unreadable checkpoint"):
        load_file(tmp_path / "garbage.pt")
    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="evil.pt: unreadable checkpoint"):
        load_file(tmp_path / "evil.pt")
    assert not os.path.exists("/tmp/attn-evil")
    with pytest.raises(CheckpointError, match="not found"):
        load_file(tmp_path / "missing.pt")
    (tmp_path / "d").mkdir()
    torch.save({"format": 1}, tmp_path / "d" / STATE_FILE)
    with pytest.raises(CheckpointError, match="not an attn checkpoint"):
        load_checkpoint(tmp_path / "d")
    with open(tmp_path / "list.pt", "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(CheckpointError):
        load_file(tmp_path / "list.pt")


def test_resume_check_stops_only_when_no_checkpoint_loads(tmp_path):
    """The driver's check before a resume: a damaged newest checkpoint with a readable older one is
    left to Ray Train (it picks its newest registered one); all damaged stops with the newest's name."""
    from attn.distributed.lifecycle import check_latest_checkpoint

    state = {"model": {"w": torch.ones(2)}, "epoch": 0}
    old = save_checkpoint(tmp_path / "checkpoint_2026-01-01_00-00-00.000001", state, {"w": torch.ones(2)}, "x: 1\n")
    new = save_checkpoint(tmp_path / "checkpoint_2026-01-01_00-00-05.000001", state, {"w": torch.ones(2)}, "x: 1\n")
    check_latest_checkpoint(tmp_path, "x: 1\n")
    (new / STATE_FILE).write_bytes(b"\x00garbage")
    check_latest_checkpoint(tmp_path, "x: 1\n")
    (old / STATE_FILE).write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="00-00-05.000001/state.pt: unreadable checkpoint"):
        check_latest_checkpoint(tmp_path, "x: 1\n")
    check_latest_checkpoint(tmp_path / "no-such-run", "x: 1\n")  # nothing to check: Ray Train starts fresh


def test_checkpoint_of_another_architecture_is_refused_naming_the_keys(tmp_path):
    """Training keys may change on resume; model keys and the task may not (the weights would not fit,
    or would silently mean something else)."""
    from attn.config import dump_config, load_config
    from helpers.cli import EXPERIMENT

    cfg = load_config(EXPERIMENT)
    state = {"model": {"w": torch.ones(2)}, "epoch": 0}
    d = save_checkpoint(tmp_path / "c", state, {"w": torch.ones(2)}, dump_config(cfg))
    more = load_config(EXPERIMENT, ["train.epochs=500", "train.lr=0.01"])
    load_checkpoint(d, expected_config=dump_config(more))  # accepted
    other = load_config(EXPERIMENT, ["model.core.kind=lstm", "model.hidden_size=128"])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(d, expected_config=dump_config(other))
    msg = str(err.value)
    assert "model.core.kind (checkpoint 'rnn', now 'lstm')" in msg and "model.hidden_size (checkpoint 256, now 128)" in msg
    assert "train." not in msg
