"""The ``model`` section: RAM or DRAM (``model.name``), each with its core (``model.core.kind``) and,
for DRAM, its context network (``model.context.kind``). Each is a variant holding only its own keys.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Discriminator, Field, Tag, TypeAdapter, model_validator

from attn.config.base import Section


class RetinaConfig(Section):
    patch_size: int = Field(8, ge=1, description="g: side of the finest patch, and of every output patch.")
    num_scales: int = Field(1, ge=1, le=8, description="k: patches per glimpse.")
    scale: float = Field(2.0, ge=1.0, description="s: each patch is s times wider than the one before.")
    pad_value: float = Field(
        0.0, description="Value read outside the image (after normalisation: 0 = the dataset mean)."
    )


# -- cores ------------------------------------------------------------------------------------------
class CoreBase(Section):
    """The core f_h integrating one glimpse vector per step: a recurrent cell or a causal transformer."""

    kind: str = Field("rnn", description=(
            "Not given: the model's own (ram: rnn, dram: lstm). rnn | lstm: recurrent cells; gpt2: transformers.GPT2Model (pre-LN, learned absolute "
            "positions); trxl: Transformer-XL (relative attention, memory); gtrxl: gated TrXL "
            "(Parisotto et al. 2019). In DRAM, trxl and gtrxl read a learned embedding of the glimpse "
            "index with each glimpse (relative attention alone cannot tell the label slots apart)."
        ))

    def check_against(self, hidden_size: int, num_glimpses: Optional[int], steps_name: str = "model.num_glimpses") -> None:
        """Cross-checks with the model's width d and the most steps the core takes; a recurrent core
        has none."""


class RecurrentCore(CoreBase):
    kind: Literal["rnn", "lstm"] = "rnn"


class TransformerCore(CoreBase):
    """Transformer cores (gpt2, trxl, gtrxl) attend over the episode's earlier steps; their width is
    model.hidden_size (d)."""

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
    def _check_rollout(self):
        if self.rollout == "two_phase" and not self.use_cache:
            raise ValueError("model.core.rollout = 'two_phase' steps with the key/value cache: set model.core.use_cache = true")
        return self

    def check_against(
        self, hidden_size: int, num_glimpses: Optional[int], steps_name: str = "model.num_glimpses"
    ) -> None:
        """Cross-checks with the model's width d and the most steps a core takes (``steps_name`` says
        where that number comes from); raise ValueError naming the key."""
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


class Gpt2Core(TransformerCore):
    kind: Literal["gpt2"] = "gpt2"
    n_positions: Optional[int] = Field(
        None, ge=1, description="gpt2: learned positions. None: model.num_glimpses. Must be >= num_glimpses."
    )


class TrxlCore(TransformerCore):
    kind: Literal["trxl"] = "trxl"
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


class GtrxlCore(TransformerCore):
    kind: Literal["gtrxl"] = "gtrxl"
    memory_length: Optional[int] = Field(
        None,
        ge=0,
        description=(
            "trxl, gtrxl: attend to at most this many earlier steps of the episode. None or 0: all of them."
        ),
    )
    gate_bias: float = Field(
        2.0, description="gtrxl: initial b_g of the GRU gates; larger starts each layer closer to the identity."
    )


CORE_VARIANTS: dict[str, type[CoreBase]] = {
    "rnn": RecurrentCore, "lstm": RecurrentCore, "gpt2": Gpt2Core, "trxl": TrxlCore, "gtrxl": GtrxlCore,
}
TRANSFORMERS = ("gpt2", "trxl", "gtrxl")


def _core_kind(value: Any) -> str:
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return "recurrent" if kind in (None, "rnn", "lstm") else kind


CoreConfig = Annotated[
    Union[Annotated[RecurrentCore, Tag("recurrent")], Annotated[Gpt2Core, Tag("gpt2")],
          Annotated[TrxlCore, Tag("trxl")], Annotated[GtrxlCore, Tag("gtrxl")]],
    Discriminator(_core_kind),
]


# -- context networks (DRAM) ------------------------------------------------------------------------
class ContextBase(Section):
    """DRAM's context network: reads the whole image once and sets the top layer's initial state and
    the first location (cnn, snapshot, resnet50), or gives the top Transformer stream image tokens to
    cross-attend to (vit)."""

    kind: str = Field("cnn", description=(
            "cnn: conv 5x5 (C -> 64, stride) -> max-pool 2 -> conv 3x3 (64 -> 64) -> max-pool 2 -> "
            "conv 3x3 (64 -> 128) -> max-pool 2 -> Linear -> d, ReLU after each conv, on the image itself; "
            "snapshot: the same network on a snapshot_size x snapshot_size down-sampled copy of the image "
            "(area averaging), so its cost does not grow with the canvas; resnet50: torchvision's "
            "ResNet-50 (frozen, always in eval mode) on the RGB image with ImageNet normalisation, then a "
            "trainable Linear(2048 -> d); vit: a transformers ViT encoder (frozen) whose tokens, projected "
            "to d, the top Transformer stream reads by cross-attention in every layer (Transformer cores only); "
            "none: no context network (the DRAM paper's ablation): the top layer starts from a learned vector, "
            "the same for every image, so the first location is learned but does not depend on the image."
        ))


class CnnContext(ContextBase):
    kind: Literal["cnn"] = "cnn"
    stride: Optional[int] = Field(
        None,
        ge=1,
        le=8,
        description=(
            "cnn, snapshot: stride of the first convolution. None: chosen for the input side n: 1 for "
            "n <= 64, 2 for n <= 192 (110, 186 canvases), 4 above."
        ),
    )

    def stride_for(self, side: int) -> int:
        """The first convolution's stride for an input of side ``side``."""
        if self.stride is not None:
            return self.stride
        return 1 if side <= 64 else 2 if side <= 192 else 4


