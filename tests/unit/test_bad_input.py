"""Bad input anywhere: one line `error: ...` naming the culprit, a non-zero exit, no traceback.

The table runs run.py's entry point (``attn.cli.main``) in this process: every case must stop before
Ray starts. The fuzz tests feed random input to the config loader and the IDX / digitStruct readers:
nothing but our own error may come out.
"""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attn.cli import main
from attn.config import validate_config
from attn.data.idx import read_idx
from attn.data.svhn import read_digit_struct
from attn.errors import ConfigError, DataError
from helpers.cli import ROOT
from helpers.run_folders import write_run_folder
from helpers.svhn_fixture import make_svhn_dataset, matlab_header, write_digit_struct

EXPERIMENT = ROOT / "experiments" / "mnist_ram.yaml"
MNIST = ROOT / "attn" / "data" / "embedded" / "mnist"


def _mnist_copy(root: Path) -> Path:
    d = root / "mnist"
    shutil.copytree(MNIST, d)
    return d


def _yaml(root: Path, text: str) -> str:
    p = root / "exp.yaml"
    p.write_text(text)
    return str(p)


def _svhn(root: Path) -> Path:
    return make_svhn_dataset(root / "svhn", n_train=6, n_test=4)



# Each case: (id, setup(tmp) -> argv, expected exit code, a piece of the message naming the culprit)
CASES = [
    ("missing-file", lambda t: [str(t / "nope.yaml")], 2, "nope.yaml: no such experiment file"),
    ("malformed-yaml", lambda t: [_yaml(t, "train: [1, 2\n")], 2, "malformed YAML at line"),
    ("top-level-list", lambda t: [_yaml(t, "- 1\n- 2\n")], 2, "top level must be a mapping"),
    ("empty-file", lambda t: [_yaml(t, "")], 2, "exp.yaml: the experiment file is empty"),
    ("commented-out-file", lambda t: [_yaml(t, "# data:\n#   task: mnist\n")], 2, "the experiment file is empty"),
    ("labels-file-for-folders", lambda t: ["init-experiment", "--data", str(t), "--to", str(t / "e.yaml"),
                                           "--task", "image_folder", "--labels-file", "l.csv"], 2,
     "--labels-file applies to --task image_sequences only"),
    ("unknown-section", lambda t: [_yaml(t, "trian: {lr: 0.1}\n")], 2, "trian"),
    ("unknown-key", lambda t: [str(EXPERIMENT), "train.lrr=0.1"], 2, "train.lrr"),
    ("wrong-type", lambda t: [str(EXPERIMENT), "train.epochs=many"], 2, "train.epochs"),
    ("out-of-range", lambda t: [str(EXPERIMENT), "train.lr=-1"], 2, "train.lr"),
    ("bad-choice", lambda t: [str(EXPERIMENT), "model.core.kind=gru"], 2, "model.core.kind"),
    ("task-not-a-name", lambda t: [_yaml(t, "data: {task: [1], val_fraction: 0.1}\n")], 2, "'data.task' = '[1]' is invalid"),
    ("override-syntax", lambda t: [str(EXPERIMENT), "train.lr"], 2, "train.lr"),
    ("value-not-section", lambda t: [str(EXPERIMENT), "train.lr.x=1"], 2, "train.lr"),
    ("ram-on-a-sequence-task", lambda t: [str(EXPERIMENT), "data.task=mnist_pairs"], 2, "model.name = 'ram' predicts one label"),
    ("inapplicable-option", lambda t: [str(EXPERIMENT), "data.canvas_size=186"], 2, "data.canvas_size"),
    ("patch-too-large", lambda t: [str(EXPERIMENT), "model.retina.patch_size=512", "model.retina.num_scales=5"], 2,
     "largest patch"),
    ("heads-do-not-divide", lambda t: [str(EXPERIMENT), "model.core.kind=trxl", "model.core.num_heads=7"], 2,
     "model.core.num_heads"),
    ("storage-uri", lambda t: [str(EXPERIMENT), "ray.storage_path=s3://bucket/runs"], 2, "ray.storage_path"),
    ("sweep-on-test-metric", lambda t: [_yaml(t, "sweep: {metric: test_error, num_trials: 2, space: "
                                            "{train.lr: {loguniform: [0.0001, 0.01]}}}\n")], 2, "sweep.metric"),
    ("sweep-unknown-key", lambda t: [_yaml(t, "sweep: {num_trials: 2, space: {train.lrr: {choice: [1, 2]}}}\n")], 2,
     "train.lrr"),
    ("mnist-missing-dir", lambda t: [str(EXPERIMENT), f"data.data_dir={t / 'nowhere'}",
                                     f"ray.storage_path={t / 'runs'}"], 1, "nowhere"),
    ("mnist-corrupt-gzip", lambda t: _corrupt_mnist(t, b"\x1f\x8bnot really gzip"), 1, "t10k-labels-idx1-ubyte.gz"),
    ("mnist-truncated-idx", lambda t: _corrupt_mnist(t, None), 1, "t10k-labels-idx1-ubyte.gz: corrupt IDX file"),
    ("svhn-missing-dir", lambda t: [str(ROOT / "experiments" / "svhn_dram.yaml"), f"data.data_dir={t / 'nosvhn'}",
                                    f"ray.storage_path={t / 'runs'}"], 1, "nosvhn"),
    ("svhn-missing-digitstruct", lambda t: _svhn_without_digitstruct(t), 1, "digitStruct.mat"),
    ("svhn-corrupt-digitstruct", lambda t: _svhn_corrupt_digitstruct(t), 1, "digitStruct.mat"),
    ("svhn-unreadable-cache", lambda t: _svhn_bad_cache(t), 1, "attn-cache"),
    ("vit-missing-weights", lambda t: [str(ROOT / "experiments" / "svhn_dram.yaml"), f"data.data_dir={_svhn(t)}",
                                       "model.context.kind=vit", "model.context.stride=null", f"model.context.weights={t / 'no-vit'}",
                                       "model.core.kind=gpt2", "data.use_extra=false", f"ray.storage_path={t / 'runs'}"], 2, "no-vit: model.context.weights"),
    ("unwritable-storage", lambda t: [str(EXPERIMENT), f"ray.storage_path={_file(t)}/runs"], 2,
     "ray.storage_path: cannot write to"),
    ("mlflow-unreachable", lambda t: [str(EXPERIMENT), "tracking.tracking_uri=http://127.0.0.1:9",
                                      f"ray.storage_path={t / 'runs'}"], 1, "cannot reach the MLflow server at http://127.0.0.1:9"),
    ("resume-without-runs", lambda t: [str(EXPERIMENT), "--resume"], 2,
     "--resume: no earlier run"),
    ("resume-unknown-name", lambda t: [str(EXPERIMENT), "--resume", "no-such-run"], 2,
     "--resume no-such-run: no run of that name"),
    ("resume-damaged-checkpoint", lambda t: _run_with_checkpoint(t, damage="garbage"), 1, "state.pt: unreadable checkpoint"),
    ("resume-other-architecture", lambda t: _run_with_checkpoint(t, damage="config"), 1,
     "model.hidden_size (checkpoint 256, now 64)"),
    ("run-name-exists", lambda t: _run_with_checkpoint(t, damage="none")[:1] + ["tracking.run_name=r1"], 2,
     "tracking.run_name=r1: a run of that name exists"),
    ("init-from-missing", lambda t: [str(EXPERIMENT), f"train.init_from={t / 'no-weights.pt'}"], 1,
     "no-weights.pt: neither a file or folder"),
    ("init-from-unknown-experiment", lambda t: [str(EXPERIMENT), "train.init_from=experiment:nothing",
                                                f"tracking.tracking_uri=sqlite:///{t / 'm.db'}"], 1,
     "experiment:nothing: no MLflow experiment of that name"),
    ("eval-unknown-source", lambda t: ["eval", str(t / "nothing-here")], 1, "nothing-here: neither a file or folder"),
    ("eval-checkpoint-without-config", lambda t: ["eval", _lone_weights(t)], 1, "config.yaml missing beside it"),
    ("show-no-store", lambda t: ["show", "0" * 32, "--tracking-uri", f"sqlite:///{t / 'none.db'}"], 1,
     "none.db: no MLflow store there"),
    ("prepare-bad-url", lambda t: ["prepare", "svhn", "--to", str(t / "svhn"), "--url", "http://127.0.0.1:9/"], 1,
     "127.0.0.1:9"),
]


