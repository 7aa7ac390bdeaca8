"""DRAM's context network (Ba et al. 2015): reads the whole image once, before any glimpse.

Its output ctx (B, d) initialises the top recurrent layer (or is the first input of the top
Transformer stream), from which the first location l_1 is emitted: the model sees a coarse view of
the whole image before deciding where to look.

``cnn``: conv 5x5 (C -> 64, stride s) -> ReLU -> max-pool 2 -> conv 3x3 (64 -> 64) -> ReLU -> max-pool 2
-> conv 3x3 (64 -> 128) -> ReLU -> max-pool 2 -> flatten -> Linear -> d. On a 54 x 54 crop with s = 1 the
last map is 4 x 4; the flatten size is found by a dry run, so any input size that leaves a map works.
"""

from __future__ import annotations

import torch
from torch import nn

from attn.config import ContextConfig
from attn.errors import ConfigError


def _out_side(n: int, stride: int) -> int:
    """Side of the last feature map for an input side n (convs without padding, floor pooling)."""
    n = (n - 5) // stride + 1
    for kernel in (3, 3):
        n = n // 2 - kernel + 1
    return max(n // 2, 0) if n > 0 else 0


class ContextCNN(nn.Module):
    """images (B, C, H, W) -> ctx (B, d)."""

    def __init__(self, channels: int, height: int, width: int, out_size: int, stride: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 64, 5, stride=stride),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        if min(_out_side(height, stride), _out_side(width, stride)) < 1:
            least = next(n for n in range(1, 10_000) if _out_side(n, stride) >= 1)
            raise ConfigError(
                f"model.context: a {height}x{width} image is too small for the cnn context network with "
                f"model.context.stride = {stride} (it needs at least {least} px per side); lower the stride"
            )
        self.fc = nn.Linear(128 * _out_side(height, stride) * _out_side(width, stride), out_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(images).flatten(1))


def build_context(cfg: ContextConfig, channels: int, height: int, width: int, out_size: int) -> nn.Module:
    if cfg.kind == "cnn":
        return ContextCNN(channels, height, width, out_size, stride=cfg.stride)
    raise ValueError(f"unknown context {cfg.kind!r}")  # pragma: no cover - the schema admits only these
