"""Files that hold tensors: training checkpoints and the final model file, written atomically and
loaded with ``weights_only=True`` (no arbitrary unpickling)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from brainsynth.config import ModelConfig
from brainsynth.errors import CheckpointError


def save_atomic(payload: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file beside ``path`` and rename it into place, so a kill never leaves
    a half-written checkpoint where the last good one was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_safe(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint allowing only tensors and plain containers/values.

    A file that needs arbitrary classes to unpickle (a potential code-execution vector) is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError or EOFError depending on the damage
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: refused or unreadable checkpoint ({reason})") from None


# --- the final model file ------------------------------------------------------------------------
# It holds only what sampling needs, so that it outlives the pipeline config that trained it:
# format version, the model section of the config, image size, class names and the EMA
# encoder/decoder weights. v1 files (the whole pipeline config embedded) still load.

MODEL_FORMAT = "brainsynth-model-v2"
_V1_FORMAT = "brainsynth-model-v1"
# ModelConfig keys added after a format was written, with the value that reproduces the old
# architecture; a file lacking one gets it from here.
MODEL_KEYS_ADDED_LATER: dict[str, object] = {}


@dataclass(frozen=True)
class ModelFile:
    model: ModelConfig
    image_size: int
    n_classes: int
    class_names: list[str]
    encoder: dict[str, torch.Tensor]
    decoder: dict[str, torch.Tensor]


def save_model_file(path: str | Path, model: ModelConfig, image_size: int, n_classes: int, class_names: list[str],
                    encoder: torch.nn.Module, decoder: torch.nn.Module) -> None:
    save_atomic(
        {
            "format": MODEL_FORMAT,
            "model": model.model_dump(mode="json"),
            "image_size": int(image_size),
            "n_classes": int(n_classes),
            "class_names": list(class_names),
            "encoder": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
            "decoder": {k: v.detach().cpu() for k, v in decoder.state_dict().items()},
        },
        path,
    )


def load_model_file(path: str | Path) -> ModelFile:
    """Read a model file of any format version (weights on the CPU)."""
    payload = load_safe(path, map_location="cpu")
    version = payload.get("format") if isinstance(payload, dict) else None
    if version == MODEL_FORMAT:
        stored = payload["model"]
    elif version == _V1_FORMAT:
        stored = payload["config"]["model"]
    else:
        raise CheckpointError(f"{path}: not a brainsynth model file (format {version!r})")
    stored = {**MODEL_KEYS_ADDED_LATER, **stored}
    try:
        model = ModelConfig.model_validate(stored)
    except ValidationError as err:
        first = err.errors()[0]
        raise CheckpointError(f"{path}: model settings not understood by this version ({'.'.join(map(str, first['loc']))}: "
                              f"{first['msg']})") from None
    return ModelFile(model, int(payload["image_size"]), int(payload["n_classes"]), list(payload["class_names"]),
                     payload["encoder"], payload["decoder"])