def _file(t: Path) -> Path:
    (t / "a-file").write_text("not a folder")
    return t / "a-file"


def _corrupt_mnist(t: Path, content):
    d = _mnist_copy(t)
    f = d / "t10k-labels-idx1-ubyte.gz"
    if content is None:
        content = gzip.compress(gzip.decompress(f.read_bytes())[:-10])
    f.write_bytes(content)
    return [str(EXPERIMENT), f"data.data_dir={d}", f"ray.storage_path={t / 'runs'}"]


def _svhn_args(t: Path, root: Path) -> list[str]:
    return [str(ROOT / "experiments" / "svhn_dram.yaml"), f"data.data_dir={root}", "data.use_extra=false",
            f"ray.storage_path={t / 'runs'}"]


def _svhn_without_digitstruct(t: Path):
    root = _svhn(t)
    (root / "test" / "digitStruct.mat").unlink()
    return _svhn_args(t, root)


def _svhn_corrupt_digitstruct(t: Path):
    root = _svhn(t)
    (root / "train" / "digitStruct.mat").write_bytes(matlab_header() + b"\x00" * 2000)
    return _svhn_args(t, root)


def _svhn_bad_cache(t: Path):
    root = _svhn(t)
    (t / "attn-cache").write_text("a file where the cache folder should be")
    return _svhn_args(t, root) + [f"data.cache_dir={t / 'attn-cache'}"]