class SnapshotContext(CnnContext):
    kind: Literal["snapshot"] = "snapshot"
    snapshot_size: int = Field(54, ge=8, le=1024, description="snapshot: side of the down-sampled copy.")


class Resnet50Context(ContextBase):
    kind: Literal["resnet50"] = "resnet50"
    weights: Optional[str] = Field(
        None,
        description=(
            "resnet50, vit: the frozen backbone's weights. None: random init (tests, smoke runs). "
            "resnet50: 'imagenet' (torchvision's IMAGENET1K_V2, downloaded once into the torch hub cache) "
            "or the path of a saved state_dict (.pth/.pt); vit: a folder written by transformers' "
            "save_pretrained (config.json + weights)."
        ),
    )


class VitContext(Resnet50Context):
    kind: Literal["vit"] = "vit"
    vit_config: Optional[str] = Field(
        None,
        description=(
            "vit without weights: a transformers ViTConfig as a config.json file (or a folder holding one). "
            "None: ViT-B/16 at 224 px (ViTConfig's defaults)."
        ),
    )

    @model_validator(mode="after")
    def _one_source(self):
        if self.weights is not None and self.vit_config is not None:
            raise ValueError(
                "model.context.vit_config and model.context.weights are both set; a weights folder carries "
                "its own config.json: keep one"
            )
        return self


class NoContext(ContextBase):
    kind: Literal["none"] = "none"


CONTEXT_VARIANTS: dict[str, type[ContextBase]] = {
    "cnn": CnnContext, "snapshot": SnapshotContext, "resnet50": Resnet50Context, "vit": VitContext,
    "none": NoContext,
}


def _context_kind(value: Any) -> str:
    return (value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)) or "cnn"


ContextConfig = Annotated[
    Union[tuple(Annotated[cls, Tag(name)] for name, cls in CONTEXT_VARIANTS.items())],
    Discriminator(_context_kind),
]


