"""A run folder as a finished or interrupted run leaves it, written directly (no training): the run
record (``attn_run.json``) and one checkpoint, for the tests of what ``--resume`` finds and refuses."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from attn.config import ExperimentConfig, dump_config
from attn.distributed.lifecycle import RUN_FILE
from attn.engine.checkpoint import STATE_FILE, save_checkpoint


def write_run_folder(run_dir: Path, cfg: ExperimentConfig, saved: ExperimentConfig | None = None,
                     garbage_state: bool = False) -> Path:
    """``run_dir`` with a checkpoint made under ``cfg`` and a record storing ``saved`` (default ``cfg``)
    as the run's config; ``garbage_state`` damages the checkpoint's weights file. Returns the checkpoint."""
    ckpt = save_checkpoint(run_dir / "checkpoint_2026-01-01_00-00-00.000000", {"model": {}, "epoch": 0},
                           {"w": torch.ones(1)}, dump_config(cfg))
    (run_dir / RUN_FILE).write_text(json.dumps({"run_name": run_dir.name, "mlflow_run_id": "0" * 32,
                                                "tracking_uri": cfg.tracking.tracking_uri,
                                                "config": (saved or cfg).to_dict()}))
    if garbage_state:
        (ckpt / STATE_FILE).write_bytes(b"\x00garbage")
    return ckpt