def _run_with_checkpoint(t: Path, damage: str):
    """A run folder with one checkpoint (written directly, as the worker does), then --resume."""
    from attn.config import load_config

    overrides = [f"ray.storage_path={t / 'runs'}", f"tracking.tracking_uri=sqlite:///{t / 'm.db'}"]
    saved_cfg = load_config(EXPERIMENT, overrides + (["model.hidden_size=64"] if damage == "config" else []))
    write_run_folder(t / "runs" / "mnist_ram" / "r1", load_config(EXPERIMENT, overrides), saved_cfg,
                     garbage_state=damage == "garbage")
    return [str(EXPERIMENT), "--resume", "r1"]  # the run lives in ./runs (the test's folder)


def _lone_weights(t: Path) -> str:
    import torch

    torch.save({"w": torch.zeros(1)}, t / "best_model.pt")
    return str(t / "best_model.pt")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_naming_the_culprit(tmp_path, monkeypatch, capsys, case):
    name, setup, code, needle = case
    monkeypatch.chdir(tmp_path)

    def no_ray(cfg):
        raise AssertionError(f"case {name} got past the checks and would start Ray")

    # Harness guard: every case must be refused before Ray starts (none may train).
    monkeypatch.setattr("attn.distributed.lifecycle.start_ray", no_ray)
    got = main(setup(tmp_path))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert got == code, err
    assert lines and lines[-1].startswith("error: "), err
    assert "Traceback" not in err
    assert needle in lines[-1], lines[-1]
    if not name.startswith(("resume", "run-name")):  # nothing was started: no run folder, no MLflow run
        assert not list(tmp_path.glob("runs/*/*/attn_run.json"))


# ---------------------------------------------------------------------------------------------
# fuzzing
# ---------------------------------------------------------------------------------------------
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                     st.text(max_size=12))
_keys = st.sampled_from(["data", "model", "train", "eval", "ray", "tracking", "sweep", "task", "lr", "epochs",
                         "core", "kind", "retina", "patch_size", "num_glimpses", "space", "choice", "x"])
_trees = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(_keys, inner, max_size=5)), max_leaves=20)


