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
import tempfile
from pathlib import Path
from typing import Any

import torch

from attn.config import ExperimentConfig
from attn.data.base import DataSpec, TaskData
from attn.engine.objective import objective_for
from attn.engine.split_stats import SplitStats
from attn.models.retina import patch_boxes, patch_sizes
from attn import viz


class Pictures:
    def __init__(self, cfg: ExperimentConfig, data: TaskData, device: torch.device, split: str = "test"):
        self.cfg, self.data, self.spec, self.split_name = cfg, data, data.spec, split
        self.objective = objective_for(data.spec)
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
        drawings = draw_episodes(
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
                     "pred_text": self.objective.label_text(d.pred), "truth_text": self.objective.label_text(d.truth)}
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

    def analysis(self, stats: SplitStats, tracker: Any, step: int, prefix: str = "test") -> dict[str, float]:
        """Heat map and table of the final pass over the split; returns the per-class metrics it logged
        (``<prefix>_accuracy.<class name>``, classification only)."""
        with tempfile.TemporaryDirectory(prefix="attn-viz-") as tmp:
            out = Path(tmp)
            background = self.images.float().mean(0).round().to(torch.uint8) if self.images is not None else None
            n = int(stats.glimpse_hist.sum())
            viz.heatmap(
                stats.glimpse_hist, out / "glimpse_heatmap.png", background=background,
                title=f"{self.cfg.data.task}: {n:,} glimpses of the mean policy on the {self.split_name} split",
            )
            table = stats.table
            viz.write_table(table.rows(), out / f"{table.stem}.csv", out / f"{table.stem}.md",
                            title=table.title(self.split_name))
            for f in sorted(out.iterdir()):
                tracker.log_artifact(str(f), "analysis")
        metrics = table.metrics(prefix)
        if metrics:
            tracker.log_metrics(metrics, step=step)
        return metrics


@torch.no_grad()
def draw_episodes(
    model: torch.nn.Module,
    images_u8: torch.Tensor,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    spec: DataSpec,
    sizes: list[int],
    seed: int,
) -> list[viz.EpisodeDrawing]:
    """Run the mean policy on a few images and return what to draw.

    images_u8: uint8 (B, C, H, W) as the model sees them; inputs: the same, normalised; labels (B,) or
    (B, L'); sizes: the retina's patch sides; seed: fixes RAM's random l_0.
    """
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=inputs.device).manual_seed(seed)
    objective = objective_for(spec)
    episode = model(inputs, policy="mean", generator=generator, **objective.slots(labels))
    model.train(was_training)
    H, W = inputs.shape[-2:]
    boxes = patch_boxes(episode.locations.cpu(), H, W, sizes)  # (B, T, k, 4)
    pred = episode.log_probs.argmax(-1).cpu()  # in the order the episode read them; correct() compares sets
    slot = getattr(episode, "step_slot", None)
    out = []
    for b in range(images_u8.shape[0]):
        p = pred[b].reshape(-1).tolist()
        y = labels[b].reshape(-1).tolist()
        out.append(
            viz.EpisodeDrawing(
                images_u8[b].cpu(), boxes[b], slot.tolist() if slot is not None else None, p, y, objective
            )
        )
    return out
