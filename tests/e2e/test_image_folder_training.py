"""RAM / DRAM trained end to end through Ray Train into MLflow on your own images: an RGB image folder
and label sequences, each from the experiment file that `run.py init-experiment` wrote (the folders:
helpers/image_folders.py, real MNIST digits written as PNG files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attn.cli import main
from helpers.cli import mlflow_client, only_run, run_clis_together
from helpers.image_folders import NAMES, make_rgb, make_seq, mnist_arrays


@pytest.fixture(scope="module")
def mnist():
    return mnist_arrays()


# ---------------------------------------------------------------------------------------------
# end to end: RAM and DRAM through Ray Train and MLflow, on written experiments
# ---------------------------------------------------------------------------------------------
# per-image normalisation: the background colours vary from image to image
# 10 steps an epoch: 25 epochs on a cosine schedule (12 left seeds at 42-60% test error, chance 80%)
RAM_ARGS = ["train.epochs=25", "train.scheduler=cosine", "train.batch_size=32", "train.lr=2e-3", "data.normalize=per_image",
            "model.hidden_size=64", "model.what_size=64", "model.where_size=64"]
DRAM_ARGS = ["train.epochs=10", "train.batch_size=32", "train.lr=1e-3", "train.scheduler=none", "model.hidden_size=64",
             "model.conv_channels=[16,16,32]", "model.glimpses_per_digit=2", "model.retina.num_scales=2"]
RGB_DIGITS = (0, 1, 2, 3, 4)


@pytest.fixture(scope="module")
def trained_own(ray_head, mnist, tmp_path_factory):
    """RAM on an RGB image folder and DRAM on label sequences, each from the experiment file that
    `run.py init-experiment` wrote, started together on the session's Ray head (1 CPU each).
    {"ram" | "dram": (folder, finished process, what was written)}."""
    ram_dir, dram_dir = tmp_path_factory.mktemp("own_ram"), tmp_path_factory.mktemp("own_dram")
    rgb = make_rgb(ram_dir / "colour digits", mnist, n=80, digits=RGB_DIGITS)
    # 0s and 1s: distinct enough for DRAM to read 1-3 of them within seconds of CPU training
    written = make_seq(dram_dir / "numbers", mnist, n_train=800, n_test=100, digits=(0, 1))
    jobs = []
    for folder, data, extra in ((ram_dir, rgb, RAM_ARGS), (dram_dir, dram_dir / "numbers", DRAM_ARGS)):
        exp = folder / "experiments" / "own.yaml"
        assert main(["init-experiment", "--data", str(data), "--to", str(exp)]) == 0
        jobs.append((folder, [str(exp), "eval.mc_samples=2", f"ray.address={ray_head}", "ray.cpus_per_worker=1", *extra]))
    ram, dram = run_clis_together(jobs, timeout=540)
    return {"ram": (ram_dir, ram, None), "dram": (dram_dir, dram, written)}


def _finished(trained_own, which: str):
    folder, proc, written = trained_own[which]
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow_client(folder)
    return only_run(client, "own"), client, folder, written


def _predictions(client, run, tmp_path: Path) -> list[dict]:
    (tmp_path / "dl").mkdir(exist_ok=True)
    path = client.download_artifacts(run.info.run_id, "glimpses/final/predictions.json", str(tmp_path / "dl"))
    return json.loads(Path(path).read_text())["images"]


def test_ram_trains_on_own_rgb_images(trained_own):
    run, client, tmp_path, _ = _finished(trained_own, "ram")
    digits = RGB_DIGITS
    names = sorted(NAMES[d] for d in digits)
    chance = 100.0 * (1 - 1 / len(names))
    assert run.data.params["data.task"] == "image_folder" and run.data.params["data.color"] == "rgb"
    print(f"RAM: test error {run.data.metrics['test_error']:.1f}% (chance {chance:.0f}%)")
    assert run.data.metrics["test_error"] < chance - 30, run.data.metrics
    missing = [n for n in names if f"test_accuracy.{n}" not in run.data.metrics]
    assert not missing, f"no per-class metric for {missing}"
    # the pictures' titles: predictions.json holds the texts they show
    shown = _predictions(client, run, tmp_path)
    assert shown and {d["truth_text"] for d in shown} <= set(names) and {d["pred_text"] for d in shown} <= set(names)


def test_dram_trains_on_own_label_sequences(trained_own):
    run, client, tmp_path, written = _finished(trained_own, "dram")
    m = run.data.metrics
    assert run.data.params["data.task"] == "image_sequences" and run.data.params["data.max_length"] == "3"
    labels = [label for _, label in written["test"]]
    majority = max(labels.count(x) for x in set(labels)) / len(labels)
    print(f"DRAM: sequence accuracy {1 - m['test_error'] / 100:.3f} (most common label {majority:.3f}), "
          f"digit accuracy {m['test_digit_accuracy']:.3f} (chance 0.5)")
    assert 1 - m["test_error"] / 100 > max(2 * majority, majority + 0.15), m
    assert m["test_digit_accuracy"] > 0.6, m
    # the glimpse pictures (titled with the labels' tokens) and the per-length table are kept with the run
    assert any(a.path.endswith("grid.png") for a in client.list_artifacts(run.info.run_id, "glimpses/final"))
    by_id = {i: label for i, (_, label) in enumerate(written["test"])}
    shown = _predictions(client, run, tmp_path)
    assert shown and all(d["truth_text"] == by_id[d["id"] - 800] for d in shown), shown[:3]
    assert "analysis/sequence_accuracy.csv" in {a.path for a in client.list_artifacts(run.info.run_id, "analysis")}
