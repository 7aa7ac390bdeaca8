"""The experiment schema: the single source of truth for every option, its default and its bounds.

An experiment is a YAML file (``experiments/*.yaml``) plus optional ``key=value`` overrides on the
command line. Both go through :func:`load_config`, which refuses unknown keys, wrong types and
out-of-range values with one sentence naming the file, the key, the value and what is allowed.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from attn.errors import ConfigError


class Section(BaseModel):
    """Base of every config section: strict keys, validated on assignment, immutable defaults."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def _refuse_inapplicable(self, where: str, selector: str, applies: dict[str, tuple[str, ...]]) -> None:
        """Raise when a key of ``applies`` is set (differs from its default) while ``self.<selector>`` is
        not one of the values that key applies to. ``where``: the section's dotted name."""
        chosen = getattr(self, selector)
        for key, values in applies.items():
            if chosen not in values and getattr(self, key) != type(self).model_fields[key].default:
                raise ValueError(
                    f"{where}.{key} = {getattr(self, key)!r} does not apply to {where}.{selector} {chosen!r} (only to "
                    f"{', '.join(map(repr, values))}); remove it or change {where}.{selector}"
                )


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
SEQUENCE_TASKS = ("svhn", "svhn_background", "multinumber", "image_sequences")
MULTINUMBER_TOKENS = 6
"""Label slots of a multinumber image: up to 2 digits, separator, up to 2 digits, end."""
_SVHN = ("svhn", "svhn_background")
_MNIST_CANVAS = ("mnist_translated", "mnist_cluttered")
_OWN_IMAGES = ("image_folder", "image_sequences")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
"""The normalisation every built-in task uses unless data.mean / data.std are given (as in earlier work)."""
_TASK_KEYS = {
    "val_fraction": ("mnist",) + _MNIST_CANVAS + _SVHN + _OWN_IMAGES,
    "split_seed": ("mnist",) + _MNIST_CANVAS + _SVHN + _OWN_IMAGES,
    "use_extra": _SVHN,
    "max_digits": _SVHN,
    "color": _SVHN + ("multinumber",) + _OWN_IMAGES,
    "image_size": _SVHN,
    "crop_size": ("svhn",),
    "cache_dir": _SVHN + ("multinumber",) + _OWN_IMAGES,
    "canvas_size": ("svhn_background",),
    "eval_placement": ("svhn_background",),
    "placement_seed": ("svhn_background",) + _MNIST_CANVAS,
    "mnist_canvas_size": _MNIST_CANVAS,
    "clutter_pieces": ("mnist_cluttered",),
    "clutter_size": ("mnist_cluttered",),
    "test_fraction": _OWN_IMAGES,
    "target_size": _OWN_IMAGES,
    "resize": _OWN_IMAGES,
    "pad_fill": _OWN_IMAGES,
    "convert": _OWN_IMAGES,
    "labels_file": ("image_sequences",),
    "max_length": ("image_sequences",),
}
"""The data keys that apply only to some tasks (setting one for another task is an error)."""


