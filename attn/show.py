"""``python run.py show RUN_ID``: a run's pictures and summary, fetched from any MLflow tracking URI.

Downloads the run's final glimpse pictures (``glimpses/final``; the newest epoch's if the run has not
finished), its analysis (heat map, accuracy tables), a sweep's comparison image and the config into
``--to DIR`` (default ``./show-<run name>``), writes ``summary.md`` there and prints it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from attn.errors import TrackingError

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

KEY_METRICS = (
    "test_error", "test_error_mc", "test_error_sample", "best_val_error", "best_epoch", "epoch",
    "test_token_accuracy", "test_digit_accuracy",
)


def _artifact_dirs(client, run_id: str, path: str = "") -> list[str]:
    return [f.path for f in client.list_artifacts(run_id, path) if f.is_dir]


def _fetch(run_id: str, artifact_path: str, dest: Path, uri: str) -> list[Path]:
    from mlflow.artifacts import download_artifacts

    # MLflow puts the last part of the path into dst_path: keep the run's folder structure
    parent = dest / Path(artifact_path).parent
    parent.mkdir(parents=True, exist_ok=True)
    local = Path(download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(parent), tracking_uri=uri))
    return sorted(p for p in (local.rglob("*") if local.is_dir() else [local]) if p.is_file())


def _fmt(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def show_run(uri: str, run_id: str, dest: Optional[Path] = None) -> tuple[Path, str]:
    """Fetch ``run_id``'s pictures and write its summary; returns (folder, summary text)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - MLflow raises several types for a missing run or store
        raise TrackingError(
            f"no MLflow run {run_id!r} at {uri} ({str(exc).splitlines()[0][:200]}); give a run id from the "
            "MLflow UI or `done:` line, and --tracking-uri if the run is in another store"
        ) from None
    info, data = run.info, run.data
    name = info.run_name or run_id
    dest = Path(dest) if dest else Path.cwd() / f"show-{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}"
    dest.mkdir(parents=True, exist_ok=True)

    fetched: list[Path] = []
    top = {f.path for f in client.list_artifacts(run_id)}
    if "glimpses" in top:
        folders = sorted(_artifact_dirs(client, run_id, "glimpses"))
        pick = "glimpses/final" if "glimpses/final" in folders else (folders[-1] if folders else None)
        if pick:
            fetched += _fetch(run_id, pick, dest, uri)
    for folder in ("analysis", "comparison", "config"):
        if folder in top:
            fetched += _fetch(run_id, folder, dest, uri)
    if "trials.csv" in top:
        fetched += _fetch(run_id, "trials.csv", dest, uri)

    tags = data.tags
    lines = [f"# {name}", ""]
    lines.append(f"- run id: `{run_id}` ({info.status}) in {uri}")
    lines.append(f"- experiment id: {info.experiment_id}")
    what = ", ".join(f"{k} {tags[k]}" for k in ("task", "model", "core", "glimpses") if k in tags)
    if what:
        lines.append(f"- {what}")
    if "git_commit" in tags:
        lines.append(f"- commit: {tags['git_commit']}")
    note = tags.get("mlflow.note.content")
    if note:
        lines += ["", note]
    metrics = {k: data.metrics[k] for k in KEY_METRICS if k in data.metrics}
    per_class = {k: v for k, v in sorted(data.metrics.items()) if k.startswith("test_accuracy.")}
    if metrics:
        lines += ["", "| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
    if per_class:
        lines += ["", "| class | test accuracy |", "|---|---|"]
        lines += [f"| {k.removeprefix('test_accuracy.')} | {v:.4f} |" for k, v in per_class.items()]
    children = client.search_runs([info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    if children:
        lines += ["", f"{len(children)} trial run(s):", "", "| trial | status | best_val_error | test_error |", "|---|---|---|---|"]
        for c in sorted(children, key=lambda c: c.info.run_name or ""):
            m = c.data.metrics
            lines.append(
                f"| {c.info.run_name} (`{c.info.run_id}`) | {c.info.status} | "
                f"{_fmt(m.get('best_val_error', '-'))} | {_fmt(m.get('test_error', '-'))} |"
            )
    if fetched:
        lines += ["", "Files:", ""] + [f"- {p.relative_to(dest)}" for p in fetched]
    else:
        lines += ["", "The run has no pictures yet."]
    text = "\n".join(lines) + "\n"
    (dest / "summary.md").write_text(text)
    return dest, text
