"""What a stored result depends on, in one place: the params and the code that decide whether a
tuning study, a resume checkpoint or evaluate's utility classifiers can be reused, and the one
fingerprint over them.

The code a stage runs is read from its ``deps`` in dvc.yaml (``stage_code``), the list DVC itself
reruns the stage for and that tests/test_dvc_declarations.py checks against the stage's imports, so
no second list of modules is kept here. No torch, no MLflow: any stage may import it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from brainsynth.files import digest

DVC_FILE = Path("dvc.yaml")

# Params that do not change what a training computes, epoch for epoch: a resume checkpoint written
# under other values of these still continues (more epochs, other logging, another evaluation).
NOT_TRAINING_INPUTS = ("train.epochs", "train.log_every", "train.sample_every", "train.keep", "mlflow.", "evaluate.", "tune.", "generate.")
# Params that do not shape what tuning finds: how many trials/workers/where, and what happens after.
NOT_TUNING_INPUTS = ("tune.n_trials", "tune.n_workers", "tune.storage", "tune.heartbeat_seconds", "tune.min_improvement", "mlflow.", "evaluate.",
                     "generate.", "train.epochs", "train.sample_every", "train.log_every", "train.n_sample_images", "train.keep", "train.nproc_per_node")
# The one evaluate section training reads: the grade-consistency ensemble is trained with its recipe.
TRAINING_READS_FROM_EVALUATE = "evaluate.classifier."
# What evaluate's downstream classifiers depend on besides the model file and the data.
UTILITY_INPUTS = ("seed", "train.bf16", "evaluate.n_images", "evaluate.utility_epochs", "evaluate.utility_images", "evaluate.utility_seeds",
                  "evaluate.synthetic_per_real", "evaluate.pretrain", "evaluate.classifier.", "evaluate.judge.",
                  "evaluate.filter.")


def fingerprint(length: int, **parts: Any) -> str:
    """sha256 (``length`` hex digits) of the JSON of ``parts`` (params, data and code digests, ...)."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def stage_code(stage: str, dvc_file: Path = DVC_FILE) -> list[Path]:
    """The Python files dvc.yaml lists among ``stage``'s deps, package folders expanded ([] where
    there is no such stage, e.g. a stage run by hand outside a DVC project)."""
    dvc_file = Path(dvc_file)
    stages = (yaml.safe_load(dvc_file.read_text()) or {}).get("stages") or {} if dvc_file.is_file() else {}
    files = []
    for dep in (stages.get(stage) or {}).get("deps", []):
        path = dvc_file.parent / dep
        if str(dep).endswith(".py"):
            files.append(path)
        elif str(dep).startswith("src/") and path.is_dir():  # a package folder (src/brainsynth/config)
            files += sorted(path.rglob("*.py"))
    return files


def code_digest(stage: str) -> str:
    return digest(*stage_code(stage))


def _without(flat: dict[str, Any], ignored: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in flat.items() if not k.startswith(ignored)}


def training_inputs(cfg) -> dict[str, Any]:
    """The params a resume checkpoint must have been written under (flat)."""
    flat = cfg.flat()
    return {**_without(flat, NOT_TRAINING_INPUTS), **{k: v for k, v in flat.items() if k.startswith(TRAINING_READS_FROM_EVALUATE)}}


def tuning_inputs(cfg) -> dict[str, Any]:
    """The params tuning results depend on (flat), as the tune stage saw them: what train compares
    before laying tuned values over a params.yaml that may have changed since."""
    flat = cfg.flat()  # not recorded as reads: comparing params is not using them
    return {**_without(flat, NOT_TUNING_INPUTS), **{k: v for k, v in flat.items() if k.startswith(TRAINING_READS_FROM_EVALUATE)}}


def utility_inputs(cfg) -> dict[str, Any]:
    """The params evaluate's downstream classifiers depend on (flat)."""
    return {k: v for k, v in cfg.flat().items() if k.startswith(UTILITY_INPUTS)}
