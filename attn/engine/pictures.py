"""When and what the trainer draws: the fixed test images' glimpse paths at evaluations, and at the end
the heat map of all glimpse locations and the accuracy tables. Files go to the run through the
trainer's tracker (MLflow artifacts) under:

    glimpses/epoch_NNN/grid.png, image_II.gif     every ``eval.viz_every`` epochs (that epoch's weights)
    glimpses/final/grid.png, image_II.gif          the best weights, at the end
    glimpses/.../predictions.json                  the drawn images' ids, predictions and labels
    analysis/glimpse_heatmap.png                   where the mean policy looks over the whole test split
    analysis/learning_curves.png                   validation error against epoch and training wall time
    analysis/class_accuracy.csv|md                 classification: accuracy per class (by class name)
    analysis/sequence_accuracy.csv|md              sequences: accuracy per label length and per slot

The fixed images are the first ``eval.viz_images`` of the test split, so every run and every trial of
a task draws the same ones; the title is green where the prediction is right and red where it is wrong.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from attn.config import ExperimentConfig
from attn.data.base import TaskData
from attn.engine.details import EvalDetails
from attn.models.retina import patch_sizes
from attn import viz


def metric_name(text: str) -> str:
    """A class name as part of an MLflow metric key (letters, digits, _ - . / and spaces only)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", text) or "_"


class Pictures:
    def __init__(self, cfg: ExperimentConfig, data: TaskData, device: torch.device, split: str = "test"):
        self.cfg, self.data, self.spec, self.split_name = cfg, data, data.spec, split
        r = cfg.model.retina
        self.sizes = patch_sizes(r.patch_size, r.num_scales, r.scale)
        chosen = data.test if split == "test" else data.val
        shown = chosen.head(cfg.eval.viz_images) if cfg.eval.viz_images else None
        self.images = None
        if shown is not None and len(shown):
            self.images = data.view(shown.images, train=False, ids=shown.ids)
            self.inputs = data.normalize(self.images).to(device)
            self.labels = shown.labels.to(device)
            self.ids = shown.ids

    def due(self, epoch: int) -> bool:
        every = self.cfg.eval.viz_every
        return self.images is not None and every > 0 and (epoch + 1) % every == 0

    def episodes(self, model: torch.nn.Module, folder: str, tracker: Any) -> None:
        """Draw the fixed images' episodes (grid PNG + one GIF each) into ``glimpses/<folder>``."""
        if self.images is None:
            return
        drawings = viz.draw_episodes(
            model, self.images, self.inputs, self.labels, self.spec, self.sizes, self.cfg.eval.seed
        )
        with tempfile.TemporaryDirectory(prefix="attn-viz-") as tmp:
            out = Path(tmp)
            viz.grid([d.frame() for d in drawings], columns=4).save(out / "grid.png")
            for i, d in enumerate(drawings):
                viz.save_gif(d.frames(), out / f"image_{i:02d}.gif")
            # what was predicted, to compare with a model loaded elsewhere (same images, same seed)
            (out / "predictions.json").write_text(json.dumps({
                "policy": "mean", "seed": self.cfg.eval.seed, "split": self.split_name,
                "images": [
                    {"index": i, "id": int(image_id), "pred": d.pred, "truth": d.truth, "correct": d.correct,
                     "pred_text": viz.label_text(d.pred, self.spec), "truth_text": viz.label_text(d.truth, self.spec)}
                    for i, (d, image_id) in enumerate(zip(drawings, self.ids.tolist()))
                ],
            }, indent=1))
            for f in sorted(out.iterdir()):
                tracker.log_artifact(str(f), f"glimpses/{folder}")

    def curves(self, history: list[dict[str, float]], label: str, tracker: Any) -> None:
        """The run's validation curve (every epoch so far, from the checkpointed history)."""
        if not history:
            return
        with tempfile.TemporaryDirectory(prefix="attn-viz-") as tmp:
            path = viz.learning_curves({label: history}, Path(tmp) / "learning_curves.png",
                                       title=f"{self.cfg.data.task}: validation error (mean policy)")
            tracker.log_artifact(str(path), "analysis")

    def analysis(self, details: EvalDetails, tracker: Any, step: int, prefix: str = "test") -> dict[str, float]:
        """Heat map and tables of the final pass over the split; returns the per-class metrics it logged
        (``<prefix>_accuracy.<class name>``)."""
        metrics: dict[str, float] = {}
        with tempfile.TemporaryDirectory(prefix="attn-viz-") as tmp:
            out = Path(tmp)
            background = self.images.float().mean(0).round().to(torch.uint8) if self.images is not None else None
            n = int(details.glimpse_hist.sum())
            viz.heatmap(
                details.glimpse_hist, out / "glimpse_heatmap.png", background=background,
                title=f"{self.cfg.data.task}: {n:,} glimpses of the mean policy on the {self.split_name} split",
            )
            if self.spec.is_sequence:
                rows = details.sequence_table()
                viz.write_table(rows, out / "sequence_accuracy.csv", out / "sequence_accuracy.md",
                                title=f"{self.split_name} accuracy by label length (slot_j: the j-th token; end: the end token)")
            else:
                acc = details.class_accuracy()
                counts = details.confusion.sum(dim=1).tolist()
                rows = [{"class": name, "images": int(c), "accuracy": a} for (name, a), c in zip(acc.items(), counts)]
                viz.write_table(rows, out / "class_accuracy.csv", out / "class_accuracy.md",
                                title=f"{self.split_name} accuracy per class (mean policy)")
                metrics = {f"{prefix}_accuracy.{metric_name(k)}": v for k, v in acc.items() if not math.isnan(v)}
            for f in sorted(out.iterdir()):
                tracker.log_artifact(str(f), "analysis")
        if metrics:
            tracker.log_metrics(metrics, step=step)
        return metrics
