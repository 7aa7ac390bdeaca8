"""Which run ``--resume`` continues: the folder the run's own settings name. A run started with
``tracking.experiment_name=X`` lives in runs/X/, so ``--resume`` given the same override must look
there, not in the folder of the experiment file's name (where it would continue another run)."""

from __future__ import annotations

from pathlib import Path

from attn.cli import main
from attn.config import load_config
from attn.engine.checkpoint import STATE_FILE
from helpers.cli import ROOT
from helpers.run_folders import write_run_folder

EXPERIMENT = ROOT / "experiments" / "mnist_ram.yaml"


def _run_folder(t: Path, experiment: str, name: str) -> Path:
    """runs/<experiment>/<name> as a run leaves it, its one checkpoint's weights file damaged, so that
    resuming it stops before Ray starts with an error naming that file."""
    overrides = [f"tracking.experiment_name={experiment}", f"tracking.tracking_uri=sqlite:///{t / 'm.db'}"]
    run_dir = t / "runs" / experiment / name
    write_run_folder(run_dir, load_config(EXPERIMENT, overrides), garbage_state=True)
    return run_dir


def _no_ray(cfg) -> None:
    raise AssertionError("resuming a run with a damaged checkpoint must stop before Ray starts")


def _resume(t: Path, capsys, *args: str) -> str:
    assert main([str(EXPERIMENT), *args]) == 1
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_resume_looks_in_the_folder_of_the_overridden_experiment_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("attn.distributed.lifecycle.start_ray", _no_ray)
    # A newer run of the file's own experiment name must not be taken for the probe's.
    probe = _run_folder(tmp_path, "probe", "p1")
    own = _run_folder(tmp_path, "mnist_ram", "m1")
    assert own.stat().st_mtime >= probe.stat().st_mtime

    last = _resume(tmp_path, capsys, "tracking.experiment_name=probe", "--resume")
    assert str(probe / "checkpoint_2026-01-01_00-00-00.000000" / STATE_FILE) in last, last
    last = _resume(tmp_path, capsys, "tracking.experiment_name=probe", "--resume", "p1")
    assert str(probe) in last and "unreadable checkpoint" in last, last
    # without the override: the file's experiment
    last = _resume(tmp_path, capsys, "--resume")
    assert str(own) in last, last
