"""The experiment schema: every section, option, default and bound, and the checks across sections.

``data`` and ``model`` (with ``model.core`` and ``model.context``) are variants chosen by
``data.task``, ``model.name`` and ``kind`` (:mod:`attn.config.data`, :mod:`attn.config.model`); the
other sections are the same for every run.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional, Union

from pydantic import ConfigDict, Field, field_validator, model_validator

from attn.config.base import Section
from attn.config.data import DATA_VARIANTS, DataConfig, MnistData
from attn.config.model import TRANSFORMERS, ModelConfig, RamConfig

SEQUENCE_TASKS = tuple(name for name, cls in DATA_VARIANTS.items() if cls.sequence)


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
    policy_lr_scale: float = Field(
        1.0,
        gt=0.0,
        le=10.0,
        description="Learning-rate factor of the parameters only REINFORCE trains (the location network; dram: "
        "also the context network and the top core r2). Their gradient is a noisy reward times the score, and Adam "
        "steps every parameter by about lr whatever its noise, so at the full rate the policy can swing to a "
        "canvas corner, where no glimpse sees anything and no reward brings it back; 0.1 keeps it steady.",
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
    token_loss: Literal["leading", "all"] = Field(
        "leading",
        description="Which label tokens the classification loss of a sequence task (dram) reads: leading, "
        "those up to and including the first wrong one (Ba et al.'s cut at the first error); all, every "
        "token of the label, so that later slots learn while the first is still often wrong. REINFORCE "
        "and the baseline count the glimpses of the leading slots either way. A classification label is "
        "one token: the same for both.",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="Arithmetic of the training step: fp32; bf16 (autocast in bfloat16, no loss scaling); fp16 "
        "(autocast in float16 with a gradient scaler). Weights and optimizer state stay float32 in all three. On a CPU, "
        "bf16 is faster than fp32 only with native bfloat16 arithmetic (AVX512-BF16 or AMX; the run's log says when "
        "it is missing).",
    )
    compile: Literal["off", "default", "reduce-overhead"] = Field(
        "off",
        description="torch.compile of the training episode (forward and backward; evaluation stays eager). "
        "default: TorchInductor's fused kernels; reduce-overhead: the same replayed as CUDA graphs (a GPU; on a "
        "CPU it compiles as default and says so). Each batch shape compiles once, so the last batch of an "
        "epoch is filled up with the epoch's first images and sequence tasks read all label slots; the rnn "
        "core takes the generic loop instead of its hand-written episode. The first steps wait for the compiler.",
    )
    data_on_device: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Keep the stored images (uint8) on the training GPU, so that batches are sliced, placed "
        "and cropped there with no copy from the host per batch. auto: when they take at most half of "
        "the GPU's free memory (else they stay on the host, said in one line); on: always; off: never. "
        "No effect on a CPU.",
    )
    grad_clip: Optional[float] = Field(None, gt=0.0, description="Clip the global gradient norm.")
    ema_decay: Optional[float] = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="beta of an exponential moving average of the weights (Polyak averaging, e.g. 0.999), "
        "updated after every step with a warm-up (min(beta, (1 + t) / (10 + t))); validation, the best weights, "
        "the test and the logged model then use the average. None: the weights as trained.",
    )
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
    trial_retries: Optional[int] = Field(
        None,
        ge=0,
        description="Times Tune retries a failed trial, from its last checkpoint and in its own MLflow run. None: "
        "3 when the sweep joins a cluster, 0 on this machine's own Ray (as ray.max_failures).",
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
    max_failures: Optional[int] = Field(
        None,
        ge=0,
        description="Worker-group restarts from the latest checkpoint (a lost node or process), each epoch logged "
        "once. None: 3 when the run joins a cluster (ray.address or RAY_ADDRESS, where spot workers may be "
        "reclaimed), 0 on the Ray a run starts on this machine (a failure there is a bug to see at once).",
    )

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
    system_metrics: Literal["auto", "on", "off"] = Field(
        "auto",
        description="MLflow's system metrics (system/...: GPU utilisation and memory, CPU, memory, disk, network) "
        "sampled on every node of the run: auto when the run trains on GPUs; on: also on CPUs; off: never.",
    )
    system_metrics_interval_s: float = Field(
        10.0, ge=0.1, description="Seconds between two samples of the system metrics (each one MLflow step)."
    )


class ExperimentConfig(Section):
    data: DataConfig = Field(default_factory=MnistData)
    model: ModelConfig = Field(default_factory=RamConfig)
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
        m, d = self.model, self.data
        if m.policy_std_final is not None and self.train.compile != "off":
            raise ValueError(
                f"model.policy_std_final changes sigma every epoch, and a compiled step (train.compile = "
                f"{self.train.compile!r}) would be compiled again for each value: use train.compile=off, or "
                "leave model.policy_std_final unset"
            )
        if m.name == "ram" and d.sequence:
            raise ValueError(
                f"model.name = 'ram' predicts one label; data.task = {d.task!r} has digit sequences: "
                "use model.name=dram"
            )
        if m.name == "dram":
            self._check_dram_inputs()
            # the top stream of a transformer DRAM reads the context plus one input per glimpse
            m.core.check_against(
                m.hidden_size,
                1 + d.label_slots() * m.steps_per_token(),
                f"the dram top stream's steps 1 + {d.slots_key()} * (model.explore_steps + model.glimpses_per_digit)",
            )
        return self

    def _check_dram_inputs(self) -> None:
        m, d = self.model, self.data
        ctx = m.context.kind
        if ctx == "vit" and m.core.kind not in TRANSFORMERS:
            raise ValueError(
                f"model.context.kind = 'vit' is read through cross-attention, which only the Transformer cores "
                f"have; model.core.kind = {m.core.kind!r}: use {', '.join(TRANSFORMERS)}, or context cnn, "
                "snapshot or resnet50"
            )
        if ctx in ("resnet50", "vit") and d.normalize != "dataset":
            raise ValueError(
                f"model.context.kind = {ctx!r} re-normalises the input for its backbone from data.mean and "
                "data.std; data.normalize = 'per_image' loses them: use data.normalize=dataset"
            )
        if m.glimpse_color == "rgb" and getattr(d, "color", "gray") != "rgb":
            raise ValueError(
                f"model.glimpse_color = 'rgb' needs colour images; data.color = {getattr(d, 'color', 'gray')!r}: set data.color=rgb"
            )

    def max_tokens(self) -> int:
        """Label slots L per image (the data variant's)."""
        return self.data.label_slots()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


