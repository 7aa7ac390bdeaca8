"""SVHN on an extended background (task ``svhn_background``): each number is put at a random spot of
a larger canvas whose background continues the photo's own, so the model has to search for it.

Input: the stored S x S number crops (S = ``data.image_size``, 64: the union box enlarged by 30%, so
the number is about 49 px, the size it has in the 54 x 54 crop of the ``svhn`` task) and the tight
union box of the digits in crop pixels. Per image, on an N x N canvas (N = ``data.canvas_size``):

    level_c   = median of the crop's outermost ring of pixels, channel c   (the photo's background)
    noise     ~ N(level_c, (0.2 * 255)^2) per pixel, clipped to [0, 255] in float, then rounded
    (top, left) ~ U{0 .. N - S}^2 (training; evaluation: fixed per image, or the centre)
    canvas[top:top+S, left:left+S] = alpha * crop + (1 - alpha) * noise
    alpha     = 1 inside, falling linearly to 1 / (BLEND + 1) over the crop's outer BLEND pixels
                (the seam lies in the 15% margin of real background around the digits, never on them)

The whole crop fits the canvas, so the number's box does too; it moves with the crop:
box_canvas = box_crop + (left, top, left, top). Training canvases are made per batch on the batch's
device in a few tensor ops (no per-image loop); evaluation canvases draw their placement and noise
from a generator seeded by (placement_seed, image id), so test error is the same on every run and
every rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

NOISE_STD = 0.2 * 255
"""Standard deviation of the background noise, in pixel values (design reference 2.4)."""
BLEND = 6
"""Width in pixels of the crop's outer band that is blended into the noise (the margin is ~7.5 px)."""


def seam_alpha(size: int, blend: int = BLEND, device=None) -> torch.Tensor:
    """(size, size) float32 weights of the crop: 1 further than ``blend`` px from its edge, then
    (d + 1) / (blend + 1) at distance d = 0 .. blend - 1 from it."""
    i = torch.arange(size, device=device)
    edge = torch.minimum(i, size - 1 - i)
    d = torch.minimum(edge[:, None], edge[None, :]).float()
    return ((d + 1) / (blend + 1)).clamp(max=1.0)


def border_level(crops: torch.Tensor) -> torch.Tensor:
    """Median of each image's outermost ring of pixels, per channel: (B, C, S, S) -> (B, C) float."""
    ring = torch.cat([crops[..., 0, :], crops[..., -1, :], crops[..., 1:-1, 0], crops[..., 1:-1, -1]], dim=-1)
    return ring.float().median(dim=-1).values


@dataclass(frozen=True)
class Canvas:
    """Places stored crops on ``size`` x ``size`` extended backgrounds (see the module docstring).

    eval_placement: "seeded" (a spot and noise fixed per image id) or "center".
    seed: the placement seed of evaluation canvases.
    """

    size: int
    eval_placement: str = "seeded"
    seed: int = 0

    def _eval_generators(self, ids: Optional[torch.Tensor]) -> list[torch.Generator]:
        """One CPU generator per image, seeded by (seed, id) only: the canvas of an image never
        depends on its batch, its rank or the run."""
        if ids is None:
            raise ValueError("evaluation canvases are seeded per image: pass the batch's image ids")
        return [torch.Generator().manual_seed(self.seed * 1_000_003 + int(i)) for i in ids.tolist()]

    def place(
        self,
        crops: torch.Tensor,
        *,
        train: bool,
        ids: Optional[torch.Tensor] = None,
        boxes: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """crops uint8 (B, C, S, S) -> (canvases uint8 (B, C, N, N), number boxes (B, 4) (x0, y0, x1, y1)
        in canvas pixels, or None when ``boxes`` (the same boxes in crop pixels) is None).

        Training draws placement and noise from ``generator`` (or the global RNG) on the crops' device;
        evaluation needs ``ids`` (B,) and gives the same canvas for the same id every time.
        """
        B, C, S, _ = crops.shape
        N, dev = self.size, crops.device
        if S > N:
            raise ValueError(f"a {S} px crop does not fit a {N} px canvas")
        level = border_level(crops)  # (B, C)
        span = N - S + 1
        if train:
            noise = torch.randn(B, C, N, N, device=dev, generator=generator)
            off = torch.randint(0, span, (B, 2), device=dev, generator=generator)
        else:
            gens = self._eval_generators(ids)
            noise = torch.stack([torch.randn(C, N, N, generator=g) for g in gens]).to(dev)
            if self.eval_placement == "center":
                off = torch.full((B, 2), (N - S) // 2, dtype=torch.long, device=dev)
            else:
                off = torch.stack([torch.randint(0, span, (2,), generator=g) for g in gens]).to(dev)
        canvas = (noise * NOISE_STD + level[:, :, None, None]).clamp_(0.0, 255.0)
        r = torch.arange(S, device=dev)
        rows = (off[:, 0, None] + r)[:, :, None]  # (B, S, 1)
        cols = (off[:, 1, None] + r)[:, None, :]  # (B, 1, S)
        b = torch.arange(B, device=dev)[:, None, None]
        # Advanced indices around a slice put their broadcast dims first: (B, S, S, C).
        under = canvas[b, :, rows, cols]
        alpha = seam_alpha(S, device=dev)[None, :, :, None]
        canvas[b, :, rows, cols] = alpha * crops.permute(0, 2, 3, 1).float() + (1 - alpha) * under
        out = canvas.round_().to(torch.uint8)
        if boxes is None:
            return out, None
        shift = off.flip(1).repeat(1, 2).to(boxes.dtype)  # (left, top, left, top)
        return out, boxes.to(dev) + shift
