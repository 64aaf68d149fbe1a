"""Read recording: which params a stage actually reads from its validated config.

``record_reads()`` starts recording; every later attribute read of a leaf value on a section
read from params.yaml adds its key path (``train.epochs``) to the live set. The test suite uses it
to check that every param a stage reads is declared under that stage's ``params:`` in dvc.yaml, so
DVC reruns exactly what a change affects. ``_Section`` is the base of every schema section.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationInfo, field_validator

_reads: set[str] | None = None  # key paths read while recording (record_reads)


_DECIMAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class _Section(BaseModel):
    # strict: YAML's `true` is not an epoch count and "yes" is not a boolean (lax coercion would
    # run 1 epoch, or flip a switch, without a word); floats still accept ints.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    # "train." for the train section, "" for the whole config; set by validate(). None: a section
    # not read from params.yaml (e.g. the model settings stored in a model file), never recorded.
    _path: str | None = PrivateAttr(default=None)

    @field_validator("*", mode="before")
    @classmethod
    def _scientific_notation(cls, value: Any, info: ValidationInfo) -> Any:
        """``5e-4`` written by hand is a string to YAML 1.1 (it wants ``5.0e-4``); on a float field a
        string that is a plain decimal number is that number. Other strings stay refused."""
        if isinstance(value, str) and cls.model_fields[info.field_name].annotation is float and _DECIMAL.fullmatch(value.strip()):
            return float(value)
        return value

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