_CORES = ["rnn", "lstm", "gpt2", "trxl", "gtrxl"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _trees, max_size=6), st.integers(1, 10_000), st.sampled_from(_CORES))
def test_fuzz_config_loader_raises_only_config_errors(raw, epochs, core):
    try:
        validate_config(raw, "fuzz.yaml")
    except ConfigError as exc:
        assert "\n" not in str(exc).strip()
    # and a valid config parses, to the values it holds (a loader that always raised would fail here)
    cfg = validate_config({"train": {"epochs": epochs}, "model": {"core": {"kind": core}}}, "ok.yaml")
    assert (cfg.train.epochs, cfg.model.core.kind) == (epochs, core)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200), st.integers(1, 10_000), st.sampled_from(_CORES))
def test_fuzz_yaml_text_raises_only_config_errors(tmp_path_factory, text, epochs, core):
    from attn.config import ExperimentConfig, load_config

    p = tmp_path_factory.mktemp("y") / "f.yaml"
    p.write_text(text)
    try:
        assert isinstance(load_config(p), ExperimentConfig)
    except ConfigError as exc:
        assert "\n" not in str(exc).strip()
    # and a valid file parses, to the values it holds
    p.write_text(f"# an experiment\ntrain:\n  epochs: {epochs}\nmodel:\n  core: {{kind: {core}}}\n")
    cfg = load_config(p)
    assert (cfg.train.epochs, cfg.model.core.kind) == (epochs, core)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=64),
                 st.builds(lambda dims, body: struct.pack(">HBB", 0, 8, len(dims)) + b"".join(struct.pack(">I", d) for d in dims) + body,
                           st.lists(st.integers(0, 40), max_size=4), st.binary(max_size=200))),
       st.booleans(), st.lists(st.integers(0, 6), min_size=0, max_size=3), st.randoms(use_true_random=False))
def test_fuzz_idx_reader_raises_only_data_errors(tmp_path_factory, blob, compress, dims, rng):
    folder = tmp_path_factory.mktemp("idx")
    p = folder / ("x-idx.gz" if compress else "x-idx")
    p.write_bytes(gzip.compress(blob) if compress else blob)
    try:
        read_idx(p)
    except DataError:
        pass
    # and a well-formed file reads back exactly: uint8, the header's shape, the payload in C order
    want = np.array([rng.randrange(256) for _ in range(int(np.prod(dims, dtype=np.int64)))], np.uint8).reshape(dims)
    good = struct.pack(">HBB", 0, 8, len(dims)) + b"".join(struct.pack(">I", d) for d in dims) + want.tobytes()
    q = folder / ("ok-idx.gz" if compress else "ok-idx")
    q.write_bytes(gzip.compress(good) if compress else good)
    got = read_idx(q)
    assert got.dtype == np.uint8 and got.shape == tuple(dims) and np.array_equal(got, want)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_digit_struct_reader_raises_only_data_errors(tmp_path_factory, data):
    """A valid digitStruct.mat with bytes overwritten at random places, or cut short."""
    d = tmp_path_factory.mktemp("ds")
    p = d / "digitStruct.mat"
    records = [{"name": f"{i + 1}.png", "boxes": [(10.0, float(i % 10 + 1), 2.0 + j, 3.0, 5.0) for j in range(1 + i % 3)]}
               for i in range(data.draw(st.integers(1, 6)))]
    write_digit_struct(p, records)
    # the file as written parses, by both readers, to exactly its records
    for direct in (True, False):
        ds = read_digit_struct(p, direct=direct)
        assert len(ds) == len(records)
        for n, rec in enumerate(records):
            name, rows = ds.record(n)
            assert name == rec["name"] and rows.tolist() == [list(b) for b in rec["boxes"]], (direct, n)
    blob = bytearray(p.read_bytes())
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    else:
        for _ in range(data.draw(st.integers(1, 8))):
            blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    p.write_bytes(bytes(blob))
    for direct in (True, False):
        try:
            read_digit_struct(p, direct=direct)
        except DataError:
            pass