class DataConfig(Section):
    task: Literal[
        "mnist", "mnist_translated", "mnist_cluttered", "svhn", "svhn_background", "multinumber",
        "image_folder", "image_sequences",
    ] = Field(
        "mnist",
        description=(
            "mnist: 28x28 digits, one label (RAM); mnist_translated / mnist_cluttered: the RAM paper's "
            "MNIST digits at a random spot of a larger canvas (with clutter); svhn: SVHN format 1 house "
            "numbers, digit sequences (DRAM), Goodfellow et al. crops; svhn_background: the same numbers "
            "placed at a random spot of a canvas_size x canvas_size extended background (the model must "
            "search); multinumber: two numbers per 224 x 224 image made by `python run.py prepare "
            "multinumber`; image_folder: your own images, one folder per class (RAM); image_sequences: "
            "your own images with label sequences from a CSV or JSON file (DRAM)."
        ),
    )
    data_dir: Optional[str] = Field(
        None,
        description=(
            "Folder with the dataset files. mnist: None uses the copy embedded in the package. svhn: the "
            "folder holding train/, test/ (and extra/) of format 1; `python run.py prepare svhn --to DIR` "
            "makes one. multinumber: the folder `python run.py prepare multinumber --to DIR` wrote. A relative "
            "path is read from $ATTN_DATA_ROOT if set (a cluster's shared folder), else from the current folder."
        ),
    )
    val_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description=(
            "Seeded share of the training set held out for validation (image_folder, image_sequences: only "
            "when data_dir has no val/ folder; image_folder: per class)."
        ),
    )
    split_seed: int = Field(0, ge=0, description="Seed of the train/validation (and held-out test) split.")
    train_subset: Optional[int] = Field(
        None, ge=1, description="Use only the first N training images (after the split): quick runs."
    )
    eval_subset: Optional[int] = Field(
        None, ge=1, description="Use only the first N validation and N test images: quick runs."
    )
    mean: Optional[float] = Field(
        None,
        description=(
            "Normalisation mean (pixel values in [0, 1]). None: the task's own: MNIST's 0.1307 for the MNIST, "
            "svhn and multinumber tasks (as in earlier work); for image_folder / image_sequences computed once "
            "from the training split (over all pixels and channels) and cached."
        ),
    )
    std: Optional[float] = Field(
        None,
        gt=0.0,
        description="Normalisation standard deviation. None: the task's own (MNIST's 0.3081, or computed like mean).",
    )
    normalize: Literal["dataset", "per_image"] = Field(
        "dataset",
        description=(
            "dataset: (x - mean) / std with the two values above (MNIST statistics, also for svhn as in "
            "earlier work); per_image: each image (after cropping) to mean 0 and std 1, which removes "
            "brightness and contrast differences between photos."
        ),
    )
    # svhn only
    use_extra: bool = Field(True, description="svhn: pool extra/ (202k images) with train/ before the split.")
    max_digits: int = Field(
        5,
        ge=1,
        le=16,
        description=(
            "svhn: longest number kept; label = digits + end token, so max_digits + 1 slots. Longer numbers "
            "are skipped and their count reported (never cut)."
        ),
    )
    color: Literal["gray", "rgb"] = Field(
        "gray",
        description=(
            "svhn, multinumber, image_folder, image_sequences: images stored and fed as 1 or 3 channels. "
            "image_folder / image_sequences: an image of the other kind is an error naming it unless "
            "data.convert is true."
        ),
    )
    image_size: int = Field(64, ge=8, le=512, description="svhn: side of the resized, 30%-enlarged number box.")
    crop_size: int = Field(
        54, ge=8, le=512, description="svhn: side of the crop fed to the model (random in training, centre in evaluation)."
    )
    cache_dir: Optional[str] = Field(
        None,
        description=(
            "svhn, multinumber, image_folder, image_sequences: where the prepared arrays are kept. "
            "None: <data_dir>/attn-cache."
        ),
    )
    # svhn_background only
    canvas_size: int = Field(
        110,
        ge=64,
        le=1024,
        description=(
            "svhn_background: side N of the square canvas (110, 186 and 224 are the documented settings); "
            "the number keeps the size it has in the 64 px crop."
        ),
    )
    eval_placement: Literal["seeded", "center"] = Field(
        "seeded",
        description=(
            "svhn_background: where validation/test numbers go: seeded = a random spot fixed per image "
            "(placement_seed, image id), center = the middle. Training placement is always random."
        ),
    )
    placement_seed: int = Field(
        0,
        ge=0,
        description=(
            "svhn_background: seed of the evaluation placement and noise; mnist_translated / mnist_cluttered: "
            "seed of the evaluation canvases (digit position and clutter)."
        ),
    )
    # mnist_translated / mnist_cluttered only
    mnist_canvas_size: int = Field(
        60,
        ge=28,
        le=1024,
        description=(
            "mnist_translated / mnist_cluttered: side N of the black square canvas the 28x28 digit is put on "
            "(the RAM paper: 60 for both tasks, and 100 for mnist_cluttered)."
        ),
    )
    clutter_pieces: Optional[int] = Field(
        None,
        ge=0,
        le=256,
        description=(
            "mnist_cluttered: clutter pieces per canvas. None: the paper's count, 4 on a 60 px canvas and 8 on "
            "a 100 px one (set it for any other mnist_canvas_size); 0: no clutter (translated MNIST)."
        ),
    )
    clutter_size: int = Field(
        8,
        ge=1,
        le=28,
        description="mnist_cluttered: side of each clutter piece, a random crop of another MNIST digit (8 in the paper).",
    )
    # image_folder / image_sequences only
    test_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description=(
            "image_folder, image_sequences: seeded share held out for testing when data_dir has no test/ "
            "folder (image_folder: per class)."
        ),
    )
    target_size: Optional[tuple[int, int]] = Field(
        None,
        description=(
            "image_folder, image_sequences: [height, width] every image is brought to (see data.resize), "
            "8 to 4096 each. None: the images' own size, which they must then all share."
        ),
    )
    resize: Literal["fit", "stretch", "pad"] = Field(
        "fit",
        description=(
            "image_folder, image_sequences: how an image meets target_size. fit: scaled up or down to fit "
            "inside, aspect ratio kept, centred, the rest filled with pad_fill; stretch: scaled to exactly "
            "target_size (aspect ratio lost); pad: kept at its own scale and centred (only an image larger "
            "than the canvas is shrunk, aspect ratio kept)."
        ),
    )
    pad_fill: int = Field(
        0, ge=0, le=255, description="image_folder, image_sequences: grey level around a fitted or padded image."
    )
    convert: bool = Field(
        False,
        description=(
            "image_folder, image_sequences: convert images of the other kind to data.color (colour to gray by "
            "luminance, gray to colour by repeating; alpha is dropped). false: such an image is an error naming it."
        ),
    )
    labels_file: Optional[str] = Field(
        None,
        description=(
            "image_sequences: the label file, in data_dir or in each of its train/, val/, test/ folders: a CSV "
            "with a header holding the columns file and label, or a JSON list of {\"file\": ..., \"label\": ...}; "
            "image paths are relative to the label file's folder. A text label is split at spaces into tokens, "
            "or into characters when it has none; a JSON list label gives the tokens itself. "
            "None: labels.csv or labels.json, whichever exists."
        ),
    )
    max_length: int = Field(
        8,
        ge=1,
        le=64,
        description=(
            "image_sequences: longest label kept, in tokens; label = tokens + end token, so max_length + 1 "
            "slots. Longer labels are skipped and their count reported (never cut)."
        ),
    )

    @model_validator(mode="after")
    def _check_task_options(self) -> "DataConfig":
        if self.normalize == "per_image":
            for key in ("mean", "std"):
                if getattr(self, key) != type(self).model_fields[key].default:
                    raise ValueError(
                        f"data.{key} = {getattr(self, key)!r} is unused with data.normalize = 'per_image'; "
                        "remove it or set data.normalize=dataset"
                    )
        if self.task in _MNIST_CANVAS and self.canvas_size != type(self).model_fields["canvas_size"].default:
            raise ValueError(
                f"data.canvas_size applies to data.task 'svhn_background' only; the canvas side of "
                f"{self.task!r} is data.mnist_canvas_size (60 or 100 in the paper)"
            )
        self._refuse_inapplicable("data", "task", _TASK_KEYS)
        if self.task == "mnist_cluttered" and self.clutter_pieces is None and self.mnist_canvas_size not in (60, 100):
            raise ValueError(
                f"data.clutter_pieces must be set for data.mnist_canvas_size = {self.mnist_canvas_size}; the paper's "
                "count is known only for 60 px (4 pieces) and 100 px (8 pieces) canvases"
            )
        if self.task == "svhn" and self.crop_size > self.image_size:
            raise ValueError(
                f"data.crop_size = {self.crop_size} is larger than data.image_size = {self.image_size}; "
                "the crop is taken from the resized image"
            )
        if self.task == "svhn_background" and self.canvas_size < self.image_size:
            raise ValueError(
                f"data.canvas_size = {self.canvas_size} is smaller than data.image_size = {self.image_size}; "
                "the canvas must hold the number's crop"
            )
        self._check_own_images()
        return self

    def _check_own_images(self) -> None:
        if self.task not in _OWN_IMAGES:
            if self.normalize == "dataset":
                # Resolved here, so that runs, logs and saved configs of the built-in tasks show the values used.
                if self.mean is None:
                    self.mean = MNIST_MEAN
                if self.std is None:
                    self.std = MNIST_STD
            return
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"data.val_fraction = {self.val_fraction} and data.test_fraction = {self.test_fraction} leave no "
                "training images; keep their sum below 1"
            )
        if self.target_size is not None and not all(8 <= side <= 4096 for side in self.target_size):
            raise ValueError(
                f"data.target_size = {list(self.target_size)}: height and width must each be 8 to 4096 pixels"
            )


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
class RetinaConfig(Section):
    patch_size: int = Field(8, ge=1, description="g: side of the finest patch, and of every output patch.")
    num_scales: int = Field(1, ge=1, le=8, description="k: patches per glimpse.")
    scale: float = Field(2.0, ge=1.0, description="s: each patch is s times wider than the one before.")
    pad_value: float = Field(
        0.0, description="Value read outside the image (after normalisation: 0 = the dataset mean)."
    )


