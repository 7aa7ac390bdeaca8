"""End to end: `python run.py experiments/svhn_dram.yaml` trains DRAM through Ray Train (2 DDP workers,
on the session's 2-CPU Ray head) into a real MLflow store, on a small SVHN format 1 folder written in
the official structure (real MNIST digits on textured backgrounds), and reads sequence accuracy better
than any constant answer."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from helpers.cli import ROOT, mlflow_client, only_run, run_cli, steps
from helpers.svhn_fixture import make_svhn_folder

# The shipped experiment, shrunk to run in about a minute on 2 cores: smaller crops and widths.
SMALL = [
    "data.use_extra=false",
    "data.max_digits=2",
    "data.image_size=40",
    "data.crop_size=36",
    "data.normalize=per_image",
    "model.hidden_size=64",
    "model.conv_channels=[16,16,32]",
    "model.glimpses_per_digit=2",
    "model.policy_std=0.05",
    "train.batch_size=32",
    "train.lr=1e-3",
    "train.scheduler=none",
    "train.epochs=12",
    "eval.mc_samples=2",
    "ray.num_workers=2",
    "ray.cpus_per_worker=1",
]


def test_dram_trains_on_svhn_format1_through_ray_and_mlflow(tmp_path, ray_head):
    data = tmp_path / "svhn"
    make_svhn_folder(data, "train", 2400, seed=0, max_len=2, long_numbers=6, bad_boxes=4)
    test_records = make_svhn_folder(data, "test", 300, seed=1, max_len=2)
    proc = run_cli(tmp_path, str(ROOT / "experiments" / "svhn_dram.yaml"), f"data.data_dir={data}", *SMALL,
                   f"ray.address={ray_head}", timeout=540)
    assert proc.returncode == 0
    out = proc.stdout + proc.stderr
    assert "epoch 12/12" in proc.stdout and "test sequence error" in proc.stdout
    # Over-long numbers and bad boxes are reported, never silently used or cut.
    assert "skipped 6 of 2400 train images with more than 2 digits" in out
    assert "dropped 4 of 2400 train images" in out

    client = mlflow_client(tmp_path)
    run = only_run(client, "svhn_dram")
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "dram" and run.data.params["data.task"] == "svhn"
    for key in ("val_error", "val_token_accuracy", "val_digit_accuracy", "val_reward", "train_reward",
                "train_glimpses_per_image", "train_token_accuracy", "train_reinforce"):
        assert steps(client, run.info.run_id, key) == list(range(12)), key
    m = run.data.metrics
    # Every image reads 1-2 digits and an end token with 2 glimpses each: 2 to 6 glimpses counted.
    assert 2.0 <= m["train_glimpses_per_image"] <= 6.0

    # Better than the best constant answer (the most common number of the test set) by a margin.
    most_common = Counter(r["digits"] for r in test_records).most_common(1)[0][1] / len(test_records)
    accuracy = 1.0 - m["test_error_mc"] / 100.0
    print(f"DRAM test sequence accuracy {accuracy:.3f} (most common number {most_common:.3f}), digits {m['test_digit_accuracy']:.3f}")
    assert accuracy > max(0.12, 2.0 * most_common), (accuracy, most_common)
    assert m["test_digit_accuracy"] > 0.2  # chance: 0.1
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
    assert "checkpoint/best_model.pt" in arts
    # Pictures every 5 epochs and at the end; the per-length table adds up to the test error.
    for folder in ("glimpses/epoch_005", "glimpses/epoch_010", "glimpses/final"):
        assert f"{folder}/grid.png" in {a.path for a in client.list_artifacts(run.info.run_id, folder)}
    table = Path(client.download_artifacts(run.info.run_id, "analysis/sequence_accuracy.csv", str(tmp_path)))
    rows = list(csv.DictReader(table.open()))
    assert [r["length"] for r in rows] == ["1", "2"] and sum(int(r["images"]) for r in rows) == 300
    right = sum(int(r["images"]) * float(r["sequence_accuracy"]) for r in rows)
    assert 100 * (1 - right / 300) == pytest.approx(m["test_error"], abs=1e-6)
    assert set(rows[1]) == {"length", "images", "sequence_accuracy", "slot_1", "slot_2", "end"}
