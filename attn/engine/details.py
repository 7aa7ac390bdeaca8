"""What a test pass shows beyond its error rate: where the policy looks and which labels it gets right.

:class:`EvalDetails` is filled batch by batch during one evaluation pass (mean policy, one episode per
image) and holds only sums, so that the shards of all DDP ranks add up to the whole split:

    glimpse_hist   (H, W)     how many glimpses (all images, all steps t) were centred on each pixel
                              (c = floor((clamp(l_t) + 1) / 2 * (W, H)), the retina's own rule)
    classification:
    confusion      (C, C)     [true class, predicted class] counts
    sequences (labels y_1 .. y_n, end token; n = the label's length without the end token):
    length_images  (L,)       per n: images
    length_right   (L,)       per n: images whose whole label was read right
    slot_right     (L, L)     per n and slot j <= n: images whose token j was read right (j = n: the
                              end token)
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from attn.data.base import DataSpec
from attn.models.retina import glimpse_centres


class EvalDetails:
    def __init__(self, spec: DataSpec, device: torch.device):
        self.spec = spec
        self.height, self.width = spec.height, spec.width
        f64 = dict(dtype=torch.float64, device=device)
        self.glimpse_hist = torch.zeros(self.height, self.width, **f64)
        L, C = spec.max_tokens, spec.num_classes
        if spec.is_sequence:
            self.length_images = torch.zeros(L, **f64)
            self.length_right = torch.zeros(L, **f64)
            self.slot_right = torch.zeros(L, L, **f64)
        else:
            self.confusion = torch.zeros(C, C, **f64)

    @torch.no_grad()
    def add(self, locations: torch.Tensor, log_probs: torch.Tensor, targets: torch.Tensor) -> None:
        """One batch: locations (B, T, 2) of the glimpses taken; log_probs (B, C) or (B, L, C);
        targets (B,) or (B, L') padded with IGNORE_INDEX."""
        c = glimpse_centres(locations.reshape(-1, 2), self.height, self.width)
        x = c[:, 0].clamp(0, self.width - 1)
        y = c[:, 1].clamp(0, self.height - 1)
        self.glimpse_hist.view(-1).index_add_(
            0, y * self.width + x, torch.ones(len(x), dtype=torch.float64, device=x.device)
        )
        pred = log_probs.argmax(-1)
        if not self.spec.is_sequence:
            C = self.spec.num_classes
            self.confusion.view(-1).index_add_(
                0, targets * C + pred, torch.ones(len(targets), dtype=torch.float64, device=pred.device)
            )
            return
        L = self.spec.max_tokens
        yt = targets[:, : pred.shape[1]]
        valid = yt >= 0
        n = valid.sum(dim=1) - 1  # digits (tokens before the end token)
        token_ok = (pred == yt) & valid
        whole = token_ok.sum(dim=1) == valid.sum(dim=1)
        f64 = torch.float64
        self.length_images.index_add_(0, n, torch.ones_like(n, dtype=f64))
        self.length_right.index_add_(0, n, whole.to(f64))
        # token j of an image with n digits -> row n, column j
        rows = n[:, None].expand_as(valid)
        cols = torch.arange(valid.shape[1], device=n.device)[None, :].expand_as(valid)
        self.slot_right.view(-1).index_add_(0, (rows * L + cols)[valid], token_ok[valid].to(f64))

    def reduce(self) -> None:
        """Sum over DDP ranks (every rank must call it)."""
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return
        for name in ("glimpse_hist", "confusion", "length_images", "length_right", "slot_right"):
            t = getattr(self, name, None)
            if t is not None:
                dist.all_reduce(t)

    # -- tables ----------------------------------------------------------------------------------
    def class_accuracy(self) -> dict[str, float]:
        """Classification: share of each class's images classified right, keyed by class name (NaN
        where the split has no image of the class)."""
        per = self.confusion.sum(dim=1)
        right = self.confusion.diagonal()
        return {
            name: float(right[i] / per[i]) if per[i] > 0 else float("nan")
            for i, name in enumerate(self.spec.class_names)
        }

    def sequence_table(self) -> list[dict[str, float]]:
        """Sequences: one row per label length n present in the split: images, sequence accuracy, and
        the accuracy of each slot (digit 1 .. n, then the end token)."""
        present = [n for n in range(self.spec.max_tokens) if self.length_images[n] > 0]
        longest = max(present, default=0)
        rows = []
        for n in present:
            count = float(self.length_images[n])
            row = {"length": n, "images": int(count), "sequence_accuracy": float(self.length_right[n]) / count}
            for j in range(longest):
                row[f"slot_{j + 1}"] = float(self.slot_right[n, j]) / count if j < n else float("nan")
            row["end"] = float(self.slot_right[n, n]) / count
            rows.append(row)
        return rows
