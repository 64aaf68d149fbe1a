"""Params override files: a YAML file of the params.yaml keys it changes (nested, like params.yaml),
turned into DVC's ``-S key=value`` flags, so a preset or an experiment arm runs through the real
pipeline with ``dvc exp run``:

    dvc exp run $(python -m brainsynth.overrides presets/tiny.yaml)

The file is checked against the schema first (laid over params.yaml): a misspelt key fails here in
one line, not inside DVC.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from brainsynth.config import ConfigError, load, load_overrides, with_overrides


def read(path: str | Path, params: str | Path = "params.yaml") -> dict:
    """The file's overrides as flat ``{"train.epochs": 2, …}``, validated against ``params``."""
    flat = load_overrides(path, missing="override file not found")
    with_overrides(load(params), flat, source=str(path))
    return flat


def flags(overrides: dict) -> list[str]:
    """``-S key=value`` for each override, values as YAML reads them back (lists as ``[8]``)."""
    out = []
    for key, value in overrides.items():
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        out += ["-S", f"{key}={text}"]
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m brainsynth.overrides FILE.yaml [FILE.yaml …]", file=sys.stderr)
        return 2
    try:
        merged = {}
        for name in argv:
            merged.update(read(name))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(" ".join(flags(merged)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
