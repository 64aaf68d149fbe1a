"""dvc.yaml declares each stage's code: every brainsynth module the stage imports is a dependency,
so editing code that decides a stage's outputs reruns that stage (and only code that does)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# Modules that only talk to MLflow (logging, registry): editing them must not retrain.
NOT_DEPENDENCIES = {"src/brainsynth/tracking.py", "src/brainsynth/serving.py", "src/brainsynth/registry.py"}
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@functools.cache
def imported_files(stage: str) -> frozenset[str]:
    code = (f"import json, sys, brainsynth.pipeline.{stage}; "
            "print(json.dumps([m.__file__ for n, m in sys.modules.items() if n.startswith('brainsynth') and getattr(m, '__file__', None)]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    files = {Path(f).resolve().relative_to(REPO).as_posix() for f in json.loads(out.strip().splitlines()[-1])}
    return frozenset(f for f in files if not f.endswith("__init__.py"))


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_code_dependencies_cover_its_imports(stage):
    deps = [d for d in STAGES[stage]["deps"] if isinstance(d, str)]
    missing = {f for f in imported_files(stage) - NOT_DEPENDENCIES if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)}
    assert not missing, f"dvc.yaml stage {stage!r} imports but does not depend on: {sorted(missing)}"
    assert f"stages/{stage}.py" in deps


def test_stages_do_not_import_each_other():
    for stage in STAGES:
        others = {f"src/brainsynth/pipeline/{o}.py" for o in STAGES if o != stage}
        assert not imported_files(stage) & others, stage


def test_the_evaluate_metrics_lead_dvc_exp_show():
    """DVC orders metric columns by the stages' order in dvc.yaml; evaluate's quality metrics come first."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    with_metrics = [name for name, stage in stages.items() if stage.get("metrics")]
    assert with_metrics[0] == "evaluate", with_metrics
