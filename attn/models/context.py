"""DRAM's context network (Ba et al. 2015): reads the whole image once, before any glimpse.

Its output ctx (B, d) initialises the top recurrent layer (or is the first input of the top
Transformer stream), from which the first location l_1 is emitted: the model sees a coarse view of
the whole image before deciding where to look.

``snapshot``: the same network on a fixed-size down-sampled copy of the image (area averaging), so
its cost stays the same on larger canvases.

``cnn``: conv 5x5 (C -> 64, stride s) -> ReLU -> max-pool 2 -> conv 3x3 (64 -> 64) -> ReLU -> max-pool 2
-> conv 3x3 (64 -> 128) -> ReLU -> max-pool 2 -> flatten -> Linear -> d. On a 54 x 54 crop with s = 1 the
last map is 4 x 4; the flatten size is computed from the input size, so any size that leaves a map works.

``resnet50``: torchvision's ResNet-50 without its classifier, frozen and always in eval mode (its
batch-norm statistics never drift), on the RGB image in ImageNet normalisation; a trainable
Linear(2048 -> d) maps the pooled features to ctx.

``vit``: a transformers ViT encoder, frozen, on the image resized to its input size with ViT
normalisation (mean = std = 0.5); its last hidden state (B, M, D) (M = 1 + patches) is projected
by a trainable Linear(D -> d) into memory tokens that the top Transformer stream reads by
cross-attention (there is no ctx vector: see :class:`attn.models.dram.DRAM`).

``none``: no context network (the DRAM paper's ablation): ctx is a learned vector (d,), the same
for every image.

Backbones read pixel values, so they undo the data normalisation first: x01 = x * std + mean with
the dataset's (mean, std), gray images repeated to three channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pathlib import Path
from typing import Optional

from attn.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


class NoContext(nn.Module):
    """``none``: images (B, C, H, W) -> a learned ctx (B, d), the same for every image (zeros at first,
    so that the first location starts at the location net's output for a zero state)."""

    def __init__(self, out_size: int):
        super().__init__()
        self.ctx = nn.Parameter(torch.zeros(out_size))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.ctx.expand(images.shape[0], -1)


class SnapshotContext(nn.Module):
    """``snapshot``: the context CNN on an S x S copy of the whole image, down-sampled by area
    averaging (every pixel counts, no aliasing): images (B, C, H, W) -> ctx (B, d)."""

    def __init__(self, channels: int, out_size: int, size: int, stride: int = 1):
        super().__init__()
        self.size = size
        self.cnn = ContextCNN(channels, size, size, out_size, stride=stride)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (self.size, self.size):
            images = F.interpolate(images, size=(self.size, self.size), mode="area")
        return self.cnn(images)


class FrozenBackbone(nn.Module):
    """Base of the pretrained-backbone contexts: ``backbone`` frozen and kept in eval mode whatever
    ``train()`` says; ``pixels`` maps normalised model input back to [0, 1] RGB."""

    backbone: nn.Module

    def __init__(self, input_norm: tuple[float, float]):
        super().__init__()
        self.data_mean, self.data_std = input_norm

    def freeze(self) -> None:
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # batch-norm / dropout of a frozen backbone stay in inference mode
        return self

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised input -> (B, 3, H, W) in [0, 1] (gray repeated to RGB)."""
        x = images * self.data_std + self.data_mean
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def check_weights(kind: str, weights: Optional[str], vit_config: Optional[str] = None) -> None:
    """Fail in one line when a weights file or config a ``kind`` context names is missing (before
    training starts on workers)."""
    if weights is not None and weights != "imagenet":
        path = Path(weights).expanduser()
        if kind == "vit" and not (path / "config.json").is_file():
            raise ConfigError(
                f"{path}: model.context.weights for vit must be a folder written by save_pretrained "
                "(config.json and the weights); see experiments/multinumber.yaml for how to make one"
            )
        if kind == "resnet50" and not path.is_file():
            raise ConfigError(
                f"{path}: model.context.weights file not found; give a ResNet-50 state_dict (.pth), "
                "'imagenet', or leave it unset for random init"
            )
    if vit_config is not None:
        path = Path(vit_config).expanduser()
        if not (path.is_file() or (path / "config.json").is_file()):
            raise ConfigError(f"{path}: model.context.vit_config not found; give a ViT config.json or a folder holding one")


class ResNet50Context(FrozenBackbone):
    """``resnet50``: images (B, C, H, W) -> ctx (B, d) = Linear(2048 -> d)(avgpool(ResNet-50(x)))."""

    def __init__(self, out_size: int, weights: str | None, input_norm: tuple[float, float]):
        super().__init__(input_norm)
        from torchvision.models import resnet50

        self.backbone = resnet50(weights=None)
        self.backbone.fc = nn.Identity()
        if weights is not None:
            self.backbone.load_state_dict(_resnet50_state(weights), strict=False)
        self.freeze()
        self.register_buffer("im_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("im_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.proj = nn.Linear(2048, out_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            feats = self.backbone((self.pixels(images) - self.im_mean) / self.im_std)
        return self.proj(feats)


def _resnet50_state(weights: str) -> dict:
    """The ResNet-50 state_dict named by ``model.context.weights`` ('imagenet' or a file), without fc."""
    if weights == "imagenet":
        from torchvision.models import ResNet50_Weights

        try:
            state = ResNet50_Weights.IMAGENET1K_V2.get_state_dict(progress=False)
        except Exception as exc:  # network errors come in many types (URLError, OSError, HTTPError)
            raise ConfigError(
                f"model.context.weights = 'imagenet': cannot fetch torchvision's ResNet-50 weights ({exc}); "
                "on a machine without network, download resnet50-11ad3fa6.pth elsewhere and set "
                "model.context.weights to its path"
            ) from None
    else:
        path = Path(weights).expanduser()
        check_weights("resnet50", weights)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ConfigError(f"{path}: model.context.weights is not a readable state_dict ({exc})") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    from torchvision.models import resnet50

    expected = {k: v.shape for k, v in resnet50(weights=None).state_dict().items() if not k.startswith("fc.")}
    wrong = sorted(set(expected) ^ set(state)) or [k for k in expected if state[k].shape != expected[k]]
    if wrong:
        raise ConfigError(
            f"{weights}: model.context.weights is not a torchvision ResNet-50 state_dict "
            f"(first mismatching key {wrong[0]!r})"
        )
    return state


class ViTContext(FrozenBackbone):
    """``vit``: images (B, C, H, W) -> memory tokens (B, M, d) = Linear(D -> d)(ViT(x).last_hidden_state)."""

    def __init__(self, out_size: int, weights: str | None, vit_config: str | None, input_norm: tuple[float, float]):
        super().__init__(input_norm)
        from transformers import ViTConfig, ViTModel

        if weights is not None:
            path = Path(weights).expanduser()
            check_weights("vit", weights)
            try:
                self.backbone = ViTModel.from_pretrained(str(path), add_pooling_layer=False, local_files_only=True)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{path}: cannot load the ViT weights ({exc})") from None
        else:
            config = ViTConfig()
            if vit_config is not None:
                path = Path(vit_config).expanduser()
                file = path / "config.json" if path.is_dir() else path
                try:
                    config = ViTConfig.from_json_file(str(file))
                except (OSError, ValueError) as exc:
                    raise ConfigError(
                        f"{file}: model.context.vit_config is not a readable ViT config.json ({exc})"
                    ) from None
            self.backbone = ViTModel(config, add_pooling_layer=False)
        self.freeze()
        self.image_size = int(self.backbone.config.image_size)
        self.proj = nn.Linear(self.backbone.config.hidden_size, out_size)

    @property
    def num_tokens(self) -> int:
        c = self.backbone.config
        return 1 + (c.image_size // c.patch_size) ** 2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.pixels(images)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        with torch.no_grad():
            tokens = self.backbone(pixel_values=(x - 0.5) / 0.5).last_hidden_state
        return self.proj(tokens)
