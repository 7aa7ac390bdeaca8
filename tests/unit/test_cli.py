"""The command line as a user meets it: `run.py -h` lists every command, `--version`, the `attn`
console script is the same program, and `run.py config` shows what an experiment file means (the
resolved experiment, every key, and a JSON Schema that the shipped files satisfy)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import jsonschema
import pytest
import yaml

from attn.cli import COMMANDS, PREPARE, _parse, main, parser
from attn.config import ExperimentConfig, flatten, load_config, read_yaml, validate_config
from attn.config_reference import key_rows
from helpers.cli import EXPERIMENT, ROOT

SHIPPED = sorted((ROOT / "experiments").glob("*.yaml"))


def _out(capsys, argv: list[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's -h and --version
        code = exc.code
    return code, capsys.readouterr().out


def test_help_lists_every_command_and_each_command_has_its_own(capsys):
    code, out = _out(capsys, ["-h"])
    assert code == 0
    listed = out.split("commands:")[1]
    for name, (_, summary) in COMMANDS.items():
        assert f"    {name}" in listed and summary.split()[0] in listed, name
    for name in COMMANDS:
        code, text = _out(capsys, [name, "-h"])
        assert code == 0 and text.startswith(f"usage: run.py {name}"), (name, text[:200])


@pytest.mark.parametrize("after", [["--resume", "train.epochs=5", "ray.address=h:1"],
                                   ["--resume", "last-run", "train.epochs=5", "ray.address=h:1"]])
def test_overrides_may_follow_resume(after):
    """`EXP --resume a=1 b=2`: argparse gives a=1 to --resume and leaves b=2 over; both are overrides,
    in their order, and a named run keeps its name."""
    args = _parse(parser(), ["train", str(EXPERIMENT), *after])
    assert args.resume == ("last-run" if after[1] == "last-run" else "")
    assert args.overrides == ["train.epochs=5", "ray.address=h:1"]


def test_an_unknown_option_after_resume_is_still_refused(capsys):
    with pytest.raises(SystemExit) as stop:
        _parse(parser(), ["train", str(EXPERIMENT), "--resume", "x=1", "--fast"])
    assert stop.value.code == 2 and "unrecognized arguments: --fast" in capsys.readouterr().err


def test_prepare_offers_exactly_the_datasets_of_the_task_registry(capsys):
    from attn.data.tasks import PREPARE_DATASETS

    assert sorted(PREPARE) == sorted(PREPARE_DATASETS)
    from attn.data.multinumber import INPAINT_RADIUS, INPAINT_SCALE

    _, text = _out(capsys, ["prepare", "multinumber", "-h"])
    flat = " ".join(text.split())
    # the help states the generator's defaults, which the command fills in
    assert f"(default {INPAINT_RADIUS})" in flat and f"default {INPAINT_SCALE})" in flat, flat


def test_version_and_the_console_script_is_the_same_program(capsys):
    code, out = _out(capsys, ["--version"])
    assert code == 0 and out.strip() == f"attn {version('attn')}"
    script = Path(sys.executable).parent / "attn"
    assert script.is_file(), f"{script}: the console script is missing; install the project (make install)"
    for argv in (["--version"], ["-h"], ["config", str(EXPERIMENT), "train.lr=0.002"]):
        a = subprocess.run([str(script), *argv], capture_output=True, text=True, timeout=60)
        b = subprocess.run([sys.executable, str(ROOT / "run.py"), *argv], capture_output=True, text=True, timeout=60)
        assert (a.returncode, a.stdout.replace("usage: attn", "usage: run.py").replace("  attn ", "  run.py ")) == (
            b.returncode, b.stdout), argv


def test_config_prints_the_resolved_experiment_that_validates_back_to_the_same(capsys):
    code, out = _out(capsys, ["config", str(EXPERIMENT), "train.lr=0.002", "model.core.kind=lstm"])
    assert code == 0
    printed = yaml.safe_load(out)
    want = load_config(EXPERIMENT, ["train.lr=0.002", "model.core.kind=lstm"])
    assert printed["train"]["lr"] == 0.002 and printed["model"]["core"]["kind"] == "lstm"
    # every key is there with its default filled in, and it reads back as the same experiment
    assert flatten(printed) == flatten(want.to_dict())
    assert validate_config(printed, "printed").to_dict() == want.to_dict()


def test_config_keys_lists_every_key_with_its_default_and_description(capsys):
    code, out = _out(capsys, ["config", "--keys"])
    assert code == 0
    heads = {line.split(" = ")[0]: line for line in out.splitlines() if line and not line.startswith(" ")}
    rows = key_rows()
    assert set(heads) == {r[0] for r in rows}
    # keys of several variants are each listed, with the variants they belong to
    for key in flatten(load_config(ROOT / "experiments" / "svhn_dram.yaml").to_dict()):
        assert key in heads or key.split(".")[0] == "sweep", key
    assert "only data.task: mnist_translated, mnist_cluttered" in heads["data.mnist_canvas_size"]
    assert heads["train.lr"].startswith("train.lr = 0.0003")
    assert "Learning rate" in out.split("train.lr = ")[1].split("\n", 2)[1]

    code, out = _out(capsys, ["config", str(ROOT / "experiments" / "mnist_gpt2.yaml"), "--keys"])
    assert 'model.core.kind = "gpt2"' in out and "model.core.gate_bias" not in out  # that is gtrxl's


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_the_schema_accepts_every_shipped_experiment_file(path, capsys):
    _, out = _out(capsys, ["config", "--schema"])
    schema = json.loads(out)
    jsonschema.validate(read_yaml(path), schema)


def test_the_schema_refuses_what_the_loader_refuses(capsys):
    _, out = _out(capsys, ["config", "--schema"])
    schema = json.loads(out)
    assert json.loads(json.dumps(ExperimentConfig.model_json_schema())) == schema
    raw = read_yaml(EXPERIMENT)
    for bad in ({"train": {**raw["train"], "lrr": 1}}, {"train": {**raw["train"], "lr": -1}},
                {"model": {**raw["model"], "core": {"kind": "gru"}}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**raw, **bad}, schema)
