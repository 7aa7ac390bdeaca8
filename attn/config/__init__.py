"""The experiment schema: the single source of truth for every option, its default and its bounds.

An experiment is a YAML file (``experiments/*.yaml``) plus optional ``key=value`` overrides on the
command line. Both go through :func:`load_config`, which refuses unknown keys, wrong types, values out
of range and keys of another task, model, core or context with one sentence naming the file, the key,
the value and what is allowed.

- :mod:`attn.config.data`: the ``data`` variants, one per task;
- :mod:`attn.config.model`: the ``model`` variants (RAM, DRAM), their cores and context networks;
- :mod:`attn.config.schema`: the experiment and its other sections (train, eval, ray, tracking, sweep);
- :mod:`attn.config.validation`: validation and its one-line errors;
- :mod:`attn.config.files`: YAML files, ``base:``, overrides, dumps.
"""

from attn.config.data import (
    ClutteredData,
    ImageFolderData,
    ImageSequencesData,
    MnistData,
    MultinumberData,
    SvhnBackgroundData,
    SvhnData,
    TranslatedData,
    DATA_VARIANTS,
    MNIST_MEAN,
    MNIST_STD,
    MULTINUMBER_TOKENS,
    DataBase,
    DataConfig,
    data_config,
)
from attn.config.files import apply_overrides, dump_config, flatten, load_config, load_yaml, parse_override, read_yaml
from attn.config.model import (
    CONTEXT_VARIANTS,
    CORE_VARIANTS,
    MODEL_VARIANTS,
    TRANSFORMERS,
    ContextBase,
    ContextConfig,
    CoreBase,
    CoreConfig,
    DramConfig,
    ModelBase,
    ModelConfig,
    RamConfig,
    RetinaConfig,
    context_config,
    core_config,
    model_config,
)
from attn.config.schema import (
    SEQUENCE_TASKS,
    EvalConfig,
    ExperimentConfig,
    RayConfig,
    SearchDim,
    SweepConfig,
    TrackingConfig,
    TrainConfig,
    check_storage_folder,
)
from attn.config.validation import UNIONS, set_key, validate_config

__all__ = [
    "ClutteredData", "ImageFolderData", "ImageSequencesData", "MnistData", "MultinumberData", "SvhnBackgroundData",
    "SvhnData", "TranslatedData",
    "CONTEXT_VARIANTS", "CORE_VARIANTS", "DATA_VARIANTS", "MNIST_MEAN", "MNIST_STD", "MODEL_VARIANTS",
    "MULTINUMBER_TOKENS", "SEQUENCE_TASKS", "TRANSFORMERS", "UNIONS", "ContextBase", "ContextConfig", "CoreBase",
    "CoreConfig", "DataBase", "DataConfig", "DramConfig", "EvalConfig", "ExperimentConfig", "ModelBase",
    "ModelConfig", "RamConfig", "RayConfig", "RetinaConfig", "SearchDim", "SweepConfig", "TrackingConfig",
    "TrainConfig", "apply_overrides", "check_storage_folder", "context_config", "core_config", "data_config",
    "dump_config", "flatten", "load_config", "load_yaml", "model_config", "parse_override", "read_yaml", "set_key",
    "validate_config",
]
