"""Configs for tests, built from the repository's params.yaml (the one source of every value)."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import yaml

from brainsynth.config import Config, DataConfig, load, with_overrides

REPO = Path(__file__).resolve().parents[1]


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def merged(base: dict, extra: dict) -> dict:
    """``base`` with the nested mapping ``extra`` laid over it (a new dict)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "search_space":
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def write_params(path: Path, extra: dict) -> None:
    """params.yaml at ``path``: the repository's, with ``extra`` (nested) laid over it."""
    path.write_text(yaml.safe_dump(merged(repo_params(), extra), sort_keys=False))


def repo_config(overrides: dict | None = None) -> Config:
    """The repository's params.yaml with dotted-key overrides."""
    return with_overrides(load(REPO / "params.yaml"), overrides or {})


def data_config(root, **overrides) -> DataConfig:
    """The data section for a folder; keyword names are data.* keys (``volume__slice_axis`` for nested)."""
    dotted = {f"data.{k.replace('__', '.')}": v for k, v in {"source": str(root), "image_size": 16, "workers": 1, **overrides}.items()}
    return repo_config(dotted).data


# --- a temporary copy of the repo for end-to-end runs -------------------------------------------

# The whole pipeline in about a minute on 2 CPU cores: the repository's tiny preset (the one copy
# that make run-quick and make cluster-demo use too), logged to its own experiment.
TINY_PIPELINE = merged(yaml.safe_load((REPO / "presets" / "tiny.yaml").read_text()), {"mlflow": {"experiment": "e2e"}})

BIN = Path(sys.executable).parent


def pipeline_env(extra: dict | None = None) -> dict:
    """The environment for stages and DVC in a copy: this venv first on PATH, no tracking URI or
    DVC variables inherited from the caller, a git identity for DVC's commits."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    for key, value in (("GIT_AUTHOR_NAME", "e2e"), ("GIT_AUTHOR_EMAIL", "e2e@example.com"),
                       ("GIT_COMMITTER_NAME", "e2e"), ("GIT_COMMITTER_EMAIL", "e2e@example.com")):
        env.setdefault(key, value)
    return {**env, **(extra or {})}


def run_in(cmd: list[str], cwd: Path, env: dict, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@contextmanager
def changed_params(work: Path, change):
    """params.yaml of the copy ``work`` changed by ``change(params)`` (a nested dict, edited in
    place) for the duration of the block, then restored byte for byte."""
    path = work / "params.yaml"
    committed = path.read_text()
    params = yaml.safe_load(committed)
    change(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        yield params
    finally:
        path.write_text(committed)


def copy_repo(work: Path, params_extra: dict) -> None:
    """The repo's tracked and untracked-not-ignored files in ``work``, params.yaml with
    ``params_extra`` (nested) laid over it, committed in a fresh git repository."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, work / name)
    write_params(work / "params.yaml", params_extra)
    env = pipeline_env()
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "e2e"]):
        run_in(cmd, work, env)