CoreKind = Literal["rnn", "lstm", "gpt2", "trxl", "gtrxl"]
_TRANSFORMERS = ("gpt2", "trxl", "gtrxl")


class CoreConfig(Section):
    """The core f_h integrating one glimpse vector per step: a recurrent cell or a causal transformer.

    Transformer cores (gpt2, trxl, gtrxl) attend over the episode's earlier steps; their width is
    model.hidden_size (d). Options that do not apply to the chosen kind must stay at their defaults.
    """

    kind: Optional[CoreKind] = Field(
        None,
        description=(
            "None: the model's own (ram: rnn, dram: lstm). rnn | lstm: recurrent cells; gpt2: transformers.GPT2Model (pre-LN, learned absolute "
            "positions); trxl: Transformer-XL (relative attention, memory); gtrxl: gated TrXL "
            "(Parisotto et al. 2019)."
        ),
    )
    num_layers: int = Field(1, ge=1, le=64, description="Transformer layers (gpt2, trxl, gtrxl).")
    num_heads: int = Field(1, ge=1, le=256, description="Attention heads H (gpt2, trxl, gtrxl).")
    head_dim: Optional[int] = Field(
        None, ge=1, description="Width of each head. None: hidden_size // num_heads (gpt2: must be that)."
    )
    inner_size: Optional[int] = Field(
        None, ge=1, description="Inner width of each layer's feed-forward net. None: 4 * hidden_size."
    )
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="Dropout on attention weights, sub-layer outputs and inputs (transformers)."
    )
    memory_length: Optional[int] = Field(
        None,
        ge=0,
        description=(
            "trxl, gtrxl: attend to at most this many earlier steps of the episode. None or 0: all of them."
        ),
    )
    norm: Literal["post", "pre"] = Field(
        "post", description="trxl: LayerNorm after each residual add (post, as in the paper) or before each sub-layer."
    )
    gate_bias: float = Field(
        2.0, description="gtrxl: initial b_g of the GRU gates; larger starts each layer closer to the identity."
    )
    n_positions: Optional[int] = Field(
        None, ge=1, description="gpt2: learned positions. None: model.num_glimpses. Must be >= num_glimpses."
    )
    use_cache: bool = Field(
        True,
        description=(
            "Transformers: true caches keys/values so each step costs O(t); false recomputes the whole "
            "prefix every step (same outputs; for comparison and benchmarks)."
        ),
    )
    rollout: Literal["stepwise", "two_phase"] = Field(
        "stepwise",
        description=(
            "ram with a Transformer core and use_cache: how a training episode runs (same outputs and "
            "gradients). stepwise: cached steps inside the autograd graph. two_phase: cached steps without "
            "gradients choose the locations, then one causal pass over all glimpses with gradients "
            "(fewer operations, one more forward pass; see docs/benchmarks.md for when it pays). Active "
            "dropout in training steps stepwise."
        ),
    )

    @model_validator(mode="after")
    def _check_kind_options(self) -> "CoreConfig":
        if self.kind is None:
            return self  # checked once the model has chosen its default kind
        applies = {
            "num_layers": _TRANSFORMERS,
            "num_heads": _TRANSFORMERS,
            "head_dim": _TRANSFORMERS,
            "inner_size": _TRANSFORMERS,
            "dropout": _TRANSFORMERS,
            "use_cache": _TRANSFORMERS,
            "rollout": _TRANSFORMERS,
            "memory_length": ("trxl", "gtrxl"),
            "norm": ("trxl",),
            "gate_bias": ("gtrxl",),
            "n_positions": ("gpt2",),
        }
        self._refuse_inapplicable("model.core", "kind", applies)
        if self.rollout == "two_phase" and not self.use_cache:
            raise ValueError("model.core.rollout = 'two_phase' steps with the key/value cache: set model.core.use_cache = true")
        return self

    def check_against(
        self, hidden_size: int, num_glimpses: Optional[int], steps_name: str = "model.num_glimpses"
    ) -> None:
        """Cross-checks with the model's width d and the most steps a core takes (``steps_name`` says
        where that number comes from); raise ValueError naming the key."""
        if self.kind not in _TRANSFORMERS:
            return
        if self.head_dim is None and hidden_size % self.num_heads:
            raise ValueError(
                f"model.core.num_heads = {self.num_heads} must divide model.hidden_size = {hidden_size} "
                "(or set model.core.head_dim)"
            )
        if self.kind == "gpt2":
            if self.head_dim is not None and self.head_dim * self.num_heads != hidden_size:
                raise ValueError(
                    f"model.core.head_dim = {self.head_dim}: gpt2 needs head_dim * num_heads == "
                    f"model.hidden_size = {hidden_size}; leave head_dim unset"
                )
            if self.n_positions is not None and num_glimpses is not None and self.n_positions < num_glimpses:
                raise ValueError(
                    f"model.core.n_positions = {self.n_positions} is smaller than {steps_name} = "
                    f"{num_glimpses}; set n_positions >= {num_glimpses} or leave it unset"
                )


