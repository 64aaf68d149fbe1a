"""Loading params.yaml: validation with one-line errors that name the key path, the offending value
and what is allowed, overrides (``with_overrides``; tune's best_params.yaml), the checks across
sections that need the key paths (the tuning search space), and the stages' pre-check
(``check_or_exit``), which fails a typo in well under a second, before any data is touched."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from brainsynth.config import reads
from brainsynth.config.keys import did_you_mean, flat_keys, flatten, set_dotted
from brainsynth.config.reads import _assign_paths
from brainsynth.config.schema import Config
from brainsynth.errors import ConfigError


def mask_password(url: str) -> str:
    """``scheme://user:secret@host/db`` → ``scheme://user:***@host/db``; anything else unchanged."""
    import re

    return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)


def _first_error_line(err: ValidationError, raw: dict[str, Any], source: str) -> str:
    first = err.errors()[0]
    loc = [str(part) for part in first["loc"]]
    path = ".".join(loc)
    if first["type"] == "extra_forbidden":
        parent_keys = [".".join(loc[:-1] + [k]) for k in _section_keys(loc[:-1])]
        hint = did_you_mean(path, parent_keys)
        return f"{source}: unknown key {path!r}{hint}"
    if first["type"] == "missing":
        return f"{source}: missing key {path!r} (params.yaml sets every parameter; see the README's table)"
    value = first.get("input")
    if isinstance(value, str):
        value = mask_password(value)
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
    recording, reads._reads = reads._reads, None  # the validators' own checks are not reads by a stage
    try:
        cfg = Config.model_validate(copy.deepcopy(raw))
        problem = search_space_problem(cfg)
    except ValidationError as err:
        raise ConfigError(_first_error_line(err, raw, source)) from None
    finally:
        reads._reads = recording
    if problem:
        raise ConfigError(f"{source}: {problem}")
    _assign_paths(cfg)
    return cfg


def with_overrides(cfg: Config, overrides: dict[str, Any], source: str = "overrides") -> Config:
    """A new validated config with dotted-key overrides (``{"train.epochs": 2}``) laid over ``cfg``;
    errors name ``source``."""
    raw = cfg.model_dump(mode="json")
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    return validate(raw, source=source)


def search_space_problem(cfg: Config) -> str | None:
    """Why ``tune.search_space`` is unusable — it names an unknown key, or a value a trial can draw
    that the key does not accept (the trial would fail later inside Optuna with a traceback instead
    of here with one line) — or None."""
    known = set(flat_keys(Config))
    for key, dim in cfg.tune.search_space.items():
        if key not in known:
            return f"tune.search_space names unknown parameter {key!r}{did_you_mean(key, known)}"
        values = dim.choices if dim.type == "categorical" else [dim.low, dim.high]
        for name, value in zip(["choice"] * len(values) if dim.type == "categorical" else ["low", "high"], values):
            value = int(value) if dim.type == "int" else value
            problem = _value_problem(cfg, key, value)
            if problem:
                return f"tune.search_space.{key}: {name} {value!r} is not a valid {key} ({problem})"
    return None


def _value_problem(cfg: Config, key: str, value: Any) -> str | None:
    """Why ``value`` is not accepted for the dotted ``key`` (validated within its top-level section,
    with the rest of that section as configured), or None."""
    from typing import Annotated

    section_name, _, rest = key.partition(".")
    section = getattr(cfg, section_name)
    try:
        if isinstance(section, BaseModel):
            raw = section.model_dump(mode="json")
            set_dotted(raw, rest, value)
            type(section).model_validate(raw)
        else:  # a top-level scalar such as seed
            field = type(cfg).model_fields[key]
            TypeAdapter(Annotated.__class_getitem__((field.annotation, *field.metadata))).validate_python(value)
    except ValidationError as err:
        return err.errors()[0]["msg"].removeprefix("Value error, ")
    return None


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


def load_overrides(path: str | Path, missing: str = "missing (run the tune stage first: dvc repro tune)") -> dict[str, Any]:
    """A params file of overrides (tune's ``best_params.yaml``, a preset, an experiment arm) as flat
    ``{"optim.lr": …}``; the values are validated when laid over the config (``with_overrides``).
    ``missing``: what the error says when the file is not there."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {missing}")
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
