"""`python run.py init-experiment --data DIR --to FILE`: look at a folder of your own images and write
a commented starting experiment for it.

:func:`inspect_folder` lists the folder as the loaders do (:mod:`attn.data.own_images.listing`: same
layouts, same errors naming the file) and reads every image's header, not its pixels: classes (or
label files, label lengths and tokens), counts per split folder and class, sizes, channel modes.
:func:`experiment_yaml` turns that summary into an experiment file that :func:`attn.config.load_config`
accepts: data keys for the folder, and retina settings scaled to the image size.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from attn.data.own_images.decode import channel_kind, probe_all
from attn.data.own_images.labels import find_label_file, label_summary
from attn.data.own_images.listing import SPLITS, data_root, list_image_folder, list_sequences, split_folders
from attn.errors import AttnError, DataError
from attn.io import atomic_write

MAX_SUGGESTED_SIDE = 128
"""Larger images are suggested a target_size scaled down to this longer side (glimpses cost grows with it)."""


@dataclass
class Summary:
    root: Path
    task: str
    layout: dict[str, Path]
    """Split folders present (train/, val/, test/); empty for one pool."""
    counts: dict[str, Counter]
    """image_folder: {split folder or "all": Counter(class -> images)}; image_sequences: {split: Counter(length -> rows)}."""
    classes: list[str] = field(default_factory=list)
    label_files: dict[str, Path] = field(default_factory=dict)
    vocabulary: list[str] = field(default_factory=list)
    sizes: Counter = field(default_factory=Counter)
    """(height, width) -> images."""
    modes: Counter = field(default_factory=Counter)
    """PIL mode -> images."""
    example: dict[str, Path] = field(default_factory=dict)
    """channel kind (gray, rgb) -> one file of that kind."""
    ignored: int = 0

    @property
    def kinds(self) -> Counter:
        out: Counter = Counter()
        for mode, n in self.modes.items():
            out[channel_kind(mode)] += n
        return out

    @property
    def num_images(self) -> int:
        return sum(self.sizes.values())

    @property
    def train_count(self) -> int:
        """Rows (images) that train/ or the pool holds, before any share is held out."""
        return sum(self.counts.get("train", self.counts.get("all", Counter())).values())

    @property
    def longest_label(self) -> int:
        return max((n for c in self.counts.values() for n in c), default=1)

    def lines(self) -> list[str]:
        where = ", ".join(f"{s}/" for s in self.layout) if self.layout else "one pool (no train/, val/, test/)"
        missing = [s for s in ("val", "test") if s not in self.layout]
        out = [f"{self.root}: {self.task}, {where}"]
        if missing:
            out.append(f"  held out by seed from {'train/' if self.layout else 'the pool'}: {', '.join(missing)}")
        splits = list(self.counts)
        if self.task == "image_folder":
            out.append(f"  {len(self.classes)} classes: {', '.join(self.classes[:30])}{' ...' if len(self.classes) > 30 else ''}")
            width = max(20, *(len(c) + 6 for c in self.classes[:50]))
            out.append("  images per class:".ljust(width) + "".join(s.rjust(8) for s in splits))
            for c in self.classes[:50]:
                out.append(f"    {c}".ljust(width) + "".join(str(self.counts[s][c]).rjust(8) for s in splits))
            if len(self.classes) > 50:
                out.append(f"    ... {len(self.classes) - 50} more classes")
            out.append("    total".ljust(width) + "".join(str(sum(self.counts[s].values())).rjust(8) for s in splits))
        else:
            for s in splits:
                rows = sum(self.counts[s].values())
                lens = ", ".join(f"{n}: {k}" for n, k in sorted(self.counts[s].items()))
                out.append(f"  {s}: {rows} labelled images in {self.label_files[s]} (label lengths {lens})")
            out.append(f"  {len(self.vocabulary)} tokens: {' '.join(self.vocabulary[:60])}{' ...' if len(self.vocabulary) > 60 else ''}")
        out.append(f"  image sizes (height x width): {self._sizes_text()}")
        kinds = self.kinds
        modes = ", ".join(f"{m} {n}" for m, n in self.modes.most_common())
        text = ", ".join(f"{k} {n}" for k, n in kinds.most_common())
        mixed = " -- mixed: the experiment converts them (data.convert: true)" if len(kinds) > 1 else ""
        out.append(f"  channels: {text} (PIL modes {modes}){mixed}")
        if self.ignored:
            out.append(f"  ignored: {self.ignored} non-image file(s) or folder(s)")
        return out

    def _sizes_text(self) -> str:
        if len(self.sizes) == 1:
            (h, w), n = next(iter(self.sizes.items()))
            return f"{h}x{w} (all {n} images)"
        hs = [h for h, _ in self.sizes]
        ws = [w for _, w in self.sizes]
        (h, w), n = self.sizes.most_common(1)[0]
        def span(what: str, values: list[int]) -> str:
            return f"{what} {min(values)}" if min(values) == max(values) else f"{what}s {min(values)}-{max(values)}"

        return (
            f"{len(self.sizes)} different, {span('height', hs)}, {span('width', ws)}; most common {h}x{w} ({n} images)"
        )


def detect_task(root: Path, labels_file: Optional[str] = None) -> str:
    """image_sequences when a label file is found (in train/ or the folder itself), else image_folder."""
    layout = split_folders(root)
    folder = layout["train"] if layout else root
    return "image_sequences" if find_label_file(folder, labels_file) is not None else "image_folder"


def inspect_folder(data_dir: str | Path, task: Optional[str] = None, labels_file: Optional[str] = None) -> Summary:
    root = data_root(str(data_dir), task or "image_folder")
    task = task or detect_task(root, labels_file)
    if task == "image_folder":
        listing = list_image_folder(root)
        names = list(listing.layout) or ["all"]
        counts = {s: Counter() for s in names}
        for lab, src in zip(listing.labels.tolist(), listing.source.tolist()):
            counts["all" if not listing.layout else SPLITS[src]][listing.classes[lab]] += 1
        summary = Summary(root, task, listing.layout, counts, classes=listing.classes, ignored=len(listing.ignored))
        files = listing.files
    else:
        seq = list_sequences(root, labels_file)
        names = list(seq.layout) or ["all"]
        counts = {s: Counter() for s in names}
        for row, src in zip(seq.rows, seq.source.tolist()):
            counts["all" if not seq.layout else SPLITS[src]][len(row.tokens)] += 1
        labels = {("all" if not seq.layout else s): p for s, p in seq.label_files.items()}
        summary = Summary(root, task, seq.layout, counts, label_files=labels, vocabulary=label_summary(seq.rows)[1])
        files = seq.files
    for f, (mode, w, h) in zip(files, probe_all(files)):
        summary.sizes[(h, w)] += 1
        summary.modes[mode] += 1
        summary.example.setdefault(channel_kind(mode), f.path)
    return summary


# ---------------------------------------------------------------------------------------------
# the suggested experiment
# ---------------------------------------------------------------------------------------------
def suggest_size(summary: Summary) -> tuple[int, int]:
    """(height, width): the largest height and the largest width among the images (so that no image
    has to shrink, and a label sequence's glyphs keep one scale), scaled down so the longer side is at
    most MAX_SUGGESTED_SIDE."""
    h = max(h for h, _ in summary.sizes)
    w = max(w for _, w in summary.sizes)
    s = min(1.0, MAX_SUGGESTED_SIDE / max(h, w))
    return max(8, round(h * s)), max(8, round(w * s))


def suggest_retina(side: int, model: str) -> tuple[int, int, int]:
    """(patch_size g, num_scales k, glimpses) for images whose longer side is ``side``: one 8 px scale
    up to 32 px (RAM on MNIST), then 12 px patches doubling until they span most of the image (RAM on
    60 px cluttered MNIST: 12 px, 3 scales; 100 px: 4). DRAM: g >= 12 (its conv glimpse net needs 9)."""
    if model == "dram":
        g = 12 if side <= 128 else 16
        k = 2 if side <= 64 else 3
        return g, k, 3
    if side <= 32:
        return 8, 1, 6
    g = 12 if side <= 128 else 16
    k = 1
    while g * 2 ** (k - 1) < 0.75 * side and k < 5:
        k += 1
    return g, k, 8


def _batch_size(n_train: int) -> int:
    return 128 if n_train >= 4096 else 64 if n_train >= 512 else 32


def experiment_yaml(summary: Summary, data_dir: str, path: str = "experiments/my_data.yaml") -> str:
    """A commented experiment file for ``summary``'s folder (``data_dir`` written as given; ``path``:
    where it will be, for the comments)."""
    H, W = suggest_size(summary)
    model = "ram" if summary.task == "image_folder" else "dram"
    g, k, glimpses = suggest_retina(max(H, W), model)
    cpus = max(1, min(2, os.cpu_count() or 1))
    rest = [
        "eval:",
        "  mc_samples: 10",
        "ray:",
        "  num_workers: 1",
        f"  cpus_per_worker: {cpus}",
        "  gpus_per_worker: 0     # 1: train on a GPU",
    ]
    lines = (
        _header_lines(summary, model, path)
        + _data_lines(summary, data_dir, H, W)
        + _model_lines(model, g, k, glimpses, H, W)
        + _train_lines(model, summary.train_count)
        + rest
    )
    return "\n".join(lines) + "\n"


def _header_lines(summary: Summary, model: str, path: str) -> list[str]:
    what = (
        f"{len(summary.classes)} classes" if summary.task == "image_folder"
        else f"label sequences of up to {summary.longest_label} tokens over {len(summary.vocabulary)} tokens"
    )
    name = Path(path).stem
    header = [f"# {name}: {model.upper()} on your own images ({what}); made by `python run.py init-experiment`."]
    header += ["# What the folder held:"] + [f"#   {line.rstrip()}" for line in summary.lines()]
    return header + [
        f"# Train: python run.py {path} [key=value ...]",
        "# Every key: docs/configuration.md; your own data: docs/data.md.",
    ]


def _data_lines(summary: Summary, data_dir: str, H: int, W: int) -> list[str]:
    kinds = summary.kinds
    color = kinds.most_common(1)[0][0] if kinds else "gray"
    missing = [s for s in ("val", "test") if s not in summary.layout]
    per = " per class" if summary.task == "image_folder" else ""
    source = "train/" if summary.layout else "the pool"
    d = ["data:", f"  task: {summary.task}"]
    d.append(f"  data_dir: {_quote(data_dir)}    # relative paths are read from $ATTN_DATA_ROOT if set, else the current folder")
    for s in missing:
        d.append(f"  {s}_fraction: 0.1      # no {s}/ folder: a seeded 10% of {source}{per} is held out")
    if missing:
        d.append("  split_seed: 0")
    same = len(summary.sizes) == 1 and next(iter(summary.sizes)) == (H, W)
    why = "the images' own size" if same else "the images are brought to this size (see resize)"
    d.append(f"  target_size: [{H}, {W}]   # height, width: {why}")
    if summary.task == "image_sequences":
        d.append("  resize: pad            # pad: keep the scale (glyphs stay one size), centre; fit: scale to fit; stretch")
    else:
        d.append("  resize: fit            # fit: scale to fit, keep the aspect ratio, centre; pad: keep the scale; stretch")
    d.append("  pad_fill: 0            # grey level of the padding")
    d.append(f"  color: {color}            # {'1 channel' if color == 'gray' else '3 channels'} fed to the model")
    if len(kinds) > 1:
        d.append(f"  convert: true          # the folder mixes gray and colour images: convert them all to {color}")
    if summary.task == "image_sequences":
        d.append(f"  max_length: {summary.longest_label}          # the longest label (tokens); longer ones would be skipped")
    return d + ["  # mean / std: computed once from the training split (cached) unless given here"]


def _model_lines(model: str, g: int, k: int, glimpses: int, H: int, W: int) -> list[str]:
    largest = g * 2 ** (k - 1)
    sizes = f"one {g} px patch" if k == 1 else f"{k} patches of {g} to {largest} px"
    m = ["model:", f"  name: {model}"]
    m.append(f"  retina: {{patch_size: {g}, num_scales: {k}, scale: 2.0}}   # {sizes} per glimpse on a {H}x{W} image")
    if model == "ram":
        return m + [
            "  what_size: 128",
            "  where_size: 128",
            "  hidden_size: 256",
            "  core: {kind: rnn}",
            f"  num_glimpses: {glimpses}",
            "  policy_std: 0.15       # the most sensitive hyper-parameter (in [-1, 1] units; see docs/results.md)",
        ]
    return m + [
        "  hidden_size: 256",
        "  core: {kind: lstm}",
        f"  glimpses_per_digit: {glimpses}  # glimpses per label token",
        "  context: {kind: cnn}   # reads the whole image once, sets the first glimpse",
        "  glimpse_color: gray    # rgb: colour glimpses (needs data.color: rgb)",
        "  policy_std: 0.05       # the most sensitive hyper-parameter (in [-1, 1] units)",
    ]


def _train_lines(model: str, n_train: int) -> list[str]:
    t = [
        "train:",
        "  epochs: 100",
        f"  batch_size: {_batch_size(n_train)}",
        "  optimizer: adamw",
        "  lr: 3.0e-4",
        "  scheduler: plateau",
        "  plateau_patience: 10",
        "  patience: 30           # early stopping: epochs without a better validation error",
    ]
    if model == "dram":
        t.append("  grad_clip: 10.0")
    return t + ["  seed: 1"]


def _quote(text: str) -> str:
    import yaml

    return yaml.safe_dump(text, default_style=None).strip().removesuffix("\n...").strip()


def write_experiment(
    data_dir: str, to: str | Path, *, task: Optional[str] = None, labels_file: Optional[str] = None, force: bool = False
) -> tuple[Summary, Path]:
    """Inspect ``data_dir`` and write the experiment file ``to``; refuses to overwrite unless ``force``.
    The file is checked with :func:`attn.config.load_config` before this returns."""
    from attn.config import load_config

    target = Path(to)
    if target.exists() and not force:
        raise DataError(f"{target}: already exists; choose another --to or add --force to overwrite it")
    summary = inspect_folder(data_dir, task, labels_file)
    text = experiment_yaml(summary, str(data_dir), str(target))
    if labels_file:
        text = text.replace("  max_length:", f"  labels_file: {_quote(labels_file)}\n  max_length:", 1)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as tmp:
        tmp.write_text(text)
        try:
            load_config(tmp)
        except AttnError as exc:  # pragma: no cover - a bug in experiment_yaml, not the user's
            raise AssertionError(f"init-experiment wrote an invalid experiment: {exc}\n{text}") from None
    return summary, target
