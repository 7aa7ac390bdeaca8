"""A :class:`attn.engine.trainer.Reporter` for tests that call ``fit`` in the test process."""

from __future__ import annotations

import shutil
from pathlib import Path


class FolderReporter:
    """Keeps every report's metrics (``reports``) and, with a ``root``, every checkpoint rank 0 reports
    in its own folder under it (``saved``), as Ray Train does; resumes from ``resume_from`` if given."""

    def __init__(self, root: Path | None = None, resume_from: Path | None = None):
        self.root, self.resume_from, self.saved, self.reports = root, resume_from, [], []

    def latest_checkpoint(self):
        return None if self.resume_from is None else str(self.resume_from)

    def report(self, metrics, checkpoint_dir):
        self.reports.append(dict(metrics))
        if checkpoint_dir is not None and self.root is not None:
            dest = self.root / f"checkpoint_{len(self.saved):03d}"
            shutil.copytree(checkpoint_dir, dest)
            self.saved.append(dest)
