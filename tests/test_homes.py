"""A new lever and a new metric each have one home. A toy lever (a part with its nested params
section) and a toy metric (one catalogue row, one family function) reach MLflow, history.csv and
metrics/evaluate.json without touching the engine, the stages, the headline or the registry."""

from __future__ import annotations

import csv
import json
import math

import mlflow
import pytest
from helpers import TINY_PIPELINE, merged, write_params
from mlflow.tracking import MlflowClient
from pydantic import Field
from pydantic.fields import FieldInfo

from brainsynth import catalogue, config
from brainsynth.config.reads import _Section
from brainsynth.evaluation import families
from brainsynth.pipeline import evaluate, prepare, train, tune
from brainsynth.pipeline.stage import run_stage
from brainsynth.training import parts
from brainsynth.training.losses import Term

pytestmark = pytest.mark.slow


class ToyConfig(_Section):
    weight: float = Field(ge=0.0)


class ToyLossConfig(config.LossConfig):
    toy: ToyConfig  # the lever's nested section: loss.toy.weight


class ToyPart(parts.Part):
    """Brighter reconstructions (any differentiable scalar will do)."""

    name = "toy"
    generator_names = ("toy",)

    def __init__(self, settings):
        self.weight = settings.weight

    def generator_terms(self, step, progress):
        return [Term("toy", -step.recon.float().mean(), self.weight)]


def toy_part(cfg, context):
    return ToyPart(cfg.loss.toy) if cfg.loss.toy.weight > 0 else None


@pytest.fixture
def toy_schema():
    """LossConfig with the toy lever's section, as if the schema had the one new section."""
    original = config.Config.model_fields["loss"]
    config.Config.model_fields["loss"] = FieldInfo.from_annotation(ToyLossConfig)
    config.Config.model_rebuild(force=True)
    yield
    config.Config.model_fields["loss"] = original
    config.Config.model_rebuild(force=True)


def toy_metric(e: families.Evaluation) -> dict[str, float]:
    return {"toy_mean_grey": float(e.samples.mean())}


def test_a_new_lever_and_metric_reach_mlflow_and_the_metrics_files(tmp_path, monkeypatch, toy_schema):
    monkeypatch.setattr(parts, "BUILDERS", [*parts.BUILDERS, toy_part])
    monkeypatch.setattr(families, "FAMILIES", [*families.FAMILIES, ("toy", toy_metric)])
    monkeypatch.setattr(catalogue, "CATALOGUE", (*catalogue.CATALOGUE, catalogue.Metric("toy_mean_grey", "realism", "lower", lead=True)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    extra = merged(TINY_PIPELINE, {"mlflow": {"experiment": "homes", "registered_model": ""}, "loss": {"toy": {"weight": 0.5}},
                                   "train": {"device": "cpu"}, "tune": {"enabled": False}, "evaluate": {"utility_epochs": 0}})
    write_params(tmp_path / "params.yaml", extra)
    for name, body in (("prepare", prepare.run), ("tune", tune.run), ("train", train.run), ("evaluate", evaluate.run)):
        run_stage(name, body)

    with open(tmp_path / "models/train/history.csv") as handle:
        rows = list(csv.DictReader(handle))
    toy = [float(row["toy"]) for row in rows]
    assert len(toy) == TINY_PIPELINE["train"]["epochs"] and all(math.isfinite(v) for v in toy) and toy[0] != toy[-1]
    metrics = json.loads((tmp_path / "metrics/evaluate.json").read_text())
    assert "toy_mean_grey" in metrics["realism"]  # grouped by its catalogue row
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("homes")
    runs = {r.data.tags.get("stage"): r for r in client.search_runs([experiment.experiment_id])}
    assert [m.step for m in client.get_metric_history(runs["train"].info.run_id, "train_toy")] == [1, 2]
    assert runs["train"].data.params["loss.toy.weight"] == "0.5"
    assert runs["evaluate"].data.metrics["toy_mean_grey"] == pytest.approx(metrics["realism"]["toy_mean_grey"])
