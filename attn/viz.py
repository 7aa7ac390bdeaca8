"""Pictures of what a model does: glimpse paths, where the policy looks, and result tables.

Everything here turns tensors into files (PNG, GIF, CSV, Markdown): it runs no model and knows nothing
of Ray or MLflow; :mod:`attn.engine.pictures` runs the episodes, decides when to draw and hands the
files to the tracker.

Glimpse drawings are pixel-exact: image pixel (x, y) is drawn as the zoom x zoom block whose top-left
is (left + x * zoom, top + y * zoom) (:class:`Layout`), and the patch i of glimpse t, which covers image
pixels [x0, x1) x [y0, y1) (:func:`attn.models.retina.patch_boxes`, the retina's own rule), is the
rectangle whose outer edge is exactly that block range. Lines grow inwards, so the outer edge never
moves. Glimpse 1 is drawn thicker in white; the others in one colour per step (RAM) or per label slot
(DRAM: the glimpses that read the same digit share a colour), each numbered at its centre.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from attn.engine.objective import Objective

FIRST_COLOR = (255, 255, 255)
"""Glimpse 1 (the first look) is white and twice as thick."""
STEP_COLORS = [
    (255, 64, 64), (255, 160, 0), (240, 230, 40), (60, 220, 60), (0, 200, 255), (80, 120, 255),
    (200, 90, 255), (255, 90, 200), (150, 255, 180), (255, 200, 150),
]
RIGHT, WRONG = (40, 170, 40), (210, 40, 40)
BACKGROUND = (32, 32, 32)
TITLE_H = 20


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, with matplotlib's INFO messages kept off the
    console: a Ray worker's root logger is at INFO, and the first plot on a machine builds the font
    cache and says so ("generated new fontManager") among the user's epoch lines."""
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass(frozen=True)
class Layout:
    """Where the image sits in a drawing: image pixel (x, y) -> the block at (left + x * zoom,
    top + y * zoom), zoom x zoom pixels."""

    zoom: int
    left: int
    top: int

    def rect(self, box: Sequence[int]) -> tuple[int, int, int, int]:
        """Image box (x0, y0, x1, y1), x1 and y1 exclusive -> the drawing's inclusive outer rectangle."""
        x0, y0, x1, y1 = (int(v) for v in box)
        z = self.zoom
        return (self.left + x0 * z, self.top + y0 * z, self.left + x1 * z - 1, self.top + y1 * z - 1)


def zoom_for(height: int, width: int, target: int = 240) -> int:
    """Integer zoom that brings the larger side near ``target`` pixels (at least 1)."""
    return max(1, round(target / max(height, width)))


def to_rgb(image: torch.Tensor) -> np.ndarray:
    """uint8 (C, H, W) with C = 1 or 3 -> uint8 (H, W, 3)."""
    a = image.detach().cpu().numpy()
    a = np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a[:3]
    return np.ascontiguousarray(a.transpose(1, 2, 0))


def _font(size: int = 13):
    return ImageFont.load_default(size=size)


