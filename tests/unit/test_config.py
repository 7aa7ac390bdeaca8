"""The config schema and the command line's handling of bad input: one clear line, exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from attn.config import ExperimentConfig, load_config
from attn.errors import ConfigError
from helpers.cli import ROOT


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_defaults_and_experiment_file():
    cfg = load_config(ROOT / "experiments" / "mnist_ram.yaml")
    assert cfg.model.num_glimpses == 6 and cfg.model.retina.patch_size == 8
    assert cfg.tracking.experiment_name == "mnist_ram"
    assert ExperimentConfig().train.lr == pytest.approx(3e-4)


def test_overrides_are_typed():
    cfg = load_config(ROOT / "experiments" / "mnist_ram.yaml", ["train.lr=1e-3", "model.core.kind=lstm", "eval.mc_samples=3"])
    assert cfg.train.lr == pytest.approx(1e-3) and cfg.model.core.kind == "lstm" and cfg.eval.mc_samples == 3


@pytest.mark.parametrize(
    "override,needle",
    [
        ("train.lrr=0.1", "unknown key 'train.lrr'"),
        ("trian.lr=0.1", "unknown key 'trian'"),
        ("train.lr=fast", "key 'train.lr' = 'fast' is invalid"),
        ("train.lr=-1", "greater than 0"),
        ("model.num_glimpses=0", "key 'model.num_glimpses' = 0"),
        ("model.core.kind=gru", "allowed values are 'rnn', 'lstm', 'gpt2', 'trxl' or 'gtrxl'"),
        ("model.core.num_heads=3", "model.core.num_heads = 3 does not apply to model.core.kind 'rnn'"),
        ("train.batch_size=1.5", "key 'train.batch_size'"),
        ("train.lr", "expected key=value"),
    ],
)
def test_bad_overrides_raise_one_clear_error(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "experiments" / "mnist_ram.yaml", [override])
    msg = str(err.value)
    assert needle in msg and "\n" not in msg
    assert override.partition("=")[0] in msg  # names the key
    if "=" in override:
        assert "mnist_ram.yaml" in msg  # and the file


def _assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_the_words_off_and_on_are_options_and_booleans_still_read(tmp_path):
    """YAML 1.1 reads off/on/yes/no as booleans, which would make `compile: off` or
    `data_on_device: off` fail their own option lists; experiment YAML reads only true/false as
    booleans, and a boolean key still takes the words."""
    path = tmp_path / "e.yaml"
    path.write_text("base: %s\ntrain: {compile: off, data_on_device: on}\ndata: {use_extra: no}\n"
                    % (ROOT / "experiments" / "svhn_dram.yaml"))
    cfg = load_config(path)
    assert (cfg.train.compile, cfg.train.data_on_device, cfg.data.use_extra) == ("off", "on", False)
    cfg = load_config(path, ["train.compile=reduce-overhead", "train.data_on_device=off", "data.use_extra=yes",
                             "eval.seed=7"])
    assert (cfg.train.compile, cfg.train.data_on_device, cfg.data.use_extra, cfg.eval.seed) == (
        "reduce-overhead", "off", True, 7)
    assert load_config(path, ["data.use_extra=True"]).data.use_extra is True
    with pytest.raises(ConfigError, match="train.compile.*'off', 'default' or 'reduce-overhead'"):
        load_config(path, ["train.compile=true"])


def test_width_checked_at_load():
    with pytest.raises(ConfigError, match=r"model.core.num_heads = 3 must divide model.hidden_size = 256"):
        load_config(ROOT / "experiments" / "mnist_ram.yaml", ["model.core.kind=gpt2", "model.core.num_heads=3"])


def test_cli_unknown_key(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model:\n  num_glimpes: 6\n")
    _assert_one_line_error(run_cli(str(f)), 2, "bad.yaml", "model.num_glimpes", "num_glimpses")


def test_cli_wrong_type(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  epochs: many\n")
    _assert_one_line_error(run_cli(str(f)), 2, "bad.yaml", "train.epochs", "'many'")


def test_cli_out_of_range_override():
    _assert_one_line_error(run_cli("experiments/mnist_ram.yaml", "model.policy_std=5"), 2, "model.policy_std", "less than or equal to 1")


def test_cli_malformed_yaml(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("train:\n  lr: [0.1\n")
    _assert_one_line_error(run_cli(str(f)), 2, "broken.yaml", "malformed YAML", "line")


def test_cli_missing_file(tmp_path):
    _assert_one_line_error(run_cli(str(tmp_path / "nope.yaml")), 2, "nope.yaml", "no such experiment file")


def test_cli_top_level_not_mapping(tmp_path):
    f = tmp_path / "list.yaml"
    f.write_text("- a\n- b\n")
    _assert_one_line_error(run_cli(str(f)), 2, "list.yaml", "mapping")


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_every_experiment_file_is_valid(path):
    cfg = load_config(path)
    assert cfg.tracking.experiment_name == path.stem
