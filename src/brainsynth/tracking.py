"""MLflow bookkeeping shared by every stage.

The store is MLflow 3's own default layout anchored at the repository root — runs in SQLite
``mlflow.db``, artifacts under ``mlruns/`` — so a bare ``mlflow ui`` typed in the repo root shows
everything. ``MLFLOW_TRACKING_URI`` overrides it. Under ``dvc exp run --queue``/``--temp`` the stage
runs in a temporary copy that DVC deletes afterwards; DVC then sets ``DVC_ROOT`` to the parent
repository, and the store is anchored there instead.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import mlflow
import yaml
from mlflow.tracking import MlflowClient

from brainsynth.config import Config
from brainsynth.errors import StageError
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
    # Download bars (one per artifact fetched while registering a model) flood the stage logs.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    name = cfg.mlflow.experiment
    try:
        client = MlflowClient()
        experiment = client.get_experiment_by_name(name)
    except Exception as err:  # sqlalchemy/sqlite errors of a damaged file, an unreachable server
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        if uri.startswith("sqlite:///"):
            path = uri.removeprefix("sqlite:///")
            raise StageError(f"{path}: not a usable MLflow store ({first}); move it aside (mv {path} {path}.damaged) to start a new "
                             "one, or restore it from a backup") from None
        raise StageError(f"MLflow store {uri}: unusable ({first})") from None
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


STAGE_DESCRIPTIONS = {
    "prepare": "Ingests `data.source` into `data/prepared` (subject-wise train/val/test split).",
    "tune": "Optuna study over `tune.search_space`; one nested run per trial.",
    "train": "Final training with the tuned values laid over params.yaml; registers the kept model.",
    "evaluate": "Realism, anatomy, diversity, memorisation and downstream utility of the trained model on the test split.",
    "generate": "Exports synthetic slices from the trained model.",
}

PROCESS_TAG = "process"  # host:pid of the stage process (orphan detection)
PIPELINE_RUN_TAG = "pipeline_run"


def process_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def describe(stage: str, upstream: dict[str, str] | None = None, body: str = "") -> str:
    """A run's markdown description: what the stage does, its own headline (``body``), and a
    link to the upstream run (relative: the MLflow UI resolves it in the same experiment; without
    ``workflowType`` MLflow 3 opens a run in its GenAI view, which hides datasets and models)."""
    parts = [STAGE_DESCRIPTIONS.get(stage, stage)]
    if body:
        parts.append(body)
    upstream_id = (upstream or {}).get("upstream_run_id")
    if upstream_id and _experiment_id:
        parts.append(f"Upstream: [{upstream.get('upstream_stage', 'run')} run {upstream_id[:8]}]"
                     f"(#/experiments/{_experiment_id}/runs/{upstream_id}?workflowType=machine_learning)")
    return "\n\n".join(parts)


def pipeline_run(upstream: dict[str, str] | None) -> str:
    """The ``pipeline_run`` tag: inherited from the upstream run, so every run made from one
    prepare run (one pipeline execution and the reruns downstream of it) shares a value the UI's
    "Group by" gathers; "" for a run without upstream (prepare: its own id, set once started)."""
    upstream_id = (upstream or {}).get("upstream_run_id")
    if not upstream_id:
        return ""
    try:
        return MlflowClient().get_run(upstream_id).data.tags.get(PIPELINE_RUN_TAG, "") or upstream_id
    except Exception:
        return upstream_id


def mark_killed(run_id: str, reason: str, tags: dict[str, str] | None = None, only_if_running: bool = False) -> bool:
    """Close a run that will never finish (its process died, its checkpoint was discarded) as
    KILLED, with an ``error`` tag saying why. Returns whether it was closed."""
    client = MlflowClient()
    if only_if_running and client.get_run(run_id).info.status != "RUNNING":
        return False
    for key, value in {**(tags or {}), "error": reason}.items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, "KILLED")
    return True


def close_orphaned_runs(stage: str, keep: str | None = None) -> list[str]:
    """Runs of ``stage`` left RUNNING by a process of this machine that no longer exists (SIGKILL,
    power loss) are marked KILLED; runs of live processes (parallel queued experiments) and of
    other machines are left alone. ``keep``: a run about to be resumed. Returns the closed ids."""
    import psutil

    if _experiment_id is None:
        return []
    client = MlflowClient()
    closed = []
    host = socket.gethostname()
    for run in client.search_runs([_experiment_id], filter_string=f"tags.stage = '{stage}' and attributes.status = 'RUNNING'",
                                  max_results=100):
        owner = run.data.tags.get(PROCESS_TAG, "")
        owner_host, _, pid = owner.rpartition(":")
        if run.info.run_id == keep or owner_host != host or not pid.isdigit() or psutil.pid_exists(int(pid)):
            continue
        mark_killed(run.info.run_id, f"orphaned: its process {owner} ended without closing it")
        closed.append(run.info.run_id)
    return closed


def prepared_data_hash(folder: Path) -> str:
    """The DVC hash of the prepared data as ``dvc.lock`` records it (under ``dvc repro`` prepare's
    entry is written before the stages that read it run), else this package's own digest of the
    folder (a direct ``python stages/…`` before any ``dvc repro``)."""
    lock = repo_root() / "dvc.lock"
    if lock.is_file():
        try:
            stages = yaml.safe_load(lock.read_text()).get("stages", {})
            for out in stages.get("prepare", {}).get("outs", []):
                if out.get("path") == folder.as_posix() and out.get("md5"):
                    return out["md5"]
        except (OSError, AttributeError, yaml.YAMLError):
            pass
    return digest(folder)


def log_dataset(images, labels, folder: Path, context: str) -> None:
    """The data a run used, in the run's Datasets column: name, DVC hash as digest, shape."""
    import warnings

    import mlflow.data

    with warnings.catch_warnings():
        # MLflow registers its local-artifact source class twice and then warns, on every run, that a
        # path "can be interpreted in multiple ways" — by two identical classes (noise).
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        dataset = mlflow.data.from_numpy(images, targets=labels, source=str(repo_root() / folder), name=folder.as_posix(),
                                         digest=prepared_data_hash(folder)[:36])
    mlflow.log_input(dataset, context=context)


