"""The schema of params.yaml: one pydantic section per top-level key, with the shape and the rules
of each value but none of the values (no defaults): params.yaml holds every value, and only there."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from brainsynth.config.keys import flatten
from brainsynth.config.reads import _Section


class EmbeddedDataConfig(_Section):
    n_subjects: int = Field(ge=3)
    slices_per_subject: int = Field(ge=1, le=200)
    class_fractions: tuple[float, float, float] = Field(strict=False)  # a YAML list
    field_of_view_mm: float = Field(gt=50, le=400)
    min_area_fraction: float = Field(gt=0.0, lt=1.0)
    elastic_mm: float = Field(ge=0.0, le=15.0)
    rotation_deg: float = Field(ge=0.0, le=45.0)
    scale_jitter: float = Field(ge=0.0, le=0.3)
    bias_field: float = Field(ge=0.0, le=0.8)
    noise: float = Field(ge=0.0, le=0.3)

    @field_validator("class_fractions")
    @classmethod
    def _fractions_sum_to_one(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(value) < 0 or abs(sum(value) - 1.0) > 1e-6:
            raise ValueError("must be three non-negative numbers that sum to 1")
        return value


class VolumeConfig(_Section):
    """How NIfTI volumes and DICOM series become 2D slices."""

    slice_axis: Literal[0, 1, 2]
    min_area_fraction: float = Field(gt=0.0, le=1.0)
    intensity_percentiles: tuple[float, float] = Field(strict=False)  # a YAML list
    slices_per_volume: int = Field(ge=0)

    @field_validator("intensity_percentiles")
    @classmethod
    def _ordered_percentiles(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= value[0] < value[1] <= 100.0:
            raise ValueError("must be [low, high] percentiles with 0 <= low < high <= 100")
        return value


class DataConfig(_Section):
    source: str
    format: Literal["auto", "images", "nifti", "dicom"]
    image_size: int
    val_fraction: float = Field(ge=0.0, lt=0.5)
    test_fraction: float = Field(gt=0.0, lt=0.5)
    train_fraction: float = Field(gt=0.0, le=1.0)
    subject_pattern: str
    max_bad_fraction: float = Field(ge=0.0, le=1.0)
    workers: int = Field(ge=0, le=256)
    volume: VolumeConfig
    embedded: EmbeddedDataConfig

    @field_validator("image_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value < 16 or value > 512 or value & (value - 1):
            raise ValueError("must be a power of two between 16 and 512 (the networks halve it down to 4x4)")
        return value

    @field_validator("subject_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        import re

        try:
            re.compile(value)
        except re.error as err:
            raise ValueError(f"is not a valid regular expression ({err})") from None
        return value


class ModelConfig(_Section):
    latent_dim: int = Field(ge=2, le=2048)
    base_channels: int = Field(ge=4, le=512)
    max_channels: int = Field(ge=8, le=2048)
    cbam_res: list[int]
    cbam_reduction: int = Field(ge=1, le=64)
    self_attention_res: list[int]
    conditional: bool
    critic_mbstd_group: int = Field(ge=0, le=64)
    upsample: Literal["nearest", "bilinear"]
    class_embed_dim: int = Field(ge=1, le=1024)
    spatial_latent_channels: int = Field(ge=0, le=64)
    spatial_latent_factor: int
    logvar_min: float
    logvar_max: float

    @model_validator(mode="after")
    def _ordered(self) -> "ModelConfig":
        if self.logvar_min >= self.logvar_max:
            raise ValueError(f"logvar_min ({self.logvar_min}) must be below logvar_max ({self.logvar_max})")
        for res in [*self.self_attention_res, *self.cbam_res]:
            if res < 4 or res & (res - 1):
                raise ValueError(f"attention resolution {res} must be a power of two >= 4")
        if self.spatial_latent_factor < 2 or self.spatial_latent_factor & (self.spatial_latent_factor - 1):
            raise ValueError(f"spatial_latent_factor {self.spatial_latent_factor} must be a power of two >= 2")
        return self


class ConsistencyConfig(_Section):
    """Grade consistency (``training.parts.ConsistencyPart``): a frozen blurred classifier ensemble."""

    weight: float = Field(ge=0.0)  # 0 = off
    members: int = Field(ge=1, le=16)
    epochs: int = Field(ge=1)
    blur: float = Field(ge=0.0, le=8.0)
    ramp_epochs: float = Field(ge=0.0)


class FaderConfig(_Section):
    """The Fader adversary on the posterior means (``training.parts.FaderPart``)."""

    weight: float = Field(ge=0.0)  # 0 = off
    lr: float = Field(gt=0.0, le=1.0)


class LossConfig(_Section):
    recon_weight: float = Field(ge=0.0)
    kl_weight: float = Field(ge=0.0)
    kl_warmup_epochs: float = Field(ge=0.0)  # fractional: tuning trials scale the schedule to their budget
    adv_weight: float = Field(ge=0.0)
    adv_start_epoch: float = Field(ge=0.0)
    gp_weight: float = Field(ge=0.0)
    gp_every: int = Field(ge=1)
    drift_weight: float = Field(ge=0.0)
    instance_noise: float = Field(ge=0.0, le=1.0)
    prior_fraction: float = Field(gt=0.0, le=4.0)
    focal_frequency_weight: float = Field(ge=0.0)
    consistency: ConsistencyConfig
    fader: FaderConfig


class OptimConfig(_Section):
    lr: float = Field(gt=0.0, le=1.0)
    lr_critic: float = Field(gt=0.0, le=1.0)
    beta1: float = Field(ge=0.0, lt=1.0)
    beta2: float = Field(ge=0.0, lt=1.0)
    critic_beta1: float = Field(ge=0.0, lt=1.0)
    n_critic: int = Field(ge=1, le=10)
    ema_decay: float = Field(ge=0.0, lt=1.0)
    ema_warmup_steps: int = Field(ge=1)
    grad_clip: float = Field(ge=0.0)


class TrainConfig(_Section):
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=2)
    device: Literal["auto", "cpu", "cuda"]
    bf16: bool
    compile: bool
    channels_last: Any  # "auto" | true | false, checked below (one message rather than one per union member)
    hflip: bool
    sample_every: int = Field(ge=1)
    log_every: int = Field(ge=1)
    n_sample_images: int = Field(ge=1, le=256)
    keep: Literal["best", "last"]
    nproc_per_node: int = Field(ge=1, le=64)

    @field_validator("channels_last")
    @classmethod
    def _auto_or_bool(cls, value: Any) -> str | bool:
        if value != "auto" and not isinstance(value, bool):
            raise ValueError("must be auto (NHWC on the CPU, not on CUDA), true or false")
        return value

    @model_validator(mode="after")
    def _batch_shared_evenly(self) -> "TrainConfig":
        if self.batch_size % self.nproc_per_node:
            raise ValueError(f"train.batch_size {self.batch_size} is the global batch and must be divisible by "
                             f"train.nproc_per_node {self.nproc_per_node}")
        return self


class SearchDimension(_Section):
    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> "SearchDimension":
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical dimension needs a non-empty 'choices' list")
        else:
            if self.low is None or self.high is None or self.low >= self.high:
                raise ValueError(f"a {self.type} dimension needs low < high (got low={self.low}, high={self.high})")
            if self.log and self.low <= 0:
                raise ValueError(f"a log-scale dimension needs low > 0 (got {self.low})")
        return self


class TuneConfig(_Section):
    enabled: bool
    n_trials: int = Field(ge=0)
    epochs: int = Field(ge=1)
    max_train_images: int = Field(ge=0)
    eval_images: int = Field(ge=8)
    objective: Literal["swd_recon", "swd", "recon_mae"]
    recon_weight: float = Field(ge=0.0)
    sampler: Literal["tpe", "random"]
    pruner: Literal["median", "hyperband", "none"]
    n_workers: int = Field(ge=1, le=64)
    storage: str
    heartbeat_seconds: int = Field(ge=1, le=3600)
    min_improvement: float = Field(ge=0.0, lt=1.0)
    search_space: dict[str, SearchDimension]

    @field_validator("storage")
    @classmethod
    def _no_secret(cls, value: str) -> str:
        # params.yaml, dvc.lock, logs and MLflow params all go into git or a shared store: a
        # password written here would leak through each of them.
        from urllib.parse import urlsplit

        if "://" in value and urlsplit(value).password:
            raise ValueError("holds a password: drop it from the URL and give it to PostgreSQL through PGPASSWORD or ~/.pgpass "
                             "(params.yaml and dvc.lock go into git)")
        return value


class ClassifierConfig(_Section):
    """The project's slice classifier (utility, GAN-test, in-domain features, the filter's ensemble, grade consistency)."""

    width: int = Field(ge=2, le=256)
    dropout: float = Field(ge=0.0, lt=1.0)
    batch_size: int = Field(ge=2, le=4096)
    lr: float = Field(gt=0.0, le=1.0)
    min_steps: int = Field(ge=1)


class JudgeConfig(_Section):
    """The independent judge (``brainsynth.classifiers.judge``): gradient-boosted trees on anatomical features."""

    bins: int = Field(ge=4, le=256)
    ring_px: int = Field(ge=1, le=64)
    max_iter: int = Field(ge=1, le=5000)
    learning_rate: float = Field(gt=0.0, le=1.0)


class FilterConfig(_Section):
    """The filtered export (``brainsynth.classifiers.filtering``): its held-out ensemble, and how much evaluate oversamples."""

    oversample: int = Field(ge=1, le=64)  # evaluate: utility also with the best 1/oversample of oversample × the draws; 1 = skip
    members: int = Field(ge=2, le=10)  # folds of the training subjects, one classifier trained on all but each
    epochs: int = Field(ge=1)


class EvaluateConfig(_Section):
    n_images: int = Field(ge=8)
    n_pairs: int = Field(ge=4)
    n_recon_examples: int = Field(ge=1, le=64)
    utility_epochs: int = Field(ge=0)
    utility_images: int = Field(ge=0)
    utility_seeds: int = Field(ge=1, le=20)
    synthetic_per_real: list[float] = Field(strict=False)  # a YAML list of mixing ratios
    pretrain: bool
    classifier: ClassifierConfig
    judge: JudgeConfig
    filter: FilterConfig

    @field_validator("synthetic_per_real")
    @classmethod
    def _ratios(cls, value: list[float]) -> list[float]:
        if any(not 0.0 <= r <= 10.0 for r in value) or len(set(value)) != len(value):
            raise ValueError("must be a list of distinct mixing ratios between 0 and 10 (synthetic slices per real one)")
        return value


class SwdConfig(_Section):
    """Sliced Wasserstein distance settings, shared by validation (tune, train) and the test
    (evaluate) so that ``val_swd`` and ``swd`` are on one scale."""

    patches_per_image: int = Field(ge=8)
    directions: int = Field(ge=16)


class GenerateConfig(_Section):
    enabled: bool
    n_per_class: int = Field(ge=1, le=10_000)  # serving.DEFAULT_MAX_IMAGES
    nifti: bool
    oversample: int = Field(ge=1, le=64)  # draws per requested slice (filtered export); 1 = no filter
    keep: float = Field(ge=0.0, le=1.0)  # share of the draws kept per class; 0 = 1/oversample (n_per_class)

    @model_validator(mode="after")
    def _keeps_a_slice(self) -> "GenerateConfig":
        if self.oversample > 1 and self.keep and round(self.keep * self.oversample * self.n_per_class) < 1:
            raise ValueError(f"keep {self.keep} of oversample {self.oversample} × n_per_class {self.n_per_class} keeps no slice")
        if self.oversample == 1 and self.keep not in (0.0, 1.0):
            raise ValueError(f"keep {self.keep} needs oversample > 1 (with oversample 1 every drawn slice is kept)")
        return self


class MlflowConfig(_Section):
    experiment: str = Field(min_length=1)
    registered_model: str
    champion_metric: str  # a metric the catalogue marks champion-eligible (brainsynth.catalogue)

    @field_validator("registered_model")
    @classmethod
    def _registrable(cls, value: str) -> str:
        # MLflow's own rule (mlflow.utils.validation._validate_model_name), checked here so that a bad
        # name fails before training instead of at registration, after it.
        if any(c in value for c in "/:") or (value and not value.strip()):
            raise ValueError(f"{value!r} cannot be an MLflow model name (no '/' or ':'; '' = don't register)")
        return value

    @field_validator("champion_metric")
    @classmethod
    def _champion_eligible(cls, value: str) -> str:
        # Imported here, not at the top: the stages import the schema, and a new metric row must not
        # rerun every stage (DVC's code deps are what a stage imports).
        from brainsynth.catalogue import champion_metrics

        if value not in champion_metrics():
            raise ValueError(f"must be one of {', '.join(champion_metrics())} (the metrics that can decide the champion)")
        return value


class Config(_Section):
    seed: int = Field(ge=0, le=2**32 - 1)  # what numpy's legacy and torch's generators all accept
    data: DataConfig
    model: ModelConfig
    loss: LossConfig
    optim: OptimConfig
    train: TrainConfig
    tune: TuneConfig
    swd: SwdConfig
    evaluate: EvaluateConfig
    generate: GenerateConfig
    mlflow: MlflowConfig

    @model_validator(mode="after")
    def _spatial_latent_fits(self) -> "Config":
        factor, size = self.model.spatial_latent_factor, self.data.image_size
        if self.model.spatial_latent_channels and size // factor < 4:
            raise ValueError(f"model.spatial_latent_factor {factor} leaves data.image_size {size} below 4×4 (the networks stop at 4×4)")
        return self

    def flat(self) -> dict[str, Any]:
        """The config as ``{"train.epochs": 20, ...}`` with params.yaml key paths."""
        return flatten(self.model_dump(mode="json"))
