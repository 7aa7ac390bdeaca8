"""What one finished training run leaves behind, read back as a user would: the pictures and tables in
MLflow, `run.py show`, and the MLflow UI itself in a real browser.

One short MNIST run through `python run.py` (Ray Train, MLflow sqlite store) is shared by the module
(conftest's ``finished_mnist_run``, also the reference run of the interrupt/resume test).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from helpers.browser import chromium_or_skip, headless_chromium
from helpers.cli import EXPERIMENT, ROOT
from helpers.servers import mlflow_server

EPOCHS = 4  # conftest.FINISHED_RUN_ARGS, pictures every 2 epochs


@pytest.fixture(scope="module")
def trained(finished_mnist_run):
    return finished_mnist_run


def artifact_files(client, run_id: str, path: str = "") -> set[str]:
    out = set()
    for f in client.list_artifacts(run_id, path):
        out |= artifact_files(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def model_files(client, model_id: str, path: str | None = None) -> set[str]:
    out = set()
    for f in client.list_logged_model_artifacts(model_id, path):
        out |= model_files(client, model_id, f.path) if f.is_dir else {f.path}
    return out


def test_the_run_records_system_metrics_every_interval(trained):
    """tracking.system_metrics=on (auto records them only on GPUs): MLflow's sampler logged CPU and
    memory use about once a second (tracking.system_metrics_interval_s=1) while the run trained."""
    _, client, run = trained
    cpu = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    assert len(cpu) >= 5 and [m.step for m in cpu] == list(range(len(cpu)))
    assert all(0 <= m.value <= 100 for m in cpu)
    assert run.data.metrics["system/system_memory_usage_megabytes"] > 0


def test_the_console_shows_attns_lines_without_rays_decoration(trained):
    """What a user reads: the epoch lines as attn writes them, no ANSI colour codes, no
    ``(RayTrainWorker pid=...)`` prefix, no notices about Ray's token or MLflow's table creation."""
    text = (trained[0] / "console.txt").read_text()
    epochs = [line for line in text.splitlines() if " | train loss " in line]
    assert len(epochs) == EPOCHS and all(line.startswith(f"epoch {i + 1}/{EPOCHS} | ") for i, line in enumerate(epochs)), epochs
    assert "\x1b[" not in text and "pid=" not in text, text[-2000:]
    assert "Token authentication" not in text and "Creating initial MLflow database tables" not in text, text[:2000]
    assert text.rstrip().splitlines()[-1].startswith("done: ")


def test_the_run_carries_mlflows_standard_source_tags(trained):
    """The UI's User and Source columns: who ran it, run.py, and the commit and branch of the code."""
    import getpass

    tags = trained[2].data.tags
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    branch = subprocess.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert tags["mlflow.user"] == getpass.getuser() and tags["mlflow.source.name"] == "run.py"
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.git.commit"] == head
    if branch.stdout.strip() not in ("", "HEAD"):  # a clone on a branch (CI's detached checkouts have none)
        assert tags["mlflow.source.git.branch"] == branch.stdout.strip()


def test_pictures_tables_and_readable_names_in_mlflow(trained):
    cwd, client, run = trained
    files = artifact_files(client, run.info.run_id)
    assert not any(f.startswith(("glimpses/epoch_001/", "glimpses/epoch_003/")) for f in files)
    for folder in [f"glimpses/epoch_{e:03d}" for e in range(2, EPOCHS + 1, 2)] + ["glimpses/final"]:
        assert f"{folder}/grid.png" in files
        assert {f"{folder}/image_{i:02d}.gif" for i in range(8)} <= files
    assert {"analysis/glimpse_heatmap.png", "analysis/class_accuracy.csv", "analysis/class_accuracy.md",
            "analysis/learning_curves.png"} <= files

    local = Path(client.download_artifacts(run.info.run_id, "glimpses/final", str(cwd / "dl")))
    assert Image.open(local / "image_00.gif").n_frames == 6  # experiments/mnist_ram.yaml: 6 glimpses
    assert Image.open(local / "grid.png").size[0] > 500

    # per-class accuracy, keyed by class name, consistent with the test error
    m = run.data.metrics
    per_class = {k: v for k, v in m.items() if k.startswith("test_accuracy.")}
    assert set(per_class) == {f"test_accuracy.{d}" for d in range(10)}
    table = (cwd / "table.csv")
    table.write_bytes(Path(client.download_artifacts(run.info.run_id, "analysis/class_accuracy.csv", str(cwd))).read_bytes())
    rows = [line.split(",") for line in table.read_text().splitlines()[1:]]
    right = sum(int(images) * float(acc) for _, images, acc in rows)
    assert sum(int(images) for _, images, _ in rows) == 500
    assert 100 * (1 - right / 500) == pytest.approx(m["test_error"], abs=1e-6)

    tags = run.data.tags
    assert run.info.run_name.startswith("mnist-ram-rnn-g6-")
    assert (tags["task"], tags["model"], tags["core"], tags["glimpses"]) == ("mnist", "ram", "rnn", "6")
    assert float(tags["result.test_error"]) == pytest.approx(m["test_error"], abs=0.01)
    assert "**Result:** test error" in tags["mlflow.note.content"]


