"""#22: a loss term and a metric each have one home. A toy term registered in brainsynth.losses
(with its weight in the loss schema and params.yaml) and a toy metric (one catalogue row, one
family function) reach MLflow, history.csv and metrics/evaluate.json without touching the engine,
the stages, the headline or the registry."""

from __future__ import annotations

import csv
import json

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from pydantic import Field
from pydantic.fields import FieldInfo

from brainsynth import config, losses
from brainsynth.evaluation import catalogue, families
from brainsynth.pipeline import evaluate, prepare, train, tune
from brainsynth.pipeline.stage import run_stage
from helpers import TINY_PIPELINE, merged, write_params


class ToyLossConfig(config.LossConfig):
    toy_weight: float = Field(ge=0.0)  # the schema entry of the new term's weight


@pytest.fixture
def toy_schema():
    """LossConfig with the toy term's weight, as if config.py had the one new line."""
    original = config.Config.model_fields["loss"]
    config.Config.model_fields["loss"] = FieldInfo.from_annotation(ToyLossConfig)
    config.Config.model_rebuild(force=True)
    yield
    config.Config.model_fields["loss"] = original
    config.Config.model_rebuild(force=True)


def toy_term(f: losses.GeneratorForward, cfg) -> torch.Tensor:
    """Mean brightness of the reconstructions (any differentiable scalar will do)."""
    return f.recon.float().mean()


def toy_metric(e: families.Evaluation) -> dict[str, float]:
    return {"toy_mean_grey": float(e.samples.mean())}


def test_a_new_loss_term_and_metric_reach_mlflow_and_the_metrics_files(tmp_path, monkeypatch, toy_schema):
    monkeypatch.setattr(losses, "TERMS", [*losses.TERMS, losses.Term("toy", "generator", toy_term, weight="toy_weight")])
    monkeypatch.setattr(families, "FAMILIES", [*families.FAMILIES, ("toy", toy_metric)])
    monkeypatch.setattr(catalogue, "CATALOGUE", (*catalogue.CATALOGUE, catalogue.Metric("toy_mean_grey", "realism", "lower", lead=True)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    extra = merged(TINY_PIPELINE, {"mlflow": {"experiment": "homes", "registered_model": ""}, "loss": {"toy_weight": 0.5},
                                   "train": {"device": "cpu"}, "tune": {"enabled": False}, "evaluate": {"utility_epochs": 0}})
    write_params(tmp_path / "params.yaml", extra)
    for name, body in (("prepare", prepare.run), ("tune", tune.run), ("train", train.run), ("evaluate", evaluate.run)):
        run_stage(name, body)

    with open(tmp_path / "models/train/history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert all(float(row["toy"]) > -1 for row in rows) and len(rows) == TINY_PIPELINE["train"]["epochs"]
    metrics = json.loads((tmp_path / "metrics/evaluate.json").read_text())
    assert "toy_mean_grey" in metrics["realism"]  # grouped by its catalogue row
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("homes")
    runs = {r.data.tags.get("stage"): r for r in client.search_runs([experiment.experiment_id])}
    assert "train_toy" in runs["train"].data.metrics
    assert [m.step for m in client.get_metric_history(runs["train"].info.run_id, "train_toy")] == [1, 2]
    assert runs["evaluate"].data.metrics["toy_mean_grey"] == pytest.approx(metrics["realism"]["toy_mean_grey"])
