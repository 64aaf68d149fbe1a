"""MLflow bookkeeping shared by every stage.

The store is MLflow 3's own default layout anchored at the repository root — runs in SQLite
``mlflow.db``, artifacts under ``mlruns/`` — so a bare ``mlflow ui`` typed in the repo root shows
everything. ``MLFLOW_TRACKING_URI`` overrides it. Under ``dvc exp run --queue``/``--temp`` the stage
runs in a temporary copy that DVC deletes afterwards; DVC then sets ``DVC_ROOT`` to the parent
repository, and the store is anchored there instead.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from brainsynth.config import Config
from brainsynth.files import digest


_experiment_id: str | None = None  # set by setup()


def repo_root() -> Path:
    """Where the store lives: ``DVC_ROOT`` when DVC set it, else the nearest folder up from the
    working directory that holds ``dvc.yaml``, else the working directory."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return here


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def setup(cfg: Config) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns its id."""
    mlflow.set_tracking_uri(tracking_uri())
    client = MlflowClient()
    name = cfg.mlflow.experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        artifact_location = None
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            artifact_location = (repo_root() / "mlruns").as_uri()
        try:
            experiment_id = client.create_experiment(name, artifact_location=artifact_location)
        except mlflow.exceptions.MlflowException:
            # Another process created it between our lookup and create.
            experiment_id = client.get_experiment_by_name(name).experiment_id
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    global _experiment_id
    _experiment_id = experiment_id
    return experiment_id


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def stage_tags(stage: str, upstream: dict[str, str] | None = None) -> dict[str, str]:
    """Tags every stage run carries: stage, git commit, DVC experiment, upstream lineage."""
    tags = {"stage": stage, "pipeline": "brainsynth"}
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    for key, value in (upstream or {}).items():
        if value:
            tags[key] = value
    return tags


def run_name(stage: str) -> str:
    exp = os.environ.get("DVC_EXP_NAME")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{stage}-{exp}-{stamp}" if exp else f"{stage}-{stamp}"


def log_params_flat(params: dict) -> None:
    """Log params with their params.yaml paths; values longer than MLflow's limit are cut."""
    mlflow.log_params({k: (str(v)[:5000] if v is not None else "null") for k, v in params.items()})


# --- lineage without run ids in DVC outputs ------------------------------------------------------
# A stage tags its run with the digest of what it wrote; the next stage finds that run from the
# digest of what it reads. Outputs then stay byte-identical for identical results, which is what
# lets DVC skip the stages downstream of an unchanged output.

OUTPUT_DIGEST_TAG = "output_digest"


def tag_outputs(*paths: Path) -> str:
    """Tag the active run with the digest of the outputs it wrote; returns the digest."""
    value = digest(*paths)
    mlflow.set_tag(OUTPUT_DIGEST_TAG, value)
    return value


def find_producer(stage: str, output_digest: str) -> str:
    """Id of the latest finished ``stage`` run in the active experiment whose outputs had this
    digest; "" when there is none (e.g. outputs restored by ``dvc checkout`` into a new store)."""
    if not output_digest:
        return ""
    if _experiment_id is None:
        return ""
    runs = MlflowClient().search_runs(
        [_experiment_id],
        filter_string=f"tags.stage = '{stage}' and tags.{OUTPUT_DIGEST_TAG} = '{output_digest}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else ""
