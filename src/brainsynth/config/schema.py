"""The schema of params.yaml: one pydantic section per top-level key, with the shape and the rules
of each value but none of the values (no defaults): params.yaml holds every value, and only there."""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from brainsynth.config.reads import _Section


class ConfigError(ValueError):
    """A user-facing configuration problem; its message is a single line."""


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
    class_norm: bool
    critic_mbstd_group: int = Field(ge=0, le=64)
    upsample: Literal["nearest", "bilinear"]
    classifier_width: int = Field(ge=2, le=256)
    class_embed_dim: int = Field(ge=1, le=1024)
    spatial_latent_channels: int = Field(ge=0, le=64)
    spatial_latent_factor: int
    spatial_prior: Literal["standard", "learned"]
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
        if self.spatial_prior == "learned" and not self.spatial_latent_channels:
            raise ValueError("spatial_prior 'learned' needs spatial_latent_channels > 0 (it is the prior of the spatial latent)")
        return self


class LossConfig(_Section):
    recon: Literal["l1", "mse"]
    recon_weight: float = Field(ge=0.0)
    kl_weight: float = Field(ge=0.0)
    kl_warmup_epochs: float = Field(ge=0.0)  # fractional: tuning trials scale the schedule to their budget
    adv_weight: float = Field(ge=0.0)
    adv_start_epoch: float = Field(ge=0.0)
    gan: Literal["wgan-gp", "hinge"]
    gp_weight: float = Field(ge=0.0)
    gp_every: int = Field(ge=1)
    drift_weight: float = Field(ge=0.0)
    feature_weight: float = Field(ge=0.0)
    class_weight: float = Field(ge=0.0)
    instance_noise: float = Field(ge=0.0, le=1.0)
    prior_fraction: float = Field(gt=0.0, le=4.0)
    consistency_weight: float = Field(ge=0.0)
    consistency_members: int = Field(ge=1, le=16)
    consistency_epochs: int = Field(ge=1)
    consistency_blur: float = Field(ge=0.0, le=8.0)
    consistency_ramp_epochs: float = Field(ge=0.0)
    latent_adv_weight: float = Field(ge=0.0)
    focal_frequency_weight: float = Field(ge=0.0)
    adaptive_adv: bool


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
    lr_classifier: float = Field(gt=0.0, le=1.0)


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
    scale_schedule: bool
    max_train_images: int = Field(ge=0)
    eval_images: int = Field(ge=8)
    objective: Literal["swd_recon", "swd", "recon_mae", "swd_recon_class"]
    recon_weight: float = Field(ge=0.0)
    class_weight: float = Field(ge=0.0)
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
    """The downstream slice classifier (utility, GAN-test, in-domain features, the tuning class judge)."""

    width: int = Field(ge=2, le=256)
    dropout: float = Field(ge=0.0, lt=1.0)
    batch_size: int = Field(ge=2, le=4096)
    lr: float = Field(gt=0.0, le=1.0)
    min_steps: int = Field(ge=1)


class JudgeConfig(_Section):
    """The independent judge (``brainsynth.judge``): gradient-boosted trees on anatomical features."""

    bins: int = Field(ge=4, le=256)
    ring_px: int = Field(ge=1, le=64)
    max_iter: int = Field(ge=1, le=5000)
    learning_rate: float = Field(gt=0.0, le=1.0)


class FilterConfig(_Section):
    """The filtered export (``brainsynth.filtering``): its held-out ensemble, and how much evaluate oversamples."""

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
    champion_metric: str  # a metric the catalogue marks champion-eligible (evaluation.catalogue)

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
        from brainsynth.evaluation.catalogue import champion_metrics

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

    @model_validator(mode="after")
    def _search_space_names_real_keys(self) -> "Config":
        known = set(flat_keys(type(self)))
        for key, dim in self.tune.search_space.items():
            if key not in known:
                raise ValueError(f"tune.search_space names unknown parameter {key!r}{_did_you_mean(key, known)}")
            # Every value a trial can draw must be one the parameter accepts, or the trial fails
            # later inside Optuna with a traceback instead of here with one line.
            values = dim.choices if dim.type == "categorical" else [dim.low, dim.high]
            for name, value in zip(["choice"] * len(values) if dim.type == "categorical" else ["low", "high"], values):
                if dim.type == "int":
                    value = int(value)
                problem = _value_problem(self, key, value)
                if problem:
                    raise ValueError(f"tune.search_space.{key}: {name} {value!r} is not a valid {key} ({problem})")
        return self

    def flat(self) -> dict[str, Any]:
        """The config as ``{"train.epochs": 20, ...}`` with params.yaml key paths."""
        return flatten(self.model_dump(mode="json"))

    def with_overrides(self, overrides: dict[str, Any], source: str = "overrides") -> "Config":
        """A new validated config with dotted-key overrides laid over this one; errors name ``source``."""
        raw = self.model_dump(mode="json")
        for key, value in overrides.items():
            _set_dotted(raw, key, value)
        from brainsynth.config.load import validate

        return validate(raw, source=source)


# --- key paths -------------------------------------------------------------------------------


def flat_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf key path a section model accepts (used for 'did you mean' and search spaces)."""
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        path = f"{prefix}{name}"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(flat_keys(annotation, path + "."))
        else:
            keys.append(path)
    return keys


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
    node[leaf] = value


def _did_you_mean(key: str, candidates: set[str] | list[str]) -> str:
    match = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _value_problem(cfg: "Config", key: str, value: Any) -> str | None:
    """Why ``value`` is not accepted for the dotted ``key`` (validated within its top-level section,
    with the rest of that section as configured), or None."""
    from typing import Annotated

    from pydantic import TypeAdapter

    section_name, _, rest = key.partition(".")
    section = getattr(cfg, section_name)
    try:
        if isinstance(section, BaseModel):
            raw = section.model_dump(mode="json")
            _set_dotted(raw, rest, value)
            type(section).model_validate(raw)
        else:  # a top-level scalar such as seed
            field = type(cfg).model_fields[key]
            TypeAdapter(Annotated.__class_getitem__((field.annotation, *field.metadata))).validate_python(value)
    except ValidationError as err:
        return err.errors()[0]["msg"].removeprefix("Value error, ")
    return None