class ContextConfig(Section):
    """DRAM's context network: reads the whole image once and sets the top layer's initial state and
    the first location (cnn, snapshot, resnet50), or gives the top Transformer stream image tokens to
    cross-attend to (vit)."""

    kind: Literal["cnn", "snapshot", "resnet50", "vit"] = Field(
        "cnn",
        description=(
            "cnn: conv 5x5 (C -> 64, stride) -> max-pool 2 -> conv 3x3 (64 -> 64) -> max-pool 2 -> "
            "conv 3x3 (64 -> 128) -> max-pool 2 -> Linear -> d, ReLU after each conv, on the image itself; "
            "snapshot: the same network on a snapshot_size x snapshot_size down-sampled copy of the image "
            "(area averaging), so its cost does not grow with the canvas; resnet50: torchvision's "
            "ResNet-50 (frozen, always in eval mode) on the RGB image with ImageNet normalisation, then a "
            "trainable Linear(2048 -> d); vit: a transformers ViT encoder (frozen) whose tokens, projected "
            "to d, the top Transformer stream reads by cross-attention in every layer (Transformer cores only)."
        ),
    )
    stride: Optional[int] = Field(
        None,
        ge=1,
        le=8,
        description=(
            "cnn, snapshot: stride of the first convolution. None: chosen for the input side n: 1 for "
            "n <= 64, 2 for n <= 192 (110, 186 canvases), 4 above."
        ),
    )
    snapshot_size: int = Field(54, ge=8, le=1024, description="snapshot: side of the down-sampled copy.")
    weights: Optional[str] = Field(
        None,
        description=(
            "resnet50, vit: the frozen backbone's weights. None: random init (tests, smoke runs). "
            "resnet50: 'imagenet' (torchvision's IMAGENET1K_V2, downloaded once into the torch hub cache) "
            "or the path of a saved state_dict (.pth/.pt); vit: a folder written by transformers' "
            "save_pretrained (config.json + weights)."
        ),
    )
    vit_config: Optional[str] = Field(
        None,
        description=(
            "vit without weights: a transformers ViTConfig as a config.json file (or a folder holding one). "
            "None: ViT-B/16 at 224 px (ViTConfig's defaults)."
        ),
    )

    @model_validator(mode="after")
    def _check_kind_options(self) -> "ContextConfig":
        applies = {
            "stride": ("cnn", "snapshot"),
            "snapshot_size": ("snapshot",),
            "weights": ("resnet50", "vit"),
            "vit_config": ("vit",),
        }
        self._refuse_inapplicable("model.context", "kind", applies)
        if self.kind == "vit" and self.weights is not None and self.vit_config is not None:
            raise ValueError(
                "model.context.vit_config and model.context.weights are both set; a weights folder carries "
                "its own config.json: keep one"
            )
        return self

    def stride_for(self, side: int) -> int:
        """The first convolution's stride for an input of side ``side`` (cnn, snapshot)."""
        if self.stride is not None:
            return self.stride
        return 1 if side <= 64 else 2 if side <= 192 else 4


_RAM_ONLY = ("what_size", "where_size", "num_glimpses", "readout")
_DRAM_ONLY = ("glimpses_per_digit", "explore_steps", "conv_channels", "fusion", "context", "glimpse_color")


