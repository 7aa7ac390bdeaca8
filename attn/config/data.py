"""The ``data`` section: one variant per task, selected by ``data.task``.

Every variant holds only the keys its task reads, so a key of another task is refused by the variant
itself (:mod:`attn.config.loading` words that error). The task registry
(:mod:`attn.data.tasks`) pairs each variant with its loader, checker and spec.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from pydantic import Discriminator, Field, Tag, TypeAdapter, model_validator

from attn.config.base import Section

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
"""The normalisation every built-in task uses unless data.mean / data.std are given (as in earlier work)."""
MULTINUMBER_TOKENS = 6
"""Label slots of a multinumber image: up to 2 digits, separator, up to 2 digits, end."""


class DataBase(Section):
    """Keys every task has."""

    sequence: ClassVar[bool] = False
    """Labels are token sequences (DRAM) rather than one class (RAM)."""
    own_statistics: ClassVar[bool] = False
    """mean / std are computed from the data when not given (else MNIST's)."""
    key_hints: ClassVar[dict[str, str]] = {}
    """For a key of another task set here: what this task uses instead ({task}: the task's name)."""

    task: str = Field("mnist", description=(
            "mnist: 28x28 digits, one label (RAM); mnist_translated / mnist_cluttered: the RAM paper's "
            "MNIST digits at a random spot of a larger canvas (with clutter); mnist_pairs: two MNIST digits on a "
            "100 x 100 canvas read as two digits (data.pair_order), scored in either order (DRAM); mnist_addition: the same "
            "canvases labelled with the sum of the two digits (19 classes); svhn: SVHN format 1 house "
            "numbers, digit sequences (DRAM), Goodfellow et al. crops; svhn_background: the same numbers "
            "placed at a random spot of a canvas_size x canvas_size extended background (the model must "
            "search); multinumber: two numbers per 224 x 224 image made by `python run.py prepare "
            "multinumber`; image_folder: your own images, one folder per class (RAM); image_sequences: "
            "your own images with label sequences from a CSV or JSON file (DRAM)."
        ))
    data_dir: Optional[str] = Field(
        None,
        description=(
            "Folder with the dataset files. mnist: None uses the copy embedded in the package. svhn: the "
            "folder holding train/, test/ (and extra/) of format 1; `python run.py prepare svhn --to DIR` "
            "makes one. multinumber: the folder `python run.py prepare multinumber --to DIR` wrote. A relative "
            "path is read from $ATTN_DATA_ROOT if set (a cluster's shared folder), else from the current folder."
        ),
    )
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

    def label_slots(self) -> int:
        """Label slots L per image: 1 for classification."""
        return 1

    def slots_key(self) -> str:
        """How the label slot count is set, for messages."""
        return "1 label slot"

    @model_validator(mode="after")
    def _check_normalisation(self):
        if self.normalize == "per_image":
            for key in ("mean", "std"):
                if getattr(self, key) is not None:
                    raise ValueError(
                        f"data.{key} = {getattr(self, key)!r} is unused with data.normalize = 'per_image'; "
                        "remove it or set data.normalize=dataset"
                    )
        elif not self.own_statistics:
            # Resolved here, so that runs, logs and saved configs of the built-in tasks show the values used.
            if self.mean is None:
                self.mean = MNIST_MEAN
            if self.std is None:
                self.std = MNIST_STD
        return self


class _Split(Section):
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


class _Stored(Section):
    """Tasks whose images are prepared once into a cache."""

    color: Literal["gray", "rgb"] = Field(
        "gray",
        description=(
            "svhn, multinumber, image_folder, image_sequences: images stored and fed as 1 or 3 channels. "
            "image_folder / image_sequences: an image of the other kind is an error naming it unless "
            "data.convert is true."
        ),
    )
    cache_dir: Optional[str] = Field(
        None,
        description=(
            "svhn, multinumber, image_folder, image_sequences: where the prepared arrays are kept. "
            "None: <data_dir>/attn-cache."
        ),
    )


class _SvhnCrops(_Stored):
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
    image_size: int = Field(64, ge=8, le=512, description="svhn: side of the resized, 30%-enlarged number box.")

    def label_slots(self) -> int:
        return self.max_digits + 1

    def slots_key(self) -> str:
        return "(data.max_digits + 1)"


class MnistData(_Split, DataBase):
    task: Literal["mnist"] = "mnist"


class TranslatedData(_Split, DataBase):
    task: Literal["mnist_translated"] = "mnist_translated"
    mnist_canvas_size: int = Field(
        60,
        ge=28,
        le=1024,
        description=(
            "mnist_translated / mnist_cluttered: side N of the black square canvas the 28x28 digit is put on "
            "(the RAM paper: 60 for both tasks, and 100 for mnist_cluttered)."
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

    key_hints: ClassVar[dict[str, str]] = {
        "canvas_size": "the canvas side of {task!r} is data.mnist_canvas_size (60 or 100 in the paper)"
    }


class ClutteredData(TranslatedData):
    task: Literal["mnist_cluttered"] = "mnist_cluttered"
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

    @model_validator(mode="after")
    def _check_pieces(self):
        if self.clutter_pieces is None and self.mnist_canvas_size not in (60, 100):
            raise ValueError(
                f"data.clutter_pieces must be set for data.mnist_canvas_size = {self.mnist_canvas_size}; the paper's "
                "count is known only for 60 px (4 pieces) and 100 px (8 pieces) canvases"
            )
        return self


class _PairCanvasData(_Split, DataBase):
    """Keys of the two tasks on the DRAM paper's pair canvases."""

    mnist_canvas_size: int = Field(
        100,
        ge=84,
        le=1024,
        description=(
            "mnist_pairs / mnist_addition: side N of the black canvas two 28x28 digits are put on without "
            "overlap (the DRAM paper: 100; at least 84, so that any first digit leaves room for the second)."
        ),
    )
    placement_seed: int = Field(
        0,
        ge=0,
        description=(
            "mnist_pairs / mnist_addition: seed of which digit each digit is paired with (in every split, "
            "within the split) and of the evaluation canvases (the two positions)."
        ),
    )

    key_hints: ClassVar[dict[str, str]] = {
        "canvas_size": "the canvas side of {task!r} is data.mnist_canvas_size (100 in the paper)"
    }


class PairsData(_PairCanvasData):
    sequence: ClassVar[bool] = True
    task: Literal["mnist_pairs"] = "mnist_pairs"
    pair_order: Literal["left_to_right", "ascending"] = Field(
        "left_to_right",
        description=(
            "The order the two digits are read in (scoring counts either order): left_to_right, the digit "
            "whose frame starts further left first (the higher one on a tie), which an attention model can "
            "follow by looking; ascending, the smaller digit first, which needs both digits seen before the "
            "first is read."
        ),
    )

    def label_slots(self) -> int:
        return 3

    def slots_key(self) -> str:
        return "3 label slots (two digits, then the end token)"


class AdditionData(_PairCanvasData):
    task: Literal["mnist_addition"] = "mnist_addition"

    def label_slots(self) -> int:
        return 1

    def slots_key(self) -> str:
        return "1 label slot (the sum)"


class SvhnData(_SvhnCrops, _Split, DataBase):
    sequence: ClassVar[bool] = True
    task: Literal["svhn"] = "svhn"
    crop_size: int = Field(
        54, ge=8, le=512, description="svhn: side of the crop fed to the model (random in training, centre in evaluation)."
    )

    @model_validator(mode="after")
    def _check_crop(self):
        if self.crop_size > self.image_size:
            raise ValueError(
                f"data.crop_size = {self.crop_size} is larger than data.image_size = {self.image_size}; "
                "the crop is taken from the resized image"
            )
        return self


class SvhnBackgroundData(_SvhnCrops, _Split, DataBase):
    sequence: ClassVar[bool] = True
    task: Literal["svhn_background"] = "svhn_background"
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

    @model_validator(mode="after")
    def _check_canvas(self):
        if self.canvas_size < self.image_size:
            raise ValueError(
                f"data.canvas_size = {self.canvas_size} is smaller than data.image_size = {self.image_size}; "
                "the canvas must hold the number's crop"
            )
        return self


class MultinumberData(_Stored, DataBase):
    sequence: ClassVar[bool] = True
    task: Literal["multinumber"] = "multinumber"

    def label_slots(self) -> int:
        return MULTINUMBER_TOKENS

    def slots_key(self) -> str:
        return f"{MULTINUMBER_TOKENS} label slots"


class ImageFolderData(_Stored, _Split, DataBase):
    own_statistics: ClassVar[bool] = True
    task: Literal["image_folder"] = "image_folder"
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

    @model_validator(mode="after")
    def _check_own_images(self):
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"data.val_fraction = {self.val_fraction} and data.test_fraction = {self.test_fraction} leave no "
                "training images; keep their sum below 1"
            )
        if self.target_size is not None and not all(8 <= side <= 4096 for side in self.target_size):
            raise ValueError(
                f"data.target_size = {list(self.target_size)}: height and width must each be 8 to 4096 pixels"
            )
        return self


class ImageSequencesData(ImageFolderData):
    sequence: ClassVar[bool] = True
    task: Literal["image_sequences"] = "image_sequences"
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

    def label_slots(self) -> int:
        return self.max_length + 1

    def slots_key(self) -> str:
        return "(data.max_length + 1)"


DATA_VARIANTS: dict[str, type[DataBase]] = {
    "mnist": MnistData,
    "mnist_translated": TranslatedData,
    "mnist_cluttered": ClutteredData,
    "mnist_pairs": PairsData,
    "mnist_addition": AdditionData,
    "svhn": SvhnData,
    "svhn_background": SvhnBackgroundData,
    "multinumber": MultinumberData,
    "image_folder": ImageFolderData,
    "image_sequences": ImageSequencesData,
}
"""data.task -> its section."""


def _task_of(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("task") or "mnist"
    return getattr(value, "task", "mnist")


DataConfig = Annotated[
    Union[tuple(Annotated[cls, Tag(name)] for name, cls in DATA_VARIANTS.items())],
    Discriminator(_task_of),
]
"""The data section: the variant ``data.task`` names (mnist when it is not given)."""

_ADAPTER = TypeAdapter(DataConfig)


def data_config(**values: Any) -> DataBase:
    """The data section of ``values`` (its ``task`` picks the variant), validated."""
    return _ADAPTER.validate_python(values)
