"""Files that hold tensors: training checkpoints and the final model file, written atomically and
loaded with ``weights_only=True`` (no arbitrary unpickling)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from brainsynth.config import ModelConfig
from brainsynth.errors import CheckpointError
from brainsynth.files import atomic_file


def save_atomic(payload: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` through ``files.atomic_file``: never a half-written checkpoint."""
    with atomic_file(Path(path)) as handle:
        torch.save(payload, handle)


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
        raise CheckpointError(f"{path}: {_refusal_reason(err)}") from None


def _refusal_reason(err: Exception) -> str:
    """One line for a file torch.load(weights_only=True) would not load. PyTorch's own message
    advises ``weights_only=False``, which is exactly what must not be done with an untrusted file,
    so it is not passed on."""
    text = str(err)
    if "Weights only load failed" in text or "Unsupported global" in text or "Unsupported operand" in text:
        return "not a plain-tensor checkpoint (it needs arbitrary Python objects to load; refused for safety)"
    return "not a checkpoint file (unreadable, truncated or another format)"


# --- training checkpoints ------------------------------------------------------------------------


def save_training_state(trainer, path: str | Path, extra: dict | None = None) -> None:
    """A resumable checkpoint of an ``engine.Trainer`` (model, EMA, optimisers, counters, RNG) plus
    ``extra`` (the stage's own bookkeeping), written atomically."""
    save_atomic({**trainer.state_dict(), **(extra or {})}, path)


def restore_training_state(trainer, path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by ``save_training_state`` into ``trainer``; returns the whole
    payload (with the ``extra`` entries). Loaded to the CPU: RNG states must stay CPU tensors, and
    ``load_state_dict`` moves weights and optimiser state to the parameters' device anyway."""
    state = load_safe(path, map_location="cpu")
    trainer.load_state_dict(state)
    return state


# --- the final model file ------------------------------------------------------------------------
# It holds only what sampling needs, so that it outlives the pipeline config that trained it:
# format version, the model section of the config, image size, class names and the EMA
# encoder/decoder weights. v1 files (the whole pipeline config embedded) still load.

MODEL_FORMAT = "brainsynth-model-v2"
_V1_FORMAT = "brainsynth-model-v1"
# ModelConfig keys added after a format was written, with the value that reproduces the old
# architecture; a file lacking one gets it from here.
MODEL_KEYS_ADDED_LATER: dict[str, object] = {"class_embed_dim": 32, "spatial_latent_channels": 0, "spatial_latent_factor": 4}
# Keys of options measured and removed since, with the values under which they built nothing
# (None: any value; the auxiliary classifier never entered the model file). A file written with
# another value holds an architecture this version cannot build, and says so in one line.
MODEL_KEYS_REMOVED: dict[str, object] = {"class_norm": False, "spatial_prior": "standard", "classifier_width": None}


@dataclass(frozen=True)
class ModelFile:
    model: ModelConfig
    image_size: int
    n_classes: int
    class_names: list[str]
    encoder: dict[str, torch.Tensor]
    decoder: dict[str, torch.Tensor]
    pixel_mm: float | None = None  # in-plane mm per pixel of the training data; None when unknown (2-D images)


def save_model_file(path: str | Path, model: ModelConfig, image_size: int, n_classes: int, class_names: list[str],
                    encoder: torch.nn.Module, decoder: torch.nn.Module, pixel_mm: float | None = None) -> None:
    save_atomic(
        {
            "format": MODEL_FORMAT,
            "model": model.model_dump(mode="json"),
            "image_size": int(image_size),
            "pixel_mm": None if pixel_mm is None else float(pixel_mm),
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
    for key, inert in MODEL_KEYS_REMOVED.items():
        if key in stored and inert is not None and stored[key] != inert:
            raise CheckpointError(f"{path}: written with model.{key} = {stored[key]!r}, an option this version no longer has "
                                  f"({version}; retrain, or load it with the version that wrote it)")
        stored.pop(key, None)
    try:
        model = ModelConfig.model_validate(stored)
    except ValidationError as err:
        first = err.errors()[0]
        raise CheckpointError(f"{path}: model settings not understood by this version ({'.'.join(map(str, first['loc']))}: "
                              f"{first['msg']})") from None
    pixel_mm = payload.get("pixel_mm")  # absent from files written before it was recorded
    return ModelFile(model, int(payload["image_size"]), int(payload["n_classes"]), list(payload["class_names"]),
                     payload["encoder"], payload["decoder"], None if pixel_mm is None else float(pixel_mm))
