"""Sweeps end to end through `python run.py` (Ray Tune + Ray Train + Optuna + ASHA into a real MLflow
store), including an interrupted sweep continued with --resume. Each sweep's driver starts its own
local Ray of 2 CPUs (whatever the machine has), with Ray's dashboard, whose state API Ray Train's
placement-group cleaner needs once ASHA stops a trial; it runs at most 2 trials at a time."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from attn.config import load_config
from helpers.cli import ROOT, mlflow_client, ray_with_cpus, run_cli

RESUMED = re.compile(r"resuming from (\S*trial-(\S+?)/checkpoint_\S*): epoch (\d+), best val error")


def _sweep_file(tmp_path: Path, train: dict | None = None, **sweep) -> Path:
    raw = yaml.safe_load((ROOT / "experiments" / "mnist_sweep.yaml").read_text())
    raw["data"].update(train_subset=2000, eval_subset=300)
    raw["train"].update(epochs=3, batch_size=32, **(train or {}))
    raw["eval"]["mc_samples"] = 2
    raw["sweep"].update(max_concurrent_trials=2)
    raw["sweep"].update(sweep)
    path = tmp_path / "tiny_sweep.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_four_trial_sweep_with_optuna_and_asha(tmp_path):
    # RandomSampler(seed=2) draws learning rates good, good, bad, bad; two trials at a time: the bad
    # ones reach ASHA's first rung after both good ones and must be stopped there.
    path = _sweep_file(
        tmp_path,
        num_trials=4,
        sampler="random",
        seed=2,
        asha={"grace_period": 1, "reduction_factor": 2},
        space={"train.lr": {"choice": [2.0e-3, 1.0e-7]}, "model.num_glimpses": {"int": [3, 6]}},
    )
    proc = run_cli(tmp_path, str(path), timeout=540, env=ray_with_cpus(2))
    assert proc.returncode == 0
    out = proc.stdout
    assert "<- best" in out and "best trial" in out and "trial_id" in out
    assert "up to 2 at a time" in out, out[-3000:]
    # trials run side by side: each training line says whose it is
    epoch_lines = [line for line in out.splitlines() if re.search(r"\bepoch \d+/\d+ \|", line)]
    assert epoch_lines and all(re.search(r"trial \w+ \| epoch \d+/", line) for line in epoch_lines), epoch_lines[:3]

    client = mlflow_client(tmp_path)
    exp = client.get_experiment_by_name("tiny_sweep")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("attn.kind") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 and len(runs) == 5
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.num_trials"] == "4"
    stopped = [c for c in children if c.data.tags.get("attn.status") == "stopped_early"]
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert all(c.info.status == "KILLED" and c.data.tags["attn.stopped_by"] == "asha" for c in stopped)
    assert len(stopped) + len(finished) == 4
    # ASHA stops a trial whose learning rate cannot learn (1e-7) once a good one reached the rung.
    assert any(c.data.params["train.lr"] == "1e-07" for c in stopped), [c.data.params["train.lr"] for c in stopped]
    assert finished and all(c.data.params["train.lr"] == "0.002" for c in finished)
    for c in children:
        history = client.get_metric_history(c.info.run_id, "val_error")
        assert len(history) >= 1 and [m.step for m in history] == list(range(len(history)))
    for c in finished:
        assert "test_error" in c.data.metrics and len(client.get_metric_history(c.info.run_id, "val_error")) == 3
        assert {a.path for a in client.list_artifacts(c.info.run_id, "checkpoint")} >= {"checkpoint/best_model.pt"}

    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.csv", "best_config.yaml", "comparison"} <= arts
    picture = Path(client.download_artifacts(parent.info.run_id, "comparison/trials_parallel.png", str(tmp_path)))
    assert Image.open(picture).size[0] > 400
    # trial runs are named by what they tried
    for c in children:
        lr, g = c.data.params["train.lr"], c.data.params["model.num_glimpses"]
        assert c.info.run_name.endswith(f"lr={float(lr):.3g} num_glimpses={g}"), c.info.run_name
    best_file = Path(client.download_artifacts(parent.info.run_id, "best_config.yaml", str(tmp_path)))
    best = load_config(best_file)
    assert best.sweep is None and best.train.lr == pytest.approx(2e-3)
    assert parent.data.tags["attn.best_run_id"] in {c.info.run_id for c in finished}


def _read_lines(proc: subprocess.Popen, lines: queue.Queue) -> None:
    for line in proc.stdout:
        lines.put(line)
    lines.put(None)


def _trial_checkpoints(tmp_path: Path) -> dict[str, list[str]]:
    """{trial id: its checkpoint folders on disk} for the sweep's trials (runs/EXP/SWEEP/trials/trial-ID)."""
    return {d.name.removeprefix("trial-"): sorted(c.name for c in d.glob("checkpoint_*"))
            for d in tmp_path.glob("runs/*/*/trials/trial-*")}


