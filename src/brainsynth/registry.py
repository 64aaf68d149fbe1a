"""The model registry as a team adopts it: every registered version says where it came from, the
newest is ``@candidate``, and ``@champion`` moves only when an evaluation beats the current champion
on ``mlflow.champion_metric``, measured on the same prepared data — so
``models:/brainsynth@champion`` is never a debug run or a regression.

train registers (``serving.log_generator``): version description, tags ``data_hash``,
``train_run_id``, ``pipeline_run``, alias ``candidate``. evaluate then tags the version with its
headline metrics and decides ``champion`` (``promote``).
"""

from __future__ import annotations

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from brainsynth.catalogue import lower_is_better, version_metrics

CANDIDATE, CHAMPION = "candidate", "champion"
def describe_candidate(name: str, version: str, description: str, tags: dict[str, str]) -> None:
    client = MlflowClient()
    if description:
        client.update_model_version(name, version, description=description)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, CANDIDATE, version)


def version_of_run(name: str, run_id: str) -> str | None:
    """The version of ``name`` registered by the run ``run_id`` (None when there is none)."""
    if not run_id:
        return None
    try:
        versions = MlflowClient().search_model_versions(f"name='{name}' and run_id='{run_id}'")
    except MlflowException:
        return None
    return str(max(int(v.version) for v in versions)) if versions else None


def better(metric: str, new: float, old: float) -> bool:
    return new < old if lower_is_better(metric) else new > old


def promote(name: str, version: str, metrics: dict[str, float], metric: str, data_hash: str) -> str:
    """Tag ``version`` with its evaluation and move ``champion`` to it when it beats the current
    champion on ``metric`` over the same data (or when there is no champion). Returns a one-line
    account of the decision."""
    client = MlflowClient()
    for key in version_metrics():
        if key in metrics:
            client.set_model_version_tag(name, version, f"eval.{key}", f"{metrics[key]:.6g}")
    if metric not in metrics:
        return f"{name} v{version}: no {metric} in this evaluation; champion unchanged"
    client.set_model_version_tag(name, version, "eval.data_hash", data_hash)
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    if champion is not None and champion.version == version:
        return f"{name} v{version} is already the champion"
    if champion is not None:
        held = champion.tags.get(f"eval.{metric}")
        if champion.tags.get("eval.data_hash") != data_hash or held is None:
            return (f"{name} v{version}: the champion v{champion.version} was evaluated on other data (or not on {metric}); "
                    f"not compared, champion unchanged (move it by hand: mlflow's set_registered_model_alias)")
        if not better(metric, metrics[metric], float(held)):
            return f"{name} v{version}: {metric} {metrics[metric]:.4g} does not beat the champion v{champion.version}'s {float(held):.4g}"
    client.set_registered_model_alias(name, CHAMPION, version)
    before = f"v{champion.version}'s {champion.tags.get(f'eval.{metric}')}" if champion is not None else "no champion"
    return f"{name} v{version} is the new champion: {metric} {metrics[metric]:.4g} (was {before})"