def run_name(stage: str) -> str:
    exp = os.environ.get("DVC_EXP_NAME")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{stage}-{exp}-{stamp}" if exp else f"{stage}-{stamp}"


def log_params_flat(params: dict) -> None:
    """Log params with their params.yaml paths; values longer than MLflow's limit are cut. The
    search space is one JSON param (``tune.search_space``), not dozens of mostly-null leaves."""
    space = {k[len("tune.search_space."):]: v for k, v in params.items() if k.startswith("tune.search_space.")}
    params = {k: v for k, v in params.items() if not k.startswith("tune.search_space.")}
    if space:
        nested: dict = {}
        for key, value in space.items():
            name, _, field = key.rpartition(".")
            if value is not None and value is not False:
                nested.setdefault(name, {})[field] = value
        params["tune.search_space"] = json.dumps(nested, sort_keys=True, default=str)
    mlflow.log_params({k: (str(v)[:6000] if v is not None else "null") for k, v in params.items()})


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


def runs_view_url(host: str = "127.0.0.1", port: int = 5000, experiment: str = "brainsynth") -> str:
    """The MLflow UI's runs table of ``experiment`` (MLflow 3 opens on a GenAI overview otherwise)."""
    mlflow.set_tracking_uri(tracking_uri())
    found = MlflowClient().get_experiment_by_name(experiment)
    base = f"http://{host}:{port}"
    return f"{base}/#/experiments/{found.experiment_id}?workflowType=machine_learning" if found else base


if __name__ == "__main__":  # `make ui` prints where to look
    from brainsynth.config import load

    print(f"MLflow UI, the runs of this project: {runs_view_url(experiment=load('params.yaml').mlflow.experiment)}")