# -- models -----------------------------------------------------------------------------------------
class ModelBase(Section):
    name: str = Field("ram", description=(
            "ram: RAM (Mnih et al. 2014), one label per image; dram: DRAM (Ba et al. 2015), a digit "
            "sequence read glimpse by glimpse (sequence tasks: svhn)."
        ))
    retina: RetinaConfig = Field(default_factory=RetinaConfig)
    hidden_size: int = Field(256, ge=1, description="d: glimpse vector and core state width.")
    core: CoreConfig = Field(default_factory=RecurrentCore)
    policy_std: float = Field(
        0.05, gt=0.0, le=1.0, description="sigma of the Gaussian location policy, in [-1, 1] units."
    )
    policy_std_final: Optional[float] = Field(
        None,
        gt=0.0,
        le=1.0,
        description="sigma at the last epoch: training epoch e of E samples with a cosine from policy_std "
        "(e = 0) to this (e = E - 1), wide early to explore, narrow late to read precisely; the test, "
        "`run.py eval` and loaded models sample with it. None: policy_std throughout.",
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


    @model_validator(mode="before")
    @classmethod
    def _default_core(cls, values: Any) -> Any:
        """A core without a kind is the model's own (ram: rnn, dram: lstm)."""
        if isinstance(values, dict):
            core = values.get("core")
            if core is None or (isinstance(core, dict) and core.get("kind") is None):
                core = dict(core or {})
                core["kind"] = "lstm" if values.get("name") == "dram" else "rnn"
                values = {**values, "core": core}
        return values

    @property
    def routing(self) -> str:
        """policy_grad with its per-model default resolved."""
        return self.policy_grad or ("top" if self.name == "dram" else "detached")


class RamConfig(ModelBase):
    name: Literal["ram"] = "ram"
    what_size: int = Field(128, ge=1, description="ram: width of the glimpse net's 'what' branch (image patch).")
    where_size: int = Field(128, ge=1, description="ram: width of the glimpse net's 'where' branch (location).")
    num_glimpses: int = Field(6, ge=1, le=256, description="ram: T, glimpses per episode.")
    readout: Literal["last", "mean"] = Field(
        "last",
        description=(
            "ram: what the classifier reads. last: h_T, the state after the last glimpse (the paper). mean: the "
            "mean of h_1..h_T, so every step's output reaches the classifier directly (the location policy "
            "and the baseline still read h_t)."
        ),
    )
    initial_location: Literal["random", "center"] = Field(
        "random", description="ram: l_0 uniform in [-1, 1]^2, or the image centre (dram: the context net emits l_1)."
    )

    @model_validator(mode="after")
    def _check_ram(self):
        if self.policy_grad == "top":
            raise ValueError("model.policy_grad = 'top' applies to dram only; ram takes 'detached' or 'full'")
        self.core.check_against(self.hidden_size, self.num_glimpses)
        return self


class DramConfig(ModelBase):
    name: Literal["dram"] = "dram"
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
    context: ContextConfig = Field(default_factory=CnnContext, description="dram: the context network.")
    glimpse_color: Literal["gray", "rgb"] = Field(
        "gray",
        description=(
            "dram: glimpses of the channel mean (gray) or of all three channels (rgb; needs data.color=rgb). "
            "The context network always sees every channel."
        ),
    )

    def steps_per_token(self) -> int:
        return self.explore_steps + self.glimpses_per_digit

    @model_validator(mode="after")
    def _check_dram(self):
        if getattr(self.core, "rollout", "stepwise") != "stepwise":
            raise ValueError("model.core.rollout = 'two_phase' applies to ram only; dram steps its two cores stepwise")
        if self.retina.patch_size < 9:
            raise ValueError(
                f"model.retina.patch_size = {self.retina.patch_size}: dram's conv glimpse net (5x5, 3x3, 3x3 "
                "without padding) needs patch_size >= 9"
            )
        return self


MODEL_VARIANTS: dict[str, type[ModelBase]] = {"ram": RamConfig, "dram": DramConfig}


def _model_name(value: Any) -> str:
    return (value.get("name") if isinstance(value, dict) else getattr(value, "name", None)) or "ram"


ModelConfig = Annotated[
    Union[Annotated[RamConfig, Tag("ram")], Annotated[DramConfig, Tag("dram")]],
    Discriminator(_model_name),
]

UNIONS: dict[str, tuple[str, dict[str, type[Section]]]] = {
    "model": ("name", MODEL_VARIANTS),
    "model.core": ("kind", CORE_VARIANTS),
    "model.context": ("kind", CONTEXT_VARIANTS),
}
"""Dotted section -> (its selector key, selector value -> variant)."""

_ADAPTERS = {name: TypeAdapter(t) for name, t in (("model", ModelConfig), ("core", CoreConfig), ("context", ContextConfig))}


def model_config(**values: Any) -> ModelBase:
    """The model section of ``values`` (``name`` picks RAM or DRAM), validated."""
    return _ADAPTERS["model"].validate_python(values)


def core_config(**values: Any) -> CoreBase:
    """A core section (``kind`` picks the variant; default rnn), validated."""
    return _ADAPTERS["core"].validate_python(values)


def context_config(**values: Any) -> ContextBase:
    """A DRAM context section (``kind`` picks the variant; default cnn), validated."""
    return _ADAPTERS["context"].validate_python(values)
