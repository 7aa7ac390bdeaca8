"""The benchmark commands run, print their table and JSON, and count layer passes correctly."""

from __future__ import annotations

import json
import subprocess
import sys

TINY = ["--batch", "4", "--repeats", "1", "model.hidden_size=16", "model.what_size=8", "model.where_size=8"]


def _json_rows(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_bench_ram_prints_table_then_json():
    proc = subprocess.run([sys.executable, "-m", "attn.bench", "ram", "--steps", "2", "--versus-loop", *TINY],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = _json_rows(proc.stdout)
    assert [r["episode"] for r in rows] == ["hand-written", "loop"]
    assert all(r["name"] == "ram" and r["images_per_s"] > 0 and r["peak_mem_mb"] > 0 for r in rows)
    assert "images_per_s" in proc.stdout.splitlines()[0]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == rows[-1]  # the JSON lines come last
    assert all(r["image"] == 28 for r in rows)


def test_bench_ram_on_a_cluttered_canvas_size():
    """--image 100 with the 100x100 task's retina (4 scales of 12x12: the largest patch is 96 px)."""
    proc = subprocess.run([sys.executable, "-m", "attn.bench", "ram", "--steps", "1", "--image", "100", *TINY,
                           "model.retina.patch_size=12", "model.retina.num_scales=4", "model.num_glimpses=3"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (row,) = _json_rows(proc.stdout)
    assert row["image"] == 100 and row["scales"] == 4 and row["patch"] == 12 and row["images_per_s"] > 0


def test_bench_cores_layer_passes_linear_with_cache_quadratic_without():
    """Per training episode: two-phase T - 1 cached steps (the last location is never needed) plus
    one pass over T positions; stepwise T; the prefix re-run 1 + 2 + .. + T."""
    proc = subprocess.run([sys.executable, "-m", "attn.bench", "cores", "--steps", "1", "--glimpses", "3", "5",
                           "--threads", "1", *TINY], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = _json_rows(proc.stdout)
    assert {r["core"] for r in rows} == {"rnn", "lstm", "gpt2", "trxl", "gtrxl"}
    assert {r["threads"] for r in rows} == {1}
    for r in rows:
        T = r["glimpses"]
        want = {"two_phase": 2 * T - 1, "stepwise": T, "prefix": T * (T + 1) // 2, "-": T}[r["rollout"]]
        assert r["layer_passes"] == want, r
        assert r["images_per_s"] > 0
    assert sorted(r["rollout"] for r in rows if r["core"] == "gpt2") == sorted(["two_phase", "stepwise", "prefix"] * 2)


def test_bench_dram_prints_table_then_json():
    tiny = ["--batch", "4", "--repeats", "1", "--steps", "1", "model.hidden_size=16", "model.conv_channels=[4,4,8]"]
    proc = subprocess.run([sys.executable, "-m", "attn.bench", "dram", *tiny], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["name"] == "dram" and last["image"] == "1x54" and last["glimpses_per_digit"] == 3
    assert last["context"] == "cnn" and last["device"] == "cpu"
    assert last["glimpses"] == 12 and last["images_per_s"] > 0 and last["peak_mem_mb"] > 0


def test_bench_background_prints_table_then_json():
    args = ["--batch", "8", "--repeats", "1", "--steps", "1", "--canvas", "64", "110"]
    proc = subprocess.run([sys.executable, "-m", "attn.bench", "background", *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.strip().splitlines()[-4:]]
    assert [(r["canvas"], r["mode"]) for r in rows] == [(64, "train"), (64, "eval"), (110, "train"), (110, "eval")]
    assert all(r["name"] == "background" and r["images_per_s"] > 0 for r in rows)
