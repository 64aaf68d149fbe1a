"""The trained generator as an MLflow pyfunc model: ``predict({"n": 8, "class": 1, "seed": 0})``
returns ``n`` uint8 images (n, S, S) of that class (index or name).

The package source travels with the model (``code_paths``), so ``mlflow.pyfunc.load_model`` works
in any environment with the listed requirements, without this repository or its stage scripts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np

PYFUNC_NAME = "generator"


def parse_request(model_input: Any) -> dict:
    """A dict, a one-row pandas DataFrame or a list of one dict → {"n", "class", "seed"}."""
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):  # pandas DataFrame
        rows = model_input.to_dict(orient="records")
        model_input = rows[0] if rows else {}
    if isinstance(model_input, list) and model_input and isinstance(model_input[0], dict):
        model_input = model_input[0]
    if not isinstance(model_input, dict):
        raise ValueError(f"expected {{'n': int, 'class': int | str, 'seed': int}}, got {type(model_input).__name__}")
    unknown = set(model_input) - {"n", "class", "seed"}
    if unknown:
        raise ValueError(f"unknown request keys {sorted(unknown)}; expected n, class, seed")
    return {"n": int(model_input.get("n", 1)), "class": model_input.get("class", 0), "seed": int(model_input.get("seed", 0))}


class GeneratorModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        import torch

        from brainsynth.inference import SynthModel

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = SynthModel.load(context.artifacts["model"], device)

    def predict(self, context, model_input, params=None) -> np.ndarray:
        request = parse_request(model_input)
        label = class_index(request["class"], self.model.class_names)
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


def log_generator(model_file: Path, registered_name: str = "") -> str:
    """Log ``model_file`` as a pyfunc under the active run (and register it when a name is given).
    Returns the model URI."""
    import torch

    package = Path(__file__).resolve().parent
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}", f"mlflow=={mlflow.__version__}",
                    "pydantic>=2.6", "pyyaml>=6.0"]
    info = mlflow.pyfunc.log_model(
        name=PYFUNC_NAME,
        python_model=GeneratorModel(),
        artifacts={"model": str(model_file)},
        code_paths=[str(package)],
        pip_requirements=requirements,
        registered_model_name=registered_name or None,
    )
    return info.model_uri
