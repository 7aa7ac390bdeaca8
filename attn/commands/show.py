"""``python run.py show RUN_ID``: a run's pictures and summary, fetched from any MLflow tracking URI.

Downloads the run's final glimpse pictures (``glimpses/final``; the newest epoch's if the run has not
finished), its analysis (heat map, accuracy tables), a sweep's comparison image and the config into
``--to DIR`` (default ``./show-<run name>``), writes ``summary.md`` there and prints it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from attn.tracking import artifact_listing, child_runs, download, get_run

KEY_METRICS = (
    "test_error", "test_error_mc", "test_error_sample", "best_val_error", "best_epoch", "epoch",
    "test_token_accuracy", "test_digit_accuracy",
)


def _fetch(run_id: str, artifact_path: str, dest: Path, uri: str) -> list[Path]:
    # MLflow puts the last part of the path into the destination: keep the run's folder structure
    local = download(uri, dest / Path(artifact_path).parent, run_id=run_id, artifact_path=artifact_path)
    return sorted(p for p in (local.rglob("*") if local.is_dir() else [local]) if p.is_file())


def _fmt(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def show_run(uri: str, run_id: str, dest: Optional[Path] = None) -> tuple[Path, str]:
    """Fetch ``run_id``'s pictures and write its summary; returns (folder, summary text)."""
    run = get_run(uri, run_id, hint="give a run id from the MLflow UI or `done:` line, and --tracking-uri if the run "
                  "is in another store")
    name = run.name
    dest = Path(dest) if dest else Path.cwd() / f"show-{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}"
    dest.mkdir(parents=True, exist_ok=True)

    fetched: list[Path] = []
    top = artifact_listing(uri, run_id)
    if "glimpses" in top:
        folders = sorted(path for path, is_dir in artifact_listing(uri, run_id, "glimpses").items() if is_dir)
        pick = "glimpses/final" if "glimpses/final" in folders else (folders[-1] if folders else None)
        if pick:
            fetched += _fetch(run_id, pick, dest, uri)
    for folder in ("analysis", "comparison", "config"):
        if folder in top:
            fetched += _fetch(run_id, folder, dest, uri)
    if "trials.csv" in top:
        fetched += _fetch(run_id, "trials.csv", dest, uri)

    tags = run.tags
    lines = [f"# {name}", ""]
    lines.append(f"- run id: `{run_id}` ({run.status}) in {uri}")
    lines.append(f"- experiment id: {run.experiment_id}")
    what = ", ".join(f"{k} {tags[k]}" for k in ("task", "model", "core", "glimpses") if k in tags)
    if what:
        lines.append(f"- {what}")
    if "git_commit" in tags:
        lines.append(f"- commit: {tags['git_commit']}")
    note = tags.get("mlflow.note.content")
    if note:
        lines += ["", note]
    metrics = {k: run.metrics[k] for k in KEY_METRICS if k in run.metrics}
    per_class = {k: v for k, v in sorted(run.metrics.items()) if k.startswith("test_accuracy.")}
    if metrics:
        lines += ["", "| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
    if per_class:
        lines += ["", "| class | test accuracy |", "|---|---|"]
        lines += [f"| {k.removeprefix('test_accuracy.')} | {v:.4f} |" for k, v in per_class.items()]
    children = child_runs(uri, run.experiment_id, run_id)
    if children:
        lines += ["", f"{len(children)} trial run(s):", "", "| trial | status | best_val_error | test_error |", "|---|---|---|---|"]
        for c in sorted(children, key=lambda c: c.name):
            m = c.metrics
            lines.append(
                f"| {c.name} (`{c.run_id}`) | {c.status} | "
                f"{_fmt(m.get('best_val_error', '-'))} | {_fmt(m.get('test_error', '-'))} |"
            )
    if fetched:
        lines += ["", "Files:", ""] + [f"- {p.relative_to(dest)}" for p in fetched]
    else:
        lines += ["", "The run has no pictures yet."]
    text = "\n".join(lines) + "\n"
    (dest / "summary.md").write_text(text)
    return dest, text


def show(args) -> int:
    """The ``run.py show`` command: fetch, write ``summary.md``, print it."""
    from attn.commands.store import checked_store

    uri = checked_store(args.tracking_uri, must_exist=True)
    dest, text = show_run(uri, args.run_id, Path(args.to) if args.to else None)
    print(text, end="")
    print(f"done: {dest}")
    return 0
