"""One validated configuration object for every stage, loaded from ``params.yaml``.

Every knob of the pipeline lives in params.yaml, and only there: this module knows the shape and
the rules of each value but supplies none of them (no defaults), so code, tests and users all run
the values params.yaml holds. Errors are turned into one line that names the key path, the
offending value and what is allowed, so a typo fails in well under a second, before any data is
touched.

Reads can be recorded (``record_reads``): the test suite uses it to check that every param a stage
reads is declared under that stage's ``params:`` in dvc.yaml, so DVC reruns exactly what a change
affects.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A user-facing configuration problem; its message is a single line."""


_reads: set[str] | None = None  # key paths read while recording (record_reads)


class _Section(BaseModel):
    # strict: YAML's `true` is not an epoch count and "yes" is not a boolean (lax coercion would
    # run 1 epoch, or flip a switch, without a word); floats still accept ints.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    # "train." for the train section, "" for the whole config; set by validate(). None: a section
    # not read from params.yaml (e.g. the model settings stored in a model file), never recorded.
    _path: str | None = PrivateAttr(default=None)

    def __getattribute__(self, name: str):
        value = super().__getattribute__(name)
        if _reads is not None and not name.startswith("_") and name in type(self).model_fields and not isinstance(value, _Section):
            path = super().__getattribute__("__pydantic_private__")["_path"]
            if path is not None:
                _reads.add(path + name)
        return value


def record_reads() -> set[str]:
    """Start recording the key paths of every param read from a validated config; returns the live
    set. Reading a whole section through ``flat()``/``model_dump()`` is not recorded (that is
    logging, not use)."""
    global _reads
    _reads = set()
    return _reads


def _assign_paths(section: _Section, prefix: str = "") -> None:
    section.__pydantic_private__["_path"] = prefix
    for name in type(section).model_fields:
        child = BaseModel.__getattribute__(section, name)
        if isinstance(child, _Section):
            _assign_paths(child, f"{prefix}{name}.")
        elif isinstance(child, dict):
            for key, item in child.items():
                if isinstance(item, _Section):
                    _assign_paths(item, f"{prefix}{name}.{key}.")


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
    logvar_min: float
    logvar_max: float

    @model_validator(mode="after")
    def _ordered(self) -> "ModelConfig":
        if self.logvar_min >= self.logvar_max:
            raise ValueError(f"logvar_min ({self.logvar_min}) must be below logvar_max ({self.logvar_max})")
        for res in [*self.self_attention_res, *self.cbam_res]:
            if res < 4 or res & (res - 1):
                raise ValueError(f"attention resolution {res} must be a power of two >= 4")
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


class OptimConfig(_Section):
    lr: float = Field(gt=0.0, le=1.0)
    lr_critic: float = Field(gt=0.0, le=1.0)
    beta1: float = Field(ge=0.0, lt=1.0)
    beta2: float = Field(ge=0.0, lt=1.0)
    critic_beta1: float = Field(ge=0.0, lt=1.0)
    n_critic: int = Field(ge=1, le=10)
    ema_decay: float = Field(ge=0.0, lt=1.0)
    grad_clip: float = Field(ge=0.0)
    lr_classifier: float = Field(gt=0.0, le=1.0)


class TrainConfig(_Section):
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=2)
    device: Literal["auto", "cpu", "cuda"]
    bf16: bool
    compile: bool
    channels_last: bool
    hflip: bool
    sample_every: int = Field(ge=1)
    log_every: int = Field(ge=1)
    n_sample_images: int = Field(ge=1, le=256)
    keep: Literal["best", "last"]
    nproc_per_node: int = Field(ge=1, le=64)

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


class EvaluateConfig(_Section):
    n_images: int = Field(ge=8)
    n_pairs: int = Field(ge=4)
    n_recon_examples: int = Field(ge=1, le=64)
    utility_epochs: int = Field(ge=0)
    utility_images: int = Field(ge=0)
    utility_seeds: int = Field(ge=1, le=20)
    synthetic_per_real: float = Field(ge=0.0, le=10.0)


class SwdConfig(_Section):
    """Sliced Wasserstein distance settings, shared by validation (tune, train) and the test
    (evaluate) so that ``val_swd`` and ``swd`` are on one scale."""

    patches_per_image: int = Field(ge=8)
    directions: int = Field(ge=16)


class GenerateConfig(_Section):
    enabled: bool
    n_per_class: int = Field(ge=1, le=10_000)  # serving.DEFAULT_MAX_IMAGES
    nifti: bool


