"""Configs for tests, built from the repository's params.yaml (the one source of every value)."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from brainsynth.config import Config, DataConfig, load

REPO = Path(__file__).resolve().parents[1]


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def merged(base: dict, extra: dict) -> dict:
    """``base`` with the nested mapping ``extra`` laid over it (a new dict)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "search_space":
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def write_params(path: Path, extra: dict) -> None:
    """params.yaml at ``path``: the repository's, with ``extra`` (nested) laid over it."""
    path.write_text(yaml.safe_dump(merged(repo_params(), extra), sort_keys=False))


def repo_config(overrides: dict | None = None) -> Config:
    """The repository's params.yaml with dotted-key overrides."""
    return load(REPO / "params.yaml").with_overrides(overrides or {})


def data_config(root, **overrides) -> DataConfig:
    """The data section for a folder; keyword names are data.* keys (``volume__slice_axis`` for nested)."""
    dotted = {f"data.{k.replace('__', '.')}": v for k, v in {"source": str(root), "image_size": 16, "workers": 1, **overrides}.items()}
    return repo_config(dotted).data