def test_show_fetches_pictures_and_summary(trained, tmp_path):
    cwd, client, run = trained
    out = tmp_path / "shown"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "show", run.info.run_id, "--to", str(out)],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "glimpses" / "final" / "grid.png").is_file()
    assert (out / "analysis" / "glimpse_heatmap.png").is_file()
    summary = (out / "summary.md").read_text()
    assert run.info.run_id in summary and f"| test_error | {run.data.metrics['test_error']:.4g} |" in summary
    assert summary in proc.stdout


def test_show_of_an_unknown_run_is_one_line(trained, tmp_path, monkeypatch, capsys):
    from attn.cli import main

    cwd, client, run = trained
    monkeypatch.chdir(cwd)
    assert main(["show", "0123456789abcdef", "--to", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no MLflow run '0123456789abcdef'") and len(err.strip().splitlines()) == 1


def test_curves_draws_the_runs_validation_history(trained, tmp_path, monkeypatch, capsys):
    from attn.cli import main
    from attn.tracking import run_history

    cwd, client, run = trained
    monkeypatch.chdir(cwd)
    name, rows = run_history(f"sqlite:///{cwd / 'mlflow.db'}", run.info.run_name)
    want = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "val_error"), key=lambda m: m.step)]
    assert name == run.info.run_name and [r["epoch"] for r in rows] == list(range(EPOCHS))
    assert [r["val_error"] for r in rows] == want and all(r["epoch_time_s"] > 0 for r in rows)
    out = tmp_path / "curves.png"
    target = want[1]  # reached first at the second epoch, or at the first if that one was as low
    assert main(["curves", run.info.run_id, run.info.run_name, "--label", "by id", "--label", "by name",
                 "--to", str(out), "--target", str(target)]) == 0
    assert Image.open(out).size[0] > 800
    first = 1 if want[0] <= target else 2
    minutes = sum(r["epoch_time_s"] for r in rows[:first]) / 60
    assert f"by name: {EPOCHS} epochs, best val_error {min(want):.2f}%; <= {target:g}% first at epoch {first}, " \
        f"{minutes:.1f} min of training" in capsys.readouterr().out
    # runs of two stores on one picture: a --tracking-uri per run
    other = tmp_path / "other.db"
    shutil.copy(cwd / "mlflow.db", other)
    assert main(["curves", run.info.run_id, run.info.run_name, "--label", "here", "--label", "there",
                 "--tracking-uri", f"sqlite:///{cwd / 'mlflow.db'}", "--tracking-uri", f"sqlite:///{other}",
                 "--to", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"here: {EPOCHS} epochs" in printed and f"there: {EPOCHS} epochs" in printed, printed
    assert main(["curves", run.info.run_id, "--tracking-uri", "sqlite:///a.db", "--tracking-uri", "sqlite:///b.db",
                 "--to", str(out)]) == 2
    assert main(["curves", run.info.run_id, "--label", "a", "--label", "b", "--to", str(out)]) == 2
    assert main(["curves", "no-such-run", "--to", str(out)]) == 1
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: no MLflow run with id or name 'no-such-run'")


def test_mlflow_ui_shows_the_glimpse_picture_in_a_browser(trained, tmp_path):
    """Headless Chromium opens the MLflow UI served over the run's store, goes to the experiment, the
    run, its artifacts, and sees the glimpse grid rendered at its real size."""
    chromium_or_skip()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    cwd, client, run = trained
    expected_size = Image.open(
        Path(client.download_artifacts(run.info.run_id, "glimpses/final/grid.png", str(tmp_path)))
    ).size
    with mlflow_server(cwd) as uri, headless_chromium(tmp_path / "chromium-profile") as browser:
        wait = WebDriverWait(browser, 60)

        def click(xpath: str) -> None:
            wait.until(EC.element_to_be_clickable((By.XPATH, xpath))).click()

        def text(t: str) -> str:
            return f"//*[normalize-space(text())='{t}']"

        browser.get(f"{uri}/#/experiments")
        click(text("Model training"))  # MLflow 3 opens on its GenAI pages
        click("//a[normalize-space(.)='mnist_ram']")
        click(f"//a[normalize-space(.)='{run.info.run_name}']")
        click("//*[@role='tab'][normalize-space(.)='Artifacts']")
        for name in ("glimpses", "final", "grid.png"):
            click(text(name))

        def rendered(driver):
            for img in driver.find_elements(By.TAG_NAME, "img"):
                size = driver.execute_script(
                    "return arguments[0].complete ? [arguments[0].naturalWidth, arguments[0].naturalHeight] : null", img
                )
                if size and tuple(size) == expected_size:
                    return img
            return False

        wait.until(rendered)
        assert run.info.run_id in browser.current_url
        shot = tmp_path / "mlflow-ui-glimpses.png"
        browser.save_screenshot(str(shot))
        assert Image.open(shot).size[0] >= 1000

        # The link the run printed (for this store: what `mlflow ui` serves) opens the run's page in
        # the model-training views, straight away.
        printed = [line for line in (cwd / "console.txt").read_text().splitlines() if line.startswith("MLflow UI: ")]
        assert printed, "the run printed no MLflow UI link"
        link = printed[-1].split()[2].replace("http://127.0.0.1:5000", uri)
        assert link.endswith(f"/runs/{run.info.run_id}?workflowType=machine_learning"), link
        browser.get(link)
        wait.until(EC.visibility_of_element_located((By.XPATH, f"//*[normalize-space(text())='{run.info.run_name}']")))
        click("//*[@role='tab'][normalize-space(.)='Artifacts']")
        click(text("glimpses"))


# ---------------------------------------------------------------------------------------------
# the run's weights as a product: eval, MLflow's PyTorch format, transfer
# ---------------------------------------------------------------------------------------------
def test_eval_from_run_id_reproduces_the_logged_test_error(trained, monkeypatch, capsys):
    from attn.cli import main

    cwd, client, run = trained
    monkeypatch.chdir(cwd)  # the default store: ./mlflow.db
    assert main(["eval", run.info.run_id]) == 0
    logged = run.data.metrics
    assert f"done: test error {logged['test_error']:.2f}%" in capsys.readouterr().out
    evals = client.search_runs([run.info.experiment_id], filter_string="tags.`attn.kind` = 'eval'")
    ev = next(r for r in evals if r.data.tags.get("attn.source") == run.info.run_id)
    assert ev.data.metrics["test_error"] == logged["test_error"]  # same seed, mean policy: exactly
    assert ev.data.metrics["test_mc_samples"] == 2 and ev.data.metrics["test_images"] == 500
    assert ev.data.tags["attn.source_run_id"] == run.info.run_id and ev.info.run_name == f"eval-{run.info.run_name}-test"
    assert run.info.run_id in ev.data.tags["mlflow.note.content"] and ev.info.status == "FINISHED"
    assert "glimpses/final/grid.png" in artifact_files(client, ev.info.run_id)


def test_eval_from_model_uri_and_checkpoint_path_and_refusals(trained):
    from attn.errors import ConfigError
    from attn.commands.evaluate import run_eval

    cwd, client, run = trained
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    logged = run.data.metrics["test_error"]
    by_uri = run_eval(f"runs:/{run.info.run_id}/model", tracking_uri=uri, log=lambda s: None)
    assert by_uri.metrics["test_error"] == logged and by_uri.source_run_id == run.info.run_id
    ckpt = sorted((cwd / "runs" / "mnist_ram").rglob("best_model.pt"))[-1].parent
    by_path = run_eval(str(ckpt), tracking_uri=uri, split="val", mc_samples=1, log=lambda s: None)
    assert by_path.metrics["val_error"] == run.data.metrics["best_val_error"]
    with pytest.raises(ConfigError, match=r"model.hidden_size \(checkpoint 256, now 64\)"):
        run_eval(run.info.run_id, tracking_uri=uri, overrides=["model.hidden_size=64"], log=lambda s: None)


def test_mlflow_pytorch_load_model_in_a_fresh_process_predicts_like_training(trained, tmp_path):
    cwd, client, run = trained
    logged = [m for m in client.search_logged_models([run.info.experiment_id]) if m.source_run_id == run.info.run_id]
    assert [m.name for m in logged] == ["model"]  # an MLflow 3 logged model: the experiment's Models view
    assert {"MLmodel", "data/model.pth"} <= model_files(client, logged[0].model_id)
    assert {m.key: m.value for m in logged[0].metrics}["test_error"] == run.data.metrics["test_error"]
    script = f"""
import json, mlflow.pytorch, torch
from mlflow.artifacts import download_artifacts
from attn.data.mnist import load_mnist
uri = "sqlite:///{cwd / 'mlflow.db'}"
model = mlflow.pytorch.load_model("runs:/{run.info.run_id}/model", dst_path="{tmp_path}")
shown = json.load(open(download_artifacts(run_id="{run.info.run_id}", artifact_path="glimpses/final/predictions.json",
                                          dst_path="{tmp_path}", tracking_uri=uri)))
test = load_mnist().test
ids = torch.tensor([i["id"] for i in shown["images"]])
x = (test.images[ids].float() / 255 - 0.1307) / 0.3081
episode = model(x, policy="mean", generator=torch.Generator().manual_seed(shown["seed"]))
print(json.dumps([episode.log_probs.argmax(-1).tolist(), [i["pred"][0] for i in shown["images"]]]))
"""
    import json

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fresh, training = json.loads(proc.stdout.strip().splitlines()[-1])
    assert fresh == training and len(fresh) == 8


def test_cost_and_transfer_from_the_run(trained):
    """The run logged its cost; train.init_from=experiment:NAME pins the newest finished run and
    loads every tensor of a same-shaped model."""
    from attn.config import load_config
    from attn.distributed.lifecycle import resolve_init
    from attn.engine.trainer import WorkerInfo, fit
    from attn.sources import load_source

    cwd, client, run = trained
    m = run.data.metrics
    assert m["model_params"] == m["model_params_trainable"] == 242061
    assert m["model_flops_per_image"] > 2e6

    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    cfg = load_config(EXPERIMENT, ["train.init_from=experiment:mnist_ram", "train.epochs=1", "data.train_subset=500",
                                   "data.eval_subset=200", "eval.mc_samples=1", "eval.viz_images=0"])
    resolve_init(cfg, uri)
    assert cfg.train.init_from == run.info.run_id
    weights = load_source(cfg.train.init_from, uri)

    class Tracker:
        tags: dict = {}
        files: list = []

        def log_metrics(self, metrics, step): ...
        def log_artifact(self, path, artifact_path=None):
            if path.endswith(".md"):
                self.files.append((Path(path).read_text(), artifact_path))
        def set_tag(self, k, v): self.tags[k] = v
        def log_model(self, model, config_yaml, metrics=None, step=0): ...
        def sync(self, history): ...
        def close(self): ...

    class Reporter:
        def latest_checkpoint(self): return None
        def report(self, metrics, checkpoint_dir): ...

    lines: list[str] = []
    tracker = Tracker()
    fit(cfg, WorkerInfo(), Reporter(), tracker, log=lines.append, init=(weights.state, weights.label))
    assert tracker.tags["transfer.source"] == f"run {run.info.run_id}"
    assert tracker.tags["transfer.summary"].startswith(f"{len(weights.state)} tensors loaded, 0 reshaped, 0 skipped")
    assert any(path == "transfer" and "# Weights from run" in text for text, path in tracker.files)
    assert any(line.startswith(f"weights from run {run.info.run_id}") for line in lines)