class ModelConfig(Section):
    name: Literal["ram", "dram"] = Field(
        "ram",
        description=(
            "ram: RAM (Mnih et al. 2014), one label per image; dram: DRAM (Ba et al. 2015), a digit "
            "sequence read glimpse by glimpse (sequence tasks: svhn)."
        ),
    )
    retina: RetinaConfig = Field(default_factory=RetinaConfig)
    what_size: int = Field(128, ge=1, description="ram: width of the glimpse net's 'what' branch (image patch).")
    where_size: int = Field(128, ge=1, description="ram: width of the glimpse net's 'where' branch (location).")
    hidden_size: int = Field(256, ge=1, description="d: glimpse vector and core state width.")
    core: CoreConfig = Field(default_factory=CoreConfig)
    num_glimpses: int = Field(6, ge=1, le=256, description="ram: T, glimpses per episode.")
    readout: Literal["last", "mean"] = Field(
        "last",
        description=(
            "ram: what the classifier reads. last: h_T, the state after the last glimpse (the paper). mean: the "
            "mean of h_1..h_T, so every step's output reaches the classifier directly (the location policy "
            "and the baseline still read h_t)."
        ),
    )
    glimpses_per_digit: int = Field(
        3, ge=1, le=64, description="dram: glimpses per label token; the token is read from the last one."
    )
    explore_steps: int = Field(
        0, ge=0, le=64, description="dram: extra glimpses before each token's glimpses, without a prediction."
    )
    conv_channels: tuple[int, int, int] = Field(
        (64, 64, 128),
        description="dram: channels of the glimpse net's conv 5x5, 3x3, 3x3 'what' path (needs patch_size >= 9).",
    )
    fusion: Literal["multiply", "add"] = Field(
        "multiply",
        description=(
            "dram: g = what * ReLU(Linear(l)) (multiply, as Ba et al.) or what + Linear(l) (add: a learned "
            "location embedding)."
        ),
    )
    context: ContextConfig = Field(default_factory=ContextConfig, description="dram: the context network.")
    glimpse_color: Literal["gray", "rgb"] = Field(
        "gray",
        description=(
            "dram: glimpses of the channel mean (gray) or of all three channels (rgb; needs data.color=rgb). "
            "The context network always sees every channel."
        ),
    )
    policy_std: float = Field(
        0.05, gt=0.0, le=1.0, description="sigma of the Gaussian location policy, in [-1, 1] units."
    )
    initial_location: Literal["random", "center"] = Field(
        "random", description="ram: l_0 uniform in [-1, 1]^2, or the image centre (dram: the context net emits l_1)."
    )
    policy_grad: Optional[Literal["detached", "top", "full"]] = Field(
        None,
        description=(
            "Which parameters REINFORCE trains. detached: only the location net (its input state is "
            "detached); top (dram): the location net, the top layer and the context net (the top layer "
            "reads a detached bottom layer); full: everything upstream of the location net. None: "
            "detached for ram, top for dram."
        ),
    )

    @property
    def routing(self) -> str:
        """policy_grad with its per-model default resolved."""
        return self.policy_grad or ("top" if self.name == "dram" else "detached")

    def steps_per_token(self) -> int:
        return self.explore_steps + self.glimpses_per_digit

    @model_validator(mode="after")
    def _check_model_options(self) -> "ModelConfig":
        if self.core.kind is None:
            self.core.kind = "rnn" if self.name == "ram" else "lstm"  # validated on assignment
        own, other = (_RAM_ONLY, _DRAM_ONLY) if self.name == "ram" else (_DRAM_ONLY, _RAM_ONLY)
        for key in other:
            value = getattr(self, key)
            default = type(self).model_fields[key].get_default(call_default_factory=True)
            if value != default:
                shown = value.model_dump() if isinstance(value, BaseModel) else value
                raise ValueError(
                    f"model.{key} = {shown!r} does not apply to model.name {self.name!r}; remove it or change model.name"
                )
        if self.name == "ram":
            if self.policy_grad == "top":
                raise ValueError("model.policy_grad = 'top' applies to dram only; ram takes 'detached' or 'full'")
            self.core.check_against(self.hidden_size, self.num_glimpses)
        else:
            if self.core.rollout != "stepwise":
                raise ValueError("model.core.rollout = 'two_phase' applies to ram only; dram steps its two cores stepwise")
            if self.initial_location != "random":
                raise ValueError(
                    "model.initial_location does not apply to dram (the context network emits the first location); remove it"
                )
            if self.retina.patch_size < 9:
                raise ValueError(
                    f"model.retina.patch_size = {self.retina.patch_size}: dram's conv glimpse net (5x5, 3x3, 3x3 "
                    "without padding) needs patch_size >= 9"
                )
        return self


# ---------------------------------------------------------------------------------------------
# training and evaluation
# ---------------------------------------------------------------------------------------------
class TrainConfig(Section):
    epochs: int = Field(200, ge=1, description="Maximum number of epochs.")
    batch_size: int = Field(128, ge=1, description="Images per optimiser step on each worker.")
    optimizer: Literal["adamw", "adam", "sgd"] = Field(
        "adamw", description="adamw: decoupled weight decay; adam: decay added to the gradient (L2); sgd: with momentum."
    )
    lr: float = Field(3e-4, gt=0.0, le=10.0, description="Learning rate.")
    weight_decay: float = Field(
        0.01, ge=0.0, description="Weight decay of weight matrices and kernels only (biases, norms, gates' biases: none)."
    )
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum (sgd only).")
    scheduler: Literal["plateau", "exponential", "cosine", "none"] = Field(
        "plateau", description="plateau: ReduceLROnPlateau on validation error."
    )
    plateau_patience: int = Field(20, ge=0, description="Epochs without improvement before the LR drops.")
    plateau_factor: float = Field(0.1, gt=0.0, lt=1.0, description="LR factor at each plateau drop (plateau).")
    gamma: float = Field(0.97, gt=0.0, le=1.0, description="Per-epoch LR factor (exponential).")
    patience: int = Field(
        50, ge=1, description="Early stopping: epochs since the best validation error before stopping."
    )
    rl_coef: float = Field(0.01, ge=0.0, description="lambda: weight of the REINFORCE term.")
    grad_clip: Optional[float] = Field(None, gt=0.0, description="Clip the global gradient norm.")
    max_nonfinite_steps: int = Field(
        20,
        ge=1,
        description="A step whose loss or gradient is NaN/inf is skipped (and counted in train_nonfinite_steps); "
        "this many in a row stop the run, keeping its last good checkpoint.",
    )
    seed: int = Field(1, ge=0, description="Base seed; worker r uses seed + r.")
    init_from: Optional[str] = Field(
        None,
        description="Start from trained weights (transfer): an MLflow run id, `experiment:NAME` (that experiment's "
        "newest finished run), an MLflow model URI (runs:/ID/model, models:/NAME/VERSION) or a checkpoint path "
        "(best_model.pt, a checkpoint folder, a run folder). Tensors of the same shape are loaded; every other "
        "key is listed in the log and in MLflow (transfer/report.md). A resumed run continues from its own checkpoint.",
    )
    init_context: Literal["keep", "drop"] = Field(
        "keep", description="With init_from: keep the context network's weights (dram) or leave it freshly initialised."
    )
    init_classifier: Literal["auto", "keep", "drop"] = Field(
        "auto",
        description="With init_from: auto keeps the classifier when the class count matches and drops (re-initialises) "
        "it when it changes (e.g. 11 -> 12 for multinumber); keep requires it to match; drop always re-initialises it.",
    )

    @model_validator(mode="after")
    def _check_init(self) -> "TrainConfig":
        if self.init_from is None:
            for key in ("init_context", "init_classifier"):
                if getattr(self, key) != type(self).model_fields[key].default:
                    raise ValueError(f"train.{key} = {getattr(self, key)!r} needs train.init_from (the weights to start from)")
        elif not self.init_from.strip():
            raise ValueError("train.init_from is empty; give a run id, experiment:NAME, a model URI or a checkpoint path")
        return self