class MlflowConfig(_Section):
    experiment: str = Field(min_length=1)
    registered_model: str
    # brainsynth.registry.CHAMPION_METRICS (kept here as literals: config must not import MLflow)
    champion_metric: Literal["swd", "feature_fd", "morph_distance_ratio", "tstr_balanced_accuracy_mean", "augment_gain_mean",
                             "gan_test_balanced_accuracy", "recon_psnr", "feature_recall"]


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
        return validate(raw, source=source)


# --- helpers ---------------------------------------------------------------------------------


# Params that do not shape what tuning finds: how many trials/workers/where, and what happens after.
NOT_TUNING_INPUTS = ("tune.n_trials", "tune.n_workers", "tune.storage", "tune.heartbeat_seconds", "tune.min_improvement", "mlflow.", "evaluate.", "generate.",
                     "train.sample_every", "train.log_every", "train.n_sample_images", "train.keep",
                     "train.nproc_per_node")


def tuning_inputs(cfg: Config) -> dict[str, Any]:
    """The params tuning results depend on (flat), as the tune stage saw them: what train compares
    before laying tuned values over a params.yaml that may have changed since."""
    flat = cfg.flat()  # not recorded as reads: comparing params is not using them
    ignored = NOT_TUNING_INPUTS if flat["tune.scale_schedule"] else (*NOT_TUNING_INPUTS, "train.epochs")  # only scaled trials use it
    relevant = {k: v for k, v in flat.items() if not k.startswith(ignored)}
    if flat["tune.objective"] == "swd_recon_class":  # the class judge's training budget shapes the objective
        relevant["evaluate.utility_epochs"] = flat["evaluate.utility_epochs"]
    return relevant


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


def _first_error_line(err: ValidationError, raw: dict[str, Any], source: str) -> str:
    first = err.errors()[0]
    loc = [str(part) for part in first["loc"]]
    path = ".".join(loc)
    if first["type"] == "extra_forbidden":
        parent_keys = [".".join(loc[:-1] + [k]) for k in _section_keys(loc[:-1])]
        hint = _did_you_mean(path, parent_keys)
        return f"{source}: unknown key {path!r}{hint}"
    if first["type"] == "missing":
        return f"{source}: missing key {path!r} (params.yaml sets every parameter; see the README's table)"
    value = first.get("input")
    message = first["msg"].removeprefix("Value error, ")
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    if not path:  # a check across sections: its message names the keys; the input is the whole file
        return f"{source}: {message}{more}"
    if isinstance(value, dict):  # a check across the keys of one section: its message names them and their values
        return f"{source}: {path}: {message}{more}"
    return f"{source}: {path} = {value!r}: {message}{more}"


def _section_keys(loc: list[str]) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


def validate(raw: Any, source: str = "params.yaml") -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    global _reads
    recording, _reads = _reads, None  # the validators' own checks are not reads by a stage
    try:
        cfg = Config.model_validate(copy.deepcopy(raw))
    except ValidationError as err:
        raise ConfigError(_first_error_line(err, raw, source)) from None
    finally:
        _reads = recording
    _assign_paths(cfg)
    return cfg


def load(path: str | Path = "params.yaml") -> Config:
    """Read and validate params.yaml; raises ConfigError with a one-line message."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameter file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    return validate(raw, source=str(path))


def load_overrides(path: str | Path) -> dict[str, Any]:
    """A params file of overrides (tune's ``best_params.yaml``) as flat ``{"optim.lr": …}``; the
    values are validated when laid over the config (``Config.with_overrides``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: missing (run the tune stage first: dvc repro tune)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise ConfigError(f"{path}: not valid YAML") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return flatten(raw)


def check_data_source(cfg: Config) -> None:
    """``data.source`` is 'embedded' or an existing, non-empty folder (prepare's pre-check: a path
    typo fails before any import or MLflow run)."""
    source = cfg.data.source
    if source == "embedded":
        return
    root = Path(source).expanduser()
    if not root.exists():
        raise ConfigError(f"data.source = {source!r}: no such folder (or 'embedded' for the built-in cohort)")
    if not root.is_dir():
        raise ConfigError(f"data.source = {source!r}: is a file; point it at the folder that holds the data")
    if not any(not entry.name.startswith(".") for entry in root.iterdir()):
        raise ConfigError(f"data.source = {source!r}: the folder is empty")


def check_or_exit(path: str | Path = "params.yaml", data_source: bool = False) -> Config:
    """Validate params.yaml before a stage imports torch and MLflow (seconds), so that a typo fails
    in a fraction of a second: one ``error:`` line naming key, value and rule, exit status 2.
    ``data_source``: also check that ``data.source`` exists (prepare)."""
    try:
        cfg = load(path)
        if data_source:
            check_data_source(cfg)
        return cfg
    except ConfigError as err:
        import sys

        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
