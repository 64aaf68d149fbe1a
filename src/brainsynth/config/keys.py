"""Key paths of params.yaml (``train.epochs``): listing a schema's leaves, flattening a nested
dict, setting one dotted key, and "did you mean" for a misspelt one."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel

from brainsynth.errors import ConfigError


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


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
    node[leaf] = value


def did_you_mean(key: str, candidates: set[str] | list[str]) -> str:
    match = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""
