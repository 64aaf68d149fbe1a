"""The search space of tuning: how a trial's values are drawn, encoded for Optuna, decoded back
into config values, and laid over params.yaml to make the trial's config."""

from __future__ import annotations

import json
import logging

import optuna

from brainsynth.config import Config, SearchDimension, with_overrides

log = logging.getLogger("brainsynth.tune")


def _scalar_choices(dim: SearchDimension) -> bool:
    return all(c is None or isinstance(c, (bool, int, float, str)) for c in dim.choices)


def encode_choice(dim: SearchDimension, value):
    """A categorical value as Optuna stores it: scalars as they are, lists (e.g. attention
    resolutions) as JSON text, since Optuna's categorical values must be scalars."""
    return value if _scalar_choices(dim) else json.dumps(value)


def decode_choice(dim: SearchDimension, value):
    """The inverse of ``encode_choice``."""
    return value if _scalar_choices(dim) else json.loads(value)


def suggest(trial: optuna.Trial, name: str, dim: SearchDimension):
    """The trial's value for one dimension, as a config value."""
    if dim.type == "categorical":
        return decode_choice(dim, trial.suggest_categorical(name, [encode_choice(dim, c) for c in dim.choices]))
    if dim.type == "int":
        return trial.suggest_int(name, int(dim.low), int(dim.high), log=dim.log)
    return trial.suggest_float(name, dim.low, dim.high, log=dim.log)


def baseline_params(cfg: Config, space: dict[str, SearchDimension]) -> dict:
    """params.yaml's own values for the searched dimensions (those inside the space), in Optuna's
    encoding: the first trial of a new study, so tuning only departs from the committed params
    when a trial beats them."""
    current = cfg.flat()
    baseline = {}
    for name, dim in space.items():
        value = current.get(name)
        if dim.type == "categorical":
            if value in dim.choices:
                baseline[name] = encode_choice(dim, value)
        elif isinstance(value, (int, float)) and dim.low <= value <= dim.high:
            baseline[name] = int(value) if dim.type == "int" else float(value)
    return baseline


def search_space(cfg: Config, quiet: bool = False) -> dict[str, SearchDimension]:
    """The dimensions to search. ``loss.adv_weight: 0`` asks for a plain VAE, so the adversarial
    weight is not searched then (a tuned value would silently turn the GAN back on)."""
    space = dict(cfg.tune.search_space)
    if cfg.loss.adv_weight == 0 and space.pop("loss.adv_weight", None) is not None and not quiet:
        log.info("loss.adv_weight = 0 (plain VAE): not searching loss.adv_weight")
    return space


def trial_config(cfg: Config, overrides: dict) -> Config:
    """The config of one trial: the suggested values and ``tune.epochs`` epochs (the schedules —
    KL warm-up, the critic's start — keep their values in epochs)."""
    return with_overrides(cfg, {**overrides, "train.epochs": cfg.tune.epochs})


def decoded_params(params: dict, cfg: Config) -> dict:
    """A trial's params (Optuna's encoding) as config values."""
    out = {}
    for key, value in params.items():
        dim = cfg.tune.search_space.get(key)
        out[key] = decode_choice(dim, value) if dim is not None and dim.type == "categorical" else value
    return out