def glimpse_frame(
    image: torch.Tensor,
    boxes: torch.Tensor,
    *,
    title: str = "",
    title_color: tuple[int, int, int] = (230, 230, 230),
    shown: Optional[int] = None,
    slot: Optional[Sequence[int]] = None,
    zoom: Optional[int] = None,
    margin: Optional[int] = None,
    legend: Optional[list[tuple[int, str]]] = None,
) -> tuple[Image.Image, Layout]:
    """One picture of an episode.

    Args:
        image: uint8 (C, H, W), what the model saw (before normalisation).
        boxes: (T, k, 4) int patch boxes of the T glimpses (from :func:`patch_boxes`).
        title: text above the image; title_color its colour (green right, red wrong).
        shown: draw glimpses 1..shown only (an animation frame); the last of them is drawn thicker.
        slot: (T,) label slot of each glimpse (DRAM): one colour per slot instead of per step.
        zoom, margin: pixels per image pixel; border (in drawing pixels) around the image so that
            patches reaching outside it stay visible.
        legend: (slot, text) pairs written under the image in the slot's colour.
    Returns:
        the RGB image and its :class:`Layout`.
    """
    _, H, W = image.shape
    z = zoom or zoom_for(H, W)
    T = boxes.shape[0]
    if margin is None:
        # room for half the largest patch, so that glimpses near the border show whole
        largest = int((boxes[..., 2] - boxes[..., 0]).max()) if T else 0
        margin = max(4, min(64, (largest // 2) * z))
    legend_h = 18 if legend else 0
    canvas_w, canvas_h = W * z + 2 * margin, H * z + 2 * margin + TITLE_H + legend_h
    out = Image.new("RGB", (max(canvas_w, 120), canvas_h), BACKGROUND)
    layout = Layout(z, margin, TITLE_H + margin)
    pic = Image.fromarray(to_rgb(image)).resize((W * z, H * z), Image.NEAREST)
    out.paste(pic, (layout.left, layout.top))
    draw = ImageDraw.Draw(out)
    font, small = _font(), _font(max(9, min(13, 2 * z)))
    draw.text((4, 3), title, fill=title_color, font=font)
    n = T if shown is None else min(shown, T)
    width = max(1, z // 4)
    # Later glimpses first, so that glimpse 1 (and the newest one of a frame) end up on top.
    order = list(range(n - 1, -1, -1))
    if shown is not None and n > 1:
        order = [t for t in order if t != n - 1] + [n - 1]
    for t in order:
        if t == 0:
            color, w = FIRST_COLOR, 2 * width
        else:
            key = slot[t] if slot is not None else t
            color, w = STEP_COLORS[int(key) % len(STEP_COLORS)], width
        if shown is not None and t == n - 1 and t != 0:
            w = 2 * width
        for box in boxes[t].tolist():
            draw.rectangle(layout.rect(box), outline=color, width=w)
        x0, y0, x1, y1 = boxes[t, 0].tolist()
        cx = layout.left + ((x0 + x1) * z) // 2
        cy = layout.top + ((y0 + y1) * z) // 2
        draw.text((cx, cy), str(t + 1), fill=color, font=small, anchor="mm")
    if legend:
        x = 3
        for s, text in legend:
            color = STEP_COLORS[int(s) % len(STEP_COLORS)]
            draw.text((x, canvas_h - legend_h + 2), text, fill=color, font=font)
            x += int(draw.textlength(text, font=font)) + 10
    return out, layout


def grid(frames: list[Image.Image], columns: int = 4) -> Image.Image:
    """Frames side by side, ``columns`` per row (each cell sized to the largest frame)."""
    if not frames:
        raise ValueError("no frames to put in a grid")
    w = max(f.width for f in frames)
    h = max(f.height for f in frames)
    cols = min(columns, len(frames))
    rows = math.ceil(len(frames) / cols)
    out = Image.new("RGB", (cols * w, rows * h), BACKGROUND)
    for i, f in enumerate(frames):
        out.paste(f, ((i % cols) * w, (i // cols) * h))
    return out


def save_gif(frames: list[Image.Image], path: Path, duration_ms: int = 700) -> Path:
    """An animated GIF, one frame per glimpse, looping."""
    frames[0].save(
        path, save_all=True, append_images=frames[1:], duration=duration_ms, loop=0, optimize=False, disposal=1
    )
    return path


@dataclass
class EpisodeDrawing:
    """What is needed to draw one image's episode."""

    image: torch.Tensor  # uint8 (C, H, W)
    boxes: torch.Tensor  # (T, k, 4)
    slot: Optional[list[int]]  # (T,) label slot per glimpse (DRAM)
    pred: list[int]
    truth: list[int]
    objective: Objective

    @property
    def correct(self) -> bool:
        return self.objective.correct(self.pred, self.truth)

    def title(self) -> str:
        return f"pred {self.objective.label_text(self.pred)} | true {self.objective.label_text(self.truth)}"

    def legend(self) -> Optional[list[tuple[int, str]]]:
        if self.slot is None:
            return None
        used = sorted(set(self.slot))
        names = self.objective.spec.class_names
        return [(s, f"{s + 1}:{names[self.pred[s]] if s < len(self.pred) else '?'}") for s in used]

    def frame(self, shown: Optional[int] = None, zoom: Optional[int] = None) -> Image.Image:
        # every animation frame says which glimpse it shows (this also keeps GIF writers from
        # merging two identical frames: the mean policy may look at one spot twice)
        title = self.title() if shown is None else f"{shown}/{self.boxes.shape[0]}  {self.title()}"
        return glimpse_frame(
            self.image, self.boxes, title=title, title_color=RIGHT if self.correct else WRONG,
            shown=shown, slot=self.slot, zoom=zoom, legend=self.legend(),
        )[0]

    def frames(self, zoom: Optional[int] = None) -> list[Image.Image]:
        """One frame per glimpse: glimpses 1..t on frame t."""
        return [self.frame(shown=t, zoom=zoom) for t in range(1, self.boxes.shape[0] + 1)]


def heatmap(
    hist: torch.Tensor,
    path: Path,
    *,
    background: Optional[torch.Tensor] = None,
    title: str = "",
) -> Path:
    """Glimpse centres over the test set: counts (H, W) as a heat map over ``background`` (uint8
    (C, H, W), e.g. the mean test image), with a colour bar in glimpses per pixel."""
    plt = pyplot()

    h = hist.detach().cpu().double().numpy()
    H, W = h.shape
    fig, ax = plt.subplots(figsize=(5.2, 5.2 * H / W + 0.4), dpi=100)
    if background is not None:
        ax.imshow(to_rgb(background), extent=(0, W, H, 0), interpolation="nearest")
    shown = np.ma.masked_where(h <= 0, h)
    im = ax.imshow(shown, cmap="inferno", alpha=0.75 if background is not None else 1.0,
                   extent=(0, W, H, 0), interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="glimpses centred on the pixel")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_table(rows: list[dict], csv_path: Path, md_path: Optional[Path] = None, title: str = "") -> list[Path]:
    """Rows (dicts with the same keys first) as CSV and, optionally, a Markdown table."""
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    written = [csv_path]
    if md_path is not None:

        def cell(v) -> str:
            if isinstance(v, float):
                return "-" if math.isnan(v) else f"{v:.4f}"
            return "-" if v is None else str(v)

        lines = [f"# {title}", ""] if title else []
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
        md_path.write_text("\n".join(lines) + "\n")
        written.append(md_path)
    return written


def parallel_coordinates(
    rows: list[dict], keys: list[str], metric: str, path: Path, mode: str = "min", metric_label: Optional[str] = None
) -> Path:
    """One line per trial across the searched ``keys`` and ``metric`` (each axis scaled to its own
    range, log-scaled when it spans over 10x; text values placed in order of appearance); the best
    trial drawn thick, lines coloured by the metric. Trials without a finite metric are left out."""
    plt = pyplot()

    axes = list(keys) + [metric]
    scored = [r for r in rows if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
    if not scored:
        raise ValueError(f"no trial has a finite {metric}")
    ticks: dict[str, tuple[list[float], list[str]]] = {}
    columns = []
    for a in axes:
        vals = [r.get(a) for r in scored]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
        if numeric:
            x = np.asarray(vals, dtype=float)
            log = a != metric and x.min() > 0 and x.max() / x.min() > 10
            y = np.log10(x) if log else x
            lo, hi = float(y.min()), float(y.max())
            span = hi - lo or 1.0
            columns.append((y - lo) / span)
            tick_y = np.linspace(0, 1, 3)
            ticks[a] = (list(tick_y), [f"{(10 ** (lo + t * span)) if log else lo + t * span:.3g}" for t in tick_y])
        else:
            cats = list(dict.fromkeys(str(v) for v in vals))
            pos = {c: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
            columns.append(np.asarray([pos[str(v)] for v in vals]))
            ticks[a] = (list(pos.values()), cats)
    data = np.stack(columns, axis=1)  # (trials, axes)
    m = np.asarray([r[metric] for r in scored], dtype=float)
    best = int(np.argmin(m) if mode == "min" else np.argmax(m))
    fig, ax = plt.subplots(figsize=(1.8 * len(axes) + 2, 4.2), dpi=100)
    cmap = plt.get_cmap("viridis_r" if mode == "min" else "viridis")
    norm = plt.Normalize(m.min(), m.max() if m.max() > m.min() else m.min() + 1)
    xs = np.arange(len(axes))
    for i in range(len(scored)):
        ax.plot(xs, data[i], color=cmap(norm(m[i])), lw=3.5 if i == best else 1.2, alpha=0.95 if i == best else 0.7)
    for j, a in enumerate(axes):
        ax.axvline(j, color="0.5", lw=0.8)
        for ty, tl in zip(*ticks[a]):
            ax.text(j + 0.03, ty, tl, fontsize=7, va="center")
    label = metric_label or metric
    ax.set_xticks(xs, [label if a == metric else a for a in axes], rotation=15, fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(axes) - 0.6)
    ax.set_title(f"{len(scored)} trials; thick: best {label} {m[best]:.4g} ({scored[best].get('trial_id', '')})", fontsize=9)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=label)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path



def curve_points(rows: list[dict], metric: str = "val_error") -> tuple[list[int], list[float], list[float]]:
    """(1-based epochs, training minutes at each epoch's end, metric values) of the epochs that have a
    finite ``metric``; the wall time counts every epoch's ``epoch_time_s``, also those without it."""
    elapsed, out = 0.0, ([], [], [])
    for r in rows:
        elapsed += r.get("epoch_time_s", 0.0)
        value = r.get(metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[0].append(int(r["epoch"]) + 1)
            out[1].append(elapsed / 60.0)
            out[2].append(max(float(value), 1e-3))  # a log axis cannot show 0
    return out


def learning_curves(series: dict[str, list[dict]], path: Path, title: str = "", metric: str = "val_error") -> Path:
    """Validation error per epoch of one or more runs: against the epoch (left) and against the
    training wall time (right, the running sum of ``epoch_time_s``), log-scaled, one line per run.

    series: label -> the run's epochs in order, each a dict with ``epoch`` (0-based), ``metric`` and
    ``epoch_time_s``; epochs without the metric are skipped.
    """
    plt = pyplot()
    import matplotlib.ticker

    fig, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100, sharey=True)
    for i, (label, rows) in enumerate(series.items()):
        epochs, minutes, values = curve_points(rows, metric)
        if not epochs:
            continue
        color = f"C{i % 10}"
        by_epoch.plot(epochs, values, color=color, lw=1.4, label=label)
        by_time.plot(minutes, values, color=color, lw=1.4, label=label)
    for ax, xlabel in ((by_epoch, "epoch"), (by_time, "training wall time (min)")):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", color="0.85", lw=0.6)
    by_epoch.set_ylabel(f"{metric} (%)")
    by_time.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
