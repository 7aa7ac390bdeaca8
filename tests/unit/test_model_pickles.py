"""The model a run logs is an MLflow 3 logged model (the experiment's Models view) with its test
metrics linked, and it is unpickled only when an attn run of the store logged exactly those files:
it loads by runs:/, by models:/<model id> and as a registered version; a model whose files were replaced
after the run (here: a pickle that would create a file when unpickled) and a model no attn run logged
are refused in one line before anything is unpickled; a model folder on disk loads with a plain note
that it unpickles. A real MLflow store (sqlite and a file artifact store), no server."""

from __future__ import annotations

import pathlib
import shutil
import tempfile

import pytest
import torch

from attn.config import dump_config, load_config
from attn.data.base import DataSpec
from attn.engine.checkpoint import BEST_FILE, CONFIG_FILE
from attn.errors import CheckpointError
from attn.models import build_model
from attn.sources import load_source
from attn.tracking import MlflowTracker
from attn.tracking.model_format import save_model
from attn.tracking.store import mlflow_client
from helpers.cli import ROOT

MNIST_SPEC = DataSpec(1, 28, 28, 10, tuple(str(i) for i in range(10)))


class Evil:
    """Unpickling this creates ``marker``: what a replaced model file could do instead."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A store (opening one creates its tables: seconds, so once per module) and a small model."""
    tmp = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = mlflow_client(uri)
    experiment = client.create_experiment("pickles", artifact_location=(tmp / "artifacts").as_uri())
    cfg = load_config(ROOT / "experiments" / "mnist_ram.yaml", ["model.hidden_size=16"])
    torch.manual_seed(0)
    return uri, client, experiment, build_model(cfg.model, MNIST_SPEC), cfg


@pytest.fixture()
def store(made):
    """A new run of the store that logged the model as every attn run does."""
    uri, client, experiment, model, cfg = made
    run = client.create_run(experiment)
    tracker = MlflowTracker(uri, run.info.run_id, log=lambda line: None)
    tracker.log_model(model, dump_config(cfg), metrics={"test_error": 1.5}, step=7)
    tracker.close()
    return uri, client, experiment, run.info.run_id, model, cfg


def _logged_model(client, experiment, run_id):
    found = [m for m in client.search_logged_models([experiment]) if m.source_run_id == run_id]
    assert len(found) == 1, found
    return found[0]


def test_the_logged_model_is_listed_ready_with_its_run_and_test_metrics(store):
    uri, client, experiment, run_id, _, _ = store
    logged = _logged_model(client, experiment, run_id)
    assert logged.name == "model" and str(logged.status) == "READY"
    assert [(m.key, m.value, m.step) for m in logged.metrics] == [("test_error", 1.5, 7)]
    run = client.get_run(run_id)
    assert run.data.tags["attn.model_id"] == logged.model_id
    assert [o.model_id for o in run.outputs.model_outputs] == [logged.model_id]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "test_error")] == [(7, 1.5)]


def test_the_model_an_attn_run_logged_loads_by_run_by_model_id_and_as_a_registered_version(store, monkeypatch):
    uri, client, experiment, run_id, model, _ = store
    weights = load_source(f"runs:/{run_id}/model", uri)
    assert weights.run_id == run_id and weights.state.keys() == model.state_dict().keys()
    assert all(torch.equal(weights.state[k], v) for k, v in model.state_dict().items())
    model_id = _logged_model(client, experiment, run_id).model_id
    assert load_source(f"models:/{model_id}", uri).run_id == run_id
    client.create_registered_model(f"ram-{run_id}")
    with monkeypatch.context() as env:  # MLflow's registry finds the logged model in the default store only
        env.setenv("MLFLOW_TRACKING_URI", uri)
        client.create_model_version(f"ram-{run_id}", f"models:/{model_id}", run_id=run_id, model_id=model_id)
    assert load_source(f"models:/ram-{run_id}/1", uri).run_id == run_id


def test_a_replaced_model_file_is_refused_before_it_is_unpickled(store, tmp_path):
    uri, client, experiment, run_id, _, _ = store
    marker = tmp_path / "unpickled"
    evil = tmp_path / "evil" / "model.pth"
    evil.parent.mkdir()
    torch.save(Evil(marker), evil)
    model_id = _logged_model(client, experiment, run_id).model_id
    client.log_model_artifacts(model_id, str(evil.parent), "data")  # over the logged model.pth
    with pytest.raises(CheckpointError, match=rf"not the ones run {run_id} logged.*does not unpickle") as err:
        load_source(f"runs:/{run_id}/model", uri)
    assert "\n" not in str(err.value) and not marker.exists()
    torch.load(evil, weights_only=False)  # the file really runs code when unpickled
    assert marker.exists()


def test_a_model_no_attn_run_logged_is_refused(store, tmp_path):
    uri, client, experiment, _, model, cfg = store
    (tmp_path / "made").mkdir()
    folder = save_model(model, dump_config(cfg), tmp_path / "made")
    other = client.create_run(experiment).info.run_id
    client.log_artifacts(other, str(folder), "model")  # attn's format, but no run recorded its digest
    with pytest.raises(CheckpointError, match=rf"run {other} recorded no attn.model_digest.*its run id {other}"):
        load_source(f"runs:/{other}/model", uri)


def test_a_model_folder_on_disk_loads_with_a_note_that_it_unpickles(store, tmp_path, capsys):
    _, _, _, _, model, cfg = store
    (tmp_path / "saved").mkdir()
    folder = save_model(model, dump_config(cfg), tmp_path / "saved")
    shutil.copytree(folder, tmp_path / "copy")
    weights = load_source(str(tmp_path / "copy"), "sqlite:///unused.db")
    assert all(torch.equal(weights.state[k], v) for k, v in model.state_dict().items())
    note = capsys.readouterr().err.strip()
    assert note.startswith(f"note: {tmp_path / 'copy'} is an MLflow model folder on disk; loading it unpickles it")


def test_weights_fetched_from_the_store_leave_no_download_behind(store, tmp_path, monkeypatch):
    """By model URI and by run id (its checkpoint/best_model.pt, as a finished run logs it): the
    downloaded files are gone once the weights are in memory (each eval used to leave a folder in
    the temp folder)."""
    uri, client, _, run_id, model, cfg = store
    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir()
    torch.save(model.state_dict(), ckpt / BEST_FILE)
    (ckpt / CONFIG_FILE).write_text(dump_config(cfg))
    client.log_artifacts(run_id, str(ckpt), "checkpoint")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    for source in (f"runs:/{run_id}/model", run_id):
        weights = load_source(source, uri)
        assert weights.run_id == run_id and all(torch.equal(weights.state[k], v) for k, v in model.state_dict().items())
        assert [p.name for p in scratch.iterdir() if p.name.startswith("attn-")] == [], source