class EvalConfig(Section):
    mc_samples: int = Field(10, ge=1, description="M: sampled episodes averaged at test time.")
    seed: int = Field(1234, ge=0, description="Seed of evaluation episodes (l_0 and samples).")
    batch_size: int = Field(1000, ge=1, description="Images per evaluation batch (validation and test).")
    viz_every: int = Field(
        5,
        ge=0,
        description="Draw the glimpse pictures of the fixed test images every N epochs (0: only at the end); "
        "they always are at the end, with the heat map and the accuracy tables.",
    )
    viz_images: int = Field(
        8,
        ge=0,
        le=64,
        description="How many test images are drawn (the first N of the test split, the same in every run and "
        "trial); 0 draws no pictures (the tables and heat map are still made).",
    )


# ---------------------------------------------------------------------------------------------
# sweeps
# ---------------------------------------------------------------------------------------------
Scalar = Union[bool, int, float, str, None]


class SearchDim(Section):
    """One searched key: exactly one of ``choice``, ``int``, ``uniform``, ``loguniform``.

    choice: values to pick from (scalars). int: [low, high], both included (``step`` optional).
    uniform / loguniform: [low, high] floats (loguniform: low > 0).
    when: only search this key when other searched keys took one of the listed values, e.g.
        ``{model.core.kind: [gpt2, trxl, gtrxl]}``; otherwise the key keeps its base value.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    choice: Optional[list[Scalar]] = Field(None, min_length=1, description="Values to pick from.")
    int_range: Optional[tuple[int, int]] = Field(None, alias="int", description="[low, high] integers, both included.")
    uniform: Optional[tuple[float, float]] = Field(None, description="[low, high] floats, uniform.")
    loguniform: Optional[tuple[float, float]] = Field(None, description="[low, high] floats, uniform in log (low > 0).")
    step: Optional[int] = Field(None, ge=1, description="int only: the grid step from low.")
    when: Optional[dict[str, list[Scalar]]] = Field(
        None, description="Search this key only when other searched choice keys took one of these values."
    )

    @property
    def kind(self) -> str:
        return next(k for k in ("choice", "int_range", "uniform", "loguniform") if getattr(self, k) is not None)

    @model_validator(mode="after")
    def _one_kind(self) -> "SearchDim":
        given = [k for k in ("choice", "int_range", "uniform", "loguniform") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of choice, int, uniform, loguniform")
        low_high = getattr(self, given[0]) if given[0] != "choice" else None
        if low_high is not None and low_high[0] > low_high[1]:
            raise ValueError(f"low {low_high[0]} is above high {low_high[1]}")
        if given[0] == "loguniform" and self.loguniform[0] <= 0:
            raise ValueError("loguniform needs low > 0")
        if self.step is not None and given[0] != "int_range":
            raise ValueError("step applies to int ranges only")
        return self

    def candidates(self) -> list[Any]:
        """Values that, valid, make every value of the range valid: the choices, or both ends."""
        if self.choice is not None:
            return list(self.choice)
        return list(getattr(self, self.kind))


class AshaConfig(Section):
    grace_period: int = Field(1, ge=1, description="Epochs every trial trains before it can be stopped.")
    reduction_factor: float = Field(2.0, gt=1.0, description="Keep the best 1/reduction_factor at each rung.")


class SweepConfig(Section):
    """A search over config keys: Ray Tune runs the trials (each a Ray Train run), Optuna proposes them."""

    space: dict[str, SearchDim] = Field(..., min_length=1, description="Dotted config key -> search dimension.")
    metric: str = Field(
        "best_val_error",
        description="A validation metric reported every epoch (val_* or best_val_error); never a test metric.",
    )
    mode: Literal["min", "max"] = Field("min", description="Whether the best trial has the lowest or highest metric.")
    num_trials: int = Field(20, ge=1, le=100_000, description="Trials to run (finished and stopped early alike).")
    sampler: Literal["tpe", "random"] = Field("tpe", description="Optuna sampler.")
    seed: int = Field(0, ge=0, description="Seed of the sampler.")
    asha: Optional[AshaConfig] = Field(
        default_factory=AshaConfig,
        description="ASHA early stopping over epochs (max = train.epochs); null: every trial trains to the end.",
    )
    max_concurrent_trials: Optional[int] = Field(
        None, ge=1, description="Cap on trials in parallel. None: as many as the cluster's CPUs and GPUs hold."
    )
    trial_driver_cpus: float = Field(
        0.1, gt=0.0, le=8.0, description="CPUs reserved for each trial's driver (besides its Ray Train workers)."
    )

    @model_validator(mode="after")
    def _check_metric(self) -> "SweepConfig":
        if not (self.metric.startswith("val_") or self.metric == "best_val_error"):
            raise ValueError(
                f"sweep.metric = {self.metric!r}: a sweep selects on validation metrics only (val_error, "
                "val_accuracy, val_nll, best_val_error, ...), never on test metrics"
            )
        for key, dim in self.space.items():
            for cond in (dim.when or {}):
                other = self.space.get(cond)
                if other is None or other.choice is None:
                    raise ValueError(
                        f"sweep.space.{key}.when names {cond!r}, which must itself be a searched choice key"
                    )
                if other.when:
                    raise ValueError(f"sweep.space.{key}.when: {cond!r} is conditional itself; nest one level only")
                unknown = [v for v in dim.when[cond] if v not in other.choice]
                if unknown:
                    raise ValueError(
                        f"sweep.space.{key}.when: {cond!r} never takes {unknown} (its choices: {other.choice})"
                    )
        return self


# ---------------------------------------------------------------------------------------------
# infrastructure
# ---------------------------------------------------------------------------------------------
class RayConfig(Section):
    address: Optional[str] = Field(
        None,
        description="A running cluster ('auto' or host:port). None: $RAY_ADDRESS if set (as inside a "
        "`ray job submit` job), else start Ray on this machine.",
    )
    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP ranks).")
    cpus_per_worker: float = Field(2.0, gt=0.0, description="CPUs Ray reserves for each worker.")
    gpus_per_worker: float = Field(0.0, ge=0.0, description="0: train on CPU with gloo; >0: GPUs with nccl.")
    threads_per_worker: Optional[int] = Field(
        None, ge=1, description="torch threads in each worker. None: cpus_per_worker rounded up."
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK",
        description="How the workers are placed on a cluster's nodes: PACK fills one node first (fast "
        "intra-node DDP); SPREAD prefers, STRICT_SPREAD requires, one worker per node.",
    )
    storage_path: Optional[str] = Field(
        None,
        description="Folder of the runs (checkpoints, run records, sweep state); on a cluster one that every "
        "node sees at the same path (NFS, EFS, Filestore). None: $ATTN_STORAGE_PATH if set, else ./runs.",
    )
    max_failures: int = Field(0, ge=0, description="Worker-group restarts from the latest checkpoint.")

    @field_validator("storage_path")
    @classmethod
    def _filesystem_folder(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            check_storage_folder(value)
        return value


def check_storage_folder(value: str) -> None:
    """attn reads its run records and checkpoints back as files, so storage is a filesystem folder."""
    if "://" in value:
        raise ValueError(
            f"{value!r} is a URI, but runs live in a filesystem folder: mount the bucket or share on every node "
            "(NFS, EFS, Filestore, or s3fs/gcsfuse for buckets) and give its path, e.g. /mnt/shared/runs"
        )


class TrackingConfig(Section):
    tracking_uri: Optional[str] = Field(
        None,
        description="MLflow tracking URI (http://head:5000 for a cluster's server). None: $MLFLOW_TRACKING_URI "
        "if set, else sqlite:///<cwd>/mlflow.db.",
    )
    experiment_name: Optional[str] = Field(None, description="None: the YAML file's stem.")
    run_name: Optional[str] = Field(None, description="None: <task>-<model>-<core>-<timestamp>.")
    artifact_location: Optional[str] = Field(
        None, description="Artifact root of a new experiment. None: <cwd>/mlartifacts (file stores only)."
    )
    retry_timeout_s: float = Field(
        600.0,
        ge=0.0,
        description="If the MLflow server goes away during a run, writes are buffered and retried; at the end "
        "of the run wait this long for it before failing (the results stay in the run's checkpoints).",
    )


class ExperimentConfig(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    sweep: Optional[SweepConfig] = Field(None, description="A search over config keys; see docs/sweeps.md.")

    @model_validator(mode="after")
    def _check_combinations(self) -> "ExperimentConfig":
        r = self.model.retina
        largest = math.floor(r.patch_size * r.scale ** (r.num_scales - 1))
        if largest > 4096:
            raise ValueError(
                f"model.retina: the largest patch would be {largest} px "
                "(patch_size * scale**(num_scales-1)); keep it at most 4096"
            )
        sequence_task = self.data.task in SEQUENCE_TASKS
        m = self.model
        if m.name == "dram" and not sequence_task:
            raise ValueError(
                f"model.name = 'dram' reads digit sequences; data.task = {self.data.task!r} has one label per "
                f"image: use model.name=ram, or a sequence task ({', '.join(SEQUENCE_TASKS)})"
            )
        if m.name == "ram" and sequence_task:
            raise ValueError(
                f"model.name = 'ram' predicts one label; data.task = {self.data.task!r} has digit sequences: "
                "use model.name=dram"
            )
        if m.name == "dram":
            self._check_dram_inputs()
            # the top stream of a transformer DRAM reads the context plus one input per glimpse
            m.core.check_against(
                m.hidden_size,
                1 + self.max_tokens() * m.steps_per_token(),
                f"the dram top stream's steps 1 + {self._slots_key()} * (model.explore_steps + model.glimpses_per_digit)",
            )
        return self

    def _check_dram_inputs(self) -> None:
        m, d = self.model, self.data
        ctx = m.context.kind
        if ctx == "vit" and m.core.kind not in _TRANSFORMERS:
            raise ValueError(
                f"model.context.kind = 'vit' is read through cross-attention, which only the Transformer cores "
                f"have; model.core.kind = {m.core.kind!r}: use {', '.join(_TRANSFORMERS)}, or context cnn, "
                "snapshot or resnet50"
            )
        if ctx in ("resnet50", "vit") and d.normalize != "dataset":
            raise ValueError(
                f"model.context.kind = {ctx!r} re-normalises the input for its backbone from data.mean and "
                "data.std; data.normalize = 'per_image' loses them: use data.normalize=dataset"
            )
        if m.glimpse_color == "rgb" and d.color != "rgb":
            raise ValueError(
                f"model.glimpse_color = 'rgb' needs colour images; data.color = {d.color!r}: set data.color=rgb"
            )

    def _slots_key(self) -> str:
        """How the label slot count is set, for messages."""
        if self.data.task == "multinumber":
            return f"{MULTINUMBER_TOKENS} label slots"
        if self.data.task == "image_sequences":
            return "(data.max_length + 1)"
        return "(data.max_digits + 1)"

    def max_tokens(self) -> int:
        """Label slots L per image: 1 for classification, max_digits + 1 (digits, end token) for svhn,
        6 for multinumber, max_length + 1 for image_sequences."""
        if self.data.task == "multinumber":
            return MULTINUMBER_TOKENS
        if self.data.task == "image_sequences":
            return self.data.max_length + 1
        return self.data.max_digits + 1 if self.data.task in SEQUENCE_TASKS else 1

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
def _describe_error(err: dict[str, Any]) -> str:
    msg = err.get("msg", "invalid value")
    ctx = err.get("ctx") or {}
    if err.get("type") == "literal_error" and "expected" in ctx:
        return f"allowed values are {ctx['expected']}"
    if err.get("type") == "extra_forbidden":
        return "unknown key"
    if err.get("type") == "value_error":
        return msg.removeprefix("Value error, ")
    return msg[0].lower() + msg[1:] if msg else msg


def _allowed_keys(loc: tuple) -> list[str]:
    """The valid keys of the section that holds the key at ``loc``."""
    import typing

    model: Any = ExperimentConfig
    parts = list(loc[:-1])
    while parts:
        part = parts.pop(0)
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is not None and typing.get_origin(field.annotation) is dict and parts:
            parts.pop(0)  # the mapping's own key (e.g. a searched config key)
            section = _section_type(typing.get_args(field.annotation)[1])
        else:
            section = _section_type(field.annotation) if field is not None else None
        if section is None:
            return []
        model = section
    return sorted(f.alias or name for name, f in model.model_fields.items()) if hasattr(model, "model_fields") else []


def _section_type(annotation: Any) -> Any:
    """The config section class of a field (also inside Optional[...]), else None."""
    import typing

    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def validate_config(raw: dict[str, Any], source: str) -> ExperimentConfig:
    """Validate a nested dict against the schema; raise :class:`ConfigError` with one clear line.

    A ``sweep`` section is checked further: every searched key must exist, and every choice (or both
    ends of every range) must give a valid config.
    """
    cfg = _validate(raw, source)
    if cfg.sweep is not None:
        _check_space(raw, cfg.sweep, source)
    return cfg


def set_key(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """raw['a']['b']['c'] = value for dotted = 'a.b.c', creating sections on the way."""
    node = raw
    *parents, last = dotted.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[last] = value


def _leaf_keys(model: Any = None, prefix: str = "") -> set[str]:
    """Every dotted key of the schema that holds a value (not a section)."""
    model = model or ExperimentConfig
    out = set()
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= _leaf_keys(ann, f"{prefix}{name}.")
        elif name != "sweep":
            out.add(f"{prefix}{name}")
    return out


def _check_space(raw: dict[str, Any], sweep: "SweepConfig", source: str) -> None:
    import copy

    leaves = _leaf_keys()
    base = {k: v for k, v in raw.items() if k != "sweep"}
    for key, dim in sweep.space.items():
        if key not in leaves:
            near = sorted(k for k in leaves if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1])
            hint = f"; did you mean {', '.join(near)}" if near else ""
            raise ConfigError(f"{source}: sweep.space: '{key}' is not a config key{hint}")
        for value in dim.candidates():
            trial = copy.deepcopy(base)
            for cond, allowed in (dim.when or {}).items():
                set_key(trial, cond, allowed[0])
            set_key(trial, key, value)
            try:
                _validate(trial, source)
            except ConfigError as exc:
                why = str(exc).removeprefix(f"{source}: ")
                raise ConfigError(f"{source}: sweep.space.{key}: the value {value!r} makes an invalid config: {why}") from None


def _validate(raw: dict[str, Any], source: str) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(str(p) for p in err.get("loc", ()))
        key = ".".join(loc) if loc else "(top level)"
        what = _describe_error(err)
        if err.get("type") == "value_error" and re.match(r"(data|model|train|eval|ray|tracking|sweep)\.", what):
            # cross-field checks name their keys themselves
            raise ConfigError(f"{source}: {what}") from None
        if err.get("type") == "extra_forbidden":
            allowed = _allowed_keys(loc)
            hint = f"; valid keys here: {', '.join(allowed)}" if allowed else ""
            raise ConfigError(f"{source}: unknown key '{key}'{hint}") from None
        value = err.get("input")
        shown = "" if loc == () or isinstance(value, dict) else f" = {value!r}"
        more = f" (and {len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
        raise ConfigError(f"{source}: key '{key}'{shown} is invalid: {what}{more}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (['a', 'b', 'c'], parsed value). Values are read as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value, e.g. train.lr=0.001")
    key, _, value = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}': the key must be dotted names, e.g. train.lr=0.001")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return raw


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping in an experiment file. A top-level ``base: other.yaml`` (relative to the file) reads
    that file first and lays this one over it, section by section (a chain of files is allowed)."""
    if not path.is_file():
        where = f" (the base of {_chain[-1]})" if _chain else ""
        raise ConfigError(f"{path}: no such experiment file{where}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the experiment file ({exc})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (data, model, train, ...)")
    if "base" in raw:
        base = raw.pop("base")
        if not isinstance(base, str) or not base.strip():
            raise ConfigError(f"{path}: base must be the path of another experiment file, relative to this one")
        base_path = (path.parent / base).resolve()
        chain = _chain + (path.resolve(),)
        if base_path in chain:
            raise ConfigError(f"{path}: base {base} leads back to {base_path}: the files include each other")
        raw = _merge(read_yaml(base_path, chain), raw)
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment, apply ``key=value`` overrides, validate; name the file in every error."""
    raw = read_yaml(Path(path)) if path is not None else {}
    source = str(path) if path is not None else "defaults"
    if overrides:
        raw = apply_overrides(raw, list(overrides))
        source = f"{source} (with overrides {' '.join(overrides)})"
    cfg = validate_config(raw, source)
    if path is not None and cfg.tracking.experiment_name is None:
        cfg.tracking.experiment_name = Path(path).stem
    return cfg


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {'a.b': value}: the form MLflow params take."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
