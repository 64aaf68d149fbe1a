"""The trained generator as an MLflow pyfunc model: ``predict({"n": 8, "class": 1, "seed": 0})``
returns ``n`` uint8 images (n, S, S) of that class (index or name). ``n`` is capped (``max_images``:
10 000, or ``BRAINSYNTH_MAX_IMAGES``); every field is checked with an error naming the key; the
logged model carries a signature and an input example.

The package source travels with the model (``code_paths``), so ``mlflow.pyfunc.load_model`` works
in any environment with the listed requirements, without this repository or its stage scripts.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np

PYFUNC_NAME = "generator"
REQUEST_FORMAT = ("{'n': int 0..BRAINSYNTH_MAX_IMAGES (default 1), 'class': name or index (default 0), 'seed': int (default 0)}; "
                  "one request per call; unknown keys are refused")


DEFAULT_MAX_IMAGES = 10_000  # per request / per class: ~40 MB at 64², ~650 MB at 256²
MAX_SEED = 2**32 - 1  # the seed range params.yaml accepts


def max_images() -> int:
    """The cap on images per request (served model) and per class (``brainsynth-generate``):
    ``BRAINSYNTH_MAX_IMAGES`` in the environment, else 10 000. A request for 10⁷ images would
    otherwise take tens of GB before failing."""
    import os

    value = os.environ.get("BRAINSYNTH_MAX_IMAGES", "").strip()
    if not value:
        return DEFAULT_MAX_IMAGES
    if not value.isdigit() or int(value) == 0:
        raise ValueError(f"BRAINSYNTH_MAX_IMAGES={value!r} must be a positive whole number (unset it for {DEFAULT_MAX_IMAGES})")
    return int(value)


def _shown(value, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: a 50 MB value is not echoed back in the error."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _scalar(value):
    """A value as the REST server hands it over without an input schema: ``{"inputs": {"n": 2}}``
    arrives as a 0-d array; a one-element array is its element; anything else is left as it is."""
    if isinstance(value, np.ndarray) and value.size == 1:
        return value.reshape(()).item() if value.dtype.kind != "U" else str(value.reshape(()))
    return value


def _integer(key: str, value, low: int, high: int) -> int:
    """An exact integer in [low, high]; bools, fractions, strings and None are refused by name."""
    import numbers

    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and float(value).is_integer():
            value = int(value)  # 4.0 from a DataFrame column that also held a NaN
        else:
            raise ValueError(f"request key {key!r} must be an integer, got {_shown(value)}")
    value = int(value)
    if not low <= value <= high:
        raise ValueError(f"request key {key!r} = {value} is outside {low}..{high}")
    return value


REQUEST_KEYS = ("n", "class", "seed")


def parse_request(model_input: Any) -> dict:
    """A dict, a one-row pandas DataFrame or a list of one dict → {"n", "class", "seed"}, every
    field checked (one-line ValueError naming the key). ``n`` defaults to 1, ``class`` to 0,
    ``seed`` to 0; ``n`` may be 0 (an empty batch). Unknown keys, an empty request and anything
    that is not one request (a list of values, a string, an array) are refused."""
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):  # pandas DataFrame
        rows = model_input.to_dict(orient="records")
        if len(rows) > 1:
            raise ValueError(f"one request per call: got {len(rows)} rows (send them one at a time, or one row with a larger n)")
        if not rows:
            unknown = sorted(set(map(str, model_input.columns)) - set(REQUEST_KEYS))
            raise ValueError(f"unknown request keys {unknown}; expected n, class, seed" if unknown else
                             "empty request: expected {'n': int, 'class': int | str, 'seed': int}")
        model_input = {k: v for k, v in rows[0].items() if not (isinstance(v, float) and np.isnan(v))}
    if isinstance(model_input, list):
        if len(model_input) != 1 or not isinstance(model_input[0], dict):
            raise ValueError(f"expected one request {{'n': int, 'class': int | str, 'seed': int}}, got a list of {len(model_input)}")
        model_input = model_input[0]
    if not isinstance(model_input, dict):
        raise ValueError(f"expected one request {{'n': int, 'class': int | str, 'seed': int}}, got {type(model_input).__name__} "
                         f"{_shown(model_input)}")
    unknown = set(map(str, model_input)) - set(REQUEST_KEYS)
    if unknown:
        raise ValueError(f"unknown request keys {sorted(unknown)}; expected n, class, seed")
    if not model_input:
        raise ValueError("empty request: expected {'n': int, 'class': int | str, 'seed': int} (n defaults to 1, class and seed to 0)")
    model_input = {k: _scalar(v) for k, v in model_input.items()}
    label = model_input.get("class", 0)
    if not isinstance(label, str):
        label = _integer("class", label, 0, 10**6)
    return {"n": _integer("n", model_input.get("n", 1), 0, max_images()), "class": label,
            "seed": _integer("seed", model_input.get("seed", 0), 0, MAX_SEED)}


# MLflow warns (in raw ANSI colours, at class definition) that ``predict`` lacks type hints. The
# hints it wants (``list[dict[str, Any]]``) would make MLflow refuse the plain-dict request this
# model documents in its signature, so the warning is dropped here, where it cannot be acted on.
# A filter would not do: MLflow resets the filters around the check (``simplefilter("once")``).
def _drop_type_hint_advice(message, *args, _show=warnings.showwarning, **kwargs):
    if "type hints to the `predict` method" not in str(message):
        _show(message, *args, **kwargs)


with warnings.catch_warnings():
    warnings.showwarning = _drop_type_hint_advice

    class GeneratorModel(mlflow.pyfunc.PythonModel):
        def load_context(self, context) -> None:
            import torch

            from brainsynth.inference import SynthModel

            device = "cuda" if torch.cuda.is_available() else "cpu"
            self.model = SynthModel.load(context.artifacts["model"], device)

        def predict(self, context, model_input, params=None) -> np.ndarray:
            from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

            try:
                request = parse_request(model_input)
                label = class_index(request["class"], self.model.class_names)
            except (ValueError, TypeError) as err:
                # MLflow's own type: the REST server answers 400 with this line as the "message"
                # (any other exception is a 500 whose message hides in a stack trace).
                raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None
            return self.model.sample(np.full(request["n"], label), request["seed"])


def class_index(value, class_names: list[str]) -> int:
    """A class given by index or name → its index; one-line error naming the choices otherwise."""
    if isinstance(value, str) and value in class_names:
        return class_names.index(value)
    try:
        index = int(value)
    except (TypeError, ValueError):
        index = -1
    if not 0 <= index < max(1, len(class_names)):
        raise ValueError(f"class {value!r} is not one of {class_names} (or an index 0–{len(class_names) - 1})")
    return index


def log_generator(model_file: Path, registered_name: str = "", description: str = "", tags: dict[str, str] | None = None) -> str:
    """Log ``model_file`` as a pyfunc under the active run (and register it when a name is given:
    the new version gets ``description``, ``tags`` and the alias ``candidate``, see
    ``brainsynth.registry``). Returns the model URI."""
    import torch

    package = Path(__file__).resolve().parent
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}", f"mlflow=={mlflow.__version__}",
                    "pydantic>=2.6", "pyyaml>=6.0"]
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    from brainsynth.checkpoint import load_model_file

    size = load_model_file(model_file).image_size
    # Outputs only: a column input schema makes MLflow drop unknown columns *before* predict sees
    # them, so a misspelt key ("clas") silently gave class 0. parse_request checks every
    # field instead; the request format travels as the model's metadata and input example.
    signature = ModelSignature(inputs=None, outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, size, size))]))
    # MLflow logs a CloudPickle caution for every python_model object; the object here is a
    # stateless class from this package (code_paths), so the caution is noise to the user.
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    pyfunc_log.setLevel(logging.ERROR)
    try:
        info = _log_model(model_file, signature, requirements, package, registered_name)
    finally:
        pyfunc_log.setLevel(level)
    if registered_name and info.registered_model_version:
        from brainsynth.registry import describe_candidate

        describe_candidate(registered_name, str(info.registered_model_version), description, tags or {})
    return info.model_uri


def _log_model(model_file: Path, signature, requirements: list[str], package: Path, registered_name: str):
    return mlflow.pyfunc.log_model(
        name=PYFUNC_NAME,
        python_model=GeneratorModel(),
        artifacts={"model": str(model_file)},
        signature=signature,
        input_example={"n": 4, "class": 0, "seed": 0},
        metadata={"request": REQUEST_FORMAT},
        code_paths=[str(package)],
        pip_requirements=requirements,
        registered_model_name=registered_name or None,
    )
