"""Your own images: ``image_folder`` (one folder per class, for RAM) and ``image_sequences`` (label
sequences from a CSV or JSON file, for DRAM), and ``run.py init-experiment``, which looks at such a
folder and writes an experiment for it.

Prepared once, on the first run: :mod:`.listing` finds the files (:mod:`.labels` reads label files),
:mod:`.decode` brings every image to one uint8 (C, H, W) canvas, :mod:`.cache` keeps the decoded
array and :mod:`.statistics` the training split's mean and std. Loaded every run: :mod:`.load`, with
:mod:`.splits` holding out seeded val/test shares. :mod:`.inspect` is init-experiment. Layouts,
label formats and options: docs/data.md, "Your own data".
"""

from attn.data.own_images.cache import CACHE_VERSION, load_images
from attn.data.own_images.decode import channel_kind, decode, fit_image, probe, probe_all
from attn.data.own_images.inspect import Summary, experiment_yaml, inspect_folder, write_experiment
from attn.data.own_images.labels import (
    END_NAME,
    END_TOKEN,
    LABEL_FILES,
    LabelRow,
    encode_labels,
    find_label_file,
    label_summary,
    read_label_file,
    split_label,
)
from attn.data.own_images.listing import (
    CACHE_NAME,
    IMAGE_EXTENSIONS,
    SPLITS,
    FolderListing,
    ImageFile,
    SequenceListing,
    data_root,
    is_image_file,
    list_image_folder,
    list_sequences,
    listing_digest,
    split_folders,
)
from attn.data.own_images.load import load_image_folder, load_image_sequences
from attn.data.own_images.splits import assign_splits
from attn.data.own_images.statistics import pixel_statistics

__all__ = [
    "CACHE_NAME",
    "CACHE_VERSION",
    "END_NAME",
    "END_TOKEN",
    "IMAGE_EXTENSIONS",
    "LABEL_FILES",
    "SPLITS",
    "FolderListing",
    "ImageFile",
    "LabelRow",
    "SequenceListing",
    "Summary",
    "assign_splits",
    "channel_kind",
    "data_root",
    "decode",
    "encode_labels",
    "experiment_yaml",
    "find_label_file",
    "fit_image",
    "inspect_folder",
    "is_image_file",
    "label_summary",
    "list_image_folder",
    "list_sequences",
    "listing_digest",
    "load_image_folder",
    "load_image_sequences",
    "load_images",
    "pixel_statistics",
    "probe",
    "probe_all",
    "read_label_file",
    "split_folders",
    "split_label",
    "write_experiment",
]