def _sweep_cut_after_a_finished_trial(
    tmp_path: Path, path: Path, env: dict
) -> tuple[int | None, list[str], dict | None]:
    """Runs the sweep ``path`` and sends it SIGTERM (as a scheduler or `kill` stops it) as soon as it
    prints that a trial finished. Returns its exit status, its output lines, and each trial's
    checkpoints at that moment (None when no trial finished in time)."""
    cmd = [sys.executable, str(ROOT / "run.py"), str(path)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(proc, lines), daemon=True)
    reader.start()
    out, at_cut = [], None
    try:
        deadline = time.time() + 400
        while time.time() < deadline:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                continue
            if line is None:
                break
            out.append(line)
            if at_cut is None and line.startswith("sweep: trial ") and " finished" in line:
                at_cut = _trial_checkpoints(tmp_path)
                os.kill(proc.pid, signal.SIGTERM)
        if at_cut is None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # out of time: the caller fails with the output so far
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(timeout=10)
    return proc.returncode, out, at_cut


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    """SIGTERM once one trial has finished, while the other is mid-run with a checkpoint: the sweep
    stops as interrupted (the cut trial is the last one, which Tune's own result calls TERMINATED once
    it stopped it); --resume with one trial more then runs no finished trial again, the cut trial
    continues from its checkpoint (its worker says so, and it trains only the epochs after it) into its
    own MLflow run, each epoch logged once, and the new trial runs after it."""
    path = _sweep_file(
        tmp_path,
        train={"patience": 16},
        num_trials=2,  # side by side
        sampler="random",
        seed=10,  # draws 2, 8, 2 epochs: the 2-epoch trial finishes while the 8-epoch one is mid-run
        asha=None,
        space={"train.epochs": {"choice": [2, 8]}},
    )
    env = ray_with_cpus(2)
    returncode, first_out, at_cut = _sweep_cut_after_a_finished_trial(tmp_path, path, env)
    text = "".join(first_out)
    assert at_cut is not None, f"no trial finished within the time:\n{text[-3000:]}"
    assert returncode == 130, text[-3000:]
    assert "continue it with --resume" in text
    trial_lines = [line.split() for line in first_out if line.startswith("sweep: trial ")]
    started_before = {w[2] for w in trial_lines if w[3] == "started:"}
    done_before = {w[2] for w in trial_lines if w[3].rstrip(",") == "finished"}
    assert len(started_before) >= 2 and done_before, text[-3000:]  # the wording the checks below rely on
    # A trial was cut mid-run: it had started, had a checkpoint when the sweep stopped, and had not finished.
    cut = {t for t, cps in at_cut.items() if cps and t not in done_before}
    assert cut and cut <= started_before, (at_cut, done_before, started_before)

    # --resume asking for one more trial: the cut trial goes on from its checkpoint, no finished trial
    # runs again, and once the cut segment is done one new trial runs (its sampler seeded with the two
    # so far), all into the same MLflow parent run.
    again = run_cli(tmp_path, str(path), "--resume", "sweep.num_trials=3", timeout=540, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    out = again.stdout + again.stderr
    assert "2 trials done, running 1 more" in again.stdout, again.stdout[-3000:]
    started = {line.split()[2] for line in again.stdout.splitlines()
               if line.startswith("sweep: trial ") and line.split()[3] == "started:"}
    assert not done_before & started  # finished trials were not run again
    new = started - cut
    assert len(new) == 1 and not new & started_before, (started, cut, started_before)
    resumed = {trial: int(k) for _, trial, k in RESUMED.findall(out)}
    assert not (done_before | new) & set(resumed), resumed
    for trial in cut:  # the cut trial went on from its checkpoint, not from its first epoch
        assert resumed.get(trial, 0) >= 1, (trial, resumed, out[-3000:])

    client = mlflow_client(tmp_path)
    exp = client.get_experiment_by_name("tiny_sweep")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(children) == 3 and len(runs) == 4
    assert sorted(c.info.status for c in children) == ["FINISHED"] * 3
    by_trial = {c.data.tags["attn.trial_id"]: c for c in children}
    assert done_before | cut | new == set(by_trial)
    for c in children:  # one curve per trial, each epoch once (a cut trial went on from its checkpoint)
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "val_error")]
        epochs = int(c.data.params["train.epochs"])
        assert sorted(steps) == list(range(epochs)), (c.data.tags["attn.trial_id"], epochs, steps)
    assert len(list(tmp_path.glob("runs/*/*/trials.csv"))) == 1
    rows = next(tmp_path.glob("runs/*/*/trials.csv")).read_text().strip().splitlines()
    assert len(rows) == 4, rows  # header + every trial of both segments
